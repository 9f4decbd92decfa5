//! `[remote.dns]`: services as the SRV records `_<svc>._tcp.<domain>` of
//! one DNS server, so Consul's DNS interface and a Kubernetes cluster's DNS
//! both work.
//!
//! Answers are kept in memory: a lookup reads them and makes no syscall.
//! A thread of the backend's own asks again when an answer's TTL runs out.
//! When the server does not answer (or answers garbage), the last answer
//! is kept, marked stale in its source, and the server is asked again
//! with a backoff. A name never seen before is asked once, when it is
//! first looked up (up to [`TIMEOUT`]); the names in `services` are asked
//! at once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use super::Backend;
use crate::config::DnsConfig;
use crate::dns::{self, Data, Question, Response};
use crate::{Endpoint, Source};

/// How long one question waits for its answer.
pub const TIMEOUT: Duration = Duration::from_millis(800);
/// The least time an answer is kept (a TTL of 0 would ask without pause).
const MIN_TTL: Duration = Duration::from_secs(1);
/// How long "no such service" is believed.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// The longest wait between asks of a server that does not answer.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Services found by DNS SRV.
#[derive(Debug)]
pub struct DnsSrv {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    server: SocketAddr,
    domain: String,
    scheme: String,
    description: String,
    answers: Mutex<HashMap<String, Answer>>,
    /// Wakes the refresher when a name is added.
    added: Condvar,
}

#[derive(Debug, Clone)]
struct Answer {
    /// Why the last ask got no usable answer, while it did not.
    failed: Option<String>,
    /// `None`: the server says there is no such service, or was not asked yet.
    endpoint: Option<Endpoint>,
    /// Whether the server was asked (a name from `services` waits for the
    /// refresher's first ask, or its first lookup).
    asked: bool,
    /// When to ask again.
    refresh: Instant,
    /// Asks in a row that got no usable answer.
    failures: u32,
}

/// Why a question got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Failed {
    #[error("it does not answer ({0})")]
    Silent(String),
    #[error("it answered garbage ({0})")]
    Garbage(String),
    #[error("it answered with error code {0}")]
    Code(u8),
}

impl DnsSrv {
    /// The backend `config` describes (checked by [`crate::config::Config`]).
    pub fn new(config: &DnsConfig) -> Result<DnsSrv, crate::Error> {
        let server: SocketAddr = config.server.parse().map_err(|_| crate::Error::Config {
            path: "devmesh.toml".into(),
            problems: vec![format!(
                "key `remote.dns.server`: `{}` is not an address",
                config.server
            )],
        })?;
        let domain = config.domain.trim_matches('.').to_ascii_lowercase();
        let shared = Arc::new(Shared {
            description: format!("DNS SRV `_<svc>._tcp.{domain}` at {server}"),
            server,
            domain,
            scheme: config.scheme.clone(),
            answers: Mutex::default(),
            added: Condvar::new(),
        });
        {
            let mut answers = shared.lock();
            let now = Instant::now();
            for name in &config.services {
                answers.insert(
                    name.clone(),
                    Answer {
                        failed: None,
                        endpoint: None,
                        asked: false,
                        refresh: now,
                        failures: 0,
                    },
                );
            }
        }
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("devmesh-dns-srv".into())
            .spawn(move || refresh(weak))
            .map_err(|e| crate::Error::Config {
                path: "devmesh.toml".into(),
                problems: vec![format!("`[remote.dns]`: could not start its thread: {e}")],
            })?;
        Ok(DnsSrv { shared })
    }
}

impl DnsSrv {
    /// Why the last ask for `name` got no usable answer (the server did
    /// not answer, or answered garbage), while it did not: told apart from
    /// a server that says there is no such service.
    pub fn failure(&self, name: &str) -> Option<String> {
        self.shared.lock().get(name)?.failed.clone()
    }
}

impl Backend for DnsSrv {
    fn describe(&self) -> String {
        self.shared.description.clone()
    }

    fn lookup(&self, name: &str) -> Option<Endpoint> {
        if let Some(answer) = self.shared.lock().get(name)
            && answer.asked
        {
            return answer.endpoint.clone();
        }
        // First asked: once, now, and kept fresh from then on.
        let answer = self.shared.ask(name, None);
        let endpoint = answer.endpoint.clone();
        self.shared.lock().insert(name.to_owned(), answer);
        self.shared.added.notify_one();
        endpoint
    }

    fn stale(&self) -> Option<String> {
        self.shared.lock().values().find_map(|a| a.failed.clone())
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .shared
            .lock()
            .iter()
            .filter(|(_, a)| a.endpoint.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        names
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Answer>> {
        self.answers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks for `name` now; `last` is what was known, kept (stale) when
    /// the server gives no usable answer.
    fn ask(&self, name: &str, last: Option<&Answer>) -> Answer {
        match self.resolve(name) {
            Ok((endpoint, ttl)) => Answer {
                failed: None,
                endpoint,
                asked: true,
                refresh: Instant::now() + ttl,
                failures: 0,
            },
            Err(failed) => {
                let failures = last.map_or(0, |a| a.failures) + 1;
                let backoff = MIN_TTL.saturating_mul(1 << failures.min(5)).min(MAX_BACKOFF);
                let endpoint = last.and_then(|a| a.endpoint.as_ref()).map(|e| {
                    let source = Source::Remote {
                        backend: format!("{} (stale: {failed}; asked again in {backoff:?})", self.description),
                    };
                    Endpoint::from_url(e.name(), e.url(), source).unwrap_or_else(|_| e.clone())
                });
                crate::warn(&format!("{}: `{name}`: {failed}", self.description));
                Answer {
                    failed: Some(failed.to_string()),
                    endpoint,
                    asked: true,
                    refresh: Instant::now() + backoff,
                    failures,
                }
            }
        }
    }

    /// The endpoint of `name` (none: the server says it does not exist),
    /// and how long the answer holds.
    fn resolve(&self, name: &str) -> Result<(Option<Endpoint>, Duration), Failed> {
        let question = format!("_{name}._tcp.{}", self.domain);
        let response = self.query(&question, dns::SRV)?;
        if response.code == dns::NXDOMAIN {
            return Ok((None, NEGATIVE_TTL));
        }
        if response.code != dns::NOERROR {
            return Err(Failed::Code(response.code));
        }
        let Some(best) = Best::of(&response) else {
            return Ok((None, NEGATIVE_TTL));
        };
        let ip = match best.ip {
            Some(ip) => Some(ip),
            None if is_host_name(&best.target) => address_of(&best.target, &self.query(&best.target, dns::A)?.answers),
            None => None,
        };
        let source = Source::Remote {
            backend: self.description.clone(),
        };
        let endpoint = best.endpoint(name, &self.scheme, ip, source)?;
        Ok((Some(endpoint), Duration::from_secs(u64::from(best.ttl)).max(MIN_TTL)))
    }

    /// One question to the server, over UDP.
    fn query(&self, name: &str, kind: u16) -> Result<Response, Failed> {
        let silent = |e: std::io::Error| Failed::Silent(e.to_string());
        let any: SocketAddr = match self.server {
            SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("an address"),
            SocketAddr::V6(_) => "[::]:0".parse().expect("an address"),
        };
        let socket = UdpSocket::bind(any).map_err(silent)?;
        socket.set_read_timeout(Some(TIMEOUT)).map_err(silent)?;
        socket.connect(self.server).map_err(silent)?;
        let id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u16)
            ^ std::process::id() as u16;
        socket.send(&Question::new(id, name, kind).to_bytes()).map_err(silent)?;
        let mut buf = [0u8; 1500];
        loop {
            let len = socket.recv(&mut buf).map_err(silent)?;
            let response = Response::parse(&buf[..len]).map_err(|e| Failed::Garbage(e.to_string()))?;
            // An answer to another question is not ours.
            if response.id == id {
                return Ok(response);
            }
        }
    }
}

/// What an SRV answer says of a service: its best record (lowest
/// priority, then highest weight), and its target's address when the
/// answer carries it beside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Best {
    pub port: u16,
    pub target: String,
    pub ttl: u32,
    pub ip: Option<IpAddr>,
}

impl Best {
    pub fn of(response: &Response) -> Option<Best> {
        let (_, _, port, target, ttl) = response
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                Data::Srv {
                    priority,
                    weight,
                    port,
                    target,
                } => Some((*priority, std::cmp::Reverse(*weight), *port, target, r.ttl)),
                _ => None,
            })
            .min()?;
        Some(Best {
            port,
            ip: address_of(target, &response.additional),
            target: target.clone(),
            ttl,
        })
    }

    /// The endpoint at the target (or `ip`, its address), over `scheme`.
    /// A target that is no host name is garbage: its bytes would otherwise
    /// be read as a URL's, and could name another port or host.
    pub fn endpoint(&self, name: &str, scheme: &str, ip: Option<IpAddr>, source: Source) -> Result<Endpoint, Failed> {
        let host = match ip {
            Some(IpAddr::V4(ip)) => ip.to_string(),
            Some(IpAddr::V6(ip)) => format!("[{ip}]"),
            // A name only the system's resolver knows.
            None if is_host_name(&self.target) => self.target.clone(),
            None => {
                return Err(Failed::Garbage(format!(
                    "the SRV target `{}` is no host name",
                    self.target
                )));
            }
        };
        let url = format!("{scheme}://{host}:{}", self.port);
        Endpoint::from_url(name, &url, source).map_err(|e| Failed::Garbage(e.reason.to_owned()))
    }
}

/// The address of `target` among `records`.
fn address_of(target: &str, records: &[dns::Record]) -> Option<IpAddr> {
    records.iter().find_map(|r| match &r.data {
        Data::A(ip) if r.name == target => Some(IpAddr::V4(*ip)),
        Data::Aaaa(ip) if r.name == target => Some(IpAddr::V6(*ip)),
        _ => None,
    })
}

/// Labels of letters, digits, `-` and `_` (SRV's own names have it),
/// joined by dots.
fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The refresher: asks again for each name whose answer is due, until the
/// backend is dropped.
fn refresh(shared: Weak<Shared>) {
    loop {
        let Some(strong) = shared.upgrade() else { return };
        let due: Vec<(String, Answer)> = {
            let answers = strong.lock();
            let now = Instant::now();
            answers
                .iter()
                .filter(|(_, a)| a.refresh <= now)
                .map(|(n, a)| (n.clone(), a.clone()))
                .collect()
        };
        for (name, last) in due {
            let answer = strong.ask(&name, Some(&last));
            strong.lock().insert(name, answer);
        }
        // Sleep until the next is due (or a name is added); waking at
        // least every few seconds notices a dropped backend.
        let answers = strong.lock();
        let next = answers.values().map(|a| a.refresh).min();
        let wait = next
            .map_or(Duration::from_secs(5), |at| {
                at.saturating_duration_since(Instant::now())
            })
            .min(Duration::from_secs(5));
        let _ = strong.added.wait_timeout(answers, wait);
    }
}
