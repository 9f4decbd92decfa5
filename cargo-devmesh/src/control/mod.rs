//! The supervisor's local API: where `ps`, `restart`, `stop` and `start`
//! reach a running `cargo devmesh run` from another terminal.
//!
//! It listens on 127.0.0.1 only, answers only requests whose `Host` names
//! that address (no DNS rebinding from a browser page), refuses a foreign
//! `Origin`, sends no CORS headers, and needs authentication for every
//! route, reads included: captured traffic holds other people's secrets.
//! The CLI sends the token from `control.json` (mode 0600, in a 0700
//! folder); a browser opens a one-time login link (`run` prints one,
//! `cargo devmesh inspector` prints another), which sets an `HttpOnly`,
//! `SameSite=Strict` session cookie: the Jupyter model.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /login?once=…` | a one-time link: sets the session cookie, then to `/` (no other auth) |
//! | `POST /api/login` | a new one-time login link, `{"url": …}` |
//! | `GET /` | the inspector page |
//! | `GET /api/services` | every service's state, mode and where its traffic goes, as JSON |
//! | `POST /api/services/{name}/mode?to=…` | send its traffic `local`, `remote` or `auto` |
//! | `GET /api/tunnel` | the tunnel: its relay, whether it is connected, each exposed service's URL |
//! | `GET /api/backends` | the remote backends, what each knows, and whether its answers are stale |
//! | `GET /api/routes` | developers' copies of the services here, by route; this developer's routed and shared services |
//! | `POST /api/services/{name}/restart` | rebuild and restart it (`?build=false`: restart only; `?now=true`: cut the old instance's open connections after the grace period) |
//! | `POST /api/services/{name}/stop`, `…/start` | stop it, start it |
//! | `GET /api/traffic` | exchanges, newest last: `service`, `method`, `status`, `q`, `trace`, `limit` (the newest 500 unless given, 10,000 at most), `after` (an id: the oldest after it) |
//! | `GET /api/traffic/{id}` | one exchange with headers and bodies |
//! | `POST /api/traffic/{id}/replay` | send it again; body: optional edits `{method, path, headers, body}` |
//! | `GET /api/traffic.har`, `/api/traffic.jsonl` | export, streamed: every match, oldest first, with the same filters (`after`, and `limit` at most) |
//! | `GET /api/map` | who calls whom: counts, errors, mean and p99 latency |
//! | `GET /api/logs` | recent log lines: `service` (comma-separated), `trace`, `after`, `limit` |
//! | `GET /api/spans?trace=…` | the spans services sent over OTLP for one trace, by start |
//! | `GET /api/metrics` | each metric's newest value, as services sent it, the latest first |
//! | `GET /api/events` | server-sent events: `exchange` and `log` |
//!
//! Every route but `/login` needs `Authorization: Bearer <token>` or the
//! session cookie.

mod api;
mod auth;
use auth::LOGIN_NEEDED;
mod client;
mod file;
mod replay;
mod stream;

use stream::Export;

pub use api::{ApiError, BackendView, LoginLink, ModeSet, RoutesView, ServiceView};
pub use client::Client;
use file::control_path;
pub use file::{ControlFile, ensure_not_running, read, remove};

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::errors::StartError;
use crate::inspector::trace::TraceId;
use crate::inspector::{CallMap, Exchange, Filter, Inspector, Summary};
use crate::logs::Logs;
use crate::proxy::switch::ModeRefused;
use crate::proxy::{FrontPort, Switches};
use crate::state::StateFiles;
use crate::supervisor::{ServiceState, Services};
use devmesh::config::Mode;
use devmesh::registry::Status;

/// How many of the newest exchanges a test of a capture compares its
/// trace with, to tell the fields that vary.
const AS_TEST_HISTORY: usize = 500;

/// The parts of the mesh the API serves.
#[derive(Debug, Clone)]
pub struct Parts {
    /// What the tunnel is doing (its default while there is none).
    pub tunnel: tokio::sync::watch::Receiver<crate::tunnel::client::TunnelState>,
    pub services: Arc<Services>,
    /// Every front port, by service.
    pub switches: Arc<Switches>,
    pub backends: crate::mesh::Backends,
    /// Developers' copies of the services here, by route.
    pub routed: Arc<crate::proxy::RoutedCopies>,
    /// This developer's routed and shared services (`copies` is `routed`'s).
    pub routes: RoutesView,
    pub inspector: Arc<Inspector>,
    pub logs: Logs,
    /// What the services sent over OTLP, and where they send it.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    pub otlp: Option<SocketAddr>,
    /// The services a test of a capture can run (`as_test`).
    pub members: Arc<crate::as_test::Members>,
}

/// Serves the API until `shutdown`; returns its address and a first login
/// link once listening and `control.json` is written.
pub async fn serve(
    state: &StateFiles,
    state_dir: &Path,
    listener: std::net::TcpListener,
    mesh: Parts,
    shutdown: CancellationToken,
) -> Result<Serving, StartError> {
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let addr = listener
        .local_addr()
        .map_err(|source| StartError::Listen { addr: any_port, source })?;
    let listener = listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
        .map_err(|source| StartError::Listen { addr, source })?;
    let secret = |path: &str| {
        crate::secret::random_hex(16).map_err(|source| StartError::File {
            action: "read",
            path: PathBuf::from(path),
            source,
        })
    };
    let control = ControlFile {
        addr,
        token: secret("/dev/urandom")?,
        pid: std::process::id(),
        otlp: mesh.otlp,
    };
    let path = control_path(state_dir);
    let json = serde_json::to_vec_pretty(&control).expect("control serializes");
    state
        .keep(path.clone(), move || json.clone())
        .map_err(|source| StartError::File {
            action: "write",
            path,
            source,
        })?;
    let api = Arc::new(Api {
        mesh,
        control,
        sessions: std::sync::Mutex::default(),
        logins: std::sync::Mutex::default(),
        shutdown: shutdown.clone(),
    });
    let first_login = api.login_url().map_err(|source| StartError::File {
        action: "read",
        path: PathBuf::from("/dev/urandom"),
        source,
    })?;
    let say = crate::accept::in_log(&api.mesh.logs);
    let mut backoff = crate::accept::Backoff::new(format!("the inspector and API at {addr}"), say);
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                () = shutdown.cancelled() => return,
                (stream, _) = crate::accept::next(&listener, &mut backoff) => stream,
            };
            let api = Arc::clone(&api);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let api = Arc::clone(&api);
                    async move { Ok::<_, Infallible>(api.handle(request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(Serving { addr, first_login })
}

/// The API, once it serves.
#[derive(Debug)]
pub struct Serving {
    pub addr: SocketAddr,
    /// A one-time link that logs a browser in, for `run` to print.
    pub first_login: String,
}

struct Api {
    mesh: Parts,
    control: ControlFile,
    /// The session cookies' values, one per login: random, in memory
    /// only, so a leaked cookie is one session, not every browser's.
    sessions: std::sync::Mutex<std::collections::HashSet<String>>,
    /// One-time login tokens not used yet.
    logins: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Ends live streams when the supervisor stops.
    shutdown: CancellationToken,
}

type ApiBody = BoxBody<Bytes, Infallible>;
type ApiResponse = Response<ApiBody>;

/// The inspector page.
const PAGE: &str = include_str!("../inspector/page.html");
/// Newest exchanges a list returns unless asked for fewer.
pub const LIST_LIMIT: usize = 500;
/// Most exchanges one list returns, however many are asked for: a list is
/// built whole in memory (an export streams instead).
const MAX_LIST: usize = 10_000;
impl Api {
    async fn handle(&self, request: Request<Incoming>) -> ApiResponse {
        if !self.host_is_ours(&request) {
            return json(
                StatusCode::FORBIDDEN,
                &error("the Host header must name this API's address"),
            );
        }
        if !self.origin_is_ours(&request) {
            return json(
                StatusCode::FORBIDDEN,
                &error("requests from other sites' pages are refused (the `Origin` is not this API)"),
            );
        }
        let path = request.uri().path().trim_matches('/').to_owned();
        let segments: Vec<&str> = path.split('/').collect();
        let query = crate::form::parse(request.uri().query());
        if request.method() == Method::GET && segments == ["login"] {
            return self.login(query.get("once").map(String::as_str));
        }
        if !self.authorized(&request) {
            return if segments == [""] {
                respond(
                    StatusCode::UNAUTHORIZED,
                    "text/html; charset=utf-8",
                    LOGIN_NEEDED.as_bytes().to_vec(),
                )
            } else {
                json(
                    StatusCode::UNAUTHORIZED,
                    &error(
                        "this needs `Authorization: Bearer <token>` with the token from control.json, \
                         or a browser logged in (hint: `cargo devmesh inspector` prints a login link)",
                    ),
                )
            };
        }
        match (request.method().clone(), segments.as_slice()) {
            (Method::GET, [""]) => self.page(),
            (Method::POST, ["api", "login"]) => match self.login_url() {
                Ok(url) => json(StatusCode::OK, &LoginLink { url }),
                Err(e) => json(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &error(&format!("could not make a login link: {e}")),
                ),
            },
            (Method::GET, ["api", "services"]) => json(StatusCode::OK, &self.views()),
            (Method::POST, ["api", "services", name, "mode"]) => self.set_mode(name, &query).await,
            (Method::GET, ["api", "tunnel"]) => json(StatusCode::OK, &*self.mesh.tunnel.borrow()),
            (Method::GET, ["api", "backends"]) => {
                let views: Vec<BackendView> = self
                    .mesh
                    .backends
                    .iter()
                    .map(|b| BackendView {
                        place: b.describe(),
                        names: b.names(),
                        stale: b.stale(),
                    })
                    .collect();
                json(StatusCode::OK, &views)
            }
            (Method::GET, ["api", "routes"]) => {
                let mut routes = self.mesh.routes.clone();
                routes.copies = self.mesh.routed.list();
                json(StatusCode::OK, &routes)
            }
            (Method::POST, ["api", "services", name, action]) => self.act(name, action, &query).await,
            (Method::GET, ["api", "traffic"]) => {
                let summaries: Vec<Summary> = self
                    .mesh
                    .inspector
                    .store
                    .list(&filter(&query))
                    .into_iter()
                    .map(|e| e.summary)
                    .collect();
                json(StatusCode::OK, &summaries)
            }
            (Method::GET, ["api", "traffic.har"]) => self.export(&query, Export::Har),
            (Method::GET, ["api", "traffic.jsonl"]) => self.export(&query, Export::JsonLines),
            (Method::GET, ["api", "traffic", id]) => match self.kept(id) {
                Ok(exchange) => json(StatusCode::OK, &self.mesh.inspector.store.masker.exchange(exchange)),
                Err(response) => *response,
            },
            (Method::POST, ["api", "traffic", id, "replay"]) => self.replay(id, request).await,
            (Method::GET, ["api", "traffic", id, "as-test"]) => self.as_test(id, &query),
            (Method::GET, ["api", "map"]) => json(StatusCode::OK, &CallMap::of(&self.mesh.inspector.store)),
            (Method::GET, ["api", "logs"]) => {
                let services: Vec<String> = query
                    .get("service")
                    .map(|s| s.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect())
                    .unwrap_or_default();
                let after = query.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
                let limit = query.get("limit").and_then(|a| a.parse().ok()).unwrap_or(1000);
                let lines = self
                    .mesh
                    .logs
                    .recent(&services, query.get("trace").map(String::as_str), after, limit);
                json(StatusCode::OK, &lines)
            }
            (Method::GET, ["api", "spans"]) => {
                let trace = query.get("trace").map(String::as_str).unwrap_or_default();
                let masker = &self.mesh.inspector.store.masker;
                let spans: Vec<_> = self
                    .mesh
                    .telemetry
                    .spans(trace)
                    .into_iter()
                    .map(|mut span| {
                        masker.attributes(&mut span.attributes);
                        span
                    })
                    .collect();
                json(StatusCode::OK, &spans)
            }
            (Method::GET, ["api", "metrics"]) => json(StatusCode::OK, &self.mesh.telemetry.metrics()),
            (Method::GET, ["api", "events"]) => self.events(),
            _ => json(StatusCode::NOT_FOUND, &error("no such route; see `GET /api/services`")),
        }
    }

    fn page(&self) -> ApiResponse {
        let mut response = respond(StatusCode::OK, "text/html; charset=utf-8", PAGE.as_bytes().to_vec());
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
        response
    }

    /// Every service with a front port, by name: those run here, and those
    /// used from the sandbox only.
    fn views(&self) -> Vec<ServiceView> {
        let states: HashMap<String, ServiceState> = self
            .mesh
            .services
            .states()
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        self.mesh
            .switches
            .all()
            .into_iter()
            .map(|(name, FrontPort { addr, switch })| {
                let remote = switch.remote().map(|r| r.url.clone());
                let via_relay = self.mesh.tunnel.borrow().reached.contains(&name);
                let state = match states.get(&name) {
                    Some(state) => state.clone(),
                    // Used from the sandbox only.
                    None => ServiceState {
                        name,
                        status: Status::Remote,
                        front: addr,
                        pid: None,
                        restarts: 0,
                        crashes: 0,
                        draining: 0,
                        note: None,
                    },
                };
                ServiceView {
                    state,
                    mode: switch.mode(),
                    traffic: switch.traffic(),
                    remote,
                    via_relay,
                }
            })
            .collect()
    }

    /// `POST /api/services/{name}/mode?to=local|remote|auto`.
    async fn set_mode(&self, name: &str, query: &HashMap<String, String>) -> ApiResponse {
        let mode: Mode = match query.get("to").map(|to| to.parse()) {
            Some(Ok(mode)) => mode,
            Some(Err(why)) => return json(StatusCode::BAD_REQUEST, &error(&why)),
            None => return json(StatusCode::BAD_REQUEST, &error("say the mode: `?to=local|remote|auto`")),
        };
        match self.mesh.services.set_mode(&self.mesh.switches, name, mode).await {
            Ok(traffic) => json(StatusCode::OK, &ModeSet { mode, traffic }),
            Err(refused @ ModeRefused::Unknown(_)) => json(StatusCode::NOT_FOUND, &error(&refused.to_string())),
            Err(refused) => json(StatusCode::CONFLICT, &error(&refused.to_string())),
        }
    }

    async fn act(&self, name: &str, action: &str, query: &HashMap<String, String>) -> ApiResponse {
        let service = match self.mesh.services.get(name) {
            Ok(service) => service,
            Err(unknown) => return json(StatusCode::NOT_FOUND, &error(&unknown.to_string())),
        };
        let build = query.get("build").map(String::as_str) != Some("false");
        let now = query.get("now").map(String::as_str) == Some("true");
        let ticket = match action {
            "restart" => service.restart(build, now),
            "stop" => service.stop(),
            "start" => service.start(),
            _ => {
                return json(StatusCode::NOT_FOUND, &error(&format!("unknown action `{action}`")));
            }
        };
        match ticket.await {
            Ok(done) => json(StatusCode::OK, &done),
            Err(refused) => json(StatusCode::CONFLICT, &error(&refused.to_string())),
        }
    }

    /// Exchange `id` as kept, secrets included: mask it before showing it.
    fn kept(&self, id: &str) -> Result<Exchange, Box<ApiResponse>> {
        let parsed: u64 = id.parse().map_err(|_| {
            Box::new(json(
                StatusCode::BAD_REQUEST,
                &error(&format!("`{id}` is not an exchange id")),
            ))
        })?;
        self.mesh.inspector.store.get_unmasked(parsed).ok_or_else(|| {
            Box::new(json(
                StatusCode::NOT_FOUND,
                &error(&format!(
                    "no exchange {parsed}: it never was, or the oldest were dropped to stay within `inspector.memory`"
                )),
            ))
        })
    }

    /// The test of exchange `id`'s trace (or of trace `id`, 32 hex
    /// digits), with the services of `?stub=a,b` standing in.
    fn as_test(&self, id: &str, query: &HashMap<String, String>) -> ApiResponse {
        let store = &self.mesh.inspector.store;
        let is_trace = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_trace && id.parse::<u64>().is_err() {
            return json(
                StatusCode::BAD_REQUEST,
                &error(&format!(
                    "`{id}` is neither an exchange's number (as `cargo devmesh traffic` lists them) nor a trace id (32 hex digits)"
                )),
            );
        }
        let (trace, origin) = if is_trace {
            (TraceId::parse(id), format!("trace {id}"))
        } else {
            let exchange = match self.kept(id) {
                Ok(exchange) => exchange,
                Err(response) => return *response,
            };
            let at =
                crate::time::timestamp(std::time::UNIX_EPOCH + std::time::Duration::from_millis(exchange.started_ms));
            let of_trace = exchange.trace_id.map_or_else(String::new, |t| format!(" of trace {t}"));
            let origin = format!("exchange #{}{of_trace}, at {at}", exchange.id);
            if exchange.trace_id.is_none() {
                // In no trace: the test of it alone.
                return self.written(&[store.masker.exchange(exchange)], query, &origin);
            }
            (exchange.trace_id, origin)
        };
        let filter = Filter {
            trace_id: trace,
            ..Filter::default()
        };
        let exchanges = store.list(&filter);
        if exchanges.is_empty() {
            return json(
                StatusCode::NOT_FOUND,
                &error(&format!(
                    "no exchange of trace {id} is kept: it never was, or its exchanges were dropped to stay within `inspector.memory` (hint: `cargo devmesh traffic` lists what is kept)"
                )),
            );
        }
        self.written(&exchanges, query, &origin)
    }

    fn written(&self, trace: &[Exchange], query: &HashMap<String, String>, origin: &str) -> ApiResponse {
        let stubs: Vec<String> = query
            .get("stub")
            .map(|s| s.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
        if let Some(unknown) = stubs.iter().find(|s| !trace.iter().any(|e| *e.service == **s)) {
            let mut called: Vec<&str> = trace.iter().map(|e| &*e.service).collect();
            called.sort_unstable();
            called.dedup();
            return json(
                StatusCode::BAD_REQUEST,
                &error(&format!(
                    "`{unknown}` is not called in this trace, so it cannot stand in (hint: it calls {})",
                    called.join(", ")
                )),
            );
        }
        // The newest exchanges kept: what differs between them and the
        // trace's varies.
        let store = &self.mesh.inspector.store;
        let history = store.list(&Filter {
            limit: Some(AS_TEST_HISTORY),
            ..Filter::default()
        });
        let pids: Vec<u32> = self.mesh.services.states().iter().filter_map(|s| s.pid).collect();
        let capture = crate::as_test::Capture {
            trace,
            history: &history,
            pids: &pids,
            origin,
        };
        match crate::as_test::write(capture, &self.mesh.members, &stubs, &store.masker) {
            Ok(written) => json(StatusCode::OK, &written),
            Err(why) => json(StatusCode::UNPROCESSABLE_ENTITY, &error(&why.to_string())),
        }
    }

    async fn replay(&self, id: &str, request: Request<Incoming>) -> ApiResponse {
        let exchange = match self.kept(id) {
            Ok(exchange) => exchange,
            Err(response) => return *response,
        };
        let body = match request.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(e) => return json(StatusCode::BAD_REQUEST, &error(&e.to_string())),
        };
        let edits: replay::Edits = if body.is_empty() {
            replay::Edits::default()
        } else {
            match serde_json::from_slice(&body) {
                Ok(edits) => edits,
                Err(e) => {
                    return json(
                        StatusCode::BAD_REQUEST,
                        &error(&format!(
                            "the edits are not valid: {e} (hint: send {{\"method\", \"path\", \"headers\": [[name, value]], \"body\"}}, each optional)"
                        )),
                    );
                }
            }
        };
        // The edit form showed secret headers masked: those sent back as
        // shown go out with their real values.
        let mut edits = edits;
        if let Some(headers) = &mut edits.headers {
            let masker = &self.mesh.inspector.store.masker;
            for (name, value) in headers.iter_mut() {
                if let Some(real) = masker.real_value(&exchange.request_headers, name, value) {
                    *value = real.to_owned();
                }
            }
        }
        let service = match self.mesh.services.get(&exchange.service) {
            Ok(service) => service,
            Err(unknown) => return json(StatusCode::NOT_FOUND, &error(&unknown.to_string())),
        };
        let front = service.state.borrow().front;
        let header = self.mesh.inspector.replay_header(exchange.id);
        match replay::replay(&exchange, edits, front, header).await {
            Ok(replayed) => {
                if let Some(id) = replayed.exchange {
                    self.recorded(id).await;
                }
                json(StatusCode::OK, &replayed)
            }
            Err(why) => json(StatusCode::CONFLICT, &error(&why)),
        }
    }

    /// Waits, a little, until exchange `id` has ended in the store: the
    /// proxy records an exchange just after its client has the answer, and
    /// whoever asked for a replay then asks for the exchange.
    async fn recorded(&self, id: u64) {
        let store = &self.mesh.inspector.store;
        let mut events = store.subscribe();
        let deadline = tokio::time::sleep(Duration::from_secs(2));
        tokio::pin!(deadline);
        while !store.get(id).is_some_and(|e| e.complete) {
            tokio::select! {
                () = &mut deadline => return,
                event = events.recv() => if let Err(broadcast::error::RecvError::Closed) = event {
                    return;
                },
            }
        }
    }
}

fn filter(query: &HashMap<String, String>) -> Filter {
    let text = |key: &str| query.get(key).filter(|v| !v.is_empty()).cloned();
    Filter {
        service: text("service"),
        method: text("method"),
        status: text("status"),
        text: text("q"),
        // A trace id that does not parse matches nothing, as it should.
        trace_id: text("trace").map(|t| TraceId::parse(&t).unwrap_or(TraceId(0))),
        after: query.get("after").and_then(|a| a.parse().ok()),
        limit: Some(
            query
                .get("limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(LIST_LIMIT)
                .min(MAX_LIST),
        ),
    }
}

fn error(message: &str) -> ApiError {
    ApiError {
        error: message.to_owned(),
    }
}

fn json(status: StatusCode, body: &impl Serialize) -> ApiResponse {
    respond(
        status,
        "application/json",
        serde_json::to_vec(body).expect("API bodies serialize"),
    )
}

fn respond(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> ApiResponse {
    let mut response = Response::new(BodyExt::boxed(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}
