//! Where a request goes: the shard's registry replica at the configuration's revision, and
//! the roundrobin turn of each service.

use crate::config::{ConfigSource, Principal, ServiceConfig};
use crate::registry::{Registry, RouteError, WorkerRef};
use crate::RoundRobin;
use foldhash::HashMap;
use proto::{Algorithm, ErrorKind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A routed request: its service, its online workers in order, its bound-but-offline ones.
pub(super) type RouteTo = (Arc<ServiceConfig>, Vec<WorkerRef>, Vec<Arc<str>>);

/// The online and the offline workers a request runs on.
type Subset = (Vec<WorkerRef>, Vec<Arc<str>>);

/// The shard's routing: its registry replica and the roundrobin counters it uses.
pub(super) struct Routing {
    pub(super) registry: Registry,
    /// The configuration's revision the registry follows.
    revision: u64,
    /// Roundrobin positions shared by all shards.
    rr: Arc<RoundRobin>,
    /// team → service → the broker-wide roundrobin counter, looked up once per shard.
    rr_cache: HashMap<String, HashMap<String, Arc<AtomicU64>>>,
}

impl Routing {
    pub(super) fn new(source: &dyn ConfigSource, rr: Arc<RoundRobin>) -> Routing {
        Routing {
            revision: source.revision(),
            registry: Registry::new(source.routing()),
            rr,
            rr_cache: HashMap::default(),
        }
    }

    /// Follows the source's configuration: the new revision when it moved.
    pub(super) fn reload(&mut self, source: &dyn ConfigSource) -> Option<u64> {
        let revision = source.revision();
        if revision == self.revision {
            return None;
        }
        self.revision = revision;
        self.registry.set_routing(source.routing());
        Some(revision)
    }

    /// Resolves `name` for `principal` and picks its workers: for roundrobin, rotated so
    /// that the first is the one whose turn it is and the rest are fail-over candidates. A
    /// keyed request's turn is its key's instead ([`affinity`]): a replay goes to the worker
    /// that ran it (whose window knows the key) while the same workers are online.
    pub(super) fn route(
        &mut self,
        principal: &Principal,
        name: &str,
        key: Option<&proto::IdemKey>,
    ) -> Result<RouteTo, RouteError> {
        let route = self.registry.resolve(principal, name)?;
        let service = route.service;
        let mut members = route.members;
        if let (Some(key), Algorithm::Roundrobin) = (key, service.algorithm) {
            let start = (affinity(key) % members.len() as u64) as usize;
            members.rotate_left(start);
        } else if service.algorithm == Algorithm::Roundrobin && members.len() > 1 {
            let counter = self.counter(&service);
            let start = counter.fetch_add(1, Ordering::Relaxed) as usize % members.len();
            members.rotate_left(start);
        }
        Ok((service, members, route.offline))
    }

    /// The broker-wide roundrobin counter of `service`.
    fn counter(&mut self, service: &ServiceConfig) -> Arc<AtomicU64> {
        let cached = self.rr_cache.get(&service.team);
        if let Some(counter) = cached.and_then(|m| m.get(&service.name)) {
            return counter.clone();
        }
        let counter = self
            .rr
            .counter(&format!("{}/{}", service.team, service.name));
        self.rr_cache
            .entry(service.team.clone())
            .or_default()
            .insert(service.name.clone(), counter.clone());
        counter
    }
}

/// The request's `Fleet::only`: keeps the online and offline workers it names, and refuses
/// a name that is neither (`BadRequest`) or a subset with none online and none to report
/// offline (`NoWorkersOnline`; a mirror or serial subset of offline workers reports them).
pub(super) fn only(
    names: &[String],
    service: &ServiceConfig,
    targets: Vec<WorkerRef>,
    offline: Vec<Arc<str>>,
) -> Result<Subset, RouteError> {
    if names.is_empty() {
        return Ok((targets, offline));
    }
    if let Some(unknown) = names.iter().find(|n| {
        !targets.iter().any(|t| *t.identity == ***n)
            && !offline.iter().any(|o| **o == ***n)
            && !service.workers.iter().any(|w| w == *n)
    }) {
        return Err((
            ErrorKind::BadRequest,
            format!("{unknown} is not a worker of service {}", service.name),
        ));
    }
    let wanted = |id: &str| names.iter().any(|n| n == id);
    let targets: Vec<WorkerRef> = targets
        .into_iter()
        .filter(|t| wanted(&t.identity))
        .collect();
    let offline: Vec<Arc<str>> = offline.into_iter().filter(|o| wanted(o)).collect();
    if targets.is_empty() && offline.is_empty() {
        return Err((
            ErrorKind::NoWorkersOnline,
            format!("none of {} is online", names.join(", ")),
        ));
    }
    Ok((targets, offline))
}

/// A keyed request's place among its service's workers: the same for every replay of the
/// key, and consecutive records of one spool spread over the workers.
fn affinity(key: &proto::IdemKey) -> u64 {
    let mut head = [0u8; 8];
    head.copy_from_slice(&key.source[..8]);
    u64::from_le_bytes(head).wrapping_add(key.seq)
}
