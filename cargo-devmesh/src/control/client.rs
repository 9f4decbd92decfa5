//! The other end of the API: what `ps`, `restart`, `stop` and `start` use.

use std::path::Path;

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;

use super::{ApiError, BackendView, ControlFile, LoginLink, ModeSet, ServiceView};
use crate::supervisor::Done;

/// A connection to a running supervisor's API.
#[derive(Debug)]
pub struct Client {
    control: ControlFile,
}

impl Client {
    /// Finds the supervisor of the workspace whose state is in `state_dir`;
    /// `manifest_path` is the one the user gave, repeated in the hint.
    pub fn find(state_dir: &Path, manifest_path: Option<&Path>) -> anyhow::Result<Client> {
        match super::read(state_dir) {
            Some(control) if crate::platform::process_exists(control.pid) => Ok(Client { control }),
            _ => {
                let manifest = manifest_path
                    .map(|p| format!(" --manifest-path {}", p.display()))
                    .unwrap_or_default();
                bail!(
                    "no `cargo devmesh run` is running for this workspace (looked for `{}`) \
                     (hint: start one with `cargo devmesh run{manifest}`)",
                    state_dir.join("control.json").display()
                )
            }
        }
    }

    /// Where the supervisor's API (and the inspector page) listens.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.control.addr
    }

    /// `GET /api/services`: what each service is doing, and where its
    /// traffic goes.
    pub async fn services(&self) -> anyhow::Result<Vec<ServiceView>> {
        decode(&self.get("/api/services").await?)
    }

    /// `GET /api/tunnel`: the tunnel and its URLs.
    pub async fn tunnel(&self) -> anyhow::Result<crate::tunnel::client::TunnelState> {
        decode(&self.get("/api/tunnel").await?)
    }

    /// `GET /api/backends`: the remote backends and their state.
    pub async fn backends(&self) -> anyhow::Result<Vec<BackendView>> {
        decode(&self.get("/api/backends").await?)
    }

    /// `GET /api/routes`: who serves which route.
    pub async fn routes(&self) -> anyhow::Result<super::RoutesView> {
        decode(&self.get("/api/routes").await?)
    }

    /// `POST /api/services/{name}/mode?to={mode}`: where its traffic goes now.
    pub async fn set_mode(&self, name: &str, mode: &str) -> anyhow::Result<ModeSet> {
        decode(
            &self
                .post(&format!("/api/services/{name}/mode?to={mode}"), Bytes::new())
                .await?,
        )
    }

    /// A new one-time link that logs a browser into the inspector.
    pub async fn login_url(&self) -> anyhow::Result<String> {
        let link: LoginLink = decode(&self.post("/api/login", Bytes::new()).await?)?;
        Ok(link.url)
    }

    /// `POST /api/services/{name}/{action}{query}`: what it did, or why not.
    pub async fn act(&self, name: &str, action: &str, query: &str) -> anyhow::Result<Done> {
        let path = format!("/api/services/{name}/{action}{query}");
        decode(&self.post(&path, Bytes::new()).await?)
    }

    /// `GET path`: the body of a successful answer.
    pub async fn get(&self, path: &str) -> anyhow::Result<Bytes> {
        self.call(Method::GET, path, Bytes::new()).await
    }

    /// `GET path`, its body written to `out` as it comes (an export can be
    /// larger than memory wants).
    pub async fn get_to(&self, path: &str, out: &mut impl std::io::Write) -> anyhow::Result<()> {
        let response = self.send(Method::GET, path, Bytes::new()).await?;
        let status = response.status();
        let mut body = response.into_body();
        if status != StatusCode::OK {
            return refused(&body.collect().await?.to_bytes());
        }
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                out.write_all(&data)?;
            }
        }
        Ok(())
    }

    /// `POST path` with `body`: the body of a successful answer.
    pub async fn post(&self, path: &str, body: Bytes) -> anyhow::Result<Bytes> {
        self.call(Method::POST, path, body).await
    }

    async fn call(&self, method: Method, path: &str, body: Bytes) -> anyhow::Result<Bytes> {
        let response = self.send(method, path, body).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if status != StatusCode::OK {
            refused(&body)?;
        }
        Ok(body)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let addr = self.control.addr;
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("could not reach the supervisor's API at {addr}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, addr.to_string())
            .header(header::AUTHORIZATION, format!("Bearer {}", self.control.token))
            .body(Full::new(body))?;
        Ok(sender.send_request(request).await?)
    }
}

/// A body as the type the API wrote it as; a mismatch (a supervisor of
/// another version) says so.
fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> anyhow::Result<T> {
    serde_json::from_slice(body).context(
        "the supervisor answered in a form this `cargo devmesh` does not know \
         (hint: restart `cargo devmesh run` with this version)",
    )
}

/// The error of a refused request.
fn refused(body: &[u8]) -> anyhow::Result<()> {
    match serde_json::from_slice::<ApiError>(body) {
        Ok(refused) => bail!("{}", refused.error),
        Err(_) => bail!("the supervisor refused: {}", String::from_utf8_lossy(body)),
    }
}
