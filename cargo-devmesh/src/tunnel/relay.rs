//! The relay a team runs once in its sandbox (`cargo devmesh relay`, or
//! the plain `devmesh-relay` binary). Supervisors connect to it with a
//! token; each service they expose gets a public port that stays the same
//! across restarts of the supervisor, the service and the relay (the
//! reservations are kept on disk, keyed by token name, namespace and
//! service). A public connection is carried over the supervisor's link to
//! the service's front port, so the inspector shows it.
//!
//! Tunnels are private by default: an HTTP caller must send a team token
//! in `x-devmesh-access` (taken off before the request goes on); a service
//! exposed with `public = true` takes anyone (webhooks).
//!
//! ```toml
//! listen = "0.0.0.0:7000"        # where supervisors connect
//! public_host = "relay.sandbox.example.com"   # the host in public URLs
//! ports = "31000-31999"          # where public ports are taken from
//! tokens = "/etc/devmesh/tokens" # lines `name: token` (0600); never on a command line
//! data = "/var/lib/devmesh-relay"  # reservations
//!
//! [dial]                         # what each token's supervisor may reach inside the sandbox
//! alice = ["payments.svc.cluster.local:8080", "10.1.0.0/16", "127.0.0.1:9000"]
//! ```
//!
//! A `[dial]` entry is `host:port`, a host (any port), or an IPv4 network
//! `a.b.c.d/n` (any port); anything else is refused, with a 403 in the
//! caller's words and a line in the relay's log.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::link::{Link, Side, Stream};
use super::wire::{Frame, Hello, Kind, VERSION, Welcome};

/// The relay's config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    pub listen: SocketAddr,
    pub public_host: String,
    #[serde(deserialize_with = "ports")]
    pub ports: (u16, u16),
    pub tokens: PathBuf,
    pub data: PathBuf,
    /// What each token's supervisor may dial, by token name.
    #[serde(default)]
    pub dial: BTreeMap<String, Vec<String>>,
}

fn ports<'de, D: serde::Deserializer<'de>>(d: D) -> Result<(u16, u16), D::Error> {
    let text = String::deserialize(d)?;
    let parsed = text
        .split_once('-')
        .and_then(|(low, high)| Some((low.trim().parse().ok()?, high.trim().parse().ok()?)));
    match parsed {
        Some((low, high)) if low > 0 && low <= high => Ok((low, high)),
        _ => Err(serde::de::Error::custom(format!(
            "`{text}` is no port range (hint: `31000-31999`)"
        ))),
    }
}

impl RelayConfig {
    /// Reads the config file at `path`.
    pub fn load(path: &Path) -> anyhow::Result<RelayConfig> {
        use figment::providers::Format;
        figment::Figment::from(figment::providers::Toml::file_exact(path))
            .extract()
            .map_err(|e| anyhow::anyhow!("the relay's config `{}`: {e}", path.display()))
    }
}

/// How long a connection may take to say who it is.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// How long a caller may take to send its request head.
const HEAD: Duration = Duration::from_secs(10);
/// The header a caller of a private tunnel sends a team token in.
pub const ACCESS_HEADER: &str = "x-devmesh-access";
/// Tunnels one token may hold.
const MAX_TUNNELS: usize = 64;

/// A tunnel: a public port, and the link of the supervisor that serves it.
#[derive(Debug)]
struct Tunnel {
    link: watch::Sender<Option<Link>>,
    public: Mutex<bool>,
}

#[derive(Debug)]
struct Relay {
    config: RelayConfig,
    /// `name: token`, read at start.
    tokens: Vec<(String, String)>,
    /// Public port by `name/namespace/service`, kept in `data/reservations.json`.
    reservations: Mutex<BTreeMap<String, u16>>,
    tunnels: Mutex<HashMap<String, Arc<Tunnel>>>,
    shutdown: CancellationToken,
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
    let tokens = read_tokens(&config.tokens)?;
    crate::secret::private_dir(&config.data)
        .map_err(|e| anyhow::anyhow!("the relay's data folder `{}`: {e}", config.data.display()))?;
    let reservations = std::fs::read(config.data.join("reservations.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("the relay cannot listen on {}: {e}", config.listen))?;
    eprintln!("devmesh relay: supervisors connect to {}", config.listen);
    let relay = Arc::new(Relay {
        config,
        tokens,
        reservations: Mutex::new(reservations),
        tunnels: Mutex::default(),
        shutdown: shutdown.clone(),
    });
    loop {
        let (socket, from) = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        let relay = Arc::clone(&relay);
        tokio::spawn(async move {
            if let Err(why) = relay.supervisor(socket).await {
                eprintln!("devmesh relay: {from}: {why}");
            }
        });
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

    /// A supervisor's connection: its `HELLO`, then its link.
    async fn supervisor(self: Arc<Self>, mut socket: TcpStream) -> Result<(), String> {
        let mut read = Vec::new();
        let hello = tokio::time::timeout(HANDSHAKE, first_frame(&mut socket, &mut read))
            .await
            .map_err(|_| "it did not say who it is within 10 s; closed".to_owned())??;
        let hello: Hello = hello.json().map_err(|e| format!("its HELLO: {e}"))?;
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
        if hello.services.len() > MAX_TUNNELS {
            return refuse(&mut socket, format!("at most {MAX_TUNNELS} services a token")).await;
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
            let key = format!("{name}/{}/{}", hello.namespace, service.name);
            let (port, tunnel) = match self.tunnel(&key, &service.name, service.public).await {
                Ok(found) => found,
                Err(why) => return refuse(&mut socket, why).await,
            };
            urls.push((
                service.name.clone(),
                format!("http://{}:{port}", self.config.public_host),
            ));
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

    /// The tunnel of `key`, made (and its port reserved) if it is new.
    async fn tunnel(self: &Arc<Self>, key: &str, service: &str, public: bool) -> Result<(u16, Arc<Tunnel>), String> {
        if let Some(tunnel) = self.tunnels.lock().unwrap_or_else(|e| e.into_inner()).get(key) {
            *tunnel.public.lock().unwrap_or_else(|e| e.into_inner()) = public;
            let port = self.reservations.lock().unwrap_or_else(|e| e.into_inner())[key];
            return Ok((port, Arc::clone(tunnel)));
        }
        let reserved = self
            .reservations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied();
        let bind = |port: u16| std::net::TcpListener::bind((self.config.listen.ip(), port));
        let (port, listener) = match reserved.map(|port| (port, bind(port))) {
            Some((port, Ok(listener))) => (port, listener),
            Some((port, Err(e))) => return Err(format!("its reserved port {port} is taken: {e}")),
            None => {
                let taken: Vec<u16> = self
                    .reservations
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .copied()
                    .collect();
                (self.config.ports.0..=self.config.ports.1)
                    .filter(|port| !taken.contains(port))
                    .find_map(|port| bind(port).ok().map(|l| (port, l)))
                    .ok_or_else(|| "no free public port in the relay's range".to_owned())?
            }
        };
        {
            let mut reservations = self.reservations.lock().unwrap_or_else(|e| e.into_inner());
            reservations.insert(key.to_owned(), port);
            let json = serde_json::to_vec_pretty(&*reservations).expect("reservations serialize");
            let _ = crate::secret::write_private(&self.config.data.join("reservations.json"), &json);
        }
        let tunnel = Arc::new(Tunnel {
            link: watch::channel(None).0,
            public: Mutex::new(public),
        });
        self.tunnels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_owned(), Arc::clone(&tunnel));
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let listener = TcpListener::from_std(listener).map_err(|e| e.to_string())?;
        let (relay, accepting, service) = (Arc::clone(self), Arc::clone(&tunnel), service.to_owned());
        tokio::spawn(async move {
            loop {
                let socket = tokio::select! {
                    () = relay.shutdown.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((socket, _)) => socket,
                        Err(_) => continue,
                    },
                };
                let (relay, tunnel, service) = (Arc::clone(&relay), Arc::clone(&accepting), service.clone());
                tokio::spawn(async move { relay.caller(socket, &tunnel, &service).await });
            }
        });
        Ok((port, tunnel))
    }

    /// A supervisor's `dial host:port`: piped to the target when `[dial]`
    /// lets its token reach it, else refused.
    async fn dial(&self, link: &Link, stream: Stream, what: &str, who: &str) {
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
        match tokio::time::timeout(HANDSHAKE, TcpStream::connect(target)).await {
            Ok(Ok(socket)) => link.pipe(stream, socket, Vec::new()).await,
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

    /// A public connection to a tunnel.
    async fn caller(&self, mut socket: TcpStream, tunnel: &Tunnel, service: &str) {
        let link = tunnel.link.borrow().clone().filter(Link::is_alive);
        let Some(link) = link else {
            let message = format!("devmesh relay: `{service}` is not connected (its supervisor is not running)\n");
            let _ = socket.write_all(&answer(503, &message)).await;
            return;
        };
        let public = *tunnel.public.lock().unwrap_or_else(|e| e.into_inner());
        let first = if public {
            Vec::new()
        } else {
            match tokio::time::timeout(HEAD, self.admitted(&mut socket)).await {
                Ok(Ok(head)) => head,
                Ok(Err(refused)) => {
                    let _ = socket.write_all(&refused).await;
                    return;
                }
                Err(_) => return,
            }
        };
        let stream = link.open(service).await;
        link.pipe(stream, socket, first).await;
    }

    /// Reads a caller's request head and checks its team token; the head
    /// without the token's line, or the answer that refuses it.
    async fn admitted(&self, socket: &mut TcpStream) -> Result<Vec<u8>, Vec<u8>> {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        let end = loop {
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if head.len() > 64 * 1024 {
                return Err(answer(431, "devmesh relay: the request head is too large\n"));
            }
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return Err(Vec::new()),
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        };
        let text = String::from_utf8_lossy(&head[..end]).into_owned();
        let mut kept = Vec::with_capacity(head.len());
        let mut admitted = false;
        for line in text.split_inclusive("\r\n") {
            if let Some((name, value)) = line.split_once(':')
                && name.trim().eq_ignore_ascii_case(ACCESS_HEADER)
            {
                admitted |= self.holder(value.trim()).is_some();
                continue;
            }
            kept.extend_from_slice(line.as_bytes());
        }
        if !admitted {
            return Err(answer(
                401,
                &format!("devmesh relay: this tunnel is private (hint: send a team token in `{ACCESS_HEADER}`)\n"),
            ));
        }
        kept.extend_from_slice(&head[end..]);
        Ok(kept)
    }
}

/// Tells a supervisor why it is refused, and says so in the relay's log.
async fn refuse(socket: &mut TcpStream, why: String) -> Result<(), String> {
    let mut bytes = Vec::new();
    Frame::new(Kind::Refused, 0, why.clone().into_bytes()).encode(&mut bytes);
    let _ = socket.write_all(&bytes).await;
    Err(format!("refused: {why}"))
}

/// A whole answer from the relay itself, after which it closes.
fn answer(status: u16, message: &str) -> Vec<u8> {
    let status = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    crate::proxy::local_response(status, message)
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
pub async fn first_frame(socket: &mut TcpStream, read: &mut Vec<u8>) -> Result<Frame, String> {
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
mod tests {
    use super::*;

    #[test]
    fn dial_entries_reach_what_they_name_and_nothing_else() {
        assert!(reaches("127.0.0.1:9000", "127.0.0.1:9000"));
        assert!(!reaches("127.0.0.1:9000", "127.0.0.1:9001"));
        assert!(reaches("payments.svc", "payments.svc:8080"));
        assert!(reaches("10.1.0.0/16", "10.1.200.3:443"));
        assert!(!reaches("10.1.0.0/16", "10.2.0.1:443"));
        assert!(!reaches("10.1.0.0/16", "payments.svc:80"));
        assert!(!reaches("10.1.0.0/16", "nonsense"));
    }

    #[test]
    fn tokens_are_named_lines_of_sixteen_characters_or_more() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# the team\nalice: 0123456789abcdef0123\nbob: short\n").unwrap();
        assert_eq!(
            read_tokens(&path).unwrap(),
            [("alice".to_owned(), "0123456789abcdef0123".to_owned())]
        );
        std::fs::write(&path, "bob: short\n").unwrap();
        assert!(read_tokens(&path).unwrap_err().to_string().contains("16 characters"));
    }
}
