//! [`serve`]: the accept loop and per-connection HTTP/1 with [`Limits`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit};
use axum::http::{Request, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::ServiceBuilder;
use tower_http::timeout::TimeoutLayer;

use super::Limits;

/// The peer's address, as handlers read it: `ConnectInfo<SocketAddr>`.
pub type PeerAddr = ConnectInfo<SocketAddr>;

/// First and longest pause after `accept` fails for lack of resources.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// Serves `router` on `listener` within `limits` until `shutdown`
/// completes, then lets the requests in flight finish (for at most one
/// request timeout). Handlers can read the client's address as
/// [`PeerAddr`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let max_connections = limits.effective_max_connections();
    if max_connections < limits.max_connections {
        tracing::warn!(
            max_connections,
            asked = limits.max_connections,
            "Client connections capped below the open-file limit (raise `ulimit -n` for more)."
        );
    }
    let router = router.layer(DefaultBodyLimit::max(limits.max_body_bytes));
    // Built once: the layer's semaphore is shared by every connection.
    let in_flight = GlobalConcurrencyLimitLayer::new(limits.max_in_flight.max(1));
    let timeout =
        TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, limits.request_timeout);
    let connections = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    let mut backoff = ACCEPT_BACKOFF.0;
    tokio::pin!(shutdown);
    loop {
        // A slot first: at the cap, new connections wait in the kernel's
        // backlog, costing this process no descriptor.
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => {
                    backoff = ACCEPT_BACKOFF.0;
                    conn
                }
                Err(e) if is_per_connection(&e) => continue,
                Err(e) => {
                    // Out of descriptors or memory: retrying at once would
                    // spin; connections closing meanwhile free some.
                    tracing::warn!(error = %e, pause_ms = backoff.as_millis() as u64,
                        "Accepting a connection failed; pausing.");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = ServiceBuilder::new()
            .layer(timeout)
            .layer(in_flight.clone())
            .map_request(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            })
            .service(router.clone());
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                // Header timeouts, resets, malformed requests: the client's
                // business, not an error of the server.
                tracing::debug!(%peer, error = %e, "Connection ended with an error.");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.request_timeout) => {
            tracing::warn!("Connections still open at shutdown were closed.");
        }
    }
    Ok(())
}

/// Errors of one connection (it was reset before we took it), after which
/// the next `accept` can go on at once.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn start(limits: Limits) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound address");
        let router = Router::new()
            .route("/", get(|| async { "hello" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .route(
                "/peer",
                get(|ConnectInfo(p): PeerAddr| async move { p.ip().to_string() }),
            );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = serve(listener, router, &limits, async {
                let _ = rx.await;
            })
            .await;
        });
        (addr, tx)
    }

    async fn request(addr: SocketAddr, path: &str) -> String {
        let mut c = TcpStream::connect(addr).await.expect("connect");
        c.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut out = String::new();
        c.read_to_string(&mut out).await.expect("read");
        out
    }

    fn limits() -> Limits {
        Limits {
            max_connections: 3,
            header_read_timeout: Duration::from_millis(300),
            request_timeout: Duration::from_millis(500),
            max_in_flight: 8,
            max_body_bytes: 1024,
        }
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_after_the_header_timeout() {
        let (addr, _stop) = start(limits()).await;
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        // Half a request line, then nothing.
        idle.write_all(b"GET / HT").await.expect("write");
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the server never closed an idle connection");
        // A silent one too, and a kept-alive one after its first answer.
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        let read = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "a connection that sends nothing stays open");
        let mut kept = TcpStream::connect(addr).await.expect("connect");
        kept.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), kept.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "a kept-alive connection idles forever");
        assert!(String::from_utf8_lossy(&out).contains("hello"));
    }

    #[tokio::test]
    async fn idle_connections_beyond_the_cap_wait_and_then_get_served() {
        let (addr, _stop) = start(limits()).await;
        let mut idle = Vec::new();
        for _ in 0..10 {
            idle.push(TcpStream::connect(addr).await.expect("connect"));
        }
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(10), request(addr, "/")).await;
        let answer = answer.expect("served once the idle connections timed out");
        assert!(answer.contains("hello"), "{answer}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn slow_requests_get_503_and_handlers_see_the_peer() {
        let (addr, _stop) = start(limits()).await;
        let slow = request(addr, "/slow").await;
        assert!(slow.starts_with("HTTP/1.1 503"), "{slow}");
        let peer = request(addr, "/peer").await;
        assert!(peer.ends_with("127.0.0.1"), "{peer}");
    }
}
