//! `triggerfs broker`: its flags, the broker's settings they make, and the broker run until
//! a signal drains it.

use crate::settings::Settings;
use crate::signals::{drain_broker_then, ShutdownSignals};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The broker's shards and limits, flags of `broker` and `up`.
#[derive(Args, Debug)]
pub struct ShardArgs {
    /// Executors (one thread each); default: every core.
    #[arg(long, env = "TRIGGERFS_SHARDS")]
    pub shards: Option<usize>,
    /// Heartbeat period; a peer silent for three is dropped.
    #[arg(long, env = "TRIGGERFS_HEARTBEAT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
    /// How long an idle shard polls before sleeping (catches answers without a wake-up's
    /// latency; pins each shard to a core). `0s`: never spin, never pin.
    #[arg(long, env = "TRIGGERFS_SPIN", default_value = "30us", value_parser = humantime::parse_duration)]
    pub spin: Duration,
    /// Bytes queued towards one client past which it is cut as a slow consumer: its requests
    /// end with `SlowConsumer` and its connection is closed (the workers are not affected).
    /// Flow control keeps a client far below it unless its plugins cannot be paused.
    #[arg(long, env = "TRIGGERFS_MAX_CLIENT_BACKLOG", default_value = "64MiB")]
    pub max_client_backlog: bytesize::ByteSize,
    /// Bytes queued towards one client past which the output of its requests is paused at
    /// their workers (the plugin blocks in write) until a quarter of it is left; at most half
    /// of --max-client-backlog.
    #[arg(long, env = "TRIGGERFS_CLIENT_PAUSE_BACKLOG", default_value = "1MiB")]
    pub client_pause_backlog: bytesize::ByteSize,
    /// Bytes queued towards all clients together; past it every client is paused and one
    /// holding more than its share (this over the clients connected) is cut as a slow
    /// consumer.
    #[arg(
        long,
        env = "TRIGGERFS_MAX_CLIENT_BACKLOG_TOTAL",
        default_value = "256MiB"
    )]
    pub max_client_backlog_total: bytesize::ByteSize,
    /// Requests one client connection may have open at once; past it a new request is
    /// refused with `TooManyRequests` (the connection stays).
    #[arg(long, env = "TRIGGERFS_MAX_OPEN_REQUESTS", default_value_t = 10_000)]
    pub max_open_requests: usize,
    /// Requests per client connection and unit of time (`20000/s`, `600/m`); past it a request
    /// is refused with `RateLimited` (the connection stays). Default: no limit.
    #[arg(long, env = "TRIGGERFS_CLIENT_RATE")]
    pub client_rate: Option<dataplane::ClientRate>,
    /// Requests a client connection may send at once under `--client-rate` (the bucket's
    /// size); default: one second's worth.
    #[arg(long, env = "TRIGGERFS_CLIENT_BURST", requires = "client_rate")]
    pub client_burst: Option<u64>,
    /// Connections (handshake done) one address may have open; past it a new one is refused
    /// with `TooManyConnections`. Generous: the workers of one site behind NAT share one.
    #[arg(
        long,
        env = "TRIGGERFS_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 16_384
    )]
    pub max_connections_per_address: usize,
    /// On SIGTERM (or SIGINT), how long requests in flight may take to finish: new
    /// connections and requests are refused meanwhile; those still open at the end get
    /// `ShuttingDown`. A second signal stops at once.
    #[arg(long, env = "TRIGGERFS_DRAIN", default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
}

/// A server's TLS: its certificate and key, and the CA of the client certificates it checks.
#[derive(Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// PEM certificate chain: serve TLS (with --tls-key).
    #[arg(long, env = "TRIGGERFS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "TRIGGERFS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA of client certificates: the broker then requires one, signed by it, from every
    /// worker (mutual TLS); clients need none.
    #[arg(long, env = "TRIGGERFS_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The server configuration, when TLS was asked for.
    pub fn server_config(&self) -> Result<Option<Arc<tls::rustls::ServerConfig>>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(tls::server_config(
                cert,
                key,
                self.tls_client_ca.as_deref(),
            )?)),
            _ => Ok(None),
        }
    }
}

/// Flags of `triggerfs broker`.
#[derive(Args, Debug)]
pub struct BrokerArgs {
    /// Address to listen on.
    #[arg(long, env = "TRIGGERFS_LISTEN", default_value = "127.0.0.1:5555")]
    pub listen: SocketAddr,
    /// Control plane URL to take services and trust from (else `[broker]` of the config file);
    /// several, comma-separated, for replicas: the broker fails over between them.
    #[arg(long, env = "TRIGGERFS_CONTROL_URL")]
    pub control: Option<String>,
    /// The control plane's broker token (see its data dir's broker.token).
    #[arg(long, env = "TRIGGERFS_BROKER_TOKEN", hide_env_values = true)]
    pub broker_token: Option<String>,
    /// Fail closed: a broker that has not reached a control plane for this long refuses new
    /// connections and closes the open ones (`Stale`) until it does again, so that a
    /// partitioned broker cannot keep a revoked member in (with --control).
    #[arg(long, env = "TRIGGERFS_MAX_STALENESS", default_value = "60s")]
    pub max_staleness: humantime::Duration,
    /// Make this broker a node of a cell: the address peers connect to it at (`HOST:PORT`, or
    /// `tls://HOST:PORT`), registered with the control plane, which tells every node's
    /// peers the cell's nodes (a worker then connects to all of them).
    #[arg(long, env = "TRIGGERFS_ADVERTISE", requires = "control", value_parser = parse_advertise)]
    pub advertise: Option<String>,
    /// A file holding the broker token.
    #[arg(long, env = "TRIGGERFS_BROKER_TOKEN_FILE")]
    pub broker_token_file: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (`/metrics`).
    #[arg(long, env = "TRIGGERFS_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// With --control: record no job history (to measure what recording costs).
    #[arg(long, hide = true)]
    pub no_job_records: bool,
    #[command(flatten)]
    pub shard: ShardArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
}

impl ShardArgs {
    /// The broker's settings, listening on `listen` (without TLS).
    pub fn settings(&self, listen: SocketAddr) -> Result<dataplane::BrokerSettings> {
        let mut settings = dataplane::BrokerSettings {
            listen,
            heartbeat: self.heartbeat,
            spin: self.spin,
            max_client_backlog: usize::try_from(self.max_client_backlog.as_u64())
                .unwrap_or(usize::MAX),
            client_pause_backlog: usize::try_from(self.client_pause_backlog.as_u64())
                .unwrap_or(usize::MAX),
            max_client_backlog_total: usize::try_from(self.max_client_backlog_total.as_u64())
                .unwrap_or(usize::MAX),
            max_open_requests: self.max_open_requests.max(1),
            client_rate: self.client_rate.map(|rate| match self.client_burst {
                Some(burst) => rate.with_burst(burst),
                None => rate,
            }),
            max_connections_per_address: self.max_connections_per_address.max(1),
            drain: self.drain,
            ..Default::default()
        };
        if let Some(n) = self.shards {
            if n == 0 {
                bail!("--shards must be at least 1");
            }
            settings.shards = n;
        }
        Ok(settings)
    }
}

/// `--advertise`: `HOST:PORT` or `tls://HOST:PORT`, with a port, as a peer would dial it.
fn parse_advertise(text: &str) -> Result<String, String> {
    let bare = text.strip_prefix("tls://").unwrap_or(text);
    let port = bare
        .rsplit_once(':')
        .map(|(host, port)| (host, port.parse::<u16>()));
    match port {
        Some((host, Ok(port))) if !host.is_empty() && port != 0 && !bare.contains('/') => {
            Ok(text.to_string())
        }
        _ => Err(format!(
            "`{text}` is not HOST:PORT or tls://HOST:PORT (the address peers connect to)"
        )),
    }
}

/// `triggerfs broker`: serves until SIGINT or SIGTERM, then drains (see `--drain`).
pub fn run(args: BrokerArgs, settings: &Settings) -> Result<i32> {
    // A node of a cell leaves it when it drains.
    let mut feed: Option<Arc<feed::ControlSource>> = None;
    let source: Arc<dyn dataplane::ConfigSource> = match &args.control {
        Some(url) => {
            let broker_token = match (&args.broker_token, &args.broker_token_file) {
                (Some(t), _) => t.clone(),
                (None, Some(f)) => std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read {}", f.display()))?
                    .trim()
                    .to_string(),
                (None, None) => bail!("--control needs --broker-token or --broker-token-file"),
            };
            let source = Arc::new(feed::ControlSource::start(feed::FeedSettings {
                url: url.trim_end_matches('/').to_string(),
                broker_token,
                record_jobs: !args.no_job_records,
                max_staleness: Some(args.max_staleness.into()),
                advertise: args.advertise.clone(),
            })?);
            if let (Some(node), Some(advertise)) = (source.node(), &args.advertise) {
                println!("node {node} of the cell, advertised as {advertise}");
            }
            feed = Some(source.clone());
            source
        }
        None => Arc::new(dataplane::FileConfig::parse(&settings.text).map_err(|e| {
            anyhow::anyhow!(
                "invalid [broker] section in {}: {e}",
                settings
                    .path
                    .as_deref()
                    .map_or("the config".into(), |p| p.display().to_string())
            )
        })?),
    };
    if let Some(addr) = args.metrics_listen {
        println!(
            "metrics on http://{}/metrics",
            crate::metrics_http::serve(addr)?
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Before `listening on`: a SIGTERM right after it drains, never kills.
    let signals = {
        let _context = runtime.enter();
        ShutdownSignals::new()?
    };
    let broker = dataplane::BrokerSettings {
        tls: args.tls.server_config()?,
        worker_cert_required: args.tls.tls_client_ca.is_some(),
        ..args.shard.settings(args.listen)?
    };
    let handle = dataplane::start(broker, source)?;
    println!("listening on {}", handle.local_addr());
    let leave = move || {
        if let Some(feed) = feed {
            feed.leave();
        }
    };
    runtime.block_on(drain_broker_then(handle, signals, leave))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn advertise_is_host_port_or_tls() {
        for good in ["10.0.0.1:5555", "tls://node1.example:5555", "[::1]:5555"] {
            assert_eq!(super::parse_advertise(good).as_deref(), Ok(good));
        }
        for bad in [
            "10.0.0.1",
            "10.0.0.1:0",
            ":5555",
            "tls://",
            "http://a:1",
            "a:b",
        ] {
            assert!(super::parse_advertise(bad).is_err(), "{bad}");
        }
    }
}
