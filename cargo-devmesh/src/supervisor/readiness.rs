//! Readiness checks: is a new instance able to serve yet?

use std::net::SocketAddr;
use std::time::Duration;

use devmesh::config::Readiness;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one check may take before it counts as "not yet".
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// The pause between checks grows to this.
const MAX_PAUSE: Duration = Duration::from_millis(200);

/// Waits until the instance at `addr` passes `check`. Never gives up: the
/// caller races it against the process exiting.
pub async fn wait(addr: SocketAddr, check: &Readiness) {
    let mut pause = Duration::from_millis(5);
    loop {
        if tokio::time::timeout(CHECK_TIMEOUT, passes(addr, check)).await == Ok(true) {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

async fn passes(addr: SocketAddr, check: &Readiness) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let path = match check {
        Readiness::Tcp => return true,
        Readiness::Http(path) => path.as_str(),
        _ => "/",
    };
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: devmesh-readiness\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    if stream.read_exact(&mut head).await.is_err() || !head.starts_with(b"HTTP/1.") {
        return false;
    }
    match check {
        Readiness::Http(_) => head[9] == b'2',
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn answer_once(listener: &TcpListener, response: &'static [u8]) {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf).await.unwrap();
        stream.write_all(response).await.unwrap();
    }

    #[tokio::test]
    async fn http_needs_2xx_responds_takes_any_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health = Readiness::Http("/health".into());
        let (ok, ()) = tokio::join!(
            passes(addr, &health),
            answer_once(&listener, b"HTTP/1.1 503 No\r\n\r\n")
        );
        assert!(!ok);
        let (ok, ()) = tokio::join!(
            passes(addr, &health),
            answer_once(&listener, b"HTTP/1.1 204 OK\r\n\r\n")
        );
        assert!(ok);
        let (ok, ()) = tokio::join!(
            passes(addr, &Readiness::Responds),
            answer_once(&listener, b"HTTP/1.1 404 Not Found\r\n\r\n")
        );
        assert!(ok);
    }

    #[tokio::test]
    async fn a_closed_port_is_not_ready() {
        let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        assert!(!passes(addr, &Readiness::Tcp).await);
    }
}
