//! The supervisor's side of the tunnel: one outbound connection to the
//! relay, which exposes the services marked `expose = true`. Each gets a
//! public URL, the same from run to run (the relay keeps it), written to
//! the registry as its `callback_url` so that `devmesh::callback_url()`
//! answers it. A connection the relay carries in is handed to the service's
//! front port in this process, so the inspector shows it like any other,
//! with no socket between. A lost link is made again, with a backoff.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use devmesh::config::TunnelConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::link::{Link, Side, Socket};
use super::relay::first_frame;
use super::wire::{Exposed, Frame, Hello, Kind, VERSION, Welcome};
use crate::logs::Logs;
use crate::state::RegistryCopy;

/// The longest wait before connecting again.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The tunnel as `ps` and the page show it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TunnelState {
    /// The relay's address.
    pub relay: String,
    pub connected: bool,
    /// Each exposed service's public URL, once the relay gave it.
    pub urls: Vec<(String, String)>,
    /// Why it is not connected, while it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Services in the sandbox reached through the relay (`[tunnel] reach`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reached: Vec<String>,
}

/// A service to expose: its front port's door, and whether anyone may
/// call it.
#[derive(Debug, Clone)]
pub struct Expose {
    pub door: crate::proxy::Door,
    pub public: bool,
}

/// Who hears what the tunnel does: the registry (callback URLs), the
/// logs, `ps` and the page, and the bridges to the sandbox (the live link);
/// and the file the URLs are remembered in from run to run.
#[derive(Debug)]
pub struct Told {
    pub registry: Arc<RegistryCopy>,
    pub remembered: std::path::PathBuf,
    pub logs: Logs,
    pub state: tokio::sync::watch::Sender<TunnelState>,
    pub live: tokio::sync::watch::Sender<Option<Link>>,
}

/// How this supervisor connects to the relay: its token, and TLS when
/// the relay speaks it.
#[derive(Clone)]
pub struct Credentials {
    pub token: String,
    pub tls: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &"…")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Keeps the services exposed until `shutdown`.
pub async fn run(
    config: TunnelConfig,
    credentials: Credentials,
    services: BTreeMap<String, Expose>,
    told: Told,
    shutdown: CancellationToken,
) {
    let Told {
        registry,
        remembered,
        logs,
        state,
        live,
    } = told;
    state.send_modify(|s| s.relay = config.relay.clone());
    // The URLs the relay gave last run are the ones it keeps: services
    // have them at once, before the link is up (a webhook registered at
    // start, the relay down for a moment).
    let known = Remembered::read(&remembered, &config).urls;
    let known: Vec<(String, String)> = known
        .into_iter()
        .filter(|(name, _)| services.contains_key(name))
        .collect();
    for (name, url) in &known {
        let _ = registry.set_callback(name, url);
    }
    state.send_modify(|s| s.urls = known);
    let hello = Hello {
        version: VERSION,
        token: credentials.token.clone(),
        namespace: config.namespace.clone(),
        services: services
            .iter()
            .map(|(name, e)| Exposed {
                name: name.clone(),
                public: e.public,
            })
            .collect(),
    };
    let mut failures = 0u32;
    let mut said: Option<String> = None;
    loop {
        let outcome = tokio::select! {
            () = shutdown.cancelled() => return,
            outcome = connect(&config.relay, credentials.tls.as_ref(), &hello) => outcome,
        };
        match outcome {
            Ok(Connected { link, opened, urls }) => {
                failures = 0;
                Remembered {
                    relay: config.relay.clone(),
                    namespace: config.namespace.clone(),
                    urls: urls.clone(),
                }
                .write(&remembered);
                for (name, url) in &urls {
                    if let Err(e) = registry.set_callback(name, url) {
                        logs.note(format!("could not write the registry: {e}"));
                    }
                }
                let told = match urls.is_empty() {
                    true => format!("connected to the relay at {}; no service is exposed", config.relay),
                    false => urls
                        .iter()
                        .map(|(n, u)| format!("{n} at {u}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                };
                logs.note(format!("tunnel: {told}"));
                said = None;
                state.send_modify(|s| {
                    s.connected = true;
                    s.urls = urls.clone();
                    s.problem = None;
                });
                live.send_replace(Some(link.clone()));
                tokio::select! {
                    () = shutdown.cancelled() => {
                        link.close();
                        return;
                    }
                    () = serve(&link, opened, &services) => {}
                }
                live.send_replace(None);
                logs.note("tunnel: the link to the relay was lost; connecting again");
                state.send_modify(|s| {
                    s.connected = false;
                    s.problem = Some("the link to the relay was lost".to_owned());
                });
            }
            Err(why) => {
                failures += 1;
                // Said once until it changes: a relay that is down for an
                // hour says so once.
                if said.as_deref() != Some(why.as_str()) {
                    logs.note(format!("tunnel: the relay at {}: {why}; trying again", config.relay));
                    said = Some(why.clone());
                }
                state.send_modify(|s| {
                    s.connected = false;
                    s.problem = Some(why);
                });
            }
        }
        let backoff = Duration::from_millis(500)
            .saturating_mul(1 << failures.min(6))
            .min(MAX_BACKOFF);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
    }
}

/// The public URLs the relay gave, kept in the state folder
/// (`tunnel.json`) for the next run.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Remembered {
    relay: String,
    namespace: String,
    urls: Vec<(String, String)>,
}

impl Remembered {
    /// What `path` remembers of the same relay and namespace.
    fn read(path: &std::path::Path, config: &TunnelConfig) -> Remembered {
        std::fs::read(path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Remembered>(&bytes).ok())
            .filter(|r| r.relay == config.relay && r.namespace == config.namespace)
            .unwrap_or_default()
    }

    fn write(&self, path: &std::path::Path) {
        let json = serde_json::to_vec_pretty(self).expect("URLs serialize");
        let _ = crate::secret::write_private(path, &json);
    }
}

/// A link the relay welcomed.
pub(crate) struct Connected {
    pub link: Link,
    /// The streams the relay opens, each for a service.
    pub opened: mpsc::UnboundedReceiver<(super::link::Stream, String)>,
    /// Each exposed service's public URL.
    pub urls: Vec<(String, String)>,
}

/// Connects, says `hello`, and reads the relay's answer: the link and the
/// public URLs, or why not.
pub(crate) async fn connect(
    relay: &str,
    tls: Option<&tokio_rustls::TlsConnector>,
    hello: &Hello,
) -> Result<Connected, String> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(relay))
        .await
        .map_err(|_| "it does not answer".to_owned())?
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let mut socket: Box<dyn Socket> = match tls {
        Some(tls) => {
            let host = relay.rsplit_once(':').map_or(relay, |(host, _)| host);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| format!("`{host}`: {e}"))?;
            let tls = tokio::time::timeout(Duration::from_secs(10), tls.connect(name, tcp))
                .await
                .map_err(|_| "its TLS handshake did not finish within 10 s".to_owned())?;
            Box::new(tls.map_err(|e| format!("TLS: {e} (hint: `[tunnel] ca` names the relay's CA)"))?)
        }
        None => Box::new(tcp),
    };
    let mut bytes = Vec::new();
    let payload = serde_json::to_vec(hello).expect("a hello serializes");
    Frame::new(Kind::Hello, 0, payload).encode(&mut bytes);
    socket.write_all(&bytes).await.map_err(|e| e.to_string())?;
    let mut read = Vec::new();
    let answer = tokio::time::timeout(Duration::from_secs(10), first_frame(&mut socket, &mut read))
        .await
        .map_err(|_| "it did not answer within 10 s".to_owned())?
        .map_err(|why| match tls {
            // A relay with `[tls]` closes on a plain HELLO.
            None => format!("{why} (hint: if the relay has `[tls]`, set `tls = true` in `[tunnel]`)"),
            Some(_) => why,
        })?;
    match answer.kind {
        Kind::Welcome => {
            let welcome: Welcome = answer.json().map_err(|e| e.to_string())?;
            let (opened_tx, opened) = mpsc::unbounded_channel();
            Ok(Connected {
                link: Link::run(socket, read, opened_tx, Side::Supervisor),
                opened,
                urls: welcome.urls,
            })
        }
        Kind::Refused => Err(format!("refused: {}", String::from_utf8_lossy(&answer.payload))),
        other => Err(format!("it answered {other:?}, not the devmesh tunnel protocol")),
    }
}

/// Hands each connection the relay opens to the service's front port,
/// until the link ends.
pub(crate) async fn serve(
    link: &Link,
    mut opened: mpsc::UnboundedReceiver<(super::link::Stream, String)>,
    services: &BTreeMap<String, Expose>,
) {
    loop {
        let (stream, service) = tokio::select! {
            () = link.closed() => return,
            opened = opened.recv() => match opened { Some(opened) => opened, None => return },
        };
        match services.get(&service) {
            Some(expose) => expose.door.hand(link.carry(stream), crate::inspector::TUNNEL),
            // Not one this supervisor exposes (the relay checks): closed.
            None => drop(link.carry(stream)),
        }
    }
}

/// A bridge on loopback to `target` (`host:port`) inside the sandbox,
/// through the relay: a remote service's front port sends there, and the
/// relay dials the target if its `[dial]` lets this token. Where the bridge
/// listens.
pub async fn reach(
    target: String,
    live: tokio::sync::watch::Receiver<Option<Link>>,
    logs: &Logs,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    crate::proxy::loopback(crate::accept::in_log(logs), shutdown, move |mut socket| {
        let link = live.borrow().clone().filter(Link::is_alive);
        let target = target.clone();
        async move {
            match link {
                Some(link) => {
                    let _ = socket.set_nodelay(true);
                    let stream = link.open(&format!("dial {target}")).await;
                    link.pipe(stream, socket, Vec::new()).await;
                }
                None => {
                    let message = format!(
                        "devmesh: `{target}` is reached through the relay, and the tunnel is not connected (hint: `cargo devmesh ps`)\n"
                    );
                    let answer = crate::proxy::local_response(hyper::StatusCode::BAD_GATEWAY, &message);
                    let _ = socket.write_all(&answer).await;
                }
            }
        }
    })
    .await
}
