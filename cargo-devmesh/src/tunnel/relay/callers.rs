//! The public side of the relay, where callers come in: their request
//! head, read to route them (the Host, with `[domain]`) and to admit them
//! (a team token in `x-devmesh-access`, or the cookie the login page
//! sets); both are taken off before the request goes on to the service.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The header a caller of a private tunnel sends a team token in.
pub const ACCESS_HEADER: &str = "x-devmesh-access";
/// The cookie the login page sets: a session, not the token itself.
pub const ACCESS_COOKIE: &str = "devmesh-access";
/// The login page, on every tunnel's address.
pub const LOGIN_PATH: &str = "/.devmesh/login";
/// Whether a tunnel's supervisor is connected, on every tunnel's address:
/// 200 or 503 at once, for a team member (a sandbox's supervisor asks it
/// of the developers' copies it routes to).
pub const ALIVE_PATH: &str = "/.devmesh/alive";
/// Sent by a caller that has somewhere else to go (a sandbox's front port,
/// which has its own copy): when the tunnel's supervisor is not connected,
/// the relay answers at once rather than waiting for it to come back, and
/// sends nothing on.
pub const FALLBACK_HEADER: &str = "x-devmesh-fallback";
/// On the relay's own answer for a tunnel whose supervisor is not
/// connected: the request went nowhere, and may be sent elsewhere whatever
/// its method.
pub const NOT_CONNECTED_HEADER: &str = "x-devmesh-not-connected";
/// How long a login lasts.
const SESSION: Duration = Duration::from_secs(12 * 3600);
/// The largest request head a caller may send.
const MAX_HEAD: usize = 64 * 1024;

/// A caller's request head.
#[derive(Debug)]
pub struct Head {
    /// The head's bytes, blank line included.
    head: Vec<u8>,
    /// What came after it.
    rest: Vec<u8>,
    pub method: String,
    pub path: String,
    /// The Host, without its port, lower-cased.
    pub host: Option<String>,
    /// A token sent in [`ACCESS_HEADER`].
    pub token: Option<String>,
    /// A session sent in [`ACCESS_COOKIE`].
    pub session: Option<String>,
    pub wants_html: bool,
    pub content_length: usize,
    /// Whether it sent [`FALLBACK_HEADER`].
    pub has_fallback: bool,
}

/// Why a caller gets no head: an answer to send, or nothing (it left).
#[derive(Debug)]
pub enum NoHead {
    Answer(Vec<u8>),
    Gone,
}

impl Head {
    /// Reads a request head from `socket`.
    pub async fn read(socket: &mut (impl AsyncRead + Unpin)) -> Result<Head, NoHead> {
        let mut bytes = Vec::new();
        let mut buf = [0u8; 4096];
        // A blank line, ended by CRLF or a bare LF, as the parser reads it.
        let whole = |bytes: &[u8]| bytes.windows(2).any(|w| w == b"\n\n") || bytes.windows(3).any(|w| w == b"\n\r\n");
        loop {
            if whole(&bytes) {
                break;
            }
            if bytes.len() > MAX_HEAD {
                return Err(NoHead::Answer(super::answer(
                    431,
                    "devmesh relay: the request head is too large\n",
                )));
            }
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return Err(NoHead::Gone),
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
        Head::parse(bytes)
    }

    /// The head at the start of `bytes`, where the parser says it ends (a
    /// bare LF ends a line too, so it may end before the CRLF CRLF it was
    /// read up to): what follows goes on after it, never as part of it.
    pub(crate) fn parse(mut bytes: Vec<u8>) -> Result<Head, NoHead> {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut request = httparse::Request::new(&mut headers);
        let not_http = || {
            NoHead::Answer(super::answer(
                400,
                "devmesh relay: this tunnel is private, and that is no HTTP request (hint: a team token goes in an HTTP header)\n",
            ))
        };
        let len = match request.parse(&bytes) {
            Ok(httparse::Status::Complete(len)) => len,
            _ => return Err(not_http()),
        };
        let header = |name: &'static str| {
            request
                .headers
                .iter()
                .filter(move |h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
        };
        let host = header("host").next().map(|host| {
            let host = host.to_ascii_lowercase();
            match host.rsplit_once(':') {
                Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name.to_owned(),
                _ => host,
            }
        });
        let session = request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
            .flat_map(|h| cookie_pairs(h.value))
            .find(|pair| pair.name == ACCESS_COOKIE.as_bytes())
            .map(|pair| String::from_utf8_lossy(pair.value).into_owned());
        let head = Head {
            method: request.method.unwrap_or_default().to_owned(),
            path: request.path.unwrap_or_default().to_owned(),
            token: header(ACCESS_HEADER).next(),
            wants_html: header("accept").any(|accept| accept.contains("text/html")),
            has_fallback: header(FALLBACK_HEADER).next().is_some(),
            content_length: header("content-length")
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            host,
            session,
            head: Vec::new(),
            rest: Vec::new(),
        };
        let rest = bytes.split_off(len);
        Ok(Head {
            head: bytes,
            rest,
            ..head
        })
    }

    /// The bytes to send on: the head without the access and fallback
    /// headers and the access cookie, then what came after it. Every other
    /// byte goes on as it came (a value need not be UTF-8), and a line is
    /// known by where the parser found it, not by splitting on CRLF: a
    /// bare LF ends a line too.
    pub fn forwarded(self) -> Vec<u8> {
        let mut lines = [httparse::EMPTY_HEADER; 128];
        let mut request = httparse::Request::new(&mut lines);
        let _ = request.parse(&self.head).expect("parsed when it was read");
        let mut kept = Vec::with_capacity(self.head.len() + self.rest.len());
        let mut at = 0;
        for h in request.headers.iter() {
            let owned = [ACCESS_HEADER, FALLBACK_HEADER, "cookie"];
            if !owned.iter().any(|name| h.name.eq_ignore_ascii_case(name)) {
                continue;
            }
            let line = crate::proxy::message::line_of(&self.head, h.name.as_bytes(), h.value);
            kept.extend_from_slice(&self.head[at..line.start]);
            at = line.end;
            if h.name.eq_ignore_ascii_case("cookie") {
                let others: Vec<&[u8]> = cookie_pairs(h.value)
                    .filter(|pair| pair.name != ACCESS_COOKIE.as_bytes())
                    .map(|pair| pair.whole)
                    .collect();
                if !others.is_empty() {
                    kept.extend_from_slice(h.name.as_bytes());
                    kept.extend_from_slice(b": ");
                    kept.extend_from_slice(&others.join(&b"; "[..]));
                    kept.extend_from_slice(b"\r\n");
                }
            }
        }
        kept.extend_from_slice(&self.head[at..]);
        kept.extend_from_slice(&self.rest);
        kept
    }

    /// The body sent with the head, up to its `content-length` (at most
    /// `max` bytes).
    pub async fn body(&mut self, socket: &mut (impl AsyncRead + Unpin), max: usize) -> Option<Vec<u8>> {
        if self.content_length > max {
            return None;
        }
        let mut body = std::mem::take(&mut self.rest);
        let mut buf = [0u8; 1024];
        while body.len() < self.content_length {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => body.extend_from_slice(&buf[..n]),
            }
        }
        body.truncate(self.content_length);
        Some(body)
    }
}

/// One `name=value` of a `Cookie` line.
pub(crate) struct CookiePair<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
    /// The pair as it came.
    pub whole: &'a [u8],
}

/// The pairs of a `Cookie` value, split at `;` and trimmed of spaces and
/// tabs (RFC 6265 §4.2.1), and nothing else: the session is read and taken
/// off by this one reading (fuzzing found the two apart, a name after a
/// Unicode space read as the session and left on).
pub(crate) fn cookie_pairs(value: &[u8]) -> impl Iterator<Item = CookiePair<'_>> {
    fn trim(bytes: &[u8]) -> &[u8] {
        let blank = |b: &u8| *b == b' ' || *b == b'\t';
        let start = bytes.iter().position(|b| !blank(b)).unwrap_or(bytes.len());
        let end = bytes.iter().rposition(|b| !blank(b)).map_or(start, |i| i + 1);
        &bytes[start..end]
    }
    value
        .split(|&b| b == b';')
        .map(trim)
        .filter(|pair| !pair.is_empty())
        .map(move |whole| {
            let (name, value) = match whole.iter().position(|&b| b == b'=') {
                Some(at) => (&whole[..at], &whole[at + 1..]),
                None => (whole, &whole[whole.len()..]),
            };
            CookiePair {
                name: trim(name),
                value: trim(value),
                whole,
            }
        })
}

/// Logins: a random session per login, kept in memory for [`SESSION`] (a
/// relay that restarts asks again). The cookie never holds the token.
#[derive(Debug, Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Instant>>,
}

impl Sessions {
    /// A new session.
    pub fn open(&self) -> std::io::Result<String> {
        let session = crate::secret::random_hex(32)?;
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        open.retain(|_, until| *until > now);
        open.insert(session.clone(), now + SESSION);
        Ok(session)
    }

    pub fn valid(&self, session: &str) -> bool {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        // A map lookup by a secret: the hash, not a byte compare, decides,
        // and the session is 256 random bits.
        open.get(session).is_some_and(|until| *until > Instant::now())
    }
}

/// The login page, with `problem` said above the form.
pub fn login_page(next: &str, problem: Option<&str>) -> Vec<u8> {
    let problem = problem.map(|p| format!("<p class=problem>{p}</p>")).unwrap_or_default();
    let next = html_escape(next);
    let body = format!(
        "<!doctype html><meta charset=utf-8><meta name=viewport content=\"width=device-width\">\
         <title>devmesh relay: log in</title>\
         <style>body{{font:16px system-ui;max-width:32em;margin:4em auto;padding:0 1em}}\
         input{{font:inherit;padding:.4em;width:100%;box-sizing:border-box;margin:.5em 0}}\
         .problem{{color:#b00020}}</style>\
         <h1>This tunnel is private</h1>\
         <p>It is a developer's service, reached through the team's devmesh relay. \
         Log in with a team token to call the team's tunnels from this browser for 12 hours.</p>{problem}\
         <form method=post action=\"{LOGIN_PATH}\"><input type=hidden name=next value=\"{next}\">\
         <label>Team token<input type=password name=token autofocus autocomplete=off></label>\
         <input type=submit value=\"Log in\"></form>"
    );
    let status = if problem.is_empty() {
        "200 OK"
    } else {
        "401 Unauthorized"
    };
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The answer to a login: the session's cookie, and back to `next`.
pub fn logged_in(session: &str, next: &str, domain: Option<&str>, secure: bool) -> Vec<u8> {
    let domain = domain.map(|d| format!("; Domain={d}")).unwrap_or_default();
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "HTTP/1.1 303 See Other\r\nlocation: {}\r\nset-cookie: {ACCESS_COOKIE}={session}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{domain}{secure}\r\n\
         content-length: 0\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
        safe_next(next),
        SESSION.as_secs()
    )
    .into_bytes()
}

/// Where a browser is sent to log in, coming back to `path` after.
pub fn to_login(path: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 303 See Other\r\nlocation: {LOGIN_PATH}?next={}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        crate::form::encode(path)
    )
    .into_bytes()
}

/// `next` if it is a path on this host, else `/`: a login never sends a
/// browser elsewhere.
fn safe_next(next: &str) -> &str {
    let local = next.starts_with('/') && !next.starts_with("//") && !next.contains(['\r', '\n', '\\']);
    if local { next } else { "/" }
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        Head::parse(text.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn the_access_and_fallback_headers_and_cookie_are_read_and_taken_off() {
        let head = head(
            "GET /hook HTTP/1.1\r\nHost: Beta--Alice.t.example.com:8080\r\nX-Devmesh-Access: team-token\r\n\
             Cookie: a=1; devmesh-access=s3ss10n; b=2\r\nx-devmesh-fallback: own\r\nAccept: text/html\r\n\r\nbody",
        );
        assert!(head.has_fallback);
        assert_eq!(head.host.as_deref(), Some("beta--alice.t.example.com"));
        assert_eq!(head.token.as_deref(), Some("team-token"));
        assert_eq!(head.session.as_deref(), Some("s3ss10n"));
        assert!(head.wants_html);
        let forwarded = String::from_utf8(head.forwarded()).unwrap();
        assert_eq!(
            forwarded,
            "GET /hook HTTP/1.1\r\nHost: Beta--Alice.t.example.com:8080\r\nCookie: a=1; b=2\r\nAccept: text/html\r\n\r\nbody"
        );
        let only = self::head("GET / HTTP/1.1\r\nCookie: devmesh-access=x\r\n\r\n");
        assert_eq!(String::from_utf8(only.forwarded()).unwrap(), "GET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn what_is_no_http_is_refused_in_words() {
        let bytes = b"\x16\x03\x01 garbage\r\n\r\n".to_vec();
        match Head::parse(bytes.clone()) {
            Err(NoHead::Answer(answer)) => assert!(String::from_utf8_lossy(&answer).contains("no HTTP request")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_login_goes_back_only_to_a_path_here() {
        let answer = String::from_utf8(logged_in("s", "/orders?id=1", Some("t.example.com"), true)).unwrap();
        assert!(answer.contains("location: /orders?id=1\r\n"), "{answer}");
        assert!(answer.contains("HttpOnly; SameSite=Lax; Max-Age=43200; Domain=t.example.com; Secure"));
        for elsewhere in [
            "//evil.example.com/",
            "https://evil.example.com/",
            "/a\r\nset-cookie: x=y",
        ] {
            let answer = String::from_utf8(logged_in("s", elsewhere, None, false)).unwrap();
            assert!(answer.contains("location: /\r\n"), "{elsewhere}: {answer}");
        }
    }

    #[test]
    fn sessions_are_random_and_known_only_once_opened() {
        let sessions = Sessions::default();
        let one = sessions.open().unwrap();
        assert_eq!(one.len(), 64);
        assert!(sessions.valid(&one));
        assert!(!sessions.valid("0000"));
        assert_ne!(sessions.open().unwrap(), one);
    }
}
