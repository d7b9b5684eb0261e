//! `/metrics` for the broker: the process's Prometheus registry as text, on its own port
//! (the broker's main port speaks frames, not HTTP).

use anyhow::{Context, Result};
use std::net::SocketAddr;

async fn metrics() -> impl axum::response::IntoResponse {
    let body = prometheus::TextEncoder::new()
        .encode_to_string(&prometheus::gather())
        .unwrap_or_default();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
}

/// Serves `GET /metrics` on `addr` from a thread of its own; returns the bound address.
pub fn serve(addr: SocketAddr) -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen on {addr} for metrics"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = {
        let _context = runtime.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    let app = axum::Router::new().route("/metrics", axum::routing::get(metrics));
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            if let Err(e) = runtime.block_on(async { axum::serve(listener, app).await }) {
                tracing::error!(error = %e, "metrics server stopped");
            }
        })?;
    Ok(local)
}
