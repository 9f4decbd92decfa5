//! The supervisor's local API: where `ps`, `restart`, `stop` and `start`
//! reach a running `cargo devmesh run` from another terminal.
//!
//! It listens on 127.0.0.1 only, answers only requests whose `Host` names
//! that address (no DNS rebinding from a browser page), and needs the token
//! from `control.json` for anything that changes state.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /api/services` | every service's state, as JSON |
//! | `POST /api/services/{name}/restart` | rebuild and restart it (`?build=false`: restart only) |
//! | `POST /api/services/{name}/stop` | stop it |
//! | `POST /api/services/{name}/start` | start it |

mod client;

pub use client::Client;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::errors::StartError;
use crate::supervisor::ServiceHandle;

/// `<state>/control.json`: where the API listens and the token it wants.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlFile {
    pub addr: SocketAddr,
    pub token: String,
    pub pid: u32,
}

fn control_path(state_dir: &Path) -> PathBuf {
    state_dir.join("control.json")
}

/// Reads `control.json`, if a supervisor left one.
pub fn read(state_dir: &Path) -> Option<ControlFile> {
    serde_json::from_slice(&std::fs::read(control_path(state_dir)).ok()?).ok()
}

/// Fails when another live supervisor runs for this workspace.
pub fn ensure_not_running(state_dir: &Path) -> Result<(), StartError> {
    match read(state_dir) {
        Some(control) if control.pid != std::process::id() && alive(control.pid) => {
            Err(StartError::AlreadyRunning {
                pid: control.pid,
                addr: control.addr,
            })
        }
        _ => Ok(()),
    }
}

/// Whether process `pid` exists.
pub fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// Removes `control.json` (on shutdown).
pub fn remove(state_dir: &Path) {
    let _ = std::fs::remove_file(control_path(state_dir));
}

/// Serves the API until `shutdown`; returns its address once listening and
/// `control.json` is written.
pub async fn serve(
    state_dir: &Path,
    services: Arc<BTreeMap<String, ServiceHandle>>,
    shutdown: CancellationToken,
) -> Result<SocketAddr, StartError> {
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let listener = tokio::net::TcpListener::bind(any_port)
        .await
        .map_err(|source| StartError::Listen {
            addr: any_port,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: any_port,
        source,
    })?;
    let control = ControlFile {
        addr,
        token: new_token()?,
        pid: std::process::id(),
    };
    let path = control_path(state_dir);
    let temp = path.with_extension("json.tmp");
    std::fs::write(
        &temp,
        serde_json::to_vec_pretty(&control).expect("control serializes"),
    )
    .and_then(|()| std::fs::rename(&temp, &path))
    .map_err(|source| StartError::File {
        action: "write",
        path,
        source,
    })?;
    let api = Arc::new(Api { services, control });
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
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
    Ok(addr)
}

/// A random token: 128 bits from the kernel, as hex.
fn new_token() -> Result<String, StartError> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| std::io::Read::read_exact(&mut random, &mut bytes))
        .map_err(|source| StartError::File {
            action: "read",
            path: PathBuf::from("/dev/urandom"),
            source,
        })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

struct Api {
    services: Arc<BTreeMap<String, ServiceHandle>>,
    control: ControlFile,
}

type ApiResponse = Response<Full<Bytes>>;

impl Api {
    async fn handle(&self, request: Request<Incoming>) -> ApiResponse {
        if !self.host_is_ours(&request) {
            return json(
                StatusCode::FORBIDDEN,
                &error("the Host header must name this API's address"),
            );
        }
        let path: Vec<&str> = request.uri().path().trim_matches('/').split('/').collect();
        match (request.method(), path.as_slice()) {
            (&Method::GET, ["api", "services"]) => {
                let states: Vec<_> = self
                    .services
                    .values()
                    .map(|h| h.state.borrow().clone())
                    .collect();
                json(StatusCode::OK, &states)
            }
            (&Method::POST, ["api", "services", name, action]) => {
                if !self.authorized(&request) {
                    return json(
                        StatusCode::UNAUTHORIZED,
                        &error(
                            "this needs `Authorization: Bearer <token>` with the token from control.json",
                        ),
                    );
                }
                let Some(service) = self.services.get(*name) else {
                    let known: Vec<_> = self.services.keys().map(|n| format!("`{n}`")).collect();
                    return json(
                        StatusCode::NOT_FOUND,
                        &error(&format!(
                            "unknown service `{name}` (hint: running are {})",
                            known.join(", ")
                        )),
                    );
                };
                let build = request.uri().query() != Some("build=false");
                let ticket = match *action {
                    "restart" => service.restart(build),
                    "stop" => service.stop(),
                    "start" => service.start(),
                    _ => {
                        return json(
                            StatusCode::NOT_FOUND,
                            &error(&format!("unknown action `{action}`")),
                        );
                    }
                };
                match ticket.await {
                    Ok(Ok(done)) => json(StatusCode::OK, &serde_json::json!({ "ok": done })),
                    Ok(Err(why)) => json(StatusCode::CONFLICT, &error(&why)),
                    Err(_) => json(StatusCode::CONFLICT, &error("the supervisor is stopping")),
                }
            }
            _ => json(
                StatusCode::NOT_FOUND,
                &error("no such route; see `GET /api/services`"),
            ),
        }
    }

    fn host_is_ours(&self, request: &Request<Incoming>) -> bool {
        let port = self.control.addr.port();
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        host.is_some_and(|h| h == format!("127.0.0.1:{port}") || h == format!("localhost:{port}"))
    }

    fn authorized(&self, request: &Request<Incoming>) -> bool {
        let expected = format!("Bearer {}", self.control.token);
        request
            .headers()
            .get(header::AUTHORIZATION)
            .is_some_and(|v| v.as_bytes() == expected.as_bytes())
    }
}

fn error(message: &str) -> serde_json::Value {
    serde_json::json!({ "error": message })
}

fn json(status: StatusCode, body: &impl Serialize) -> ApiResponse {
    let mut response = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(body).expect("API bodies serialize"),
    )));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}
