//! Shutdown signals: SIGINT and SIGTERM, and the broker's drain on them.

use anyhow::{Context, Result};
use std::sync::Arc;

/// Completes on SIGINT or SIGTERM; never if they cannot be caught (their default action
/// then ends the process).
pub async fn shutdown_signal() {
    match ShutdownSignals::new() {
        Ok(mut signals) => signals.recv().await,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "cannot catch SIGINT and SIGTERM");
            std::future::pending().await
        }
    }
}

/// SIGINT and SIGTERM, caught from when this is made (inside a tokio runtime).
pub struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Catches them from now on.
    pub fn new() -> Result<ShutdownSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ShutdownSignals {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
        })
    }

    /// Completes on the next SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// After the first SIGINT/SIGTERM: drains `handle` (see `--drain`) and waits for its shards
/// to exit; a second signal meanwhile stops it at once.
pub async fn drain_broker(handle: dataplane::BrokerHandle, signals: ShutdownSignals) -> Result<()> {
    drain_broker_then(handle, signals, || {}).await
}

/// As [`drain_broker`], running `first` (blocking work: a node leaving its cell) on a
/// thread of the blocking pool as the drain starts.
pub async fn drain_broker_then(
    handle: dataplane::BrokerHandle,
    mut signals: ShutdownSignals,
    first: impl FnOnce() + Send + 'static,
) -> Result<()> {
    signals.recv().await;
    tracing::info!("shutdown signal: draining the broker");
    handle.drain();
    let first = tokio::task::spawn_blocking(first);
    let handle = Arc::new(handle);
    let joined = {
        let handle = handle.clone();
        tokio::task::spawn_blocking(move || handle.wait())
    };
    tokio::pin!(joined);
    tokio::select! {
        r = &mut joined => r?,
        () = signals.recv() => {
            tracing::warn!("second shutdown signal: stopping the broker now");
            handle.stop();
            joined.await?;
        }
    }
    first.await?;
    Ok(())
}
