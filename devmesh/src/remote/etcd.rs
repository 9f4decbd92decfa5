//! `[remote.etcd]`: the team's registry in etcd, through its JSON gateway
//! (etcd 3.4 and later serve it on the client port): services under
//! `/devmesh/<namespace>/services/<name>`, each a JSON value `{"url": …}`.
//!
//! [`Etcd`] is the backend: a thread of its own reads every service of the
//! namespace, then follows a watch from that revision, asking the
//! members in turn when one goes. Lookups read memory. While no member
//! answers, the last answers stay, marked stale in their source.
//!
//! [`Registration`] is the supervisor's side: shared services put under a
//! lease it keeps alive, so that they vanish within the lease when the
//! supervisor is killed or the laptop sleeps.
//!
//! HTTP/1.1 is written here over `std::net`: a few requests a minute and
//! one long watch need no HTTP crate in services' builds.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::{Value, json};

use super::Backend;
use crate::config::EtcdConfig;
use crate::{Endpoint, Source};

/// How long a request waits to connect, and for an answer.
const TIMEOUT: Duration = Duration::from_secs(2);
/// How long a watch may be quiet before its member is asked whether it is
/// still there.
const WATCH_IDLE: Duration = Duration::from_secs(30);
/// The longest wait between rounds over the members while none answers.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Why etcd gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    #[error("{member} does not answer ({why})")]
    Unreachable { member: String, why: String },
    #[error("{member} refused: {message} (hint: does the namespace exist, and may this user read it?)")]
    Refused { member: String, message: String },
    #[error("{member} answered what is no etcd answer ({why})")]
    Garbage { member: String, why: String },
}

/// The key prefix of a namespace's services.
pub fn prefix(namespace: &str) -> String {
    format!("/devmesh/{namespace}/services/")
}

/// The key prefix of a namespace's routes: a developer's copy of a
/// service, for the requests that carry the developer's route, is at
/// `<prefix>SERVICE/ROUTE`.
pub fn route_prefix(namespace: &str) -> String {
    format!("/devmesh/{namespace}/routes/")
}

/// The members of a cluster, asked in turn.
#[derive(Debug, Clone)]
pub struct Cluster {
    members: Vec<String>,
}

impl Cluster {
    pub fn new(members: &[String]) -> Cluster {
        Cluster {
            members: members.to_vec(),
        }
    }

    /// `POST path` with `body` to the first member that answers.
    pub fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let mut last = None;
        for member in &self.members {
            match call(member, path, body) {
                Ok(answer) => return Ok(answer),
                Err(e @ EtcdError::Refused { .. }) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| EtcdError::Unreachable {
            member: "etcd".into(),
            why: "no member is configured".into(),
        }))
    }
}

/// One request to one member; its JSON answer.
fn call(member: &str, path: &str, body: &Value) -> Result<Value, EtcdError> {
    let unreachable = |why: String| EtcdError::Unreachable {
        member: member.to_owned(),
        why,
    };
    let mut stream = connect(member).map_err(|e| unreachable(e.to_string()))?;
    send(&mut stream, member, path, body).map_err(|e| unreachable(e.to_string()))?;
    let mut reader = BufReader::new(stream);
    let (status, length, chunked) = read_head(&mut reader).map_err(|e| unreachable(e.to_string()))?;
    let mut body = Vec::new();
    if chunked {
        while let Some(chunk) = read_chunk(&mut reader).map_err(|e| unreachable(e.to_string()))? {
            body.extend_from_slice(&chunk);
        }
    } else {
        body.resize(length.unwrap_or(0), 0);
        reader.read_exact(&mut body).map_err(|e| unreachable(e.to_string()))?;
    }
    answer(member, status, &body)
}

/// A member's answer, or what it refused.
fn answer(member: &str, status: u16, body: &[u8]) -> Result<Value, EtcdError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| EtcdError::Garbage {
        member: member.to_owned(),
        why: e.to_string(),
    })?;
    if status != 200 || value.get("error").is_some() {
        let message = value["message"]
            .as_str()
            .or(value["error"].as_str())
            .unwrap_or("an error")
            .to_owned();
        return Err(EtcdError::Refused {
            member: member.to_owned(),
            message,
        });
    }
    Ok(value)
}

fn connect(member: &str) -> std::io::Result<TcpStream> {
    let addr = member
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("the address does not resolve"))?;
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    Ok(stream)
}

fn send(stream: &mut TcpStream, member: &str, path: &str, body: &Value) -> std::io::Result<()> {
    let body = body.to_string();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nhost: {member}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The status, the content length, and whether the body is chunked.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<(u16, Option<usize>, bool)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {line:?}")))?;
    let (mut length, mut chunked) = (None, false);
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("the answer's head was cut short"));
        }
        let line = line.trim_end();
        if line.is_empty() {
            return Ok((status, length, chunked));
        }
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
    }
}

/// The next chunk of a chunked body; `None` at its end.
fn read_chunk(reader: &mut impl BufRead) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::Error::other("the stream ended"));
    }
    let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
        .map_err(|_| std::io::Error::other("a broken chunk size"))?;
    let mut chunk = vec![0; size + 2];
    reader.read_exact(&mut chunk)?;
    chunk.truncate(size);
    Ok((size > 0).then_some(chunk))
}

/// Services of a namespace in etcd, watched.
#[derive(Debug)]
pub struct Etcd {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    cluster: Cluster,
    prefix: String,
    description: String,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    endpoints: HashMap<String, Endpoint>,
    /// The names whose value says `"strict": true`: a developer's routed
    /// copy whose requests fail, rather than go to the sandbox's own,
    /// while it is not connected.
    strict: std::collections::HashSet<String>,
    /// Why the answers are not current, while they are not.
    stale: Option<String>,
    /// Whether the namespace was read once.
    read: bool,
}

impl Etcd {
    /// Starts following the services of `config`'s namespace.
    pub fn new(config: &EtcdConfig) -> Result<Etcd, crate::Error> {
        Etcd::following(config, prefix(&config.namespace))
    }

    /// Starts following the routes of `config`'s namespace: names are
    /// `SERVICE/ROUTE`, each the URL of a developer's copy.
    pub fn routes(config: &EtcdConfig) -> Result<Etcd, crate::Error> {
        Etcd::following(config, route_prefix(&config.namespace))
    }

    /// Whether `name`'s value says `"strict": true` (see
    /// [`RoutedCopy::strict`]).
    pub fn is_strict(&self, name: &str) -> bool {
        self.shared.lock().strict.contains(name)
    }

    fn following(config: &EtcdConfig, prefix: String) -> Result<Etcd, crate::Error> {
        let shared = Arc::new(Shared {
            cluster: Cluster::new(&config.endpoints),
            description: format!("etcd `{prefix}` at {}", config.endpoints.join(", ")),
            prefix,
            state: Mutex::default(),
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("devmesh-etcd".into())
            .spawn(move || follow(weak))
            .map_err(|e| crate::Error::Config {
                path: "devmesh.toml".into(),
                problems: vec![format!("`[remote.etcd]`: could not start its thread: {e}")],
            })?;
        Ok(Etcd { shared })
    }
}

impl Etcd {
    /// Waits, up to `within`, until the namespace was read once (or the
    /// cluster did not answer); whether it was.
    pub fn first_read(&self, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            let state = self.shared.lock();
            if state.read || state.stale.is_some() {
                return state.read;
            }
            drop(state);
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Backend for Etcd {
    fn describe(&self) -> String {
        match &self.shared.lock().stale {
            Some(why) => format!("{} (stale: {why})", self.shared.description),
            None => self.shared.description.clone(),
        }
    }

    fn stale(&self) -> Option<String> {
        self.shared.lock().stale.clone()
    }

    fn lookup(&self, name: &str) -> Option<Endpoint> {
        self.shared.lock().endpoints.get(name).cloned()
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.shared.lock().endpoints.keys().cloned().collect();
        names.sort();
        names
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The endpoint a key and value describe, with its source as it is
    /// now, and whether the value says `"strict": true`.
    fn endpoint(&self, key: &str, value: &[u8], stale: Option<&str>) -> Option<(Endpoint, bool)> {
        let name = key.strip_prefix(&self.prefix)?;
        let value: Value = serde_json::from_slice(value).ok()?;
        let backend = match stale {
            Some(why) => format!("{} (stale: {why})", self.description),
            None => self.description.clone(),
        };
        let endpoint = Endpoint::from_url(name, value["url"].as_str()?, Source::Remote { backend }).ok()?;
        Some((endpoint, value["strict"] == true))
    }

    /// Marks every answer stale (`Some`) or current again (`None`).
    fn mark(&self, stale: Option<String>) {
        let mut state = self.lock();
        if state.stale == stale {
            return;
        }
        let endpoints = std::mem::take(&mut state.endpoints);
        state.endpoints = endpoints
            .into_iter()
            .map(|(name, e)| {
                let backend = match &stale {
                    Some(why) => format!("{} (stale: {why})", self.description),
                    None => self.description.clone(),
                };
                let again = Endpoint::from_url(&name, e.url(), Source::Remote { backend }).unwrap_or(e);
                (name, again)
            })
            .collect();
        state.stale = stale;
    }

    /// Reads the whole namespace; the revision it was read at.
    fn read_all(&self) -> Result<u64, EtcdError> {
        let (key, range_end) = (
            base64(self.prefix.as_bytes()),
            base64(&prefix_end(self.prefix.as_bytes())),
        );
        let answer = self
            .cluster
            .call("/v3/kv/range", &json!({ "key": key, "range_end": range_end }))?;
        let revision = answer["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        let (mut endpoints, mut strict) = (HashMap::new(), std::collections::HashSet::new());
        for kv in answer["kvs"].as_array().into_iter().flatten() {
            let (Some(key), Some(value)) = (unbase64_str(&kv["key"]), unbase64_value(&kv["value"])) else {
                continue;
            };
            if let Some((endpoint, is_strict)) = self.endpoint(&key, &value, None) {
                if is_strict {
                    strict.insert(endpoint.name().to_owned());
                }
                endpoints.insert(endpoint.name().to_owned(), endpoint);
            }
        }
        let mut state = self.lock();
        state.endpoints = endpoints;
        state.strict = strict;
        state.stale = None;
        state.read = true;
        Ok(revision)
    }

    /// Follows changes after `revision` on `member` until the watch breaks.
    fn watch(&self, member: &str, revision: u64) -> EtcdError {
        let unreachable = |why: String| EtcdError::Unreachable {
            member: member.to_owned(),
            why,
        };
        let request = json!({ "create_request": {
            "key": base64(self.prefix.as_bytes()),
            "range_end": base64(&prefix_end(self.prefix.as_bytes())),
            "start_revision": (revision + 1).to_string(),
        }});
        let mut stream = match connect(member) {
            Ok(stream) => stream,
            Err(e) => return unreachable(e.to_string()),
        };
        if let Err(e) =
            send(&mut stream, member, "/v3/watch", &request).and_then(|()| stream.set_read_timeout(Some(WATCH_IDLE)))
        {
            return unreachable(e.to_string());
        }
        let mut reader = BufReader::new(stream);
        match read_head(&mut reader) {
            Ok((200, _, true)) => {}
            Ok((status, ..)) => return unreachable(format!("the watch was answered with status {status}")),
            Err(e) => return unreachable(e.to_string()),
        }
        let mut pending = Vec::new();
        loop {
            let chunk = match read_chunk(&mut reader) {
                Ok(Some(chunk)) => chunk,
                Ok(None) => return unreachable("the watch ended".into()),
                // Quiet for a while: nothing changed, or the member is
                // gone without closing (a partition, a SIGSTOP). Asked
                // directly, it says which.
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    match call(member, "/v3/maintenance/status", &json!({})) {
                        Ok(_) => continue,
                        Err(e) => return e,
                    }
                }
                Err(e) => return unreachable(e.to_string()),
            };
            pending.extend_from_slice(&chunk);
            // Events come a JSON object a line.
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                if let Err(e) = self.apply(member, &line) {
                    return e;
                }
            }
        }
    }

    /// Applies one watch message.
    fn apply(&self, member: &str, line: &[u8]) -> Result<(), EtcdError> {
        let message: Value = serde_json::from_slice(line).map_err(|e| EtcdError::Garbage {
            member: member.to_owned(),
            why: e.to_string(),
        })?;
        if let Some(error) = message.get("error") {
            return Err(EtcdError::Refused {
                member: member.to_owned(),
                message: error["message"].as_str().unwrap_or("an error").to_owned(),
            });
        }
        for event in message["result"]["events"].as_array().into_iter().flatten() {
            let Some(key) = unbase64_str(&event["kv"]["key"]) else {
                continue;
            };
            let Some(name) = key.strip_prefix(&self.prefix) else {
                continue;
            };
            let mut state = self.lock();
            if event["type"] == "DELETE" {
                state.endpoints.remove(name);
                state.strict.remove(name);
            } else if let Some(value) = unbase64_value(&event["kv"]["value"])
                && let Some((endpoint, strict)) = self.endpoint(&key, &value, None)
            {
                state.endpoints.insert(name.to_owned(), endpoint);
                match strict {
                    true => state.strict.insert(name.to_owned()),
                    false => state.strict.remove(name),
                };
            }
        }
        Ok(())
    }
}

/// The backend's thread: read, then watch, over the members in turn,
/// until the backend is dropped.
///
/// An outage is said once, and again when etcd answers: not at each try.
fn follow(shared: Weak<Shared>) {
    let mut failures = 0u32;
    let mut said = false;
    loop {
        let Some(strong) = shared.upgrade() else { return };
        let error = match strong.read_all() {
            Ok(revision) => {
                failures = 0;
                if std::mem::take(&mut said) {
                    crate::warn(&format!("{}: answers again", strong.description));
                }
                // Watch on the first member that answers; the next on a break.
                let members = strong.cluster.members.clone();
                let mut last = None;
                for member in &members {
                    let error = strong.watch(member, revision);
                    let refused = matches!(error, EtcdError::Refused { .. });
                    last = Some(error);
                    if refused {
                        break;
                    }
                }
                last.unwrap_or_else(|| EtcdError::Unreachable {
                    member: "etcd".into(),
                    why: "no member".into(),
                })
            }
            Err(e) => e,
        };
        failures += 1;
        strong.mark(Some(error.to_string()));
        if !said {
            crate::warn(&format!(
                "{}: {error}; its last answers are kept, marked stale, until it answers again",
                strong.description
            ));
            said = true;
        }
        drop(strong);
        let backoff = Duration::from_millis(250)
            .saturating_mul(1 << failures.min(6))
            .min(MAX_BACKOFF);
        std::thread::sleep(backoff);
    }
}

/// The supervisor's registration of shared services and routed copies:
/// each under the namespace, on one lease renewed a third of the way
/// through it.
#[derive(Debug)]
pub struct Registration {
    cluster: Cluster,
    namespace: String,
    ttl: Duration,
    lease: Option<String>,
}

/// A developer's copy of a service, for the requests with their route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedCopy {
    pub service: String,
    pub route: String,
    pub url: String,
    /// Its requests fail while it is not connected, rather than go to
    /// the sandbox's own copy (`route = "strict"`).
    pub strict: bool,
}

impl Registration {
    pub fn new(config: &EtcdConfig) -> Registration {
        Registration {
            cluster: Cluster::new(&config.endpoints),
            namespace: config.namespace.clone(),
            ttl: config.lease.max(Duration::from_secs(2)),
            lease: None,
        }
    }

    /// How often [`Registration::renew`] should be called.
    pub fn every(&self) -> Duration {
        self.ttl / 3
    }

    /// Puts `services` (name, URL) on a new lease.
    pub fn register(&mut self, services: &[(String, String)]) -> Result<(), EtcdError> {
        self.register_with_routes(services, &[])
    }

    /// Puts `services` (name, URL) and `routes` on a new lease.
    pub fn register_with_routes(
        &mut self,
        services: &[(String, String)],
        routes: &[RoutedCopy],
    ) -> Result<(), EtcdError> {
        let granted = self
            .cluster
            .call("/v3/lease/grant", &json!({ "TTL": self.ttl.as_secs().to_string() }))?;
        let lease = granted["ID"].as_str().unwrap_or_default().to_owned();
        let services = services
            .iter()
            .map(|(name, url)| (format!("{}{name}", prefix(&self.namespace)), json!({ "url": url })));
        let routes = routes.iter().map(|copy| {
            let key = format!("{}{}/{}", route_prefix(&self.namespace), copy.service, copy.route);
            let value = match copy.strict {
                true => json!({ "url": copy.url, "strict": true }),
                false => json!({ "url": copy.url }),
            };
            (key, value)
        });
        for (key, value) in services.chain(routes) {
            let value = value.to_string();
            self.cluster.call(
                "/v3/kv/put",
                &json!({ "key": base64(key.as_bytes()), "value": base64(value.as_bytes()), "lease": lease }),
            )?;
        }
        self.lease = Some(lease);
        Ok(())
    }

    /// Keeps the lease alive; false when it is gone (expired while the
    /// laptop slept): register again.
    pub fn renew(&self) -> Result<bool, EtcdError> {
        let Some(lease) = &self.lease else { return Ok(false) };
        let answer = self.cluster.call("/v3/lease/keepalive", &json!({ "ID": lease }))?;
        let ttl = answer["result"]["TTL"].as_str().and_then(|t| t.parse::<i64>().ok());
        Ok(ttl.is_some_and(|t| t > 0))
    }

    /// Takes the services away at once (a clean stop).
    pub fn revoke(&mut self) -> Result<(), EtcdError> {
        if let Some(lease) = self.lease.take() {
            self.cluster.call("/v3/lease/revoke", &json!({ "ID": lease }))?;
        }
        Ok(())
    }
}

/// The end of the range of keys that start with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn unbase64_str(value: &Value) -> Option<String> {
    String::from_utf8(unbase64_value(value)?).ok()
}

fn unbase64_value(value: &Value) -> Option<Vec<u8>> {
    unbase64(value.as_str()?)
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

fn unbase64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut bits, mut count) = (0u32, 0);
    for byte in text.bytes().filter(|&b| b != b'=') {
        let value = ALPHABET.iter().position(|&a| a == byte)? as u32;
        bits = bits << 6 | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_prefixes_end_where_they_should() {
        for text in ["", "f", "fo", "foo", "/devmesh/team/services/"] {
            assert_eq!(unbase64(&base64(text.as_bytes())).unwrap(), text.as_bytes());
        }
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(prefix_end(b"/a/"), b"/a0");
    }

    #[test]
    fn a_refusal_is_told_apart_from_garbage() {
        let refused = answer("m:1", 403, br#"{"error":"etcdserver: permission denied","code":7}"#);
        assert!(matches!(refused, Err(EtcdError::Refused { message, .. }) if message.contains("permission denied")));
        assert!(matches!(answer("m:1", 200, b"<html>"), Err(EtcdError::Garbage { .. })));
    }
}
