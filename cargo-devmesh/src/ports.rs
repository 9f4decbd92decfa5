//! Stable front ports: `<state>/ports.json` remembers the port each service
//! was given, so it never changes across restarts and reruns.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use crate::errors::StartError;

/// The inspector's entry in the book: not a service name (those are DNS labels).
const INSPECTOR: &str = "@inspector";

/// Front ports by service name, as kept on disk.
#[derive(Debug)]
pub struct PortBook {
    path: PathBuf,
    ports: BTreeMap<String, u16>,
}

impl PortBook {
    /// Reads `<state_dir>/ports.json`; a missing file is an empty book.
    pub fn open(state_dir: &Path) -> Result<PortBook, StartError> {
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
        Ok(PortBook { path, ports })
    }

    /// Binds the front port of `service`: the configured one, else the one
    /// it had, else the first free one in `range`, which is then kept.
    pub fn bind(
        &mut self,
        service: &str,
        configured: Option<u16>,
        range: (u16, u16),
    ) -> Result<TcpListener, StartError> {
        let fixed = configured.or_else(|| self.ports.get(service).copied());
        let listener = match fixed {
            Some(port) => TcpListener::bind(local(port)).map_err(|source| StartError::PortInUse {
                service: service.to_owned(),
                port,
                source,
            })?,
            None => {
                let taken: Vec<u16> = self.ports.values().copied().collect();
                (range.0..=range.1)
                    .filter(|port| !taken.contains(port))
                    .find_map(|port| TcpListener::bind(local(port)).ok())
                    .ok_or(StartError::NoFreePort {
                        service: service.to_owned(),
                        low: range.0,
                        high: range.1,
                    })?
            }
        };
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
        self.ports.insert(service.to_owned(), port);
        Ok(listener)
    }

    /// Binds the inspector's port: the one it had, else a new one in
    /// `range`, kept like a service's so its address stays from run to run.
    /// A port taken meanwhile is replaced rather than an error: nothing
    /// else depends on it.
    pub fn bind_inspector(&mut self, range: (u16, u16)) -> Result<TcpListener, StartError> {
        match self.bind(INSPECTOR, None, range) {
            Ok(listener) => Ok(listener),
            Err(StartError::PortInUse { .. }) => {
                self.ports.remove(INSPECTOR);
                self.bind(INSPECTOR, None, range)
            }
            Err(e) => Err(e),
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
            let mut book = PortBook::open(dir.path()).unwrap();
            let port = book.bind("orders", None, range).unwrap().local_addr().unwrap().port();
            crate::secret::write_private(book.path(), &book.json()).unwrap();
            port
        };
        let mut book = PortBook::open(dir.path()).unwrap();
        let again = book.bind("orders", None, range).unwrap().local_addr().unwrap().port();
        assert_eq!(first, again);
    }

    #[test]
    fn a_taken_port_is_an_error_that_names_service_and_port() {
        let dir = tempfile::tempdir().unwrap();
        let holder = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = holder.local_addr().unwrap().port();
        let mut book = PortBook::open(dir.path()).unwrap();
        let err = book.bind("orders", Some(port), free_range()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("front port {port} for service `orders` is in use")),
            "{err}"
        );
    }

    #[test]
    fn a_corrupt_book_says_how_to_recover() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ports.json"), "{oops").unwrap();
        let err = PortBook::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("ports.json` is corrupt") && err.contains("delete it"),
            "{err}"
        );
    }
}
