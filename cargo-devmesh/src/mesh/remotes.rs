//! The services' copies in the sandbox, as front ports reach them: found
//! from the remote backends when a run starts, bridged when they speak
//! TLS or sit behind the relay, and followed when their backend moves them.
//! A copy that an etcd key places gets its front port when the key
//! appears, mid-run too, and loses it when the key goes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devmesh::config::{Mode, Protocol};
use devmesh::registry::{Entry, Status};
use devmesh::remote::Backend as _;
use tokio_util::sync::CancellationToken;

use crate::inspector::Inspector;
use crate::logs::Logs;
use crate::ports::PortBook;
use crate::proxy::{Backend, FaultState, Front, Proxy, Remote, RoutedCopies, RoutedCopy, Switch, Switches, Timeouts};
use crate::state::StateFiles;
use crate::workspace::Workspace;

/// A service's copy in the sandbox, as a front port reaches it.
#[derive(Debug, Clone)]
pub(super) struct RemoteCopy {
    pub(super) copy: Remote,
    pub(super) protocol: Protocol,
    /// The name to ask over TLS by (an `https://` URL's host).
    pub(super) tls: Option<String>,
    /// The backend that says where it is, when it can move.
    pub(super) followed: Option<usize>,
    /// `host:port` to reach through the relay (`[tunnel] reach`).
    pub(super) through: Option<String>,
}

/// What the remote backends know when a run starts.
pub(super) struct Found {
    /// The copies in the sandbox a front port can send to, by service:
    /// every one `[remote.static]` names, those `[remote.dns]` lists, and
    /// those `[remote.etcd]` holds.
    pub copies: BTreeMap<String, RemoteCopy>,
    /// The backends, for `ps` and to follow.
    pub backends: Backends,
    /// Which of them is etcd, whose keys come and go.
    pub etcd: Option<usize>,
    /// In words, what could not be used.
    pub problems: Vec<String>,
}

/// Asks the remote backends of `workspace` what they know.
pub(super) async fn remote_copies(workspace: &Workspace) -> Found {
    let mut problems = Vec::new();
    let mut etcd_index = None;
    let mut backends: Vec<Box<dyn devmesh::remote::Backend>> = Vec::new();
    // (name, URL, where it came from, the backend that follows it)
    let mut urls: Vec<(String, String, String, Option<usize>)> = Vec::new();
    if !workspace.config.remote.static_map.is_empty()
        && let Ok(map) = devmesh::remote::StaticMap::new(&workspace.config_path, &workspace.config.remote.static_map)
    {
        backends.push(Box::new(map));
        for (name, url) in &workspace.config.remote.static_map {
            urls.push((name.clone(), url.clone(), format!("remote.static.{name}"), None));
        }
    }
    // Those the workspace uses from DNS SRV, as their records say now.
    if let Some(config) = workspace.config.remote.dns.clone() {
        let asked = tokio::task::spawn_blocking(move || {
            let backend = devmesh::remote::DnsSrv::new(&config)?;
            let found: Vec<_> = config
                .services
                .iter()
                .map(|name| {
                    let url = backend.lookup(name).map(|e| e.url().to_owned());
                    // No answer is not "no such record": say which.
                    let silent = url.is_none().then(|| backend.failure(name)).flatten();
                    (name.clone(), url, silent)
                })
                .collect();
            Ok::<_, devmesh::Error>((backend, found))
        })
        .await;
        match asked {
            Ok(Ok((dns, found))) => {
                let (from, index) = (dns.describe(), backends.len());
                backends.push(Box::new(dns));
                for (name, url, silent) in found {
                    match (url, silent) {
                        (Some(url), _) => urls.push((name, url, from.clone(), Some(index))),
                        (None, Some(why)) => problems.push(format!(
                            "{name}: {from}: {why}; it gets no front port this run \
                             (hint: is the server in `[remote.dns]` up and reachable?)"
                        )),
                        (None, None) => problems.push(format!(
                            "{name}: {from} has no record of it; it gets no front port this run \
                             (hint: `dig @SERVER _{name}._tcp.DOMAIN SRV`)"
                        )),
                    }
                }
            }
            Ok(Err(e)) => problems.push(format!("`[remote.dns]`: {e}")),
            Err(e) => problems.push(format!("`[remote.dns]`: {e}")),
        }
    }
    // Those in the team's registry when the run starts.
    if let Some(config) = workspace.config.remote.etcd.clone() {
        let read = tokio::task::spawn_blocking(move || {
            let etcd = devmesh::remote::Etcd::new(&config)?;
            etcd.first_read(Duration::from_secs(3));
            let found: Vec<_> = etcd
                .names()
                .into_iter()
                .filter_map(|name| Some((name.clone(), etcd.lookup(&name)?.url().to_owned())))
                .collect();
            Ok::<_, devmesh::Error>((etcd, found))
        })
        .await;
        match read {
            Ok(Ok((etcd, found))) => {
                let (from, index) = (etcd.describe(), backends.len());
                etcd_index = Some(index);
                backends.push(Box::new(etcd));
                for (name, url) in found {
                    if !urls.iter().any(|(known, ..)| *known == name) {
                        urls.push((name, url, from.clone(), Some(index)));
                    }
                }
            }
            Ok(Err(e)) => problems.push(format!("`[remote.etcd]`: {e}")),
            Err(e) => problems.push(format!("`[remote.etcd]`: {e}")),
        }
    }
    let mut copies = BTreeMap::new();
    for (name, url, from, followed) in urls {
        let through_relay = workspace
            .config
            .tunnel
            .as_ref()
            .is_some_and(|t| t.reach.contains(&name));
        match copy_of(&name, &url, &from, through_relay).await {
            Ok(mut copy) => {
                copy.followed = followed;
                copies.insert(name, copy);
            }
            Err(problem) => problems.push(problem),
        }
    }
    Found {
        copies,
        backends: Arc::new(backends),
        etcd: etcd_index,
        problems,
    }
}

/// The copy of service `name` at `url` (from `from`), as a front port
/// reaches it; or why it cannot.
async fn copy_of(name: &str, url: &str, from: &str, through_relay: bool) -> Result<RemoteCopy, String> {
    let source = devmesh::Source::Remote {
        backend: from.to_owned(),
    };
    let endpoint = devmesh::Endpoint::from_url(name, url, source)
        .map_err(|e| format!("{name}: `{from}` = `{url}`: {}", e.reason))?;
    let scheme = url
        .split_once("://")
        .map_or("", |(scheme, _)| scheme)
        .to_ascii_lowercase();
    let (protocol, tls) = match scheme.as_str() {
        "http" | "ws" | "grpc" => (Protocol::Http, false),
        "https" | "wss" => (Protocol::Http, true),
        _ => (Protocol::Tcp, false),
    };
    if url
        .split_once("://")
        .is_some_and(|(_, rest)| rest.trim_end_matches('/').contains('/'))
    {
        return Err(format!(
            "{name}: `{url}` has a path; a front port forwards paths as they are, so it is reached directly"
        ));
    }
    if through_relay {
        // Only the sandbox resolves it: the relay dials it there.
        return Ok(RemoteCopy {
            copy: Remote {
                url: endpoint.url().to_owned(),
                backend: Backend::remote(SocketAddr::from(([127, 0, 0, 1], 0)), &endpoint.authority()),
            },
            protocol,
            tls: None,
            followed: None,
            through: Some(endpoint.authority()),
        });
    }
    let resolved = tokio::net::lookup_host(endpoint.authority())
        .await
        .map(|mut a| a.next());
    let Ok(Some(addr)) = resolved else {
        return Err(format!(
            "{name}: the sandbox's host `{}` (from `{from}`) does not resolve; \
             it is not reachable through its front port until it does",
            endpoint.host()
        ));
    };
    // The Host it is asked with: as the URL says, the default port left out.
    let host = match (endpoint.port(), tls) {
        (80, false) | (443, true) => endpoint.host().to_owned(),
        _ => endpoint.authority(),
    };
    let copy = Remote {
        url: endpoint.url().to_owned(),
        backend: Backend::remote(addr, &host),
    };
    let tls = tls.then(|| endpoint.host().trim_start_matches('[').trim_end_matches(']').to_owned());
    Ok(RemoteCopy {
        copy,
        protocol,
        tls,
        followed: None,
        through: None,
    })
}

/// The copies in the sandbox that a DNS record or an etcd key places, as
/// the run follows them.
pub(super) struct Following {
    /// Copies that can move, by service: the backend that places each.
    pub moving: BTreeMap<String, usize>,
    /// Front ports that go with their etcd key: the token that closes each.
    pub keyed: BTreeMap<String, CancellationToken>,
    pub backends: Backends,
    /// The backend whose keys give front ports while the run is up.
    pub etcd: Option<usize>,
    pub switches: Arc<Switches>,
    /// What a new front port needs.
    pub new_fronts: NewFronts,
    pub logs: Logs,
}

/// What a front port that opens mid-run needs.
pub(super) struct NewFronts {
    pub proxy: Proxy,
    pub ports: Arc<Mutex<PortBook>>,
    /// `[run] ports`.
    pub range: (u16, u16),
    pub state: StateFiles,
    pub timeouts: Timeouts,
    pub inspector: Arc<Inspector>,
    /// `[tunnel] reach`: those copies are reached through the relay.
    pub reach: Vec<String>,
    /// Developers' copies, and this developer's route (see `proxy::Front`).
    pub routed: Arc<RoutedCopies>,
    pub developer_route: Option<Arc<str>>,
}

/// Follows the copies in the sandbox until `shutdown`: when one moves, its
/// front port sends new requests to where it is now. (An `https://` one
/// keeps its bridge: a move to another host is said, and waits for the
/// next run.) A service that appears in etcd gets a front port, and one
/// whose key goes loses it; its port is kept for it in `ports.json`.
pub(super) async fn follow_remotes(mut following: Following, shutdown: CancellationToken) {
    if following.moving.is_empty() && following.etcd.is_none() {
        return;
    }
    // Said once each, until it changes.
    let mut refused: BTreeMap<String, String> = BTreeMap::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        following.follow_moves().await;
        let Some(etcd) = following.etcd else { continue };
        let backend = Arc::clone(&following.backends);
        let backend = &backend[etcd];
        let listed = backend.names();
        let gone: Vec<String> = following
            .keyed
            .keys()
            .filter(|name| !listed.contains(name))
            .cloned()
            .collect();
        for name in gone {
            following.close(&name);
        }
        refused.retain(|name, _| listed.contains(name));
        for name in listed {
            if following.switches.front(&name).is_some() {
                continue;
            }
            let Some(endpoint) = backend.lookup(&name) else {
                continue;
            };
            match following.open(&name, endpoint.url(), etcd, &shutdown).await {
                Ok(stop) => {
                    refused.remove(&name);
                    following.moving.insert(name.clone(), etcd);
                    following.keyed.insert(name, stop);
                }
                Err(why) => {
                    if refused.get(&name) != Some(&why) {
                        following.logs.note(format!("{name}: {why}"));
                        refused.insert(name, why);
                    }
                }
            }
        }
    }
}

impl Following {
    /// Sends each moved copy's new requests to where it is now.
    async fn follow_moves(&self) {
        for (name, index) in &self.moving {
            let (Some(switch), Some(now)) = (self.switches.get(name), self.backends[*index].lookup(name)) else {
                continue;
            };
            let was = switch.remote().map(|r| r.url);
            if was.as_deref() == Some(now.url()) {
                continue;
            }
            match copy_of(name, now.url(), &self.backends[*index].describe(), false).await {
                Ok(copy) if copy.tls.is_none() => {
                    self.logs
                        .note(format!("{name}: moved in the sandbox, to {}", now.url()));
                    switch.move_remote(copy.copy);
                }
                Ok(_) => self.logs.note(format!(
                    "{name}: moved in the sandbox, to {}; an https:// copy is followed from the next run",
                    now.url()
                )),
                Err(problem) => self.logs.note(problem),
            }
        }
    }

    /// Opens a front port for service `name`, which appeared at `url` in
    /// backend `index`; the token closes it. Why it cannot, in words.
    async fn open(
        &self,
        name: &str,
        url: &str,
        index: usize,
        shutdown: &CancellationToken,
    ) -> Result<CancellationToken, String> {
        let from = self.backends[index].describe();
        let copy = copy_of(name, url, &from, false).await?;
        let next_run = |what: &str| {
            format!("appeared in the sandbox ({from}: {url}); {what} gets its front port from the next run")
        };
        if copy.tls.is_some() {
            return Err(next_run("an https:// copy"));
        }
        if self.new_fronts.reach.iter().any(|r| r == name) {
            return Err(next_run("a copy reached through the relay"));
        }
        let new = &self.new_fronts;
        let (listener, book) = {
            let mut ports = new.ports.lock().unwrap_or_else(|e| e.into_inner());
            let listener = ports.bind_late(name, new.range).map_err(|e| e.to_string())?;
            (listener, ports.path().to_path_buf())
        };
        // Its keeper reads the book: not while it is held here. A write
        // that fails is said here; the state folder's guard writes it
        // again once it can, and says so.
        if let Err(e) = new.state.rewrite(&book) {
            self.logs.note(format!(
                "{name}: could not write `{}`: {e}; it is written again once it can be",
                book.display()
            ));
        }
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (switch, route, _) = Switch::start(false, Some(copy.copy), Mode::Remote);
        let front = Front {
            service: name.to_owned(),
            listener,
            route,
            protocol: copy.protocol,
            timeouts: new.timeouts,
            max_connections: crate::proxy::MAX_CONNECTIONS,
            inspector: Arc::clone(&new.inspector),
            faults: FaultState::new().1,
            routed: Arc::clone(&new.routed),
            developer_route: new.developer_route.clone(),
        };
        let stop = shutdown.child_token();
        new.proxy.serve(front, stop.clone()).map_err(|e| e.to_string())?;
        self.switches.insert(name.to_owned(), addr, switch);
        let mut entry = Entry::new(format!("http://{addr}"));
        entry.status = Status::Remote;
        let _ = new.state.registry().set(name, entry);
        self.logs.note(format!(
            "{name}: appeared in the sandbox ({from}: {url}); its front port is {addr}"
        ));
        Ok(stop)
    }

    /// Closes the front port of service `name`, whose key went: requests
    /// open on it finish, and new ones are refused.
    fn close(&mut self, name: &str) {
        if let Some(stop) = self.keyed.remove(name) {
            stop.cancel();
        }
        self.moving.remove(name);
        let front = self.switches.remove(name).map(|port| port.addr);
        let _ = self.new_fronts.state.registry().change(|file| {
            file.services.remove(name);
        });
        let closed = front.map_or_else(String::new, |addr| format!(" (it gets {addr} again if it comes back)"));
        self.logs.note(format!(
            "{name}: gone from the sandbox; its front port is closed{closed}"
        ));
    }
}

/// Follows the developers' copies in `config`'s namespace (its `routes`)
/// until `shutdown`, into `routed`: each service's front port sends a
/// request with a route to the copy for it, with the team token `access`
/// (a developer's tunnel asks for one). Services in `own` are routed here
/// (their copy is this one) and get none.
pub(super) async fn follow_routes(
    config: devmesh::config::EtcdConfig,
    routed: Arc<RoutedCopies>,
    own: Vec<String>,
    access: Option<Arc<str>>,
    logs: Logs,
    shutdown: CancellationToken,
) {
    let etcd = match tokio::task::spawn_blocking(move || devmesh::remote::Etcd::routes(&config)).await {
        Ok(Ok(etcd)) => etcd,
        Ok(Err(e)) => return logs.note(format!("routes in `[remote.etcd]` are not followed: {e}")),
        Err(_) => return,
    };
    // (service, route) → (URL, strict), as the front ports have them.
    let mut known: BTreeMap<(String, String), (String, bool)> = BTreeMap::new();
    loop {
        let listed: BTreeMap<(String, String), (String, bool)> = etcd
            .names()
            .into_iter()
            .filter_map(|name| {
                let url = etcd.lookup(&name)?.url().to_owned();
                let strict = etcd.is_strict(&name);
                let (service, route) = name.split_once('/')?;
                let valid = devmesh::name::validate(service).is_ok() && devmesh::name::validate(route).is_ok();
                (valid && !own.iter().any(|o| o == service))
                    .then(|| ((service.to_owned(), route.to_owned()), (url, strict)))
            })
            .collect();
        for (service, route) in known.keys().filter(|key| !listed.contains_key(*key)) {
            routed.remove(service, route);
            logs.note(format!("{service}: the copy for route `{route}` is gone"));
        }
        known.retain(|key, _| listed.contains_key(key));
        for ((service, route), (url, strict)) in listed {
            if known.get(&(service.clone(), route.clone())) == Some(&(url.clone(), strict)) {
                continue;
            }
            match copy_of(&service, &url, &etcd.describe(), false).await {
                Ok(copy) if copy.tls.is_none() => {
                    routed.insert(
                        &service,
                        &route,
                        RoutedCopy {
                            url: url.clone(),
                            backend: copy.copy.backend,
                            access: access.clone(),
                            connected: Arc::new(AtomicBool::new(true)),
                            strict,
                        },
                    );
                    let strict = if strict { " (strict: no fallback)" } else { "" };
                    logs.note(format!(
                        "{service}: requests with route `{route}` go to its copy at {url}{strict}"
                    ));
                }
                Ok(_) => logs.note(format!(
                    "{service}: the copy for route `{route}` at {url} speaks TLS, which a routed copy cannot yet"
                )),
                Err(problem) => logs.note(problem),
            }
            // Said once, whichever way it went.
            known.insert((service, route), (url, strict));
        }
        // Whose supervisor is connected: a request for one that is not
        // goes to the sandbox's own at once, rather than wait on the relay.
        for ((service, route), copy) in routed.all() {
            let now = connected(&copy).await;
            if copy.connected.swap(now, Ordering::Relaxed) != now {
                logs.note(match now {
                    true => format!("{service}: the copy for route `{route}` is connected again"),
                    false => format!(
                        "{service}: the copy for route `{route}` is not connected to the relay; \
                         its requests go to this one until it is"
                    ),
                });
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Asks the relay whether the supervisor behind `copy` is connected
/// (`ALIVE_PATH`, answered at once); no answer within a second is no.
async fn connected(copy: &RoutedCopy) -> bool {
    use crate::tunnel::relay::callers::{ACCESS_HEADER, ALIVE_PATH};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(copy.backend.addr).await.ok()?;
        let host = copy.backend.host.as_deref().unwrap_or_default();
        let access = copy
            .access
            .as_deref()
            .map(|token| format!("{ACCESS_HEADER}: {token}\r\n"))
            .unwrap_or_default();
        let request = format!("GET {ALIVE_PATH} HTTP/1.1\r\nhost: {host}\r\n{access}connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut status = [0u8; 12];
        stream.read_exact(&mut status).await.ok()?;
        Some(&status[9..12] == b"200")
    };
    matches!(tokio::time::timeout(Duration::from_secs(1), ask).await, Ok(Some(true)))
}

/// The remote backends of the run, as `ps` and the page show them.
pub type Backends = Arc<Vec<Box<dyn devmesh::remote::Backend>>>;

/// Puts a TLS bridge (see `proxy::tls`) in front of each `https://` copy;
/// one that cannot have one is said, and left out.
pub(super) async fn bridge_tls(
    remotes: BTreeMap<String, RemoteCopy>,
    workspace: &Workspace,
    logs: &Logs,
    shutdown: &CancellationToken,
) -> BTreeMap<String, RemoteCopy> {
    if remotes.values().all(|r| r.tls.is_none()) {
        return remotes;
    }
    let ca = workspace.config.remote.ca.as_ref().map(|ca| workspace.root.join(ca));
    let connector = match crate::proxy::tls::connector(ca.as_deref(), "`[remote] ca`") {
        Ok(connector) => Some(connector),
        Err(e) => {
            logs.note(format!(
                "the sandbox's https:// services are not reachable through front ports: {e}"
            ));
            None
        }
    };
    let mut bridged = BTreeMap::new();
    for (name, mut remote) in remotes {
        if let Some(host) = remote.tls.clone() {
            let Some(connector) = connector.clone() else { continue };
            let backend = &remote.copy.backend;
            let started = crate::proxy::tls::bridge(
                name.clone(),
                host,
                backend.addr,
                connector,
                logs.clone(),
                shutdown.clone(),
            )
            .await;
            match started {
                Ok(addr) => {
                    let host = backend.host.as_deref().unwrap_or_default().to_owned();
                    remote.copy.backend = Backend::remote(addr, &host);
                }
                Err(e) => {
                    logs.note(format!("{name}: no TLS bridge to the sandbox: {e}"));
                    continue;
                }
            }
        }
        bridged.insert(name, remote);
    }
    bridged
}
