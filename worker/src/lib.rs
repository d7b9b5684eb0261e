//! triggerFS worker: connects out to the broker, serves dispatches by running plugins.
//!
//! Layout:
//! - [`run`] (this file): the plugins' host, and shutdown.
//! - `cell`: a session per broker node (the seeds, and the nodes of the cell they name),
//!   each reconnecting with exponential backoff and jitter.
//! - `session`: one connection: handshake (`Hello` → `Welcome`, then `Announce`),
//!   heartbeats, the broker-silence watchdog, and routing `Dispatch`/`Cancel` frames. One
//!   writer task owns the socket's write half, fed by an `mpsc` channel.
//! - [`runner`]: one dispatch: slot, plugin resolution, process group, live output, stop.
//! - [`persistent`]: plugins whose `plugin.toml` says `persistent = true`: one long-running
//!   instance per plugin serving many requests over JSON lines, restarted with backoff.
//! - [`lines`]: splitting plugin output into lines and 64 KiB chunks.
//! - [`contain`]: each plugin's process tree in a cgroup of its own (or, without one, the
//!   worker as their subreaper), killed whole at the run's end and at shutdown.
//! - `idem`: the window of keyed dispatches (`Dispatch.key`) that makes a replay run nothing
//!   twice, kept across reconnections.
//!
//! Invariants: the worker reaches the broker only through `client::connection`; no broker
//! input makes it panic (a bad frame ends the session and it reconnects); when a session
//! ends, every plugin it started is stopped (SIGTERM, 2 s, SIGKILL to its process group), and
//! its requests to persistent plugins are cancelled; persistent instances stay up across
//! sessions and stop with the worker (`shutdown`, 1 s, SIGKILL to the group).

mod cell;
pub mod contain;
mod core;
mod idem;
pub mod leftovers;
mod lines;
pub mod persistent;
pub mod runner;
mod session;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tracing::{error, info, warn};

/// The shell that runs the core plugin `command` unless the worker is told otherwise.
pub const DEFAULT_SHELL: &str = "sh";

/// First reconnect delay; doubled after each failed attempt up to
/// [`WorkerConfig::reconnect_max`].
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(50);

/// The default cap of the reconnect backoff: a restarted broker is found within a second.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(1);

/// How long the broker may go on refusing the worker's credentials (`Unauthorized`,
/// `Forbidden`, `BadRequest` at the handshake) before [`run`] gives up: long enough for a
/// worker just created through the API to reach the broker's configuration (within a
/// second), short enough that a wrong token or identity is reported at once.
pub const REFUSED_GIVE_UP: Duration = Duration::from_secs(3);

/// How long [`run`] waits at shutdown for plugins to be stopped: the SIGTERM grace plus the
/// drain, plus slack.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(4);

/// How the worker connects and what it serves.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The seeds: broker addresses, `host:port`, `tcp://host:port` or `tls://host:port`.
    /// The worker connects to each, and to every node of the cell they name.
    pub brokers: client::BrokerList,
    /// The worker's team.
    pub team: String,
    /// The worker's identity (also a service name).
    pub identity: String,
    /// The worker's secret token.
    pub token: String,
    /// Where plugins live.
    pub pluginspath: PathBuf,
    /// Services announced after `Welcome`, in addition to the identity.
    pub services: Vec<String>,
    /// Plugins running at once; further dispatches wait for a slot before `Accepted`.
    pub max_concurrency: usize,
    /// The shell that runs the core plugin `command` (`<shell> -c <command line>`).
    pub shell: String,
    /// Cap of the exponential reconnect backoff.
    pub reconnect_max: Duration,
    /// The seed's `-debug true`: log the broker's acceptance, each announced service
    /// (`Found service X. Announcing it to broker.`) and every heartbeat sent and received.
    pub debug: bool,
    /// Bytes of output (stdout and stderr) one request's plugin may write; past it the
    /// plugin is stopped and the request ends with `OutputLimit`.
    pub max_output: u64,
}

/// The default of [`WorkerConfig::max_output`]: 64 MiB.
pub const DEFAULT_MAX_OUTPUT: u64 = 64 * 1024 * 1024;

/// What can go wrong in the worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The configuration cannot work.
    #[error("invalid worker configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// The TCP connection could not be made.
    #[error("cannot connect to broker {broker}: {source}")]
    Connect {
        /// The address.
        broker: String,
        /// The cause.
        source: client::connection::ConnectionError,
    },
    /// Connecting or the handshake took too long.
    #[error("broker {broker} did not answer within {waited:?}")]
    HandshakeTimeout {
        /// The address.
        broker: String,
        /// How long we waited.
        waited: Duration,
    },
    /// The broker refused our `Hello`.
    #[error("broker refused the worker ({kind}): {reason}")]
    Refused {
        /// The broker's error kind.
        kind: proto::ErrorKind,
        /// The broker's reason.
        reason: String,
    },
    /// The broker answered the `Hello` with something else.
    #[error("unexpected {got} frame during the handshake")]
    Handshake {
        /// The frame kind received.
        got: &'static str,
    },
    /// The connection failed or the broker sent bytes that are not a frame.
    #[error(transparent)]
    Connection(#[from] client::connection::ConnectionError),
    /// Nothing was received for three heartbeat intervals.
    #[error("broker silent for {silent:?}")]
    BrokerSilent {
        /// How long.
        silent: Duration,
    },
    /// The broker reported a connection-level error.
    #[error("broker reported {kind}: {message}")]
    Broker {
        /// The error kind.
        kind: proto::ErrorKind,
        /// The broker's message.
        message: String,
    },
    /// The writer task ended.
    #[error("the connection's writer stopped")]
    WriterStopped,
    /// A plugin name was refused.
    #[error("plugin `{plugin}` not found: {reason}")]
    PluginNotFound {
        /// The requested name.
        plugin: String,
        /// Why, without paths of this host: this text goes to the client.
        reason: String,
        /// Why, with the paths involved: for this host's log only.
        detail: String,
    },
}

/// True for a handshake refusal that says the credentials themselves are wrong (as opposed
/// to a broker that is starting, overloaded or cut the handshake short).
fn credentials_refused(kind: proto::ErrorKind) -> bool {
    matches!(
        kind,
        proto::ErrorKind::Unauthorized | proto::ErrorKind::Forbidden | proto::ErrorKind::BadRequest
    )
}

/// Runs the worker until `shutdown` completes: connects to every node (see `cell`), serves,
/// reconnects with backoff.
///
/// Returns `Ok(())` after `shutdown`, once running plugins were stopped (or after a few
/// seconds); an error for a configuration that cannot work, and
/// [`WorkerError::Broker`] with [`proto::ErrorKind::Superseded`] when a newer connection of
/// the same identity took over at a node (the worker stops rather than take the identity
/// back), and [`WorkerError::Refused`] when every node refused its credentials for
/// [`REFUSED_GIVE_UP`] (connection failures are retried for ever).
pub async fn run(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    check_config(&config)?;
    let host = PluginHost::start(&config).await;
    let config = Arc::new(config);
    let ended = {
        let mut sessions = cell::Sessions::new(config.clone(), host.shared.clone());
        tokio::select! {
            () = shutdown => None,
            ended = sessions.run() => Some(ended),
        }
        // Every session is dropped here: their plugins stop (keyed runs run on to their end).
    };
    if let Some(ended) = ended {
        host.stop().await;
        return Err(ended);
    }
    if !host.stop().await {
        warn!("plugins still stopping at shutdown");
    }
    info!(identity = %config.identity, "worker stopped");
    Ok(())
}

/// Whether the worker stops after a session that ended with `ended`: the broker refused its
/// credentials for [`REFUSED_GIVE_UP`] (since `refused_since`, kept here), or a newer
/// connection of the same identity took over. Says why in the log.
fn gives_up(
    config: &WorkerConfig,
    broker: &str,
    ended: &WorkerError,
    refused_since: &mut Option<std::time::Instant>,
) -> bool {
    match ended {
        WorkerError::Refused { kind, reason } if credentials_refused(*kind) => {
            let since = *refused_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() < REFUSED_GIVE_UP {
                return false;
            }
            // A wrong token, identity or team stays wrong: say what to check, stop.
            error!(
                "the broker at {} refuses worker `{}` of team `{}` ({kind}: {reason}); stopping. \
                 Check the team (--team, or [main] team), the identity (--identity) and the token (--token, \
                 or [workers.<team>.<identity>] token): a worker's token is the one `POST /api/v1/workers` \
                 printed when the worker was created, or a new one from `POST /api/v1/workers/<identity>/regenerate`",
                broker, config.identity, config.team
            );
            true
        }
        WorkerError::Broker {
            kind: proto::ErrorKind::Superseded,
            message,
        } => {
            // Another process serves this identity now; reconnecting would take it back and
            // the two would take turns. Stop, and say why.
            error!(%broker, identity = %config.identity, %message, "superseded by a newer connection of this identity; stopping");
            true
        }
        _ => {
            *refused_since = None;
            false
        }
    }
}

/// What the worker keeps for its plugins across sessions: what every session shares, the
/// persistent instances and the containment of plugin processes.
struct PluginHost {
    shared: session::Shared,
    /// Yields `None` once every dispatch task dropped its `alive` sender.
    alive: mpsc::Receiver<()>,
    persistent: Arc<persistent::Manager>,
    contain: Arc<contain::Containment>,
}

impl PluginHost {
    /// Kills what an earlier run of this worker left running, then sets up the containment
    /// and what sessions share.
    async fn start(config: &WorkerConfig) -> PluginHost {
        let max_concurrency = config.max_concurrency.max(1);
        if config.max_concurrency == 0 {
            warn!("max_concurrency 0 means nothing could run; using 1");
        }
        // Plugins an earlier run of this worker left behind (it was SIGKILLed) go first.
        let instance = leftovers::instance(&config.team, &config.identity, &config.pluginspath);
        let marked = instance.clone();
        let reaped = tokio::task::spawn_blocking(move || leftovers::reap(&marked))
            .await
            .unwrap_or(0);
        if reaped > 0 {
            warn!(identity = %config.identity, n = reaped, "killed plugin processes left running by an earlier run of this worker");
        }
        // Each plugin's process tree is contained; what an earlier run left in its cgroups goes.
        let marked = instance.clone();
        let contain = Arc::new(
            tokio::task::spawn_blocking(move || contain::Containment::init(&marked))
                .await
                .unwrap_or_default(),
        );
        let (alive_tx, alive) = mpsc::channel::<()>(1);
        let persistent = Arc::new(persistent::Manager::new());
        PluginHost {
            shared: session::Shared {
                runner: Arc::new(runner::RunnerConfig {
                    pluginspath: config.pluginspath.clone(),
                    identity: config.identity.clone(),
                    instance,
                    shell: config.shell.clone(),
                    core: Default::default(),
                    persistent: persistent.clone(),
                    max_output: config.max_output,
                    contain: contain.clone(),
                }),
                slots: Arc::new(Semaphore::new(max_concurrency)),
                alive: alive_tx,
                idem: Default::default(),
            },
            alive,
            persistent,
            contain,
        }
    }

    /// Stops every plugin; `false` when some were still stopping after [`SHUTDOWN_WAIT`].
    ///
    /// The session is gone: every dispatch saw its stop channel close and is stopping its
    /// plugin. This waits until the last one dropped its `alive` sender; meanwhile persistent
    /// plugins are told to stop, and killed if they do not. Then whatever is still contained
    /// (escaped processes included) is killed and the worker's cgroups removed.
    async fn stop(mut self) -> bool {
        drop(self.shared);
        let (waited, ()) = tokio::join!(
            tokio::time::timeout(SHUTDOWN_WAIT, self.alive.recv()),
            self.persistent.shutdown()
        );
        let contain = self.contain;
        let _ = tokio::task::spawn_blocking(move || contain.shutdown()).await;
        waited.is_ok()
    }
}

/// A lock that survives a panic elsewhere: nothing in the worker panics while holding one,
/// and the data stay valid either way.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn check_config(config: &WorkerConfig) -> Result<(), WorkerError> {
    let invalid = |reason: String| WorkerError::InvalidConfig { reason };
    proto::names::check_simple("team", &config.team).map_err(|e| invalid(e.to_string()))?;
    proto::names::check_simple("identity", &config.identity).map_err(|e| invalid(e.to_string()))?;
    for service in &config.services {
        proto::names::check_simple("service", service).map_err(|e| invalid(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
