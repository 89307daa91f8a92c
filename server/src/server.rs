//! Accept loop and shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

use crate::config::ServerConfig;
use crate::connection;

/// Serves connections on `listener` until `shutdown` completes, then tells connected clients,
/// waits up to `config.shutdown_grace` for them to close, and returns.
///
/// A failing connection is logged and never ends the loop.
pub async fn run(listener: TcpListener, config: ServerConfig, shutdown: impl Future<Output = ()>) {
    let config = Arc::new(config);
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let limit = config.max_connections.map(|n| Arc::new(Semaphore::new(n)));
    let mut next_id: u64 = 0;
    tokio::pin!(shutdown);

    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    error!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        next_id += 1;
        let conn_id = next_id;
        let permit = match &limit {
            None => None,
            Some(sem) => match Arc::clone(sem).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    let max = config.max_connections.unwrap_or_default();
                    warn!(conn = conn_id, %peer, max, "connection refused: connection limit reached");
                    tracker.spawn(refuse(socket, Arc::clone(&config), max));
                    continue;
                }
            },
        };
        info!(conn = conn_id, %peer, "connection accepted");
        let config = Arc::clone(&config);
        let stop = stop.child_token();
        tracker.spawn(
            async move {
                match connection::serve(socket, conn_id, config, stop).await {
                    Ok(reason) => info!(%reason, "connection closed"),
                    Err(e) => warn!(cause = %e, "connection closed with an error"),
                }
                drop(permit);
            }
            .instrument(info_span!("conn", id = conn_id, %peer)),
        );
    }

    info!("shutting down: no longer accepting connections");
    drop(listener);
    stop.cancel();
    tracker.close();
    if tokio::time::timeout(config.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        warn!(grace = ?config.shutdown_grace, "some connections did not close in time");
    }
}

async fn refuse(socket: TcpStream, config: Arc<ServerConfig>, max: usize) {
    let reason = format!("server is at its limit of {max} connections; try again later");
    if let Err(e) = connection::refuse(socket, &config, reason).await {
        warn!(error = %e, "could not tell a refused client why");
    }
}
