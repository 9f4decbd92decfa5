//! Which service sent a request: the connection's other end is a socket,
//! found by its addresses ([`sockets::socket_id`]); the service process
//! holding that socket is the caller, or a process it forked (`npm run
//! dev` runs node; a shell runs a line of commands), found by its process
//! group, which is the service's. Anything else is `external`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use crate::platform::sockets;

/// What a caller that is no known service is called.
pub const EXTERNAL: &str = "external";
/// What a connection the tunnel carried in is called: the tunnel hands it
/// to the front port in the supervisor's process, saying so.
pub const TUNNEL: &str = "tunnel";

/// Service processes by pid, kept by the supervisor.
#[derive(Debug, Default)]
pub struct Callers {
    pids: Mutex<HashMap<u32, String>>,
    /// Every process's group, as last read from `/proc`, and when.
    groups: Mutex<Option<(std::time::Instant, HashMap<u32, u32>)>>,
}

/// How old the process groups may be before a caller not found in them
/// has them read again: a burst of a thousand connections from outside
/// reads every process's `/proc/<pid>/stat` a few times, not a thousand.
const GROUPS_FRESH: std::time::Duration = std::time::Duration::from_millis(50);

impl Callers {
    pub fn insert(&self, pid: u32, service: &str) {
        self.lock().insert(pid, service.to_owned());
    }

    pub fn remove(&self, pid: u32) {
        self.lock().remove(&pid);
    }

    /// The service whose process opened the connection from `peer` to `local`.
    pub fn identify(&self, peer: SocketAddr, local: SocketAddr) -> String {
        let (SocketAddr::V4(peer), SocketAddr::V4(local)) = (peer, local) else {
            return EXTERNAL.to_owned();
        };
        if !peer.ip().is_loopback() {
            return EXTERNAL.to_owned();
        }
        let Some(socket) = sockets::socket_id(peer, local) else {
            return EXTERNAL.to_owned();
        };
        let pids = self.lock().clone();
        if let Some((_, service)) = pids.iter().find(|(pid, _)| sockets::holds(**pid, socket)) {
            return service.clone();
        }
        // A process the service forked: in the service's group.
        let forked = |groups: &HashMap<u32, u32>| {
            groups
                .iter()
                .filter(|(pid, _)| !pids.contains_key(pid))
                .find_map(|(&pid, group)| {
                    let service = pids.get(group)?;
                    sockets::holds(pid, socket).then(|| service.clone())
                })
        };
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, known)) = groups.as_ref()
            && let Some(service) = forked(known)
        {
            return service;
        } else if groups.as_ref().is_some_and(|(read, _)| read.elapsed() < GROUPS_FRESH) {
            return EXTERNAL.to_owned();
        }
        let known: HashMap<u32, u32> = sockets::processes()
            .filter_map(|pid| Some((pid, sockets::group_of(pid)?)))
            .collect();
        let found = forked(&known);
        *groups = Some((std::time::Instant::now(), known));
        found.unwrap_or_else(|| EXTERNAL.to_owned())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, String>> {
        self.pids.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn finds_the_process_behind_a_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, peer) = listener.accept().unwrap();
        let callers = Callers::default();
        let local = listener.local_addr().unwrap();
        assert_eq!(callers.identify(peer, local), EXTERNAL);
        callers.insert(std::process::id(), "me");
        assert_eq!(callers.identify(peer, local), "me");
        drop(client);
    }
}
