//! The `nats` baseline: request/reply through a NATS server (one `nats-server` started for
//! the run, as its users would start one, or a running one named by `--nats`). Each of the
//! `--workers` responders is a process of its own (`bench-child nats-responders`), with one
//! connection on one current-thread runtime, as a `triggerfs worker` runs: subscribed to a
//! subject in one queue group, publishing the payload back to the reply subject. The load
//! process calls `Client::request` on its own connections. Skipped when no server answers
//! within a second.

use crate::load::Caller;
use crate::proc::wait_stdin_closed;
use anyhow::{bail, Context};
use bytes::Bytes;
use futures::StreamExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long to wait for a NATS server before skipping the baseline (the brief: 1 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What the responders process prints instead of `ready` when no server answers.
pub(crate) const SKIP: &str = "skip";

/// The NATS server used when none is started and `--nats` names none.
pub(crate) const DEFAULT_ADDR: &str = "127.0.0.1:4222";

/// The `nats-server` binary to start: `--nats-server`, else `nats-server` on the PATH.
pub(crate) fn server_binary(common: &crate::CommonArgs) -> Option<std::path::PathBuf> {
    if let Some(bin) = &common.nats_server {
        return Some(bin.clone());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("nats-server"))
        .find(|bin| bin.is_file())
}

/// Starts `bin` on 127.0.0.1 on a free port (no JetStream, default limits) and waits until it
/// accepts connections; the process and its address.
pub(crate) async fn start_server(
    bin: &std::path::Path,
) -> anyhow::Result<(crate::proc::Spawned, String)> {
    let addr = crate::stack::free_addr()?;
    let port = addr.rsplit(':').next().unwrap_or_default().to_string();
    let mut cmd = crate::proc::command(bin, ["-a", "127.0.0.1", "-p", &port]);
    // Its log (a banner, then nothing at the default level) is not ours to show.
    cmd.stdout(std::process::Stdio::null());
    cmd.stderr(std::process::Stdio::null());
    let (mut proc, _) = crate::proc::Spawned::start("nats-server", cmd)?;
    let deadline = tokio::time::Instant::now() + crate::proc::READY_DEADLINE;
    loop {
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            return Ok((proc, addr));
        }
        if tokio::time::Instant::now() > deadline {
            proc.kill().await;
            bail!("{} did not listen on {addr}", bin.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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

/// Subscribes `responders` echo responders; `false` when no NATS server answers at `addr`.
async fn start_responders(addr: &str, subject: &str, responders: usize) -> anyhow::Result<bool> {
    for _ in 0..responders.max(1) {
        let Some(conn) = connect(addr).await else {
            return Ok(false);
        };
        let mut sub = conn
            .queue_subscribe(subject.to_string(), "echo".to_string())
            .await
            .context("cannot subscribe on NATS")?;
        conn.flush()
            .await
            .context("cannot flush the NATS subscription")?;
        tokio::spawn(async move {
            while let Some(message) = sub.next().await {
                if let Some(reply) = message.reply {
                    if conn.publish(reply, message.payload).await.is_err() {
                        break;
                    }
                }
            }
        });
    }
    Ok(true)
}

/// `bench-child nats-responders`: prints `ready` once subscribed (or `skip` when no server
/// answers) and serves until stdin closes, on one current-thread runtime (as `triggerfs
/// worker`).
pub(crate) fn responders_main(addr: &str, subject: &str, responders: usize) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        if !start_responders(addr, subject, responders).await? {
            println!("{SKIP}");
            return anyhow::Ok(());
        }
        println!("ready");
        // The responders run on this thread while it waits; stdin is read on another.
        let _ = tokio::task::spawn_blocking(wait_stdin_closed).await;
        Ok(())
    })?;
    Ok(0)
}

/// `connections` connections to the NATS server at `addr`, as a load process's caller.
pub(crate) async fn caller(
    addr: &str,
    connections: usize,
    subject: &str,
) -> anyhow::Result<NatsCaller> {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        clients.push(
            connect(addr)
                .await
                .with_context(|| format!("no NATS server answers on {addr}"))?,
        );
    }
    Ok(NatsCaller {
        clients: Arc::new(clients),
        next: Arc::new(AtomicUsize::new(0)),
        subject: subject.to_string(),
    })
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
