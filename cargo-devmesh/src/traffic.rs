//! `cargo devmesh traffic` and `cargo devmesh replay`: the inspector from
//! the terminal, through the supervisor's API.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use hyper::body::Bytes;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use cargo_devmesh::as_test::Written;
use cargo_devmesh::control::Client;

/// How often `traffic -f` asks for new exchanges.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(200);

/// What `traffic` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One line per exchange.
    Table,
    /// HAR 1.2, for browser dev tools.
    Har,
    /// One JSON object per exchange, with headers and bodies.
    JsonLines,
}

/// Prints the newest `newest` exchanges of `service` (or all; every one
/// kept as JSON lines or HAR), then, with `follow`, new ones as they end.
pub async fn show(
    client: &Client,
    service: Option<&str>,
    format: Format,
    (follow, newest): (bool, usize),
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let filter = service.map_or_else(String::new, |s| format!("service={s}&"));
    let mut out = std::io::stdout().lock();
    match format {
        Format::Har => {
            client.get_to(&format!("/api/traffic.har?{filter}"), &mut out).await?;
            return Ok(writeln!(out)?);
        }
        Format::JsonLines if !follow => {
            return client.get_to(&format!("/api/traffic.jsonl?{filter}"), &mut out).await;
        }
        _ => {}
    }
    drop(out);
    // The newest id fetched, and those fetched while still in flight
    // (a WebSocket stays so for its life): each is shown once it ends, and
    // none holds back the ones after it.
    let mut after: Option<u64> = None;
    let mut in_flight = std::collections::BTreeSet::new();
    loop {
        let path = match (format, after) {
            (Format::JsonLines, after) => format!("/api/traffic.jsonl?{filter}after={}", after.unwrap_or(0)),
            // First the newest, then what came after the last fetched.
            (_, None) => format!("/api/traffic?{filter}limit={newest}"),
            (_, Some(after)) => format!("/api/traffic?{filter}after={after}"),
        };
        let exchanges = parse(format, &client.get(&path).await?)?;
        let mut ended = Vec::new();
        if follow {
            for id in std::mem::take(&mut in_flight) {
                // Gone from the inspector (its memory is bounded): nothing to show.
                let Ok(body) = client.get(&format!("/api/traffic/{id}")).await else {
                    continue;
                };
                let exchange: Value = serde_json::from_slice(&body)?;
                match exchange["complete"].as_bool() {
                    Some(true) => ended.push(exchange),
                    _ => {
                        in_flight.insert(id);
                    }
                }
            }
        }
        let full_page = exchanges.len() >= cargo_devmesh::control::LIST_LIMIT;
        for exchange in exchanges {
            let id = exchange["id"].as_u64();
            after = id.max(after);
            match (follow, exchange["complete"].as_bool(), id) {
                (true, Some(false), Some(id)) => {
                    in_flight.insert(id);
                }
                _ => ended.push(exchange),
            }
        }
        let mut out = std::io::stdout().lock();
        for exchange in &ended {
            match format {
                Format::JsonLines => writeln!(out, "{exchange}")?,
                _ => writeln!(out, "{}", line(exchange))?,
            }
        }
        out.flush()?;
        if !follow {
            return Ok(());
        }
        // A full page: more are waiting, and a follower that waited
        // between pages would fall ever further behind a busy mesh.
        if full_page && format == Format::Table {
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(FOLLOW_INTERVAL) => {}
        }
    }
}

/// A page of exchanges, as `/api/traffic` or `/api/traffic.jsonl` sent it.
fn parse(format: Format, body: &[u8]) -> anyhow::Result<Vec<Value>> {
    Ok(match format {
        Format::JsonLines => body
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(serde_json::from_slice)
            .collect::<Result<_, _>>()?,
        _ => serde_json::from_slice(body)?,
    })
}

/// `#12  14:02:03.120  gateway → orders  POST /orders  201  3.2 ms`
fn line(e: &Value) -> String {
    let text = |key: &str| e[key].as_str().unwrap_or("").to_owned();
    let time = cargo_devmesh::time::timestamp(
        std::time::UNIX_EPOCH + Duration::from_millis(e["started_ms"].as_u64().unwrap_or(0)),
    );
    // A gRPC call's outcome is its `grpc-status`: HTTP says 200 either way.
    let status = match e["grpc_status"].as_u64().and_then(|c| u8::try_from(c).ok()) {
        Some(code) => cargo_devmesh::inspector::grpc_outcome(code, grpc_message(e).as_deref()),
        None => e["status"].as_u64().map_or_else(|| "-".to_owned(), |s| s.to_string()),
    };
    let total = e["total_ms"]
        .as_f64()
        .map_or_else(String::new, |t| format!("{t:.1} ms"));
    let target = match text("kind").as_str() {
        "tcp" => format!("{} B up, {} B down", e["bytes_up"], e["bytes_down"]),
        _ => text("path"),
    };
    let mut line = format!(
        "#{:<5} {}  {} → {}  {} {}  {}  {}",
        e["id"].as_u64().unwrap_or(0),
        &time[11..23],
        text("caller"),
        text("service"),
        text("method"),
        target,
        status,
        total
    );
    if let Some(original) = e["replay_of"].as_u64() {
        line.push_str(&format!("  (replay of #{original})"));
    }
    if let Some(error) = e["error"].as_str() {
        line.push_str(&format!("  error: {error}"));
    }
    if let Some(note) = e["note"].as_str() {
        line.push_str(&format!("  ({note})"));
    }
    line
}

/// The `grpc-message` of a call, percent-decoded, when its headers are at
/// hand (a whole exchange: `replay`, `--jsonl`; a list has none).
fn grpc_message(e: &Value) -> Option<String> {
    let pairs = |key: &str| e[key].as_array().cloned().unwrap_or_default();
    let message = pairs("response_trailers")
        .into_iter()
        .chain(pairs("response_headers"))
        .find(|pair| pair[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case("grpc-message")))?;
    Some(percent_decode(message[1].as_str()?))
}

/// `%XX` escapes back to bytes (gRPC's `grpc-message` encoding).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let escaped = (bytes[at] == b'%')
            .then(|| text.get(at + 1..at + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                at += 3;
            }
            None => {
                out.push(bytes[at]);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes the test of exchange or trace `id` (see `as_test`) to the tests
/// of its service's package, or prints it.
pub async fn as_test(
    client: &Client,
    id: &str,
    (stubs, print): (&[String], bool),
    manifest: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let query = if stubs.is_empty() {
        String::new()
    } else {
        format!("?stub={}", stubs.join(","))
    };
    let written: Written = serde_json::from_slice(&client.get(&format!("/api/traffic/{id}/as-test{query}")).await?)?;
    let Some(package) = written.package.filter(|_| !print) else {
        if !print {
            eprintln!(
                "`{}` is a command, no package of the workspace: the test is printed",
                written.service
            );
        }
        print!("{}", written.code);
        return Ok(());
    };
    let (name, dir) = (&written.name, &package.dir);
    let tests = dir.join("tests");
    std::fs::create_dir_all(&tests).with_context(|| format!("could not make `{}`", tests.display()))?;
    // A test written before is the user's now: never overwritten.
    let (path, file) = (1..)
        .map(|n| match n {
            1 => tests.join(format!("{name}.rs")),
            n => tests.join(format!("{name}_{n}.rs")),
        })
        .find_map(|path| {
            let file = std::fs::File::options().write(true).create_new(true).open(&path);
            match file {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => None,
                file => Some((path, file)),
            }
        })
        .expect("some file name is free");
    file.and_then(|mut file| file.write_all(written.code.as_bytes()))
        .with_context(|| format!("could not write `{}`", path.display()))?;
    let stand_ins: Vec<String> = written.stand_ins.iter().map(|s| format!("`{s}`")).collect();
    println!("wrote {}", path.display());
    if !stand_ins.is_empty() {
        let (verb, who) = if stand_ins.len() == 1 {
            ("stands", "it")
        } else {
            ("stand", "they")
        };
        println!("  {} {verb} in with what {who} answered", stand_ins.join(", "));
    }
    let varying = written.varying.len();
    if varying > 0 {
        println!("  {varying} values that differ from run to run are listed in it, not asserted");
    }
    let package_manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap_or_default();
    if !package_manifest.contains("devmesh-testing") {
        println!(
            "  it needs the harness: add `devmesh-testing` to the [dev-dependencies] of `{}`",
            dir.join("Cargo.toml").display()
        );
    }
    let test = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let package = &package.name;
    // Run from where this was: with the manifest path it was given.
    let manifest = manifest.map_or_else(String::new, |m| format!(" --manifest-path {}", m.display()));
    println!("run it: cargo test{manifest} -p {package} --test {test}");
    Ok(())
}

/// What to change in a replayed request.
#[derive(Debug, Default)]
pub struct Edits {
    pub method: Option<String>,
    pub path: Option<String>,
    /// `Name: value` headers that replace or add to the captured ones.
    pub headers: Vec<String>,
    pub body: Option<String>,
}

/// Replays exchange `id`, with `edits`, and prints the new exchange.
pub async fn replay(client: &Client, id: u64, edits: Edits) -> anyhow::Result<()> {
    let mut request = serde_json::Map::new();
    if let Some(method) = edits.method {
        request.insert("method".into(), method.into());
    }
    if let Some(path) = edits.path {
        request.insert("path".into(), path.into());
    }
    if !edits.headers.is_empty() {
        let original: Value = serde_json::from_slice(&client.get(&format!("/api/traffic/{id}")).await?)?;
        let mut headers: Vec<(String, String)> =
            serde_json::from_value(original["request_headers"].clone()).unwrap_or_default();
        for header in &edits.headers {
            let Some((name, value)) = header.split_once(':') else {
                anyhow::bail!("`{header}` is not a header (hint: write `Name: value`)");
            };
            let name = name.trim().to_owned();
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
            headers.push((name, value.trim().to_owned()));
        }
        request.insert("headers".into(), serde_json::to_value(headers)?);
    }
    if let Some(body) = edits.body {
        request.insert("body".into(), body.into());
    }
    let body = Bytes::from(serde_json::to_vec(&request)?);
    let answer: Value = serde_json::from_slice(&client.post(&format!("/api/traffic/{id}/replay"), body).await?)?;
    match answer["exchange"].as_u64() {
        Some(new) => {
            let exchange: Value = serde_json::from_slice(&client.get(&format!("/api/traffic/{new}")).await?)?;
            println!("{}", line(&exchange));
        }
        None => println!("replayed #{id}: status {}", answer["status"]),
    }
    Ok(())
}
