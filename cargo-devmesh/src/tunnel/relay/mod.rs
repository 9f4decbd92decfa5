//! The relay a team runs once in its sandbox (`cargo devmesh relay`, or
//! the plain `devmesh-relay` binary). Supervisors connect to it with a
//! token; each service they expose gets a public address that stays the
//! same across restarts of the supervisor, the service and the relay: a
//! port of its own (the reservations are kept on disk, keyed by token
//! name, namespace and service), or with `[domain]` a host of its own,
//! `<svc>--<namespace>.<domain>`, on one listener. A public connection is
//! carried over the supervisor's link to the service's front port, so the
//! inspector shows it. With `[tls]`, every side speaks TLS.
//!
//! Tunnels are private by default: an HTTP caller sends a team token in
//! `x-devmesh-access`, or logs in once at `/.devmesh/login` on any
//! tunnel's address (a browser is sent there), which sets a session
//! cookie; both are taken off before the request goes on. A service
//! exposed with `public = true` takes anyone (webhooks).
//!
//! The config file is described in [`config`]. A `[dial]` entry is
//! `host:port`, a host (any port), or an IPv4 network `a.b.c.d/n` (any
//! port); anything else is refused, with a 403 in the caller's words and a
//! line in the relay's log.

pub(crate) mod callers;
mod config;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use self::callers::{ACCESS_COOKIE, ACCESS_HEADER};
use self::callers::{ALIVE_PATH, Head, LOGIN_PATH, NoHead, Sessions};
pub use self::config::{ConfigError, DomainConfig, KEYS_HELP, Limits, RelayConfig, TlsConfig};
use super::link::{Link, Side, Socket, Stream};
use super::wire::{Frame, Hello, Kind, VERSION, Welcome};
use crate::accept::Backoff;

/// How long a caller may take to send its request head.
const HEAD: Duration = Duration::from_secs(10);
/// How long a caller waits for a tunnel's supervisor to be connected.
const RECONNECT_WAIT: Duration = Duration::from_secs(3);
/// Connections that have not said who they are yet, at most: past it, a
/// flood of silent connections is closed at once.
const MAX_PENDING: usize = 256;

/// A tunnel: where callers reach a service, and the link of the
/// supervisor that serves it.
#[derive(Debug)]
struct Tunnel {
    link: watch::Sender<Option<Link>>,
    public: AtomicBool,
    /// The name of the token it is held with.
    holder: String,
    service: String,
}

struct Relay {
    config: RelayConfig,
    /// `name: token`, read at start.
    tokens: Vec<(String, String)>,
    tls: Option<TlsAcceptor>,
    /// Public ports and hosts, kept in `data/reservations.json`.
    reservations: Mutex<Reservations>,
    /// Tunnels by `name/namespace/service`.
    tunnels: Mutex<HashMap<String, Arc<Tunnel>>>,
    /// Tunnels by host label, `<svc>--<namespace>`, with `[domain]`.
    hosts: Mutex<HashMap<String, Arc<Tunnel>>>,
    sessions: Sessions,
    /// Connections open, by token name.
    connections: Mutex<HashMap<String, usize>>,
    /// Room for connections that have not said who they are.
    pending: Arc<Semaphore>,
    /// Whether a limit is being hit, by what: said once until it is not.
    hitting: Mutex<HashMap<String, bool>>,
    shutdown: CancellationToken,
}

/// How a caller came in: at a tunnel's own port, or at the `[domain]`
/// listener, where its Host says which tunnel.
#[derive(Debug)]
enum Door {
    Port(Arc<Tunnel>),
    Domain,
}

/// Loads the config at `path` and serves until Ctrl-C or SIGTERM.
pub async fn run(path: &Path) -> anyhow::Result<()> {
    let config = RelayConfig::load(path)?;
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut interrupt), Ok(mut terminate)) =
            (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
        {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        }
        stop.cancel();
    });
    serve(config, shutdown).await
}

/// Serves until `shutdown`.
pub async fn serve(config: RelayConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    bind(config, shutdown).await?.serve().await;
    Ok(())
}

/// A relay bound to its addresses, not serving yet.
pub struct Bound {
    relay: Arc<Relay>,
    listener: TcpListener,
    hosts: Option<TcpListener>,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("listen", &self.relay.config.listen)
            .finish()
    }
}

/// Reads the tokens and the reservations, and binds the relay's
/// listeners: supervisors', and `[domain]`'s.
pub async fn bind(mut config: RelayConfig, shutdown: CancellationToken) -> anyhow::Result<Bound> {
    let tokens = read_tokens(&config.tokens)?;
    let tls = match &config.tls {
        Some(tls) => Some(crate::proxy::tls::acceptor(&tls.cert, &tls.key).map_err(anyhow::Error::msg)?),
        None => None,
    };
    crate::secret::private_dir(&config.data)
        .map_err(|e| anyhow::anyhow!("the relay's data folder `{}`: {e}", config.data.display()))?;
    let reservations = Reservations::read(&config.data.join("reservations.json"));
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("the relay cannot listen on {}: {e}", config.listen))?;
    config.listen = listener.local_addr()?;
    let hosts = match &mut config.domain {
        Some(domain) => {
            let hosts = TcpListener::bind(domain.listen)
                .await
                .map_err(|e| anyhow::anyhow!("the relay cannot listen on {} for `[domain]`: {e}", domain.listen))?;
            domain.listen = hosts.local_addr()?;
            Some(hosts)
        }
        None => None,
    };
    let relay = Arc::new(Relay {
        config,
        tokens,
        tls,
        reservations: Mutex::new(reservations),
        tunnels: Mutex::default(),
        hosts: Mutex::default(),
        sessions: Sessions::default(),
        connections: Mutex::default(),
        pending: Arc::new(Semaphore::new(MAX_PENDING)),
        hitting: Mutex::default(),
        shutdown,
    });
    Ok(Bound { relay, listener, hosts })
}

impl Bound {
    /// Where supervisors connect.
    pub fn listen(&self) -> std::net::SocketAddr {
        self.relay.config.listen
    }

    /// Where `[domain]` callers come in.
    pub fn domain_listen(&self) -> Option<std::net::SocketAddr> {
        self.relay.config.domain.as_ref().map(|d| d.listen)
    }

    /// Serves until shutdown.
    pub async fn serve(self) {
        let Bound { relay, listener, hosts } = self;
        let tls = if relay.tls.is_some() { " (TLS)" } else { "" };
        eprintln!("devmesh relay: supervisors connect to {}{tls}", relay.config.listen);
        if let (Some(hosts), Some(domain)) = (hosts, &relay.config.domain) {
            eprintln!(
                "devmesh relay: tunnels at {}, on {}",
                relay.config.url(None, "<svc>--<namespace>"),
                domain.listen
            );
            tokio::spawn(Arc::clone(&relay).accept(hosts, || Door::Domain));
        }
        let mut backoff = Backoff::new("the relay's control port", crate::accept::on_stderr("devmesh relay"));
        loop {
            let (socket, from) = tokio::select! {
                () = relay.shutdown.cancelled() => return,
                accepted = crate::accept::next(&listener, &mut backoff) => accepted,
            };
            let Ok(permit) = Arc::clone(&relay.pending).try_acquire_owned() else {
                relay.hit("handshakes", true, || {
                    format!("more than {MAX_PENDING} connections have not said who they are; closing new ones")
                });
                continue;
            };
            relay.hit("handshakes", false, String::new);
            let relay = Arc::clone(&relay);
            tokio::spawn(async move {
                if let Err(why) = relay.supervisor(socket, permit).await {
                    eprintln!("devmesh relay: {from}: {why}");
                }
            });
        }
    }
}

/// `name: token` lines; `#` starts a comment.
fn read_tokens(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("the relay's tokens `{}`: {e}", path.display()))?;
    let tokens: Vec<(String, String)> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let (name, token) = l.split_once(':')?;
            Some((name.trim().to_owned(), token.trim().to_owned()))
        })
        .filter(|(_, token)| token.len() >= 16)
        .collect();
    if tokens.is_empty() {
        anyhow::bail!(
            "the relay's tokens `{}` hold no `name: token` line with a token of 16 characters or more",
            path.display()
        );
    }
    Ok(tokens)
}

/// What the relay keeps across its restarts: each tunnel's public port,
/// and with `[domain]` which tunnel each host is, both by
/// `name/namespace/service`. A relay moved from ports to `[domain]` and
/// back keeps both.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Reservations {
    #[serde(default)]
    ports: BTreeMap<String, u16>,
    /// The tunnel each host label (`<svc>--<namespace>`) is.
    #[serde(default)]
    hosts: BTreeMap<String, String>,
}

impl Reservations {
    /// The reservations in `path`: none when there is no file; a file of
    /// devmesh 0.1's first relays (ports alone) is read as such.
    fn read(path: &Path) -> Reservations {
        let Ok(bytes) = std::fs::read(path) else {
            return Reservations::default();
        };
        serde_json::from_slice(&bytes)
            .or_else(|_| {
                serde_json::from_slice::<BTreeMap<String, u16>>(&bytes).map(|mut ports| {
                    ports.retain(|_, port| *port != 0);
                    Reservations {
                        ports,
                        hosts: BTreeMap::new(),
                    }
                })
            })
            .unwrap_or_else(|e| {
                eprintln!(
                    "devmesh relay: `{}` is not the relay's reservations ({e}); tunnels get new addresses",
                    path.display()
                );
                Reservations::default()
            })
    }

    fn write(&self, path: &Path) {
        let json = serde_json::to_vec_pretty(self).expect("reservations serialize");
        if let Err(e) = crate::secret::write_private(path, &json) {
            eprintln!(
                "devmesh relay: could not keep the reservations in `{}`: {e}",
                path.display()
            );
        }
    }
}

/// A connection a limit lets through; it frees its room when dropped.
struct Slot {
    relay: Arc<Relay>,
    holder: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.relay.connections.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.holder) {
            *count = count.saturating_sub(1);
        }
    }
}

impl Relay {
    /// The name of the holder of `token`, if it is a team token.
    fn holder(&self, token: &str) -> Option<&str> {
        // Every token is compared, so the time says nothing of which matched.
        let mut found = None;
        for (name, known) in &self.tokens {
            if crate::secret::same(known.as_bytes(), token.as_bytes()) {
                found = Some(name.as_str());
            }
        }
        found
    }

    /// Says `what` in the log when limit `limit` starts being hit, and
    /// nothing more until it stops: a flood is one line, not a flood of
    /// lines.
    fn hit(&self, limit: &str, hitting: bool, what: impl FnOnce() -> String) {
        let mut limits = self.hitting.lock().unwrap_or_else(|e| e.into_inner());
        let was = limits.insert(limit.to_owned(), hitting).unwrap_or(false);
        if hitting && !was {
            eprintln!("devmesh relay: {}", what());
        }
    }

    /// Room for one more connection of `holder`'s tunnels, if its
    /// `[limits] connections` has it.
    fn slot(self: &Arc<Self>, holder: &str) -> Option<Slot> {
        let limit = self.config.limits.connections;
        let admitted = {
            let mut open = self.connections.lock().unwrap_or_else(|e| e.into_inner());
            let count = open.entry(holder.to_owned()).or_default();
            let admitted = *count < limit;
            *count += usize::from(admitted);
            admitted
        };
        self.hit(&format!("connections of {holder}"), !admitted, || {
            format!("{holder}'s tunnels hold {limit} connections, the limit; refusing more")
        });
        admitted.then(|| Slot {
            relay: Arc::clone(self),
            holder: holder.to_owned(),
        })
    }

    /// TLS on `socket`, when the relay has it.
    async fn secure(&self, socket: TcpStream) -> std::io::Result<Box<dyn Socket>> {
        let _ = socket.set_nodelay(true);
        match &self.tls {
            Some(tls) => Ok(Box::new(tls.accept(socket).await?)),
            None => Ok(Box::new(socket)),
        }
    }

    /// Takes callers at `listener` until shutdown, each through `door`.
    async fn accept(self: Arc<Self>, listener: TcpListener, door: impl Fn() -> Door) {
        let what = listener
            .local_addr()
            .map_or_else(|_| "a public port".to_owned(), |addr| format!("the public port {addr}"));
        let mut backoff = Backoff::new(what, crate::accept::on_stderr("devmesh relay"));
        loop {
            let socket = tokio::select! {
                () = self.shutdown.cancelled() => return,
                (socket, _) = crate::accept::next(&listener, &mut backoff) => socket,
            };
            let (relay, door) = (Arc::clone(&self), door());
            tokio::spawn(async move { relay.caller(socket, door).await });
        }
    }

    /// A supervisor's connection: its `HELLO`, then its link.
    async fn supervisor(
        self: Arc<Self>,
        socket: TcpStream,
        pending: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<(), String> {
        let limits = &self.config.limits;
        let mut read = Vec::new();
        let said = tokio::time::timeout(limits.handshake, async {
            let mut socket = self.secure(socket).await.map_err(|e| format!("TLS: {e}"))?;
            let hello = first_frame(&mut socket, &mut read).await;
            Ok::<_, String>((socket, hello))
        })
        .await;
        drop(pending);
        let (mut socket, hello) = said.map_err(|_| {
            format!(
                "it did not say who it is within {:?} (`[limits] handshake`); closed",
                limits.handshake
            )
        })??;
        let hello: Hello = hello?.json().map_err(|e| format!("its HELLO: {e}"))?;
        if hello.version != VERSION {
            return refuse(
                &mut socket,
                format!(
                    "protocol version {} is not this relay's {VERSION} (hint: the same devmesh on both sides)",
                    hello.version
                ),
            )
            .await;
        }
        let Some(name) = self.holder(&hello.token).map(str::to_owned) else {
            return refuse(
                &mut socket,
                "unknown token (hint: ask the relay's keeper for yours)".to_owned(),
            )
            .await;
        };
        if hello.services.len() > limits.tunnels {
            return refuse(
                &mut socket,
                format!("at most {} services a token (`[limits] tunnels`)", limits.tunnels),
            )
            .await;
        }
        let mut urls = Vec::new();
        let mut tunnels = Vec::new();
        for service in &hello.services {
            if !valid_label(&service.name) || !valid_label(&hello.namespace) {
                return refuse(
                    &mut socket,
                    format!("`{}` in `{}`: names are DNS labels", service.name, hello.namespace),
                )
                .await;
            }
            let (url, tunnel) = match self.tunnel(&name, &hello.namespace, &service.name, service.public) {
                Ok(found) => found,
                Err(why) => return refuse(&mut socket, why).await,
            };
            urls.push((service.name.clone(), url));
            tunnels.push(tunnel);
        }
        let mut bytes = Vec::new();
        let welcome = serde_json::to_vec(&Welcome { urls }).expect("a welcome serializes");
        Frame::new(Kind::Welcome, 0, welcome).encode(&mut bytes);
        socket.write_all(&bytes).await.map_err(|e| e.to_string())?;
        let (opened_tx, mut opened) = mpsc::unbounded_channel();
        let link = Link::run(socket, read, opened_tx, Side::Relay);
        // What the supervisor asks to reach inside the sandbox.
        let (dialer, dialing, who) = (Arc::clone(&self), link.clone(), name.clone());
        tokio::spawn(async move {
            while let Some((stream, what)) = opened.recv().await {
                let (relay, link, who) = (Arc::clone(&dialer), dialing.clone(), who.clone());
                tokio::spawn(async move { relay.dial(&link, stream, &what, &who).await });
            }
        });
        for tunnel in &tunnels {
            tunnel.link.send_replace(Some(link.clone()));
        }
        eprintln!(
            "devmesh relay: {name} ({}) serves {}",
            hello.namespace,
            hello
                .services
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        tokio::select! {
            () = link.closed() => {}
            () = self.shutdown.cancelled() => link.close(),
        }
        Ok(())
    }

    /// The tunnel of `service` in `namespace`, held with token `holder`,
    /// and its URL; made (and its address reserved) if it is new.
    fn tunnel(
        self: &Arc<Self>,
        holder: &str,
        namespace: &str,
        service: &str,
        public: bool,
    ) -> Result<(String, Arc<Tunnel>), String> {
        let key = format!("{holder}/{namespace}/{service}");
        let label = format!("{service}--{namespace}");
        let known = self
            .tunnels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        if let Some(tunnel) = known {
            tunnel.public.store(public, Ordering::Relaxed);
            return Ok((self.url_of(&key, &label), tunnel));
        }
        let tunnel = Arc::new(Tunnel {
            link: watch::channel(None).0,
            public: AtomicBool::new(public),
            holder: holder.to_owned(),
            service: service.to_owned(),
        });
        match self.config.domain {
            Some(_) => {
                self.claim_host(&key, &label)?;
                self.hosts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(label.clone(), Arc::clone(&tunnel));
            }
            None => {
                let listener = self.claim_port(&key)?;
                let door = Arc::clone(&tunnel);
                tokio::spawn(Arc::clone(self).accept(listener, move || Door::Port(Arc::clone(&door))));
            }
        }
        self.tunnels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), Arc::clone(&tunnel));
        Ok((self.url_of(&key, &label), tunnel))
    }

    /// The public URL of tunnel `key`, at host label `label`.
    fn url_of(&self, key: &str, label: &str) -> String {
        let port = match self.config.domain {
            Some(_) => None,
            None => self
                .reservations
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .ports
                .get(key)
                .copied(),
        };
        self.config.url(port, label)
    }

    fn keep(&self, reservations: &Reservations) {
        reservations.write(&self.config.data.join("reservations.json"));
    }

    /// Host label `label` for tunnel `key`, unless another token's tunnel
    /// has it (the first to come keeps it, across restarts).
    fn claim_host(&self, key: &str, label: &str) -> Result<(), String> {
        if label.len() > 63 {
            return Err(format!(
                "`{label}` is longer than a DNS label may be (hint: a shorter namespace)"
            ));
        }
        let mut reservations = self.reservations.lock().unwrap_or_else(|e| e.into_inner());
        match reservations.hosts.get(label) {
            Some(other) if other != key => Err(format!(
                "`{label}` is the tunnel of `{}`'s token already (hint: a namespace of your own)",
                other.split('/').next().unwrap_or("")
            )),
            Some(_) => Ok(()),
            None => {
                reservations.hosts.insert(label.to_owned(), key.to_owned());
                self.keep(&reservations);
                Ok(())
            }
        }
    }

    /// A public port for tunnel `key`: its reserved one (while it is in
    /// the relay's range), or a free one, then kept.
    fn claim_port(&self, key: &str) -> Result<TcpListener, String> {
        let Some((low, high)) = self.config.ports else {
            return Err("the relay has no public ports".to_owned());
        };
        let mut reservations = self.reservations.lock().unwrap_or_else(|e| e.into_inner());
        let bind = |port: u16| crate::platform::listen((self.config.listen.ip(), port).into());
        let reserved = reservations
            .ports
            .get(key)
            .copied()
            .filter(|port| (low..=high).contains(port));
        let (port, listener) = match reserved.map(|port| (port, bind(port))) {
            Some((port, Ok(listener))) => (port, listener),
            Some((port, Err(e))) => return Err(format!("its reserved port {port} is taken: {e}")),
            None => (low..=high)
                .filter(|port| !reservations.ports.values().any(|taken| taken == port))
                .find_map(|port| bind(port).ok().map(|l| (port, l)))
                .ok_or_else(|| "no free public port in the relay's range".to_owned())?,
        };
        if reservations.ports.insert(key.to_owned(), port) != Some(port) {
            self.keep(&reservations);
        }
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        TcpListener::from_std(listener).map_err(|e| e.to_string())
    }

    /// A supervisor's `dial host:port`: piped to the target when `[dial]`
    /// lets its token reach it, else refused.
    async fn dial(self: Arc<Self>, link: &Link, stream: Stream, what: &str, who: &str) {
        let target = what.strip_prefix("dial ").unwrap_or_default();
        let allowed = self
            .config
            .dial
            .get(who)
            .is_some_and(|allowed| allowed.iter().any(|entry| reaches(entry, target)));
        if !allowed {
            eprintln!("devmesh relay: {who} may not dial `{target}`; refused");
            let message = format!(
                "devmesh relay: `{target}` may not be dialed with this token (hint: the relay's `[dial]` lists what each token reaches)\n"
            );
            return link.answer(stream, answer(403, &message)).await;
        }
        let Some(_slot) = self.slot(who) else {
            return link.answer(stream, too_many(self.config.limits.connections)).await;
        };
        match tokio::time::timeout(HEAD, TcpStream::connect(target)).await {
            Ok(Ok(socket)) => {
                let _ = socket.set_nodelay(true);
                link.pipe(stream, socket, Vec::new()).await
            }
            Ok(Err(e)) => {
                let message = format!("devmesh relay: `{target}` did not answer inside the sandbox: {e}\n");
                link.answer(stream, answer(502, &message)).await;
            }
            Err(_) => {
                let message = format!("devmesh relay: `{target}` did not answer inside the sandbox within 10 s\n");
                link.answer(stream, answer(504, &message)).await;
            }
        }
    }

    /// A caller, come in through `door`.
    async fn caller(self: Arc<Self>, socket: TcpStream, door: Door) {
        let Ok(Ok(mut socket)) = tokio::time::timeout(HEAD, self.secure(socket)).await else {
            return;
        };
        // A public tunnel at a port of its own takes any TCP; everything
        // else is HTTP, whose head says where it goes and who sends it.
        let Admitted {
            tunnel,
            first,
            has_fallback,
        } = match door {
            Door::Port(tunnel) if tunnel.public.load(Ordering::Relaxed) => Admitted {
                tunnel,
                first: Vec::new(),
                has_fallback: false,
            },
            door => match self.admit(&mut socket, door).await {
                Ok(admitted) => admitted,
                Err(refused) => {
                    let _ = socket.write_all(&refused).await;
                    let _ = socket.shutdown().await;
                    return;
                }
            },
        };
        // A caller that comes while the supervisor connects (or connects
        // again) waits for it a moment rather than failing; one with a
        // copy of its own to go to does not wait.
        let wait = if has_fallback { Duration::ZERO } else { RECONNECT_WAIT };
        let mut links = tunnel.link.subscribe();
        let live = tokio::time::timeout(wait, async {
            let live = links.wait_for(|l| l.as_ref().is_some_and(Link::is_alive)).await;
            live.ok().and_then(|link| link.clone())
        });
        let link = live.await.ok().flatten();
        let Some(link) = link else {
            let response = not_connected(&tunnel.service, (!has_fallback).then_some(wait));
            let _ = socket.write_all(&response).await;
            // The caller may still be sending the request's body: closing
            // with it unread would reset the connection, and the answer
            // with it.
            let _ = socket.shutdown().await;
            let _ = tokio::time::timeout(HEAD, tokio::io::copy(&mut socket, &mut tokio::io::sink())).await;
            return;
        };
        let Some(_slot) = self.slot(&tunnel.holder) else {
            let _ = socket.write_all(&too_many(self.config.limits.connections)).await;
            return;
        };
        let stream = link.open(&tunnel.service).await;
        link.pipe(stream, socket, first).await;
    }

    /// Reads a caller's head: the tunnel it is for and the bytes to send
    /// on, or the answer that refuses it (or logs it in).
    async fn admit(&self, socket: &mut Box<dyn Socket>, door: Door) -> Result<Admitted, Vec<u8>> {
        let mut head = match tokio::time::timeout(HEAD, Head::read(socket)).await {
            Ok(Ok(head)) => head,
            Ok(Err(NoHead::Answer(refused))) => return Err(refused),
            Ok(Err(NoHead::Gone)) | Err(_) => return Err(Vec::new()),
        };
        if head.path == LOGIN_PATH || head.path.starts_with(&format!("{LOGIN_PATH}?")) {
            return Err(self.login(socket, &mut head).await);
        }
        let member = head.token.as_deref().is_some_and(|token| self.holder(token).is_some())
            || head
                .session
                .as_deref()
                .is_some_and(|session| self.sessions.valid(session));
        let tunnel = match door {
            Door::Port(tunnel) => Some(tunnel),
            // Which tunnels exist is the team's to know: a stranger at an
            // unknown host is refused as at a private one.
            Door::Domain => match self.by_host(head.host.as_deref()) {
                Ok(tunnel) => Some(tunnel),
                Err(unknown) if member => return Err(unknown),
                Err(_) => None,
            },
        };
        let tunnel = tunnel.filter(|t| member || t.public.load(Ordering::Relaxed));
        let Some(tunnel) = tunnel else {
            if head.wants_html {
                return Err(callers::to_login(&head.path));
            }
            return Err(answer(
                401,
                &format!(
                    "devmesh relay: this tunnel is private (hint: send a team token in `{ACCESS_HEADER}`, or log in at {LOGIN_PATH})\n"
                ),
            ));
        };
        if head.path == ALIVE_PATH {
            let alive = tunnel.link.borrow().as_ref().is_some_and(Link::is_alive);
            return Err(match alive {
                true => answer(200, "connected\n"),
                false => answer(503, "not connected\n"),
            });
        }
        Ok(Admitted {
            tunnel,
            has_fallback: head.has_fallback,
            first: head.forwarded(),
        })
    }

    /// The tunnel a `[domain]` caller's Host names.
    fn by_host(&self, host: Option<&str>) -> Result<Arc<Tunnel>, Vec<u8>> {
        let domain = self.config.domain.as_ref().map(|d| d.name.as_str()).unwrap_or_default();
        let label = host.and_then(|host| host.strip_suffix(domain)?.strip_suffix('.'));
        let found = label.and_then(|label| self.hosts.lock().unwrap_or_else(|e| e.into_inner()).get(label).cloned());
        found.ok_or_else(|| {
            answer(
                404,
                &format!(
                    "devmesh relay: no tunnel at `{}` (hint: tunnels are `<svc>--<namespace>.{domain}`)\n",
                    host.unwrap_or("(no Host)")
                ),
            )
        })
    }

    /// The login page, or a login: a session cookie for a team token.
    async fn login(&self, socket: &mut Box<dyn Socket>, head: &mut Head) -> Vec<u8> {
        let query = crate::form::parse(head.path.split_once('?').map(|(_, q)| q));
        let next = query.get("next").cloned().unwrap_or_else(|| "/".to_owned());
        if head.method != "POST" {
            return callers::login_page(&next, None);
        }
        let Ok(Some(body)) = tokio::time::timeout(HEAD, head.body(socket, 4096)).await else {
            return answer(400, "devmesh relay: a login is a form of at most 4 KiB\n");
        };
        let mut form = crate::form::parse(Some(&String::from_utf8_lossy(&body)));
        let next = form.remove("next").unwrap_or(next);
        let token = form.remove("token").unwrap_or_default();
        let Some(holder) = self.holder(&token) else {
            return callers::login_page(&next, Some("That is not a team token."));
        };
        match self.sessions.open() {
            Ok(session) => {
                eprintln!("devmesh relay: a browser logged in with {holder}'s token");
                let domain = self.config.domain.as_ref().map(|d| d.name.as_str());
                callers::logged_in(&session, &next, domain, self.tls.is_some())
            }
            Err(e) => answer(500, &format!("devmesh relay: no session could be made: {e}\n")),
        }
    }
}

/// Tells a supervisor why it is refused, and says so in the relay's log.
async fn refuse(socket: &mut Box<dyn Socket>, why: String) -> Result<(), String> {
    let mut bytes = Vec::new();
    Frame::new(Kind::Refused, 0, why.clone().into_bytes()).encode(&mut bytes);
    let _ = socket.write_all(&bytes).await;
    let _ = socket.shutdown().await;
    Err(format!("refused: {why}"))
}

/// A whole answer from the relay itself, after which it closes.
/// A caller let in: the tunnel it is for, the bytes to send on, and whether
/// it has another copy to go to (see [`callers::FALLBACK_HEADER`]).
struct Admitted {
    tunnel: Arc<Tunnel>,
    first: Vec<u8>,
    has_fallback: bool,
}

fn answer(status: u16, message: &str) -> Vec<u8> {
    let status = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    crate::proxy::local_response(status, message)
}

/// The answer for a tunnel whose supervisor is not connected, after
/// `waited` for it; with no wait, marked for a caller that has another copy
/// to go to ([`callers::NOT_CONNECTED_HEADER`]).
pub(crate) fn not_connected(service: &str, waited: Option<Duration>) -> Vec<u8> {
    let waited = waited.map_or(String::new(), |w| format!("; waited {} s", w.as_secs()));
    let message = format!("devmesh relay: `{service}` is not connected (its supervisor is not running{waited})\n");
    let mut response = answer(503, &message);
    if waited.is_empty() {
        let line_end = response.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
        let header = format!("{}: {service}\r\n", callers::NOT_CONNECTED_HEADER);
        response.splice(line_end..line_end, header.into_bytes());
    }
    response
}

fn too_many(limit: usize) -> Vec<u8> {
    answer(
        503,
        &format!(
            "devmesh relay: this token's tunnels hold {limit} connections already, the limit (`[limits] connections`)\n"
        ),
    )
}

/// Whether `[dial]` entry `entry` lets a supervisor reach `target`
/// (`host:port`).
fn reaches(entry: &str, target: &str) -> bool {
    let Some((host, _port)) = target.rsplit_once(':') else {
        return false;
    };
    if let Some((network, bits)) = entry.split_once('/') {
        let (Ok(network), Ok(bits), Ok(ip)) = (
            network.parse::<std::net::Ipv4Addr>(),
            bits.parse::<u32>(),
            host.parse::<std::net::Ipv4Addr>(),
        ) else {
            return false;
        };
        let mask = u32::MAX.checked_shl(32 - bits.min(32)).unwrap_or(0);
        return u32::from(network) & mask == u32::from(ip) & mask;
    }
    match entry.rsplit_once(':') {
        Some(_) => entry.eq_ignore_ascii_case(target),
        None => entry.eq_ignore_ascii_case(host),
    }
}

fn valid_label(name: &str) -> bool {
    devmesh::name::validate(name).is_ok()
}

/// Reads until one frame is whole (a `HELLO` or an answer to one); what
/// came after it stays in `read`.
pub async fn first_frame(socket: &mut (impl AsyncRead + Unpin), read: &mut Vec<u8>) -> Result<Frame, String> {
    let mut buf = [0u8; 4096];
    loop {
        match Frame::decode(read) {
            Ok(Some((frame, used))) => {
                read.drain(..used);
                return Ok(frame);
            }
            Ok(None) => {}
            Err(e) => return Err(format!("not the devmesh tunnel protocol: {e}")),
        }
        match socket.read(&mut buf).await {
            Ok(0) => return Err("it closed the connection".to_owned()),
            Ok(n) => read.extend_from_slice(&buf[..n]),
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests;
