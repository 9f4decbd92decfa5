//! Stable front ports: `<state>/ports.json` remembers the port each service
//! was given, so it never changes across restarts and reruns; the user's
//! port book (`$XDG_STATE_HOME/devmesh/ports.json`) remembers which
//! workspace each port was given to, so no workspace is handed a port kept
//! for another, even while that one is stopped.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};

use crate::errors::StartError;

/// The inspector's entry in the book: not a service name (those are DNS labels).
const INSPECTOR: &str = "@inspector";
/// The DNS server's entry.
const DNS: &str = "@dns";
/// The OTLP endpoint's entry.
const OTLP: &str = "@otlp";

/// Front ports by service name, as kept on disk.
#[derive(Debug)]
pub struct PortBook {
    path: PathBuf,
    ports: BTreeMap<String, u16>,
    /// The user's book, while this workspace takes its ports.
    user: Option<UserBook>,
    /// Where the user's book is, to take it again for a late port.
    user_dir: Option<PathBuf>,
    /// This workspace's root.
    workspace: PathBuf,
    /// Every port new, from the kernel, kept nowhere but this run's
    /// `ports.json`: a mesh of a test's own, many at once.
    ephemeral: bool,
}

/// Every workspace's ports, for one user; locked while a supervisor takes
/// its ports, so that two starting at once never take the same one.
#[derive(Debug)]
struct UserBook {
    path: PathBuf,
    /// Held (flock) while it is read, changed and written.
    _lock: std::fs::File,
    owners: BTreeMap<u16, Owner>,
    /// This workspace's root.
    workspace: PathBuf,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Owner {
    workspace: PathBuf,
    service: String,
}

impl UserBook {
    /// The user's state folder for devmesh: `$XDG_STATE_HOME/devmesh`, else
    /// `~/.local/state/devmesh`.
    fn dir() -> Option<PathBuf> {
        let state = std::env::var_os("XDG_STATE_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/state")))?;
        Some(state.join("devmesh"))
    }

    /// The book in `dir`, locked; `None` when it cannot be had.
    fn open(dir: &Path, workspace: &Path) -> Option<UserBook> {
        crate::secret::private_dir(dir).ok()?;
        let lock = std::fs::File::create(dir.join("ports.lock")).ok()?;
        // It waits for another supervisor that is taking its ports.
        if !crate::platform::lock(&lock, true).ok()? {
            return None;
        }
        let path = dir.join("ports.json");
        let mut owners: BTreeMap<u16, Owner> = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        // A workspace that is gone keeps no port.
        owners.retain(|_, owner| owner.workspace.is_dir());
        Some(UserBook {
            path,
            _lock: lock,
            owners,
            workspace: workspace.to_path_buf(),
        })
    }

    /// Whether `port` was given to another workspace.
    fn kept_for_another(&self, port: u16) -> bool {
        self.owners.get(&port).is_some_and(|o| o.workspace != self.workspace)
    }
}

impl PortBook {
    /// Reads `<state_dir>/ports.json` (a missing file is an empty book) and
    /// the user's book, for the workspace at `workspace`.
    pub fn open(state_dir: &Path, workspace: &Path) -> Result<PortBook, StartError> {
        PortBook::open_in(state_dir, workspace, UserBook::dir().as_deref())
    }

    /// [`PortBook::open`] with the user's book in `user_dir`.
    fn open_in(state_dir: &Path, workspace: &Path, user_dir: Option<&Path>) -> Result<PortBook, StartError> {
        let path = state_dir.join("ports.json");
        let ports = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StartError::CorruptState {
                path: path.clone(),
                detail: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(StartError::File {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        Ok(PortBook {
            path,
            ports,
            user: user_dir.and_then(|dir| UserBook::open(dir, workspace)),
            user_dir: user_dir.map(Path::to_path_buf),
            workspace: workspace.to_path_buf(),
            ephemeral: false,
        })
    }

    /// A book whose every port is a new one the kernel picks (configured
    /// ports too), not in the user's book: for a mesh of a test's own,
    /// which runs beside others of the same workspace.
    pub fn ephemeral(state_dir: &Path) -> PortBook {
        PortBook {
            path: state_dir.join("ports.json"),
            ports: BTreeMap::new(),
            user: None,
            user_dir: None,
            workspace: PathBuf::new(),
            ephemeral: true,
        }
    }

    /// Binds the front port of `service`: the configured one, else the one
    /// it had, else the first free one in `range`, which is then kept.
    pub fn bind(
        &mut self,
        service: &str,
        configured: Option<u16>,
        range: (u16, u16),
    ) -> Result<TcpListener, StartError> {
        self.take(service, configured, range, crate::platform::listen)
    }

    /// Binds the front port of a service that appeared after the run
    /// started, as [`PortBook::bind`] does: the user's book is taken again
    /// for it, and written.
    pub fn bind_late(&mut self, service: &str, range: (u16, u16)) -> Result<TcpListener, StartError> {
        if !self.ephemeral {
            self.user = self
                .user_dir
                .as_deref()
                .and_then(|dir| UserBook::open(dir, &self.workspace));
        }
        let bound = self.bind(service, None, range);
        self.commit();
        bound
    }

    /// [`PortBook::bind`] with `bind` making the socket (TCP or UDP).
    fn take<S>(
        &mut self,
        service: &str,
        configured: Option<u16>,
        range: (u16, u16),
        bind: impl Fn(SocketAddr) -> std::io::Result<S>,
    ) -> Result<S, StartError>
    where
        S: LocalPort,
    {
        if self.ephemeral {
            let socket = bind(local(0))
                .and_then(|socket| Ok((socket.port()?, socket)))
                .map(|(port, socket)| {
                    self.ports.insert(service.to_owned(), port);
                    socket
                });
            return socket.map_err(|source| StartError::PortInUse {
                service: service.to_owned(),
                port: 0,
                holder: String::new(),
                source,
            });
        }
        let fixed = configured.or_else(|| self.ports.get(service).copied());
        let (socket, port) = match fixed {
            Some(port) => {
                let socket = bind(local(port)).map_err(|source| StartError::PortInUse {
                    service: service.to_owned(),
                    port,
                    holder: crate::platform::sockets::listener_of(port)
                        .map_or_else(String::new, |holder| format!(" ({holder})")),
                    source,
                })?;
                (socket, port)
            }
            None => {
                let taken: Vec<u16> = self.ports.values().copied().collect();
                let user = self.user.as_ref();
                (range.0..=range.1)
                    .filter(|port| !taken.contains(port))
                    .filter(|port| !user.is_some_and(|u| u.kept_for_another(*port)))
                    .find_map(|port| bind(local(port)).ok().map(|socket| (socket, port)))
                    .ok_or(StartError::NoFreePort {
                        service: service.to_owned(),
                        low: range.0,
                        high: range.1,
                    })?
            }
        };
        self.ports.insert(service.to_owned(), port);
        if let Some(user) = &mut self.user {
            let owner = Owner {
                workspace: user.workspace.clone(),
                service: service.to_owned(),
            };
            user.owners.insert(port, owner);
        }
        Ok(socket)
    }

    /// Binds the inspector's port: the one it had, else a new one in
    /// `range`, kept like a service's so its address stays from run to run.
    /// A port taken meanwhile is replaced rather than an error: nothing
    /// else depends on it.
    pub fn bind_inspector(&mut self, range: (u16, u16)) -> Result<TcpListener, StartError> {
        self.take_or_replace(INSPECTOR, range, crate::platform::listen)
    }

    /// Binds the OTLP endpoint's port, kept and replaced as the
    /// inspector's is.
    pub fn bind_otlp(&mut self, range: (u16, u16)) -> Result<TcpListener, StartError> {
        self.take_or_replace(OTLP, range, crate::platform::listen)
    }

    /// Binds the DNS server's UDP port, kept and replaced as the
    /// inspector's is.
    pub fn bind_dns(&mut self, range: (u16, u16)) -> Result<UdpSocket, StartError> {
        self.take_or_replace(DNS, range, UdpSocket::bind)
    }

    fn take_or_replace<S: LocalPort>(
        &mut self,
        name: &str,
        range: (u16, u16),
        bind: impl Fn(SocketAddr) -> std::io::Result<S>,
    ) -> Result<S, StartError> {
        match self.take(name, None, range, &bind) {
            Err(StartError::PortInUse { .. }) => {
                self.ports.remove(name);
                self.take(name, None, range, &bind)
            }
            taken => taken,
        }
    }

    /// Writes the user's book with this workspace's ports, and lets it go
    /// for other supervisors.
    pub fn commit(&mut self) {
        if let Some(user) = self.user.take() {
            let json = serde_json::to_vec_pretty(&user.owners).expect("owners serialize");
            // A book that cannot be written costs only the protection.
            let _ = crate::secret::write_private(&user.path, &json);
        }
    }

    /// Where the book is kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The book as its file holds it (the supervisor's state keeper writes it).
    pub fn json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.ports).expect("ports serialize")
    }
}

/// A bound socket's port.
trait LocalPort {
    fn port(&self) -> std::io::Result<u16>;
}

impl LocalPort for TcpListener {
    fn port(&self) -> std::io::Result<u16> {
        Ok(self.local_addr()?.port())
    }
}

impl LocalPort for UdpSocket {
    fn port(&self) -> std::io::Result<u16> {
        Ok(self.local_addr()?.port())
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_range() -> (u16, u16) {
        // A port the OS just handed out, and the next few: free enough for a test.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        (port, port.saturating_add(20))
    }

    #[test]
    fn a_service_keeps_its_port_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let range = free_range();
        let first = {
            let mut book = PortBook::open_in(dir.path(), dir.path(), None).unwrap();
            let port = book.bind("orders", None, range).unwrap().local_addr().unwrap().port();
            crate::secret::write_private(book.path(), &book.json()).unwrap();
            port
        };
        let mut book = PortBook::open_in(dir.path(), dir.path(), None).unwrap();
        let again = book.bind("orders", None, range).unwrap().local_addr().unwrap().port();
        assert_eq!(first, again);
    }

    #[test]
    fn a_taken_port_is_an_error_that_names_service_and_port() {
        let dir = tempfile::tempdir().unwrap();
        let holder = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = holder.local_addr().unwrap().port();
        let mut book = PortBook::open_in(dir.path(), dir.path(), None).unwrap();
        let err = book.bind("orders", Some(port), free_range()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("front port {port} for service `orders` is in use")),
            "{err}"
        );
        assert!(
            err.contains("held by `") && err.contains(&format!("(pid {})", std::process::id())),
            "{err}"
        );
    }

    #[test]
    fn a_port_kept_for_another_workspace_is_not_handed_out() {
        let user = tempfile::tempdir().unwrap();
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let range = free_range();
        let first = {
            let mut book = PortBook::open_in(one.path(), one.path(), Some(user.path())).unwrap();
            let port = book.bind("orders", None, range).unwrap().local_addr().unwrap().port();
            book.commit();
            port
        };
        // `one` is stopped: its port is free, and still not `two`'s.
        let mut book = PortBook::open_in(two.path(), two.path(), Some(user.path())).unwrap();
        let other = book.bind("orders", None, range).unwrap().local_addr().unwrap().port();
        book.commit();
        assert_ne!(first, other);
        // A workspace that is gone keeps nothing.
        drop(one);
        let three = tempfile::tempdir().unwrap();
        let mut book = PortBook::open_in(three.path(), three.path(), Some(user.path())).unwrap();
        assert_eq!(
            book.bind("orders", None, range).unwrap().local_addr().unwrap().port(),
            first
        );
    }

    #[test]
    fn a_corrupt_book_says_how_to_recover() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ports.json"), "{oops").unwrap();
        let err = PortBook::open_in(dir.path(), dir.path(), None).unwrap_err().to_string();
        assert!(
            err.contains("ports.json` is corrupt") && err.contains("delete it"),
            "{err}"
        );
    }
}
