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
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

use crate::logs::Logs;

/// How TLS to the sandbox is made: the public roots, and a CA of its own
/// (`ca`, the file the setting named `setting` gives).
pub fn connector(ca: Option<&Path>, setting: &str) -> Result<TlsConnector, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = ca {
        for cert in certificates(ca, setting)? {
            roots
                .add(cert)
                .map_err(|e| format!("{setting} = `{}`: {e}", ca.display()))?;
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// How a server of devmesh's (the relay) speaks TLS: the certificate
/// chain in `cert` and its key in `key`, PEM files.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let chain = certificates(cert, "`[tls] cert`")?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "`[tls] key` = `{}`: {e} (hint: a PEM file of the certificate's private key)",
            key.display()
        )
    })?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("`[tls]`: the certificate and its key: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn provider() -> Arc<tokio_rustls::rustls::crypto::CryptoProvider> {
    Arc::new(tokio_rustls::rustls::crypto::ring::default_provider())
}

/// The certificates of PEM file `path`, which setting `setting` names.
fn certificates(path: &Path, setting: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| {
            format!(
                "{setting} = `{}`: {e} (hint: a PEM file of certificates)",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!("{setting} = `{}` holds no certificate", path.display()));
    }
    Ok(certs)
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
    super::loopback(crate::accept::in_log(&logs), shutdown, move |mut plain| {
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
