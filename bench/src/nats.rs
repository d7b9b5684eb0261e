//! The `nats` baseline: request/reply through a NATS server (the machine runs one on
//! 127.0.0.1:4222). Responders subscribe to a subject in one queue group (one per
//! `--workers`, like triggerFS's workers) and publish the payload back to the reply subject;
//! callers use `Client::request` on their own connections. Skipped when no server answers
//! within a second.

use crate::load::Caller;
use anyhow::{bail, Context};
use bytes::Bytes;
use futures::StreamExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How long to wait for a NATS server before skipping the baseline (the brief: 1 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Responders and client connections.
pub(crate) struct Nats {
    responders: Vec<JoinHandle<()>>,
    clients: Vec<async_nats::Client>,
    subject: String,
}

async fn connect(addr: &str) -> Option<async_nats::Client> {
    let options = async_nats::ConnectOptions::new().connection_timeout(CONNECT_TIMEOUT);
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect(addr)).await {
        Ok(Ok(client)) => Some(client),
        Ok(Err(error)) => {
            tracing::debug!(%error, addr, "no NATS server");
            None
        }
        Err(_) => {
            tracing::debug!(addr, "NATS server did not answer in time");
            None
        }
    }
}

/// Connects `responders` echo responders and `connections` callers; `None` when no NATS
/// server answers at `addr`.
pub(crate) async fn start(
    addr: &str,
    responders: usize,
    connections: usize,
) -> anyhow::Result<Option<Nats>> {
    let Some(first) = connect(addr).await else {
        return Ok(None);
    };
    // A subject of our own, so that two benchmarks on one server do not answer each other.
    let subject = format!("triggerfs.bench.{}", rand::random::<u64>());
    let mut tasks = Vec::with_capacity(responders);
    for _ in 0..responders.max(1) {
        let conn = connect(addr)
            .await
            .context("the NATS server stopped answering")?;
        let mut sub = conn
            .queue_subscribe(subject.clone(), "echo".to_string())
            .await
            .context("cannot subscribe on NATS")?;
        conn.flush()
            .await
            .context("cannot flush the NATS subscription")?;
        tasks.push(tokio::spawn(async move {
            while let Some(message) = sub.next().await {
                if let Some(reply) = message.reply {
                    if conn.publish(reply, message.payload).await.is_err() {
                        break;
                    }
                }
            }
        }));
    }
    let mut clients = vec![first];
    while clients.len() < connections.max(1) {
        clients.push(
            connect(addr)
                .await
                .context("the NATS server stopped answering")?,
        );
    }
    Ok(Some(Nats {
        responders: tasks,
        clients,
        subject,
    }))
}

impl Nats {
    pub(crate) fn caller(&self) -> NatsCaller {
        NatsCaller {
            clients: Arc::new(self.clients.clone()),
            next: Arc::new(AtomicUsize::new(0)),
            subject: self.subject.clone(),
        }
    }

    pub(crate) fn stop(self) {
        for task in self.responders {
            task.abort();
        }
    }
}

/// Requests through NATS, round-robin over the connections.
#[derive(Clone)]
pub(crate) struct NatsCaller {
    clients: Arc<Vec<async_nats::Client>>,
    next: Arc<AtomicUsize>,
    subject: String,
}

impl Caller for NatsCaller {
    async fn call(&self, payload: Bytes) -> anyhow::Result<()> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        let answer = self.clients[i]
            .request(self.subject.clone(), payload.clone())
            .await?;
        if answer.payload != payload {
            bail!(
                "NATS answered {} bytes that differ from the payload",
                answer.payload.len()
            );
        }
        Ok(())
    }
}
