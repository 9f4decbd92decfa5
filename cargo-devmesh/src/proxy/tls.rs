//! A sandbox's `https://` services: the front port's proxy speaks plain
//! HTTP, as to any instance, to a bridge of its own on loopback, and the
//! bridge speaks TLS to the sandbox: the URL's host as SNI, and the
//! certificate checked against it with the public roots and the
//! workspace's `[remote] ca`. The proxy stays one forwarder for every
//! instance, and its captures see the requests in clear.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_util::sync::CancellationToken;

use crate::logs::Logs;

/// How TLS to the sandbox is made: the public roots, and a CA of its own.
pub fn connector(ca: Option<&Path>) -> Result<TlsConnector, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = ca {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|e| {
                format!(
                    "`[remote] ca` = `{}`: {e} (hint: a PEM file of the CA's certificate)",
                    ca.display()
                )
            })?;
        if certs.is_empty() {
            return Err(format!("`[remote] ca` = `{}` holds no certificate", ca.display()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("`[remote] ca` = `{}`: {e}", ca.display()))?;
        }
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Starts a bridge to `host` at `remote` for service `service`; where
/// the proxy reaches it. A failed handshake is said in the logs once (then
/// again after one succeeds), and the connection is closed: the caller
/// gets a 502 naming the service.
pub async fn bridge(
    service: String,
    host: String,
    remote: SocketAddr,
    connector: TlsConnector,
    logs: Logs,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let name = ServerName::try_from(host.clone()).map_err(|e| std::io::Error::other(e.to_string()))?;
    let failing = Arc::new(AtomicBool::new(false));
    super::loopback(shutdown, move |mut plain| {
        let (connector, name, logs, failing) = (connector.clone(), name.clone(), logs.clone(), Arc::clone(&failing));
        let (service, host) = (service.clone(), host.clone());
        async move {
            match connect(&connector, name, remote).await {
                Ok(mut tls) => {
                    failing.store(false, Ordering::Relaxed);
                    let _ = tokio::io::copy_bidirectional(&mut plain, &mut tls).await;
                }
                Err(e) => {
                    if !failing.swap(true, Ordering::Relaxed) {
                        logs.note(format!(
                            "{service}: TLS to `{host}` ({remote}) failed: {e} \
                             (hint: a sandbox's own CA goes in `[remote] ca` in devmesh.toml)"
                        ));
                    }
                }
            }
        }
    })
    .await
}

async fn connect(
    connector: &TlsConnector,
    name: ServerName<'static>,
    remote: SocketAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(remote).await?;
    tcp.set_nodelay(true)?;
    connector.connect(name, tcp).await
}
