//! The inspector: its page in a real browser, its API's guards, and the
//! `traffic` and `replay` commands.

use std::io::{Read, Write};
use std::net::TcpStream;

use crate::browser::Browser;
use crate::harness::{Mesh, exchanges, fixture, get, read_json, text};

fn mesh() -> Mesh {
    Mesh::start(fixture("mesh"), &[], &["beta", "alpha"])
}

/// A one-time link that logs a browser into the inspector page, as
/// `cargo devmesh inspector` prints it.
pub fn page(mesh: &Mesh) -> String {
    let output = mesh.cli(&["inspector"]);
    assert!(output.status.success(), "{}", text(&output));
    let url = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let addr = read_json(&mesh.state().join("control.json"))["addr"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(url.starts_with(&format!("http://{addr}/login?once=")), "{url}");
    url
}

/// The rows of the traffic list, as their text.
const ROWS: &str = "[...document.querySelectorAll('#rows tr')].map(tr => tr.innerText.replace(/\\s+/g, ' '))";

#[test]
fn a_request_between_services_appears_live() {
    let mesh = mesh();
    let mut browser = Browser::open(&page(&mesh));
    browser.wait_until("document.querySelector('#services [data-service=alpha]') && document.getElementById('live').className === 'on'", "the page to go live");
    let (status, _) = get(mesh.front("alpha"), "/peer");
    assert_eq!(status, 200);
    let rows = browser.wait_until(
        &format!("{ROWS}.find(r => r.includes('alpha → beta') && r.includes('/whoami') && r.includes('200'))"),
        "alpha's call to beta to appear without a reload",
    );
    assert!(rows.as_str().unwrap().contains("GET"), "{rows}");
}

/// Traffic captured before the page opens is listed as it loads, in a
/// fresh browser logged in through the one-time link, and the page goes
/// live; a client that drops an answer unread shows its status, no failure.
#[test]
fn a_page_opened_after_the_traffic_lists_it_at_once() {
    let mesh = mesh();
    for _ in 0..9 {
        get(mesh.front("alpha"), "/peer");
    }
    exchanges(&mesh, 18, |_| true);
    let mut browser = Browser::open(&page(&mesh));
    let shown = browser.wait_until(
        &format!("{ROWS}.filter(r => r.includes('alpha → beta')).length === 9 && {ROWS}.length"),
        "the traffic captured before the page opened",
    );
    assert_eq!(shown, 18, "nine calls to alpha, each with its call to beta");
    browser.wait_until(
        "document.getElementById('live').className === 'on'",
        "the page to go live",
    );
    let shot = browser.screenshot("existing-traffic");
    eprintln!("screenshot: {}", shot.display());
}

#[test]
fn the_list_keeps_the_newest_rows_under_load() {
    let mesh = mesh();
    let mut browser = Browser::open(&page(&mesh));
    browser.wait_until(
        "document.getElementById('live').className === 'on'",
        "the page to go live",
    );
    for _ in 0..1300 {
        get(mesh.front("beta"), "/whoami");
    }
    let newest = mesh.cli(&["traffic", "--jsonl"]).stdout;
    let newest: serde_json::Value =
        serde_json::from_slice(newest.trim_ascii_end().rsplit(|&b| b == b'\n').next().unwrap()).unwrap();
    let newest = newest["id"].as_u64().unwrap();
    let shown = browser.wait_until(
        &format!("state.rows.has({newest}) && document.querySelectorAll('#rows tr').length"),
        "the newest exchange to be shown",
    );
    let shown = shown.as_u64().unwrap();
    assert!((1000..=1100).contains(&shown), "{shown} rows shown of 1300");
}

#[test]
fn filters_narrow_the_list() {
    let mesh = mesh();
    get(mesh.front("alpha"), "/peer");
    get(mesh.front("beta"), "/whoami");
    let mut browser = Browser::open(&page(&mesh));
    browser.wait_until(&format!("{ROWS}.length === 3"), "three exchanges");

    browser.eval("const q = document.getElementById('q'); q.value = 'peer'; q.dispatchEvent(new Event('input'))");
    let rows = browser.wait_until(&format!("{ROWS}.length === 1 && {ROWS}"), "the text filter");
    assert!(rows[0].as_str().unwrap().contains("external → alpha"), "{rows}");

    browser.eval(
        "q.value = ''; q.dispatchEvent(new Event('input')); \
         const s = document.getElementById('f-service'); s.value = 'beta'; s.dispatchEvent(new Event('change'))",
    );
    let rows = browser.wait_until(&format!("{ROWS}.length === 2 && {ROWS}"), "the service filter");
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .all(|r| r.as_str().unwrap().contains("→ beta")),
        "{rows}"
    );

    browser
        .eval("const st = document.getElementById('f-status'); st.value = '4'; st.dispatchEvent(new Event('change'))");
    browser.wait_until(&format!("{ROWS}.length === 0"), "the status filter");
}

/// What a person sees at 1400 × 900: the newest exchange on top and in
/// view, every column, a map whose labels cross neither lines nor each
/// other, and no detail of an exchange a search hides. Screenshots are
/// saved for a person to look at.
#[test]
fn the_page_shows_the_newest_on_top_every_column_and_a_readable_map() {
    let mesh = mesh();
    for _ in 0..40 {
        get(mesh.front("beta"), "/whoami");
    }
    get(mesh.front("alpha"), "/peer");
    get(mesh.front("beta"), "/peer");
    let mut browser = Browser::open(&page(&mesh));
    browser.wait_until(&format!("{ROWS}.length === 44"), "every exchange");
    get(mesh.front("alpha"), "/whoami?the-newest");
    browser.wait_until(&format!("{ROWS}[0].includes('the-newest')"), "the newest on top");
    let in_view = browser.eval(
        "(() => { const row = document.querySelector('#rows tr').getBoundingClientRect(); \
          const list = document.getElementById('rows-scroll').getBoundingClientRect(); \
          return row.top >= list.top && row.bottom <= list.bottom; })()",
    );
    assert_eq!(in_view, true, "the newest row is in view");
    let cut = browser.eval(
        "(() => { const list = document.getElementById('list').getBoundingClientRect(); \
          return [...document.querySelectorAll('thead th')].filter(th => th.getBoundingClientRect().right > list.right + 1) \
            .map(th => th.innerText); })()",
    );
    assert_eq!(cut, serde_json::json!([]), "columns cut off at the right");
    eprintln!("screenshot: {}", browser.screenshot("traffic").display());

    // A search that hides the selected exchange clears the detail.
    browser.eval("[...document.querySelectorAll('#rows tr')].find(tr => tr.innerText.includes('/peer')).click()");
    browser.wait_until("document.getElementById('replay')", "the detail view");
    browser.eval("const q = document.getElementById('q'); q.value = 'the-newest'; q.dispatchEvent(new Event('input'))");
    browser.wait_until(&format!("{ROWS}.length === 1"), "the search");
    browser.wait_until("!document.getElementById('replay')", "the detail to clear");

    browser.eval("document.querySelector('header nav [data-view=map]').click()");
    let labels = browser.wait_until(
        "document.querySelectorAll('#map text.edge-label').length >= 4 && document.querySelectorAll('#map text.edge-label').length",
        "the map's edges",
    );
    assert!(labels.as_u64().unwrap() >= 4, "{labels}");
    let overlaps = browser.eval(MAP_OVERLAPS);
    eprintln!("screenshot: {}", browser.screenshot("map").display());
    assert_eq!(overlaps, serde_json::json!([]), "map labels that overlap");
}

/// The map's edge labels (as their rotated boxes) that overlap another
/// label or an edge's line, by the separating axis test.
const MAP_OVERLAPS: &str = r#"(() => {
  const svg = document.querySelector('#map svg');
  const point = (x, y, m) => { const p = svg.createSVGPoint(); p.x = x; p.y = y; const q = p.matrixTransform(m); return [q.x, q.y]; };
  const labels = [...svg.querySelectorAll('text.edge-label')].map((t) => {
    const b = t.getBBox(), m = t.getCTM();
    return { name: t.textContent, poly: [[b.x, b.y], [b.x + b.width, b.y], [b.x + b.width, b.y + b.height], [b.x, b.y + b.height]].map(([x, y]) => point(x, y, m)) };
  });
  const lines = [...svg.querySelectorAll('line')].map((l, i) => ({ name: 'line ' + i,
    poly: [[+l.getAttribute('x1'), +l.getAttribute('y1')], [+l.getAttribute('x2'), +l.getAttribute('y2')]] }));
  const axes = (poly) => poly.map((p, i) => { const q = poly[(i + 1) % poly.length]; return [p[1] - q[1], q[0] - p[0]]; });
  const apart = (a, b) => axes(a).concat(axes(b)).some(([ax, ay]) => {
    const len = Math.hypot(ax, ay) || 1;
    const project = (poly) => poly.map(([x, y]) => (x * ax + y * ay) / len);
    const pa = project(a), pb = project(b);
    return Math.max(...pa) <= Math.min(...pb) || Math.max(...pb) <= Math.min(...pa);
  });
  const found = [];
  labels.forEach((label, i) => {
    labels.slice(i + 1).concat(lines).forEach((other) => {
      if (!apart(label.poly, other.poly)) found.push(label.name + ' × ' + other.name);
    });
  });
  return found;
})()"#;

#[test]
fn a_replay_from_the_page_is_a_new_marked_row() {
    let mesh = mesh();
    get(mesh.front("beta"), "/whoami");
    let mut browser = Browser::open(&page(&mesh));
    browser.wait_until(&format!("{ROWS}.length === 1"), "the exchange");
    browser.eval("document.querySelector('#rows tr').click()");
    browser.wait_until("document.getElementById('replay')", "the detail view");
    browser.eval("document.getElementById('replay').click()");
    // The row appears as the replay is sent, and completes with its response.
    let replayed = browser.wait_until(
        "[...document.querySelectorAll('#rows tr')].map(tr => tr.innerText).find(t => t.includes('↺ #1') && t.includes('200'))",
        "the replay's row, complete",
    );
    assert!(replayed.as_str().unwrap().contains("/whoami"), "{replayed}");
}

/// A raw request to the API, to test what the client would never send.
fn raw(addr: &str, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn the_api_refuses_foreign_hosts_and_missing_tokens() {
    let mesh = mesh();
    let control = read_json(&mesh.state().join("control.json"));
    let addr = control["addr"].as_str().unwrap();
    let rebinding = raw(
        addr,
        "GET /api/services HTTP/1.1\r\nhost: evil.example:80\r\nconnection: close\r\n\r\n",
    );
    assert!(rebinding.starts_with("HTTP/1.1 403"), "{rebinding}");
    let tokenless = raw(
        addr,
        &format!(
            "POST /api/services/beta/stop HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        ),
    );
    assert!(tokenless.starts_with("HTTP/1.1 401"), "{tokenless}");
    assert!(text(&mesh.cli(&["ps"])).contains("beta"), "beta was not stopped");

    // Reads need authentication too: captured traffic holds secrets.
    get(mesh.front("beta"), "/whoami");
    let token = control["token"].as_str().unwrap();
    for route in [
        "/",
        "/api/services",
        "/api/traffic",
        "/api/traffic/1",
        "/api/traffic.har",
        "/api/traffic.jsonl",
        "/api/events",
        "/api/logs",
        "/api/map",
    ] {
        let anonymous = raw(
            addr,
            &format!("GET {route} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"),
        );
        assert!(anonymous.starts_with("HTTP/1.1 401"), "{route}: {anonymous}");
        assert!(
            !anonymous.to_ascii_lowercase().contains("access-control-allow"),
            "{route}: no CORS"
        );
        let foreign = raw(
            addr,
            &format!(
                "GET {route} HTTP/1.1\r\nhost: {addr}\r\norigin: http://evil.example\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
            ),
        );
        assert!(foreign.starts_with("HTTP/1.1 403"), "{route}: {foreign}");
    }
    // A login link works once, and sets an HttpOnly, SameSite=Strict cookie.
    let link = page(&mesh);
    let path = &link[link.find("/login").unwrap()..];
    let login = raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"),
    );
    assert!(login.starts_with("HTTP/1.1 303"), "{login}");
    let cookie = login
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("a cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap();
    let again = raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"),
    );
    assert!(again.starts_with("HTTP/1.1 401"), "a link works once: {again}");
    let traffic = raw(
        addr,
        &format!("GET /api/traffic HTTP/1.1\r\nhost: {addr}\r\ncookie: {session}\r\nconnection: close\r\n\r\n"),
    );
    assert!(
        traffic.starts_with("HTTP/1.1 200") && traffic.contains("/whoami"),
        "{traffic}"
    );
    // Each login is a session of its own: one leaked cookie is one session.
    let link = page(&mesh);
    let path = &link[link.find("/login").unwrap()..];
    let second = raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"),
    );
    let second = second
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .expect("a cookie");
    assert_ne!(second, session, "two logins, two sessions");
    for cookie in [session, second, "devmesh_session=0123456789abcdef0123456789abcdef"] {
        let services = raw(
            addr,
            &format!("GET /api/services HTTP/1.1\r\nhost: {addr}\r\ncookie: {cookie}\r\nconnection: close\r\n\r\n"),
        );
        let forged = cookie.ends_with("cdef");
        assert_eq!(services.starts_with("HTTP/1.1 200"), !forged, "{cookie}: {services}");
    }
    // The scheme is case-insensitive (RFC 9110 §11.1).
    for scheme in ["bearer", "BEARER"] {
        let services = raw(
            addr,
            &format!(
                "GET /api/services HTTP/1.1\r\nhost: {addr}\r\nauthorization: {scheme} {token}\r\nconnection: close\r\n\r\n"
            ),
        );
        assert!(services.starts_with("HTTP/1.1 200"), "{scheme}: {services}");
    }

    // The token and the state are the user's alone.
    use std::os::unix::fs::MetadataExt;
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().mode() & 0o777;
    assert_eq!(mode(&mesh.state().join("control.json")), 0o600);
    assert_eq!(mode(&mesh.state()), 0o700);
    assert_eq!(mode(&mesh.state().join("logs/beta.log")), 0o600);
}

#[test]
fn traffic_and_replay_from_the_terminal() {
    let mesh = mesh();
    get(mesh.front("alpha"), "/peer");
    let output = mesh.cli(&["traffic", "beta"]);
    assert!(output.status.success(), "{}", text(&output));
    let listed = String::from_utf8(output.stdout).unwrap();
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.contains("alpha → beta  GET /whoami  200"), "{listed}");
    let id = listed
        .trim_start_matches('#')
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();

    let output = mesh.cli(&["replay", &id, "--path", "/nope"]);
    assert!(output.status.success(), "{}", text(&output));
    let replayed = String::from_utf8(output.stdout).unwrap();
    assert!(replayed.contains("external → beta  GET /nope  404"), "{replayed}");
    assert!(replayed.contains(&format!("(replay of #{id})")), "{replayed}");

    // Without -f, the newest: the last two of the three.
    let newest = String::from_utf8(mesh.cli(&["traffic", "-n", "2"]).stdout).unwrap();
    let ids: Vec<&str> = newest.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(ids, ["#2", "#3"], "{newest}");

    let har: serde_json::Value = serde_json::from_slice(&mesh.cli(&["traffic", "--har"]).stdout).unwrap();
    assert_eq!(har["log"]["version"], "1.2");
    assert_eq!(har["log"]["entries"].as_array().unwrap().len(), 3);
    let lines = mesh.cli(&["traffic", "--jsonl"]).stdout;
    let first: serde_json::Value = serde_json::from_slice(lines.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert_eq!(first["path"], "/peer");
    assert!(
        first["response_body"]["text"]
            .as_str()
            .unwrap()
            .starts_with("alpha got: beta")
    );
}

/// Secret headers are masked by default wherever an exchange is shown: the
/// API, HAR, JSON lines and the page. A replay still sends the real value
/// (its mask, keyed by the value, is the original's).
#[test]
fn secret_headers_are_masked_everywhere_they_are_shown() {
    let mesh = mesh();
    let secrets = [
        ("authorization", "Bearer secret-token-1234"),
        ("proxy-authorization", "Basic c2VjcmV0OnNlY3JldA=="),
        ("cookie", "session=secret-cookie-5678"),
        ("set-cookie", "id=secret-set-cookie-90"),
        ("x-api-key", "secret-api-key-abcdef"),
    ];
    let headers: String = secrets.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let addr = format!("127.0.0.1:{}", mesh.front("beta"));
    let answer = raw(
        &addr,
        &format!("GET /whoami HTTP/1.1\r\nhost: {addr}\r\n{headers}connection: close\r\n\r\n"),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let shown = |what: &str, text: &str| {
        for (name, value) in secrets {
            assert!(!text.contains(value), "{what} shows {name}'s value");
        }
    };
    let jsonl = text(&mesh.cli(&["traffic", "--jsonl"]));
    shown("JSON lines", &jsonl);
    assert!(
        jsonl.contains("\"authorization\",\"") && jsonl.contains("******"),
        "{jsonl}"
    );
    shown("HAR", &text(&mesh.cli(&["traffic", "--har"])));
    let control = read_json(&mesh.state().join("control.json"));
    let (api, token) = (control["addr"].as_str().unwrap(), control["token"].as_str().unwrap());
    let detail = raw(
        api,
        &format!(
            "GET /api/traffic/1 HTTP/1.1\r\nhost: {api}\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
        ),
    );
    assert!(detail.starts_with("HTTP/1.1 200"), "{detail}");
    shown("the API", &detail);
    let mut browser = Browser::open(&page(&mesh));
    browser.wait_until(&format!("{ROWS}.length === 1"), "the exchange");
    browser.eval("document.querySelector('#rows tr').click()");
    let page_text = browser.wait_until(
        "document.querySelector('#detail dl') && document.getElementById('detail').innerText",
        "the request's headers",
    );
    shown("the page", page_text.as_str().unwrap());

    let output = mesh.cli(&["replay", "1"]);
    assert!(output.status.success(), "{}", text(&output));
    let masks = |exchange: &serde_json::Value| exchange["request_headers"].as_array().unwrap().clone();
    let all: Vec<serde_json::Value> = mesh
        .cli(&["traffic", "--jsonl"])
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let authorization =
        |e: &serde_json::Value| masks(e).into_iter().find(|h| h[0] == "authorization").unwrap()[1].clone();
    assert_eq!(all.len(), 2);
    assert_eq!(
        authorization(&all[1]),
        authorization(&all[0]),
        "the replay sent the real token"
    );
}

/// A gRPC body is shown as its messages, each as hex; any other binary
/// body as hex, base64 on demand.
#[test]
fn grpc_bodies_are_shown_as_messages_in_hex() {
    let mesh = mesh();
    let addr = format!("127.0.0.1:{}", mesh.front("beta"));
    // Two messages: 3 bytes `abc`, then 2 bytes 0x08 0x01, sent apart.
    let (first, second): (&[u8], &[u8]) = (b"\0\0\0\0\x03abc", b"\0\0\0\0\x02\x08\x01");
    let mut stream = TcpStream::connect(&addr).unwrap();
    let mut head = format!(
        "POST /shop.Orders/Get HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/grpc\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        first.len() + second.len()
    )
    .into_bytes();
    head.extend_from_slice(first);
    stream.write_all(&head).unwrap();
    // The exchange is listed while its body still comes.
    let mut browser = Browser::open(&page(&mesh));
    browser.wait_until(&format!("{ROWS}.length === 1"), "the exchange in progress");
    stream.write_all(second).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    crate::harness::exchanges(&mesh, 1, |e| e["complete"] == true);
    browser.eval("document.querySelector('#rows tr').click()");
    let shown = browser.wait_until(
        "document.querySelector('.grpc-message') && document.getElementById('detail-body').innerText",
        "the request's messages",
    );
    let shown = shown.as_str().unwrap();
    assert!(shown.contains("2 gRPC messages"), "{shown}");
    assert!(
        shown.contains("message 1: 3 bytes") && shown.contains("61 62 63") && shown.contains("abc"),
        "{shown}"
    );
    assert!(
        shown.contains("message 2: 2 bytes") && shown.contains("08 01"),
        "{shown}"
    );
    // Each message with when it arrived.
    assert_eq!(shown.matches(" · at +").count(), 2, "{shown}");
    eprintln!("screenshot: {}", browser.screenshot("grpc-body").display());
}

/// The trace view writes the trace as a test: the calls of alpha's
/// request to beta asserted; with beta ticked, beta stands in with what
/// it answered. Screenshot for a person to look at.
#[test]
fn a_trace_on_the_page_becomes_a_test() {
    let mesh = mesh();
    get(mesh.front("alpha"), "/peer");
    exchanges(&mesh, 2, |_| true);
    let mut browser = Browser::open(&page(&mesh));
    browser.wait_until(&format!("{ROWS}.length === 2"), "both exchanges");
    browser.eval("[...document.querySelectorAll('#rows tr')].find(tr => tr.innerText.includes('/peer')).click()");
    browser.wait_until("document.querySelector('#detail .tabs')", "the exchange's detail");
    browser.eval("document.querySelector('#detail [data-tab=trace]').click()");
    browser.wait_until("document.getElementById('as-test-show')", "the trace view");
    browser.eval("document.getElementById('as-test-show').click()");
    let code = browser.wait_until(
        "document.getElementById('as-test-code') && document.getElementById('as-test-code').innerText",
        "the test",
    );
    let code = code.as_str().unwrap().to_owned();
    assert!(code.contains("async fn get_peer_as_captured(mesh: Mesh)"), "{code}");
    assert!(code.contains(r#"services("alpha", "beta")"#), "{code}");
    assert!(
        code.contains(".from(\"alpha\")\n        .to(\"beta\")\n        .request(\"GET\", \"/whoami\")"),
        "{code}"
    );
    browser.eval("document.querySelector('#as-test input[data-stub=beta]').click()");
    let code = browser.wait_until(
        "document.getElementById('as-test-code').innerText.includes('.stand_in(') && document.getElementById('as-test-code').innerText",
        "beta to stand in",
    );
    assert!(
        code.as_str()
            .unwrap()
            .contains(r#"services("alpha"), setup(stand_ins)"#),
        "{code}"
    );
    let file = browser.eval("document.getElementById('as-test-file').download");
    assert_eq!(file, "get_peer_as_captured.rs");
    let shot = browser.screenshot("as-test");
    eprintln!("screenshot: {}", shot.display());
}
