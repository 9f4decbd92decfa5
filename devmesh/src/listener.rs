//! [`listener`]: the socket a service serves on, as the supervisor hands it.
//!
//! Under `cargo devmesh run` the supervisor owns the service's stable front
//! port and passes the service a socket of its own, already bound and
//! listening, with the systemd protocol (`LISTEN_FDS`, `LISTEN_FDNAMES`).
//! Binding nothing itself, a service can never lose a race for its port.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::Error;

/// The first inherited descriptor, by the systemd protocol.
const LISTEN_FDS_START: i32 = 3;

/// Inherited sockets are taken once: a second owner of the same descriptor
/// would close it under the first.
static INHERITED_TAKEN: AtomicBool = AtomicBool::new(false);

/// Where a service is told to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenSpec {
    /// An inherited, listening socket: descriptor number and name.
    Inherited {
        /// The descriptor.
        fd: i32,
        /// Its name from `LISTEN_FDNAMES`, if given.
        name: Option<String>,
    },
    /// An address to bind.
    Bind(SocketAddr),
}

impl ListenSpec {
    /// Reads the spec from env: `LISTEN_FDS` (with `LISTEN_PID`, when set,
    /// naming this process), else `DEVMESH_LISTEN`, else `PORT` on
    /// 127.0.0.1, else `127.0.0.1:0`. With several inherited sockets, the
    /// one named after `DEVMESH_SERVICE` (or `http`) wins, else the first.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<ListenSpec, Error> {
        let bad = |what: &str, value: &str, hint: &str| Error::Listen {
            what: format!("`{what}` = `{value}`"),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, hint.to_owned()),
        };
        let for_us = env("LISTEN_PID").is_none_or(|pid| pid == std::process::id().to_string());
        if let (Some(count), true) = (env("LISTEN_FDS"), for_us) {
            let n: i32 = count
                .parse()
                .map_err(|_| bad("LISTEN_FDS", &count, "it must be a number of descriptors"))?;
            if n > 0 {
                let names = env("LISTEN_FDNAMES").unwrap_or_default();
                let names: Vec<&str> = names.split(':').collect();
                let wanted = env("DEVMESH_SERVICE");
                let index = (0..n as usize)
                    .find(|&i| {
                        let name = names.get(i).copied();
                        name.is_some() && (name == wanted.as_deref() || name == Some("http"))
                    })
                    .unwrap_or(0);
                return Ok(ListenSpec::Inherited {
                    fd: LISTEN_FDS_START + index as i32,
                    name: names.get(index).filter(|n| !n.is_empty()).map(|n| n.to_string()),
                });
            }
        }
        if let Some(addr) = env("DEVMESH_LISTEN") {
            let parsed = addr.parse().map_err(|_| {
                bad(
                    "DEVMESH_LISTEN",
                    &addr,
                    "it must be an address such as `127.0.0.1:8080`",
                )
            })?;
            return Ok(ListenSpec::Bind(parsed));
        }
        if let Some(port) = env("PORT") {
            let port: u16 = port
                .parse()
                .map_err(|_| bad("PORT", &port, "it must be a port number"))?;
            return Ok(ListenSpec::Bind(SocketAddr::from(([127, 0, 0, 1], port))));
        }
        Ok(ListenSpec::Bind(SocketAddr::from(([127, 0, 0, 1], 0))))
    }

    /// Opens the socket: takes the inherited one (once per process) or binds.
    pub fn open(&self) -> Result<StdListener, Error> {
        match self {
            ListenSpec::Bind(addr) => StdListener::bind(addr).map_err(|source| Error::Listen {
                what: addr.to_string(),
                source,
            }),
            ListenSpec::Inherited { fd, name } => {
                let what = match name {
                    Some(name) => format!("inherited socket {fd} (`{name}`)"),
                    None => format!("inherited socket {fd}"),
                };
                if INHERITED_TAKEN.swap(true, Ordering::SeqCst) {
                    return Err(Error::Listen {
                        what,
                        source: std::io::Error::other(
                            "it was already taken by an earlier call (hint: call `devmesh::listener()` once)",
                        ),
                    });
                }
                // SAFETY: by the systemd protocol, the parent passed `fd`
                // open for this process; INHERITED_TAKEN makes this the only
                // owner.
                let inherited = unsafe { OwnedFd::from_raw_fd(*fd) };
                // A close-on-exec copy, so programs this service runs don't
                // inherit its socket; the inherited descriptor is closed.
                let own = inherited.try_clone().map_err(|source| Error::Listen {
                    what: what.clone(),
                    source,
                })?;
                let listener = StdListener::from(own);
                listener.local_addr().map_err(|source| Error::Listen { what, source })?;
                Ok(listener)
            }
        }
    }
}

/// The listener this process serves on (see the module docs), as a tokio
/// listener. Call it once, from within a tokio runtime.
pub async fn listener() -> Result<tokio::net::TcpListener, Error> {
    let listener = std_listener()?;
    let what = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
        .map_err(|source| Error::Listen { what, source })
}

/// The same as [`listener`], as a blocking std listener for code without tokio.
pub fn std_listener() -> Result<StdListener, Error> {
    ListenSpec::from_env(|k| std::env::var(k).ok())?.open()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(vars: &[(&str, &str)]) -> Result<ListenSpec, Error> {
        ListenSpec::from_env(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn order_is_inherited_then_devmesh_listen_then_port_then_any() {
        let all = [("LISTEN_FDS", "1"), ("DEVMESH_LISTEN", "127.0.0.1:7"), ("PORT", "8")];
        assert_eq!(spec(&all).unwrap(), ListenSpec::Inherited { fd: 3, name: None });
        assert_eq!(
            spec(&all[1..]).unwrap(),
            ListenSpec::Bind("127.0.0.1:7".parse().unwrap())
        );
        assert_eq!(
            spec(&all[2..]).unwrap(),
            ListenSpec::Bind("127.0.0.1:8".parse().unwrap())
        );
        assert_eq!(spec(&[]).unwrap(), ListenSpec::Bind("127.0.0.1:0".parse().unwrap()));
    }

    #[test]
    fn picks_the_socket_named_after_the_service() {
        let vars = [
            ("LISTEN_FDS", "3"),
            ("LISTEN_FDNAMES", "admin:orders:metrics"),
            ("DEVMESH_SERVICE", "orders"),
        ];
        assert_eq!(
            spec(&vars).unwrap(),
            ListenSpec::Inherited {
                fd: 4,
                name: Some("orders".into())
            }
        );
    }

    #[test]
    fn ignores_sockets_meant_for_another_process() {
        let vars = [("LISTEN_FDS", "1"), ("LISTEN_PID", "1"), ("PORT", "9")];
        assert_eq!(spec(&vars).unwrap(), ListenSpec::Bind("127.0.0.1:9".parse().unwrap()));
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [("LISTEN_FDS", "many"), ("DEVMESH_LISTEN", "here"), ("PORT", "http")] {
            let err = spec(&[(var, value)]).unwrap_err().to_string();
            assert!(err.contains(&format!("`{var}` = `{value}`")), "{err}");
        }
    }

    #[test]
    fn binds_an_address() {
        let listener = ListenSpec::Bind("127.0.0.1:0".parse().unwrap()).open().unwrap();
        assert_ne!(listener.local_addr().unwrap().port(), 0);
    }
}
