//! Who may use the API: the CLI with the token from `control.json`, a
//! browser with the session cookie a one-time login link set; and only
//! requests that name this API as their host, from no page or its own
//! (no DNS rebinding, no cross-site requests).

use hyper::body::Incoming;
use hyper::{Request, StatusCode, header};

use super::{Api, ApiResponse, respond};

/// The cookie a logged-in browser sends.
const SESSION_COOKIE: &str = "devmesh_session";

impl Api {
    /// A new one-time link that logs a browser in.
    pub(super) fn login_url(&self) -> std::io::Result<String> {
        let once = crate::secret::random_hex(16)?;
        let url = format!("http://{}/login?once={once}", self.control.addr);
        self.logins.lock().unwrap_or_else(|e| e.into_inner()).insert(once);
        Ok(url)
    }

    /// `GET /login?once=…`: a valid, unused token sets the session cookie.
    pub(super) fn login(&self, once: Option<&str>) -> ApiResponse {
        let valid = once.is_some_and(|once| self.logins.lock().unwrap_or_else(|e| e.into_inner()).remove(once));
        if !valid {
            return respond(
                StatusCode::UNAUTHORIZED,
                "text/html; charset=utf-8",
                LOGIN_USED.as_bytes().to_vec(),
            );
        }
        let session = match crate::secret::random_hex(16) {
            Ok(session) => session,
            Err(e) => {
                let message = format!("devmesh: no session could be made (/dev/urandom: {e})\n");
                return respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    message.into_bytes(),
                );
            }
        };
        let cookie = format!("{SESSION_COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/");
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).insert(session);
        let mut response = respond(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", Vec::new());
        let headers = response.headers_mut();
        headers.insert(header::LOCATION, header::HeaderValue::from_static("/"));
        headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
        if let Ok(cookie) = header::HeaderValue::from_str(&cookie) {
            headers.insert(header::SET_COOKIE, cookie);
        }
        response
    }

    pub(super) fn host_is_ours(&self, request: &Request<Incoming>) -> bool {
        let port = self.control.addr.port();
        let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok());
        host.is_some_and(|h| h == format!("127.0.0.1:{port}") || h == format!("localhost:{port}"))
    }

    /// A request with no `Origin` (the CLI, curl) or this API's own.
    pub(super) fn origin_is_ours(&self, request: &Request<Incoming>) -> bool {
        let port = self.control.addr.port();
        request.headers().get(header::ORIGIN).is_none_or(|origin| {
            origin
                .to_str()
                .is_ok_and(|o| o == format!("http://127.0.0.1:{port}") || o == format!("http://localhost:{port}"))
        })
    }

    /// The token (the CLI) or the session cookie (a logged-in browser).
    pub(super) fn authorized(&self, request: &Request<Incoming>) -> bool {
        let bearer = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| bearer_token(v.as_bytes()))
            .is_some_and(|token| crate::secret::same(token, self.control.token.as_bytes()));
        if bearer {
            return true;
        }
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        request
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .any(|(name, value)| {
                name == SESSION_COOKIE
                    && sessions.iter().fold(false, |found, session| {
                        found | crate::secret::same(value.as_bytes(), session.as_bytes())
                    })
            })
    }
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is
/// case-insensitive (RFC 9110 §11.1), so `bearer` and `BEARER` pass too.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(b"bearer ".len())?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| token.trim_ascii())
}

/// What `GET /` shows a browser that is not logged in.
pub(super) const LOGIN_NEEDED: &str = "<!doctype html><title>devmesh</title><body style=\"font:15px system-ui;margin:3em\">\
<h1>devmesh inspector</h1><p>This page shows the traffic between your services, secrets included, so it \
needs a login. Open the link <code>cargo devmesh run</code> printed, or run <code>cargo devmesh inspector</code> \
for a new one.</p>";

/// What a used or wrong login link shows.
const LOGIN_USED: &str = "<!doctype html><title>devmesh</title><body style=\"font:15px system-ui;margin:3em\">\
<h1>This login link was used already, or is not this inspector's</h1><p>Each link works once. Run \
<code>cargo devmesh inspector</code> for a new one.</p>";

#[cfg(test)]
mod tests {
    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in ["Bearer abc", "bearer abc", "BEARER  abc "] {
            assert_eq!(super::bearer_token(value.as_bytes()), Some(&b"abc"[..]), "{value}");
        }
        for value in ["Basic abc", "Bearerabc", "Bear"] {
            assert_eq!(super::bearer_token(value.as_bytes()), None, "{value}");
        }
    }
}
