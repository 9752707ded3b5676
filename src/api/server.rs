//! The API's HTTP server: hyper under our own accept loop, because a
//! daemon on a vehicle must not be exhausted by clients. At most
//! `max_connections` sockets are held at once (further ones wait in the
//! kernel's backlog), and a connection that does not send a complete
//! request head within `header_timeout` (a half-sent request, or an idle
//! keep-alive) is closed, so idle or slow clients cannot hold the slots.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Limits on the API's connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Sockets held at once.
    pub max_connections: usize,
    /// Longest wait for a request head (also the keep-alive idle limit).
    pub header_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets the
/// requests in flight finish (at most 10 s).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Out of descriptors, mostly: wait, never end serving.
                    tracing::warn!(%error, "API accept failed.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let first_byte = limits.header_timeout;
        tokio::spawn(async move {
            // hyper's head timer starts with the first byte: a client that
            // connects and sends nothing is closed here.
            let mut probe = [0u8; 1];
            if matches!(
                tokio::time::timeout(first_byte, stream.peek(&mut probe)).await,
                Ok(Ok(n)) if n > 0
            ) {
                let connection =
                    builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                let _ = watcher.watch(connection.into_owned()).await;
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("API requests still running after 10 s; closing them.");
    }
}
