//! triggerFS under test: an in-process broker (`dataplane::start` on 127.0.0.1:0) with
//! in-process workers answering plugin `echo` themselves (`builtin_echo`), or a running
//! broker given with `--broker`; and the caller that sends requests through the `client`
//! library, like any user would.

use crate::load::Caller;
use anyhow::{bail, Context};
use bytes::Bytes;
use client::{Client, ClientEvent, RequestSpec};
use dataplane::config::DEFAULT_TEAM;
use dataplane::{BrokerHandle, BrokerSettings, FileConfig, ServiceConfig};
use proto::{Algorithm, Credential};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long the set-up may take to become ready (workers online, first answer): generous,
/// because 10,000 workers connecting on a loaded 2-core machine take a while.
const READY_DEADLINE: Duration = Duration::from_secs(120);

/// What to start (or where to find it).
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    /// A running broker; `None` starts one in-process.
    pub broker: Option<String>,
    pub shards: usize,
    pub spin: Duration,
    pub workers: usize,
    pub connections: usize,
    pub service: String,
}

/// Broker and workers started in this process (absent parts were given by the user).
pub(crate) struct Running {
    pub addr: String,
    broker: Option<BrokerHandle>,
    workers: Workers,
    clients: Vec<Client>,
    service: String,
}

/// In-process workers and their shutdown signals.
#[derive(Default)]
pub(crate) struct Workers {
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `n` workers named `<prefix><i>` announcing `services`, all answering `echo`
    /// in-process.
    pub(crate) fn start(addr: &str, prefix: &str, n: usize, services: &[String]) -> Workers {
        let mut workers = Workers::default();
        for i in 0..n {
            let config = worker::WorkerConfig {
                broker: addr.to_string(),
                team: DEFAULT_TEAM.to_string(),
                identity: format!("{prefix}{i}"),
                token: String::new(),
                // Never used: `echo` is answered in-process.
                pluginspath: std::env::temp_dir(),
                services: services.to_vec(),
                max_concurrency: 1024,
                builtin_echo: true,
                reconnect_max: Duration::from_millis(500),
            };
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
        workers
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

/// Starts a broker on 127.0.0.1:0 that knows `service` with `algorithm`.
pub(crate) fn start_broker(
    shards: usize,
    spin: Duration,
    service: &str,
    algorithm: Algorithm,
) -> anyhow::Result<BrokerHandle> {
    let mut config = ServiceConfig::implicit(DEFAULT_TEAM, service);
    config.algorithm = algorithm;
    let source = Arc::new(FileConfig::from_services([config]));
    let settings = BrokerSettings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        shards,
        spin,
        ..BrokerSettings::default()
    };
    dataplane::start(settings, source).context(
        "cannot start the broker (io_uring needs locked memory: try `ulimit -l unlimited`)",
    )
}

/// Stops an in-process broker without blocking the runtime.
pub(crate) async fn stop_broker(broker: BrokerHandle) {
    broker.stop();
    let _ = tokio::task::spawn_blocking(move || broker.join()).await;
}

/// Connects, retrying until the broker answers or the deadline passes.
pub(crate) async fn connect(addr: &str) -> anyhow::Result<Client> {
    let deadline = tokio::time::Instant::now() + READY_DEADLINE;
    loop {
        match Client::connect(addr, Credential::Jwt { token: "".into() }).await {
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
    RequestSpec {
        service: service.to_string(),
        plugin: "echo".into(),
        payload,
        timeout: Some(crate::load::REQUEST_TIMEOUT),
        ..RequestSpec::default()
    }
}

/// Sends one echo request and checks that exactly one worker answered with the payload.
async fn echo_once(client: &Client, service: &str, payload: &[u8]) -> anyhow::Result<()> {
    let mut handle = client
        .request(echo_request(service, payload.to_vec()))
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
            ClientEvent::Disconnected => bail!("disconnected from the broker"),
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

/// Starts (or reaches) triggerFS and waits until every worker answers.
pub(crate) async fn start(setup: &Setup) -> anyhow::Result<Running> {
    let (addr, broker, workers, prefix) = match &setup.broker {
        Some(addr) => (addr.clone(), None, Workers::default(), None),
        None => {
            let broker = start_broker(
                setup.shards,
                setup.spin,
                &setup.service,
                Algorithm::Roundrobin,
            )?;
            let addr = broker.local_addr().to_string();
            let prefix = "bench-w";
            let workers = Workers::start(
                &addr,
                prefix,
                setup.workers,
                std::slice::from_ref(&setup.service),
            );
            (addr, Some(broker), workers, Some(prefix))
        }
    };
    let mut clients = Vec::with_capacity(setup.connections);
    for _ in 0..setup.connections {
        clients.push(connect(&addr).await?);
    }
    match prefix {
        // Each worker is also a service of its own name: ask each one, so that the
        // measurement starts with all of them online.
        Some(prefix) => {
            for i in 0..setup.workers {
                wait_answering(&clients[0], &format!("{prefix}{i}")).await?;
            }
        }
        None => wait_answering(&clients[0], &setup.service).await?,
    }
    Ok(Running {
        addr,
        broker,
        workers,
        clients,
        service: setup.service.clone(),
    })
}

impl Running {
    /// The caller that spreads requests over the connections.
    pub(crate) fn caller(&self) -> TriggerfsCaller {
        TriggerfsCaller {
            clients: Arc::new(self.clients.clone()),
            next: Arc::new(AtomicUsize::new(0)),
            service: Arc::from(self.service.as_str()),
        }
    }

    /// Closes the connections and stops what was started here.
    pub(crate) async fn stop(self) {
        drop(self.clients);
        self.workers.stop().await;
        if let Some(broker) = self.broker {
            stop_broker(broker).await;
        }
        tracing::debug!(addr = %self.addr, "triggerfs stopped");
    }
}

/// Requests through the client library, round-robin over the connections.
#[derive(Clone)]
pub(crate) struct TriggerfsCaller {
    clients: Arc<Vec<Client>>,
    next: Arc<AtomicUsize>,
    service: Arc<str>,
}

impl Caller for TriggerfsCaller {
    async fn call(&self, payload: Bytes) -> anyhow::Result<()> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        // The request is complete when the final event (`Summary`) arrives: that is when a
        // user of the client library has the whole answer.
        echo_once(&self.clients[i], &self.service, &payload).await
    }
}
