//! Where the broker learns its services and whom it trusts: the [`ConfigSource`] trait.
//!
//! The broker never reads a database. Until the control plane exists, [`FileConfig`] reads
//! services from the `[broker.services.<name>]` tables of a TOML file. Authentication and
//! authorization live behind the same trait so that they are checked in exactly one place.

use proto::control::{Visibility, WorkerStateReport};
use proto::{Algorithm, Credential, ErrorKind};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The team of everything when no control plane is used.
pub const DEFAULT_TEAM: &str = "default";

/// A service's key: (team, name).
pub type ServiceKey = (String, String);

/// How long a request may run when neither the request nor the service says: long enough for
/// a package upgrade, short enough that a forgotten request does not hold a worker forever.
pub const DEFAULT_SERVICE_TIMEOUT: Duration = Duration::from_secs(60);

/// One service as the broker routes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// The team that owns it.
    pub team: String,
    /// Service name, unique in its team.
    pub name: String,
    /// The user who owns it; only they may call a `local` service.
    pub owner: Option<String>,
    /// Who may call it.
    pub visibility: Visibility,
    /// How requests spread over workers.
    pub algorithm: Algorithm,
    /// Worker identities bound to it, in a stable order (serial runs in this order).
    pub workers: Vec<String>,
    /// Timeout when the request gives none.
    pub timeout: Duration,
    /// mirror: at most this many workers at once (Salt's batch mode); `None` = all.
    pub batch: Option<usize>,
    /// serial: stop at the first worker that fails.
    pub stop_on_failure: bool,
    /// roundrobin: re-dispatch even after `Accepted` when a worker is lost.
    pub retry: bool,
    /// Who reads its jobs in the history (its own team's requests only).
    pub history: proto::job::JobHistory,
    /// Also route to every worker of the team that announces this name. Only a config file
    /// (one trusted host, every peer trusted) sets it; a service from the control plane
    /// routes only to `workers`.
    pub open_to_announcers: bool,
}

impl ServiceConfig {
    /// A roundrobin service with the defaults, e.g. for a worker identity used as a service.
    pub fn implicit(team: &str, name: &str) -> ServiceConfig {
        ServiceConfig {
            team: team.to_string(),
            name: name.to_string(),
            owner: None,
            visibility: Visibility::Team,
            algorithm: Algorithm::Roundrobin,
            workers: Vec::new(),
            timeout: DEFAULT_SERVICE_TIMEOUT,
            batch: None,
            stop_on_failure: false,
            retry: false,
            history: Default::default(),
            open_to_announcers: false,
        }
    }
}

/// Who a connection belongs to, once its `Hello` was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The team.
    pub team: String,
    /// User or worker identity.
    pub identity: String,
    /// What it was admitted with, checked again whenever the configuration changes.
    pub proof: Proof,
}

impl Principal {
    /// A principal trusted as given (no control plane to check it again).
    pub fn trusted(team: &str, identity: &str) -> Principal {
        Principal {
            team: team.to_string(),
            identity: identity.to_string(),
            proof: Proof::Trusted,
        }
    }

    /// When its credential expires (seconds since the Unix epoch), if it does.
    pub fn expires_at(&self) -> Option<u64> {
        match self.proof {
            Proof::User { expires_at, .. } => Some(expires_at),
            _ => None,
        }
    }
}

/// The credential a connection was admitted with, as [`ConfigSource::admits`] checks it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// Trusted as given: there is no control plane ([`FileConfig`]).
    Trusted,
    /// A user's JWT.
    User {
        /// The user's id (the token's `uid`).
        uid: i64,
        /// The user's secret generation the token was issued at (its `sgen`).
        sgen: i64,
        /// When the token expires (seconds since the Unix epoch).
        expires_at: u64,
    },
    /// A worker token, by its digest.
    Worker {
        /// [`proto::control::token_digest`] of the token presented.
        token_sha256: String,
    },
}

/// Who may use a worker by its identity and the services it announces (ad-hoc services).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerGrant {
    /// The user who owns the worker.
    pub owner: String,
    /// `local`: its owner only; `team` (and `public`): every member of its team. Ad-hoc
    /// services are never reachable from another team: configure a service for that.
    pub visibility: Visibility,
}

/// What routing needs from the configuration, at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingConfig {
    /// Every configured service by (team, name).
    pub services: BTreeMap<ServiceKey, ServiceConfig>,
    /// Workers whose use is restricted, by (team, identity); a worker not listed is open to
    /// its whole team.
    pub workers: BTreeMap<ServiceKey, WorkerGrant>,
}

/// Why a `Hello` or a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The typed reason.
    pub kind: ErrorKind,
    /// Detail for the peer.
    pub message: String,
}

/// The broker's one window onto configuration and trust.
///
/// Shards compare [`ConfigSource::revision`] on every tick and take a new
/// [`ConfigSource::routing`] when it moved, so a change is routable within a tick.
pub trait ConfigSource: Send + Sync + 'static {
    /// Increases whenever the routing configuration changes.
    fn revision(&self) -> u64;
    /// The routing configuration now.
    fn routing(&self) -> Arc<RoutingConfig>;
    /// Checks a `Hello` credential. The only place credentials are checked.
    fn authenticate(&self, credential: &Credential) -> Result<Principal, Refusal>;
    /// Whether a connection admitted as `principal` may stay, under the configuration now:
    /// shards ask for every connection whenever the revision moves, and close the ones
    /// refused (a removed member, a deleted user or team, a deleted or re-tokened worker).
    fn admits(&self, principal: &Principal) -> Result<(), Refusal> {
        let _ = principal;
        Ok(())
    }
    /// Why no connection may stay or start now (`Some`: the configuration is too old to be
    /// trusted, e.g. the control plane has been out of reach too long); shards ask every
    /// few ticks and close every connection while it says so.
    fn stale(&self) -> Option<String> {
        None
    }
    /// Increases whenever [`ConfigSource::nodes`] changes: shards compare it on every tick
    /// (an atomic load, nothing allocated) and tell every peer the new list.
    fn nodes_revision(&self) -> u64 {
        0
    }
    /// The addresses of the cell's live broker nodes, as peers connect to them (`host:port`
    /// or `tls://host:port`): sent in every `Welcome` and, when it changes, as `Nodes` to
    /// every peer. Empty for a broker outside a cell (the default).
    fn nodes(&self) -> Vec<String> {
        Vec::new()
    }
    /// A worker connected or left. Must not block: shards call it.
    fn report(&self, report: WorkerStateReport);
    /// Whether requests should be traced for the job history ([`ConfigSource::job`]); a
    /// source without a control plane says no, and shards then keep no trace at all.
    fn records_jobs(&self) -> bool {
        false
    }
    /// A request through a service ended. Must not block, wait or wake anyone: shards call
    /// it when a request finishes; the source makes the record of it
    /// ([`crate::jobs::JobTrace::finish`]) off the shard, and one that cannot keep up drops
    /// traces (and counts them).
    fn job(&self, trace: Box<crate::jobs::JobTrace>) {
        let _ = trace;
    }
    /// Shard `shard`'s counts of triggers' requests in a minute so far
    /// ([`crate::triggers::TriggerTally`]), every second at most, each with its `source` to
    /// fill in. Must not block, wait or wake anyone, as [`ConfigSource::job`].
    fn trigger_minutes(&self, shard: usize, minutes: Vec<proto::job::TriggerMinute>) {
        let _ = (shard, minutes);
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct ServiceToml {
    algorithm: Option<String>,
    workers: Vec<String>,
    timeout: Option<String>,
    batch: Option<usize>,
    stop_on_failure: bool,
    retry: bool,
    /// Also route to every worker that announces the service's name.
    announced: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct BrokerToml {
    services: BTreeMap<String, ServiceToml>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct FileToml {
    broker: BrokerToml,
}

/// Services from a TOML file, all in team `default`; every credential is accepted as
/// given (there is no control plane to check it against). For a single trusted host and tests.
#[derive(Debug, Clone, Default)]
pub struct FileConfig {
    routing: Arc<RoutingConfig>,
}

impl FileConfig {
    /// A source with exactly these services.
    pub fn from_services(services: impl IntoIterator<Item = ServiceConfig>) -> FileConfig {
        let services = services
            .into_iter()
            .map(|s| ((s.team.clone(), s.name.clone()), s))
            .collect();
        FileConfig {
            routing: Arc::new(RoutingConfig {
                services,
                workers: BTreeMap::new(),
            }),
        }
    }

    /// Parses the TOML text (other sections than `[broker.services]` are ignored).
    pub fn parse(text: &str) -> Result<FileConfig, String> {
        let file: FileToml = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut services = Vec::new();
        for (name, s) in file.broker.services {
            proto::names::check_simple("service", &name).map_err(|e| e.to_string())?;
            let algorithm = match s.algorithm.as_deref() {
                None => Algorithm::Roundrobin,
                Some(a) => a.parse().map_err(|e| format!("service {name}: {e}"))?,
            };
            let timeout = match s.timeout.as_deref() {
                None => DEFAULT_SERVICE_TIMEOUT,
                Some(t) => parse_timeout(t).map_err(|e| format!("service {name}: {e}"))?,
            };
            if s.batch == Some(0) {
                return Err(format!("service {name}: batch must be at least 1"));
            }
            for w in &s.workers {
                proto::names::check_simple("worker identity", w).map_err(|e| e.to_string())?;
            }
            services.push(ServiceConfig {
                algorithm,
                workers: s.workers,
                timeout,
                batch: s.batch,
                stop_on_failure: s.stop_on_failure,
                retry: s.retry,
                open_to_announcers: s.announced,
                ..ServiceConfig::implicit(DEFAULT_TEAM, &name)
            });
        }
        Ok(FileConfig::from_services(services))
    }
}

/// A service timeout: a duration as the API takes it (`250ms`, `10s`, `1h 30m`, parsed by
/// humantime) or a bare number of seconds.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("timeout `{text}` is not a duration (e.g. 500ms, 10s, 1h 30m): {e}"))
}

impl ConfigSource for FileConfig {
    fn revision(&self) -> u64 {
        0
    }

    fn routing(&self) -> Arc<RoutingConfig> {
        self.routing.clone()
    }

    fn report(&self, report: WorkerStateReport) {
        // No control plane to tell: the log is the record.
        tracing::debug!(team = %report.team, identity = %report.identity, state = ?report.state, "worker state");
    }

    fn authenticate(&self, credential: &Credential) -> Result<Principal, Refusal> {
        // No control plane yet: the credential names who the peer is and is trusted as given.
        match credential {
            Credential::Jwt { .. } => Ok(Principal::trusted(DEFAULT_TEAM, "client")),
            Credential::Worker { team, identity, .. } => {
                proto::names::check_simple("worker identity", identity).map_err(|e| Refusal {
                    kind: ErrorKind::BadRequest,
                    message: e.to_string(),
                })?;
                Ok(Principal::trusted(team, identity))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_services() {
        let cfg = FileConfig::parse(
            r#"
            [main]
            team = "x"
            [broker.services.dc1]
            algorithm = "mirror"
            workers = ["w1", "w2"]
            timeout = "1h"
            batch = 10
            [broker.services.rr]
            [broker.services.long]
            timeout = "1h 30m"
            [broker.services.bare]
            timeout = "90"
            "#,
        )
        .unwrap();
        let services = &cfg.routing.services;
        let key = |n: &str| (DEFAULT_TEAM.to_string(), n.to_string());
        let dc1 = &services[&key("dc1")];
        assert_eq!(dc1.algorithm, Algorithm::Mirror);
        assert_eq!(dc1.workers, vec!["w1", "w2"]);
        assert_eq!(dc1.timeout, Duration::from_secs(3600));
        assert_eq!(dc1.batch, Some(10));
        assert_eq!(services[&key("rr")].algorithm, Algorithm::Roundrobin);
        assert_eq!(services[&key("rr")].timeout, DEFAULT_SERVICE_TIMEOUT);
        assert_eq!(services[&key("long")].timeout, Duration::from_secs(5400));
        assert_eq!(services[&key("bare")].timeout, Duration::from_secs(90));
    }

    #[test]
    fn rejects_bad_config() {
        for bad in [
            "[broker.services.x]\nalgorithm = \"random\"",
            "[broker.services.x]\ntimeout = \"10 parsecs\"",
            "[broker.services.x]\nbatch = 0",
            "[broker.services.x]\nworkers = [\"../w\"]",
            "[broker.services.x]\nalgoritm = \"mirror\"",
        ] {
            assert!(FileConfig::parse(bad).is_err(), "{bad}");
        }
    }
}
