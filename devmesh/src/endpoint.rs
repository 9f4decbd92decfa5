//! [`Endpoint`]: where a service answers, and how devmesh learned it.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

/// Where a service answers. Cheap to clone: `discover` hands out shared
/// endpoints, so a hit costs no allocation.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint(Arc<Inner>);

#[derive(PartialEq, Eq)]
struct Inner {
    name: String,
    /// The base URL, without a trailing `/`.
    url: String,
    host: String,
    port: u16,
    /// The host as an IP address, when it is one.
    addr: Option<SocketAddr>,
    source: Source,
}

/// How devmesh learned an endpoint: the first place in the resolution order
/// that knew the service.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// An env override, `DEVMESH_<NAME>_URL`.
    Env {
        /// The variable's name.
        var: String,
    },
    /// The live file registry.
    Registry {
        /// The registry file.
        path: PathBuf,
    },
    /// A remote backend from `devmesh.toml`.
    Remote {
        /// The backend, as [`crate::remote::Backend::describe`] names it.
        backend: String,
    },
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Env { var } => write!(f, "env `{var}`"),
            Source::Registry { path } => write!(f, "registry `{}`", path.display()),
            Source::Remote { backend } => f.write_str(backend),
        }
    }
}

/// Why a string is not a base URL devmesh can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{url}` is not a usable base URL: {reason}")]
pub struct UrlError {
    /// The string given.
    pub url: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Endpoint {
    /// An endpoint from a base URL such as `http://127.0.0.1:41001` or
    /// `https://orders.sandbox.example.com/api`. The URL must have a scheme
    /// and a host; the port defaults to the scheme's (80 or 443).
    pub fn from_url(name: &str, url: &str, source: Source) -> Result<Endpoint, UrlError> {
        let fail = |reason| UrlError {
            url: url.to_owned(),
            reason,
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or(fail("it has no scheme (hint: write `http://host:port`)"))?;
        let default_port = match scheme.to_ascii_lowercase().as_str() {
            "http" | "ws" => 80,
            "https" | "wss" => 443,
            "tcp" | "grpc" => 0,
            _ => return Err(fail("the scheme is not http, https, ws, wss, grpc or tcp")),
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err(fail("it has credentials in it; pass them another way"));
        }
        let (host, port) = split_host_port(authority).ok_or(fail("its port is not a number"))?;
        if host.is_empty() {
            return Err(fail("it has no host"));
        }
        let port = port.unwrap_or(default_port);
        if port == 0 {
            return Err(fail("it has no port, and its scheme has no default port"));
        }
        let addr = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, port));
        Ok(Endpoint(Arc::new(Inner {
            name: name.to_owned(),
            url: url.trim_end_matches('/').to_owned(),
            host: host.to_owned(),
            port,
            addr,
            source,
        })))
    }

    /// An endpoint for a socket address, with an `http://` base URL.
    pub fn from_addr(name: &str, addr: SocketAddr, source: Source) -> Endpoint {
        Endpoint(Arc::new(Inner {
            name: name.to_owned(),
            url: format!("http://{addr}"),
            host: match addr.ip() {
                IpAddr::V4(ip) => ip.to_string(),
                IpAddr::V6(ip) => format!("[{ip}]"),
            },
            port: addr.port(),
            addr: Some(addr),
            source,
        }))
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The base URL, without a trailing `/`: `http://127.0.0.1:41001`.
    pub fn url(&self) -> &str {
        &self.0.url
    }

    /// The base URL joined with `path`: `url("/orders")` →
    /// `http://127.0.0.1:41001/orders`.
    pub fn join(&self, path: &str) -> String {
        format!("{}/{}", self.0.url, path.trim_start_matches('/'))
    }

    /// The socket address, when the host is an IP address (always, for
    /// services in the registry). A remote host name needs a DNS lookup:
    /// use [`Endpoint::authority`] with your client.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.0.addr
    }

    /// The host, as written in the URL (IPv6 in brackets).
    pub fn host(&self) -> &str {
        &self.0.host
    }

    /// The port, explicit or the scheme's default.
    pub fn port(&self) -> u16 {
        self.0.port
    }

    /// `host:port`, what a TCP client connects to.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.0.host, self.0.port)
    }

    /// Where devmesh found this endpoint.
    pub fn source(&self) -> &Source {
        &self.0.source
    }
}

/// Splits `host:port`, `[v6]:port`, `host` or `[v6]`; `None` when the port
/// is not a number.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let port_sep = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => i,
        _ => return Some((authority, None)),
    };
    if authority.starts_with('[') && !authority[..port_sep].ends_with(']') {
        return Some((authority, None));
    }
    let port = authority[port_sep + 1..].parse().ok()?;
    Some((&authority[..port_sep], Some(port)))
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.0.name)
            .field("url", &self.0.url)
            .field("source", &self.0.source)
            .finish()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {} (from {})", self.0.name, self.0.url, self.0.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Source {
        Source::Env { var: "X".into() }
    }

    #[test]
    fn parses_base_urls() {
        let e = Endpoint::from_url("a", "http://127.0.0.1:41001/", env()).unwrap();
        assert_eq!(e.url(), "http://127.0.0.1:41001");
        assert_eq!(e.addr(), Some("127.0.0.1:41001".parse().unwrap()));
        assert_eq!(e.join("/orders"), "http://127.0.0.1:41001/orders");

        let e = Endpoint::from_url("a", "https://orders.example.com/api", env()).unwrap();
        assert_eq!((e.host(), e.port(), e.addr()), ("orders.example.com", 443, None));
        assert_eq!(e.join("v1"), "https://orders.example.com/api/v1");

        let e = Endpoint::from_url("a", "http://[::1]:8080", env()).unwrap();
        assert_eq!(e.addr(), Some("[::1]:8080".parse().unwrap()));
        assert_eq!(e.authority(), "[::1]:8080");
        let e = Endpoint::from_url("a", "http://[::1]", env()).unwrap();
        assert_eq!(e.port(), 80);
    }

    #[test]
    fn rejects_unusable_urls_with_a_reason() {
        for (bad, why) in [
            ("127.0.0.1:80", "no scheme"),
            ("ftp://x", "scheme"),
            ("http://:80", "no host"),
            ("http://h:port", "not a number"),
            ("tcp://h", "no port"),
            ("http://u:p@h", "credentials"),
        ] {
            let err = Endpoint::from_url("a", bad, env()).unwrap_err();
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn from_addr_is_http() {
        let e = Endpoint::from_addr("a", "[::1]:9".parse().unwrap(), env());
        assert_eq!(e.url(), "http://[::1]:9");
        assert_eq!(e.authority(), "[::1]:9");
    }
}
