//! Which workers are online and which services they serve: one replica per shard.
//!
//! Pure data: no I/O, no async. Each shard keeps its own copy, updated by the
//! `WorkerOnline`/`WorkerOffline` messages every shard broadcasts, so routing a request
//! never takes a lock or asks another shard. Member lists come out in a stable order on every
//! shard (configured order first, then announcing workers by identity) so that `serial`
//! runs in the same order wherever the request arrived.

use crate::config::{ServiceConfig, DEFAULT_SERVICE_TIMEOUT};
use proto::ErrorKind;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where a worker's connection lives: its shard and connection number there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkerAt {
    /// Index of the shard that owns the socket.
    pub shard_idx: usize,
    /// Connection number on that shard.
    pub conn_id: u64,
}

/// An online worker as routing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRef {
    /// The worker's identity.
    pub identity: Arc<str>,
    /// Its connection.
    pub at: WorkerAt,
}

#[derive(Debug, Clone)]
struct OnlineWorker {
    at: WorkerAt,
    announced: Vec<String>,
}

/// A request's route: the service and its online workers in order.
#[derive(Debug)]
pub struct Route<'a> {
    /// The service (configured, or implicit for a worker identity or announced name).
    pub service: Cow<'a, ServiceConfig>,
    /// Online workers, in stable order.
    pub members: Vec<WorkerRef>,
}

/// The replica of services and online workers kept by one shard.
#[derive(Debug, Default)]
pub struct Registry {
    services: BTreeMap<String, ServiceConfig>,
    online: BTreeMap<Arc<str>, OnlineWorker>,
}

impl Registry {
    /// A registry with these configured services and no worker online.
    pub fn new(services: BTreeMap<String, ServiceConfig>) -> Registry {
        Registry {
            services,
            online: BTreeMap::new(),
        }
    }

    /// Replaces the configured services (a configuration change).
    pub fn set_services(&mut self, services: BTreeMap<String, ServiceConfig>) {
        self.services = services;
    }

    /// A worker connected (or reconnected: the newest connection wins).
    pub fn worker_online(&mut self, identity: Arc<str>, at: WorkerAt, announced: Vec<String>) {
        self.online.insert(identity, OnlineWorker { at, announced });
    }

    /// A worker's connection closed; ignored when a newer connection already replaced it.
    pub fn worker_offline(&mut self, identity: &str, at: WorkerAt) {
        if self.online.get(identity).is_some_and(|w| w.at == at) {
            self.online.remove(identity);
        }
    }

    /// Number of workers online.
    pub fn n_online(&self) -> usize {
        self.online.len()
    }

    /// Where an online worker lives.
    pub fn worker(&self, identity: &str) -> Option<WorkerRef> {
        self.online.get_key_value(identity).map(|(k, w)| WorkerRef {
            identity: k.clone(),
            at: w.at,
        })
    }

    /// Resolves a service name to its route.
    ///
    /// A configured service wins; else a worker identity is a service of one; else a name some
    /// online worker announced is a roundrobin service over those workers.
    pub fn resolve(&self, name: &str) -> Result<Route<'_>, (ErrorKind, String)> {
        if let Some(service) = self.services.get(name) {
            let mut members: Vec<WorkerRef> = service
                .workers
                .iter()
                .filter_map(|id| self.worker(id))
                .collect();
            for (id, w) in &self.online {
                if w.announced.iter().any(|s| s == name)
                    && !service.workers.iter().any(|c| **c == **id)
                {
                    members.push(WorkerRef {
                        identity: id.clone(),
                        at: w.at,
                    });
                }
            }
            if members.is_empty() {
                return Err((
                    ErrorKind::NoWorkersOnline,
                    format!("service {name} has no worker online"),
                ));
            }
            return Ok(Route {
                service: Cow::Borrowed(service),
                members,
            });
        }
        if let Some(worker) = self.worker(name) {
            return Ok(Route {
                service: Cow::Owned(ServiceConfig::implicit(name)),
                members: vec![worker],
            });
        }
        let members: Vec<WorkerRef> = self
            .online
            .iter()
            .filter(|(_, w)| w.announced.iter().any(|s| s == name))
            .map(|(id, w)| WorkerRef {
                identity: id.clone(),
                at: w.at,
            })
            .collect();
        if members.is_empty() {
            return Err((ErrorKind::NoSuchService, format!("no service named {name}")));
        }
        Ok(Route {
            service: Cow::Owned(ServiceConfig {
                timeout: DEFAULT_SERVICE_TIMEOUT,
                ..ServiceConfig::implicit(name)
            }),
            members,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::Algorithm;

    fn at(conn_id: u64) -> WorkerAt {
        WorkerAt {
            shard_idx: 0,
            conn_id,
        }
    }

    fn registry() -> Registry {
        let mut services = BTreeMap::new();
        services.insert(
            "dc1".to_string(),
            ServiceConfig {
                algorithm: Algorithm::Serial,
                workers: vec!["w3".into(), "w1".into(), "w2".into()],
                ..ServiceConfig::implicit("dc1")
            },
        );
        Registry::new(services)
    }

    fn names(route: &Route) -> Vec<String> {
        route
            .members
            .iter()
            .map(|m| m.identity.to_string())
            .collect()
    }

    #[test]
    fn configured_order_then_announcers() {
        let mut r = registry();
        r.worker_online("w1".into(), at(1), vec![]);
        r.worker_online("w3".into(), at(3), vec![]);
        r.worker_online("w9".into(), at(9), vec!["dc1".into()]);
        let route = r.resolve("dc1").unwrap();
        assert_eq!(names(&route), ["w3", "w1", "w9"]);
        assert_eq!(route.service.algorithm, Algorithm::Serial);
    }

    #[test]
    fn identity_and_announced_services() {
        let mut r = registry();
        r.worker_online("w1".into(), at(1), vec!["logs".into()]);
        r.worker_online("w2".into(), at(2), vec!["logs".into()]);
        assert_eq!(names(&r.resolve("w2").unwrap()), ["w2"]);
        assert_eq!(names(&r.resolve("logs").unwrap()), ["w1", "w2"]);
        assert_eq!(r.resolve("nope").unwrap_err().0, ErrorKind::NoSuchService);
    }

    #[test]
    fn no_workers_online_and_reconnect_races() {
        let mut r = registry();
        assert_eq!(r.resolve("dc1").unwrap_err().0, ErrorKind::NoWorkersOnline);
        r.worker_online("w1".into(), at(1), vec![]);
        // A reconnect arrives before the old connection's close is noticed.
        r.worker_online("w1".into(), at(5), vec![]);
        r.worker_offline("w1", at(1));
        assert_eq!(r.resolve("dc1").unwrap().members[0].at, at(5));
        r.worker_offline("w1", at(5));
        assert_eq!(r.n_online(), 0);
    }
}
