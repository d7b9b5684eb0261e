//! triggerFS under test, from the client's side: the load process's caller, which sends
//! requests through the `client` library like any user would, and the in-process workers of
//! `bench fanout` (serving the core plugin `echo` inside the worker). The broker and the
//! load's workers are `triggerfs broker` / `triggerfs worker` processes (`proc.rs`).

use crate::load::Caller;
use crate::proc::READY_DEADLINE;
use anyhow::{bail, Context};
use bytes::Bytes;
use client::{Client, ClientEvent, RequestSpec};
use proto::Credential;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The team of a broker without a control plane (`FileConfig` puts everyone in it).
pub(crate) const TEAM: &str = "default";

/// In-process workers and their shutdown signals.
pub(crate) struct Workers {
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
    /// Their plugins path: the core plugin `echo` alone.
    plugins: tempfile::TempDir,
}

impl Workers {
    /// Starts `n` workers named `<prefix><i>` announcing `services`, all answering `echo`
    /// in-process.
    pub(crate) fn start(
        addr: &str,
        prefix: &str,
        n: usize,
        services: &[String],
    ) -> anyhow::Result<Workers> {
        let ids: Vec<(String, String)> = (0..n)
            .map(|i| (format!("{prefix}{i}"), String::new()))
            .collect();
        Workers::start_in(addr, TEAM, &ids, services)
    }

    /// Starts a worker per (identity, token) of `team`, announcing `services`, all
    /// answering `echo` in-process.
    pub(crate) fn start_in(
        addr: &str,
        team: &str,
        ids: &[(String, String)],
        services: &[String],
    ) -> anyhow::Result<Workers> {
        let plugins = tempfile::tempdir().context("cannot create a plugins directory")?;
        crate::proc::write_plugins(plugins.path())?;
        let mut workers = Workers {
            stops: Vec::new(),
            tasks: Vec::new(),
            plugins,
        };
        for (identity, token) in ids {
            let config = worker_config(
                addr,
                team,
                identity,
                token,
                workers.plugins.path(),
                services,
            );
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            workers.stops.push(stop_tx);
            workers.tasks.push(tokio::spawn(async move {
                let shutdown = async {
                    let _ = stop_rx.await;
                };
                if let Err(error) = worker::run(config, shutdown).await {
                    tracing::error!(%error, "bench worker failed");
                }
            }));
        }
        Ok(workers)
    }

    /// Stops every worker and waits for them.
    pub(crate) async fn stop(self) {
        for stop in self.stops {
            let _ = stop.send(());
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// The configuration of one in-process bench worker: `echo` and every other kind from
/// `pluginspath`, 1,024 at once, reconnecting within 500 ms.
pub(crate) fn worker_config(
    addr: &str,
    team: &str,
    identity: &str,
    token: &str,
    pluginspath: &std::path::Path,
    services: &[String],
) -> worker::WorkerConfig {
    worker::WorkerConfig {
        brokers: client::BrokerList::one(addr),
        team: team.to_string(),
        identity: identity.to_string(),
        token: token.to_string(),
        pluginspath: pluginspath.to_path_buf(),
        services: services.to_vec(),
        max_concurrency: 1024,
        shell: worker::DEFAULT_SHELL.into(),
        reconnect_max: Duration::from_millis(500),
        debug: false,
        max_output: worker::DEFAULT_MAX_OUTPUT,
    }
}

/// Connects with a JWT (from the control plane's login; empty: none), retrying until the
/// broker answers or the deadline passes.
pub(crate) async fn connect_as(addr: &str, jwt: &str) -> anyhow::Result<Client> {
    let deadline = tokio::time::Instant::now() + READY_DEADLINE;
    loop {
        let credential = Credential::Jwt {
            token: jwt.to_string(),
        };
        match Client::connect(&client::BrokerList::one(addr), credential).await {
            Ok(client) => return Ok(client),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("cannot connect to the broker at {addr}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// An `echo` request with this payload.
pub(crate) fn echo_request(service: &str, payload: Vec<u8>) -> RequestSpec {
    plugin_request(service, "echo", payload)
}

fn plugin_request(service: &str, plugin: &str, payload: Vec<u8>) -> RequestSpec {
    RequestSpec {
        service: service.to_string(),
        plugin: plugin.into(),
        payload,
        timeout: Some(crate::load::REQUEST_TIMEOUT),
        ..RequestSpec::default()
    }
}

/// Sends one echo request and checks that exactly one worker answered with the payload.
async fn echo_once(client: &Client, service: &str, payload: &[u8]) -> anyhow::Result<()> {
    echo_with(client, service, "echo", payload).await
}

/// Sends `payload` to an echoing `plugin` and checks that exactly one worker answered with it.
async fn echo_with(
    client: &Client,
    service: &str,
    plugin: &str,
    payload: &[u8],
) -> anyhow::Result<()> {
    let mut handle = client
        .request(plugin_request(service, plugin, payload.to_vec()))
        .await?;
    let mut echoed = false;
    let mut exit = None;
    while let Some(event) = handle.next().await {
        match event {
            ClientEvent::Output { data, .. } => echoed = data == payload,
            ClientEvent::Done { exit_code, .. } => exit = Some(exit_code),
            ClientEvent::Summary(summary) => {
                if summary.ok == 1 && echoed && exit == Some(0) {
                    return Ok(());
                }
                bail!("bad answer: {summary:?}, echoed {echoed}, exit {exit:?}");
            }
            ClientEvent::Error { kind, message } => bail!("{kind}: {message}"),
            ClientEvent::Failed { kind, message, .. } => bail!("worker failed: {kind}: {message}"),
            _ => {}
        }
    }
    bail!("the request ended without a summary")
}

/// Retries `echo` on `service` until it is answered, or the deadline passes.
pub(crate) async fn wait_answering(client: &Client, service: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + READY_DEADLINE;
    loop {
        match echo_once(client, service, b"ready?").await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e.context(format!("service {service} never answered")))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Sends one line to the core plugin `append` and checks that exactly one worker wrote it
/// (exit 0, no output).
async fn append_once(
    client: &Client,
    service: &str,
    path: &str,
    line: Vec<u8>,
) -> anyhow::Result<()> {
    let mut spec = plugin_request(service, "append", line);
    spec.args = vec![("path".into(), path.to_string())];
    let mut handle = client.request(spec).await?;
    let mut exit = None;
    while let Some(event) = handle.next().await {
        match event {
            ClientEvent::Output { data, .. } => {
                bail!("append printed {}", String::from_utf8_lossy(&data))
            }
            ClientEvent::Done { exit_code, .. } => exit = Some(exit_code),
            ClientEvent::Summary(summary) => {
                if summary.ok == 1 && exit == Some(0) {
                    return Ok(());
                }
                bail!("bad answer: {summary:?}, exit {exit:?}");
            }
            ClientEvent::Error { kind, message } => bail!("{kind}: {message}"),
            ClientEvent::Failed { kind, message, .. } => bail!("worker failed: {kind}: {message}"),
            _ => {}
        }
    }
    bail!("the request ended without a summary")
}

/// Checks `append`'s file after a run: every line once, numbered 0..n without a gap (each
/// request the load process sent wrote exactly one line). Returns n.
pub(crate) fn check_appended(path: &std::path::Path) -> anyhow::Result<u64> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut numbers: Vec<u64> = Vec::new();
    for line in text.lines() {
        let n = line
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("a line that no request wrote: {line:?}"))?;
        numbers.push(n);
    }
    numbers.sort_unstable();
    let n = numbers.len() as u64;
    for (expected, got) in numbers.iter().enumerate() {
        if *got != expected as u64 {
            bail!(
                "append: {n} lines, but line {expected} is {} (a line lost or written twice)",
                if *got < expected as u64 {
                    "twice"
                } else {
                    "missing"
                }
            );
        }
    }
    Ok(n)
}

/// `connections` connections to the broker at `addr`, as a load process's caller, logged in
/// with `jwt` (empty: none); `addr` may list several nodes of a cell (`a,b,c`), and the
/// connections are then spread over them in turn. Returns once each of `ready` (services,
/// e.g. every worker's identity) has answered an `echo`, so that the measurement starts with
/// all workers online. `kind` says which plugin each request runs (`append` writes to
/// `append_file`).
pub(crate) async fn caller(
    addr: &str,
    jwt: &str,
    connections: usize,
    service: &str,
    ready: &[String],
    kind: crate::PluginKind,
    append_file: Option<&std::path::Path>,
) -> anyhow::Result<TriggerfsCaller> {
    let append_file = match (kind, append_file) {
        (crate::PluginKind::Append, Some(path)) => Some(Arc::from(path.to_string_lossy())),
        (crate::PluginKind::Append, None) => bail!("the append kind needs --append-file"),
        _ => None,
    };
    let nodes: Vec<&str> = addr.split(',').map(str::trim).collect();
    let mut clients = Vec::with_capacity(connections);
    for i in 0..connections.max(1) {
        clients.push(connect_as(nodes[i % nodes.len()], jwt).await?);
    }
    for name in ready {
        wait_answering(&clients[0], name).await?;
    }
    Ok(TriggerfsCaller {
        clients: Arc::new(clients),
        next: Arc::new(AtomicUsize::new(0)),
        service: Arc::from(service),
        plugin: kind.plugin(),
        append_file,
    })
}

/// Requests through the client library, round-robin over the connections.
#[derive(Clone)]
pub(crate) struct TriggerfsCaller {
    clients: Arc<Vec<Client>>,
    /// Counts requests: the connection to use, and `append`'s line numbers.
    next: Arc<AtomicUsize>,
    service: Arc<str>,
    plugin: &'static str,
    append_file: Option<Arc<str>>,
}

impl Caller for TriggerfsCaller {
    async fn call(&self, payload: Bytes) -> anyhow::Result<()> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let client = &self.clients[n % self.clients.len()];
        // The request is complete when the final event (`Summary`) arrives: that is when a
        // user of the client library has the whole answer.
        match &self.append_file {
            Some(path) => {
                // A numbered line of the payload's size, so that the file can be checked.
                let mut line = format!("{n} ").into_bytes();
                line.extend_from_slice(&payload[line.len().min(payload.len())..]);
                append_once(client, &self.service, path, line).await
            }
            None => echo_with(client, &self.service, self.plugin, &payload).await,
        }
    }
}
