//! Which workers are online and which services they serve: one replica per shard.
//!
//! Pure data: no I/O, no async. Each shard keeps its own copy, updated by the
//! `WorkerOnline`/`WorkerOffline` messages every shard broadcasts, so routing a request
//! never takes a lock or asks another shard. Member lists come out in a stable order on every
//! shard (configured order first, then announcing workers by identity) so that `serial`
//! runs in the same order wherever the request arrived.
//!
//! Everything is scoped by team. [`Registry::resolve`] is also where team isolation is
//! decided: a caller reaches its own team's services (a `local` one only if it owns it), its
//! team's worker identities and announced services (a `local` worker's only if it owns the
//! worker), and another team's `public` services as `team/service`. A configured service
//! routes only to the workers bound to it: announcing its name does not join it (unless a
//! config file opens it to announcers), and a `local` worker serves only its owner's
//! services, whatever is bound. An announced (ad-hoc) service belongs to the owner of the
//! workers announcing it: a caller reaches their own announcers of the name; one who has none
//! reaches the `team` announcers of a single other owner, and is refused when several owners
//! announce it.

use crate::config::{Principal, RoutingConfig, ServiceConfig, WorkerGrant};
use foldhash::{HashMap, HashMapExt};
use proto::control::Visibility;
use proto::ErrorKind;
use std::collections::{BTreeMap, BTreeSet};
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
    /// Orders connections of one identity broker-wide: the highest is the newest.
    generation: u64,
    announced: Vec<String>,
}

/// What [`Registry::worker_online`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Online {
    /// The identity was not online.
    New,
    /// The same connection again (an `Announce`).
    Same,
    /// It replaced an older connection of the identity, which is to be closed.
    Replaced(WorkerAt),
    /// A newer connection of the identity is already known: nothing changed, and this one
    /// is to be closed.
    Stale,
}

/// A request's route: the service and its online workers in order.
#[derive(Debug)]
pub struct Route {
    /// The service (configured, or implicit for a worker identity or announced name).
    pub service: Arc<ServiceConfig>,
    /// Online workers, in stable order.
    pub members: Vec<WorkerRef>,
    /// Workers bound to a configured mirror or serial service but offline, in configured
    /// order (empty for roundrobin and implicit services).
    pub offline: Vec<Arc<str>>,
}

/// Why a name did not resolve.
pub type RouteError = (ErrorKind, String);

/// `team → name → T`: looked up with two `&str`s, without building a key.
type ByTeam<T> = HashMap<String, HashMap<String, T>>;

/// The replica of services and online workers kept by one shard.
///
/// Resolving a request allocates nothing but its member list: services and online workers
/// are indexed by team and name, and the announced services of online workers have an
/// index of their own (no scan of the team's workers per request).
#[derive(Debug, Default)]
pub struct Registry {
    /// Configured services, from the routing configuration.
    configured: ByTeam<Arc<ServiceConfig>>,
    /// Implicit services (a worker identity, an announced name), made once each.
    implicit: ByTeam<Arc<ServiceConfig>>,
    /// Who may use a worker directly and its announced services; absent: its whole team.
    grants: ByTeam<WorkerGrant>,
    /// team → identity → worker.
    online: HashMap<String, BTreeMap<Arc<str>, OnlineWorker>>,
    /// team → announced service → identities announcing it.
    announced: ByTeam<BTreeSet<Arc<str>>>,
}

impl Registry {
    /// A registry with this configuration and no worker online.
    pub fn new(routing: Arc<RoutingConfig>) -> Registry {
        let mut registry = Registry::default();
        registry.set_routing(routing);
        registry
    }

    /// Replaces the configured services (a configuration change).
    pub fn set_routing(&mut self, routing: Arc<RoutingConfig>) {
        self.configured = by_team(&routing.services, |s| Arc::new(s.clone()));
        self.grants = by_team(&routing.workers, WorkerGrant::clone);
        // Rebuilt on demand; dropping them here keeps names of long-gone workers from piling up.
        self.implicit.clear();
    }

    /// A worker connected (or reconnected: the newest connection, by `generation`, wins),
    /// or announced the services it serves. Replicas that see the news of two connections
    /// in either order agree on the winner.
    pub fn worker_online(
        &mut self,
        team: &str,
        identity: Arc<str>,
        at: WorkerAt,
        generation: u64,
        announced: Vec<String>,
    ) -> Online {
        let workers = self.online.entry(team.to_string()).or_default();
        let outcome = match workers.get(&identity) {
            None => Online::New,
            Some(w) if w.at == at => Online::Same,
            Some(w) if w.generation > generation => return Online::Stale,
            Some(w) => Online::Replaced(w.at),
        };
        let index = self.announced.entry(team.to_string()).or_default();
        for service in &announced {
            index
                .entry(service.clone())
                .or_default()
                .insert(identity.clone());
        }
        let worker = OnlineWorker {
            at,
            generation,
            announced,
        };
        if let Some(old) = workers.insert(identity.clone(), worker) {
            let now = &workers[&identity].announced;
            for service in old.announced.iter().filter(|s| !now.contains(s)) {
                unindex(index, service, &identity);
            }
        }
        outcome
    }

    /// Where the connection of `identity` that routing uses is.
    pub fn online_at(&self, team: &str, identity: &str) -> Option<WorkerAt> {
        Some(self.online.get(team)?.get(identity)?.at)
    }

    /// A worker's connection closed; ignored when a newer connection already replaced it.
    pub fn worker_offline(&mut self, team: &str, identity: &str, at: WorkerAt) {
        let Some(workers) = self.online.get_mut(team) else {
            return;
        };
        if !workers.get(identity).is_some_and(|w| w.at == at) {
            return;
        }
        let Some((identity, gone)) = workers.remove_entry(identity) else {
            return;
        };
        if workers.is_empty() {
            self.online.remove(team);
        }
        if let Some(index) = self.announced.get_mut(team) {
            for service in &gone.announced {
                unindex(index, service, &identity);
            }
            if index.is_empty() {
                self.announced.remove(team);
            }
        }
    }

    /// Number of workers online.
    #[cfg(test)]
    pub fn n_online(&self) -> usize {
        self.online.values().map(BTreeMap::len).sum()
    }

    fn worker(&self, team: &str, identity: &str) -> Option<WorkerRef> {
        self.online
            .get(team)?
            .get_key_value(identity)
            .map(|(id, w)| WorkerRef {
                identity: id.clone(),
                at: w.at,
            })
    }

    /// Online workers that announced `service`, by identity.
    fn announcers<'a>(
        &'a self,
        team: &'a str,
        service: &'a str,
    ) -> impl Iterator<Item = WorkerRef> + 'a {
        self.announced
            .get(team)
            .and_then(|index| index.get(service))
            .into_iter()
            .flatten()
            .filter_map(move |id| self.worker(team, id))
    }

    fn grant(&self, team: &str, identity: &str) -> Option<&WorkerGrant> {
        self.grants.get(team)?.get(identity)
    }

    /// Whether worker `identity` of `team` is `local` (its owner's alone).
    pub fn is_local_worker(&self, team: &str, identity: &str) -> bool {
        self.grant(team, identity)
            .is_some_and(|grant| grant.visibility == Visibility::Local)
    }

    /// Whether `caller` (of `team`) may use worker `identity` directly or through the
    /// services it announces: a `local` worker only its owner may.
    fn may_use_worker(&self, team: &str, identity: &str, caller: &Principal) -> bool {
        self.may_serve(team, identity, Some(&caller.identity))
    }

    /// Whether worker `identity` of `team` may serve on behalf of `user` (a caller, or a
    /// configured service's owner): a `local` worker only its owner's.
    fn may_serve(&self, team: &str, identity: &str, user: Option<&str>) -> bool {
        match self.grant(team, identity) {
            Some(grant) if grant.visibility == Visibility::Local => {
                user == Some(grant.owner.as_str())
            }
            _ => true,
        }
    }

    /// The owner of worker `identity` of `team`; `None` for a worker the configuration
    /// says nothing of (a config file's: the whole team's).
    fn owner_of(&self, team: &str, identity: &str) -> Option<&str> {
        self.grant(team, identity).map(|g| g.owner.as_str())
    }

    /// The configured service `team/name`, when `identity` is not among its workers: a worker
    /// announcing that name is ignored (and the shard says so once).
    pub fn configured_elsewhere(&self, team: &str, name: &str, identity: &str) -> bool {
        self.configured
            .get(team)
            .and_then(|services| services.get(name))
            .is_some_and(|s| !s.open_to_announcers && !s.workers.iter().any(|w| w == identity))
    }

    /// The configured services of `team` that worker `identity` is bound to, by name.
    pub fn bound_to(&self, team: &str, identity: &str) -> Vec<String> {
        let services = self.configured.get(team).into_iter().flatten();
        services
            .filter(|(_, s)| s.workers.iter().any(|w| w == identity))
            .map(|(name, _)| name.to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// The implicit service `team/name` (roundrobin, team visibility), made once.
    fn implicit(&mut self, team: &str, name: &str) -> Arc<ServiceConfig> {
        if let Some(service) = self.implicit.get(team).and_then(|m| m.get(name)) {
            return service.clone();
        }
        let service = Arc::new(ServiceConfig::implicit(team, name));
        self.implicit
            .entry(team.to_string())
            .or_default()
            .insert(name.to_string(), service.clone());
        service
    }

    /// Resolves `name` (`service` or `team/service`) for `caller`.
    ///
    /// In the caller's team a configured service wins; else a worker identity is a service
    /// of one; else a name online workers announced is a roundrobin service over the
    /// caller's own announcers, or those of the one other owner whose `team` workers
    /// announce it (see the module docs).
    /// Another team's service is reachable only when it is configured `public`.
    pub fn resolve(&mut self, caller: &Principal, name: &str) -> Result<Route, RouteError> {
        let (team, service_name) = match name.split_once('/') {
            Some((team, service)) => (team, service),
            None => (caller.team.as_str(), name),
        };
        let own_team = team == caller.team;
        let configured = self
            .configured
            .get(team)
            .and_then(|services| services.get(service_name))
            .cloned();
        if let Some(service) = configured {
            return self.resolve_configured(caller, (team, service_name), name, service);
        }
        if !own_team {
            // Do not reveal which names exist in another team.
            return Err((
                ErrorKind::NoSuchService,
                format!("no public service named {name}"),
            ));
        }
        if let Some(worker) = self.worker(team, service_name) {
            if !self.may_use_worker(team, service_name, caller) {
                return Err((
                    ErrorKind::Forbidden,
                    format!(
                        "worker {service_name} is local to its owner and not open to {}",
                        caller.identity
                    ),
                ));
            }
            return Ok(Route {
                service: self.implicit(team, service_name),
                members: vec![worker],
                offline: Vec::new(),
            });
        }
        let members = self.adhoc_members(team, service_name, caller)?;
        if members.is_empty() {
            return Err((
                ErrorKind::NoSuchService,
                format!("no service named {name} in team {team}"),
            ));
        }
        Ok(Route {
            service: self.implicit(team, service_name),
            members,
            offline: Vec::new(),
        })
    }
}

impl Registry {
    /// Resolves `service`, configured as `team/service_name` (`name` as the caller wrote
    /// it), for `caller`: its visibility, then its bound workers online (and, for mirror
    /// and serial, offline).
    fn resolve_configured(
        &self,
        caller: &Principal,
        (team, service_name): (&str, &str),
        name: &str,
        service: Arc<ServiceConfig>,
    ) -> Result<Route, RouteError> {
        let own_team = team == caller.team;
        let allowed = match service.visibility {
            Visibility::Public => true,
            Visibility::Team => own_team,
            Visibility::Local => own_team && service.owner.as_deref() == Some(&caller.identity),
        };
        if !allowed {
            return Err((
                ErrorKind::Forbidden,
                format!(
                    "service {team}/{service_name} is {} and not open to {}/{}",
                    service.visibility, caller.team, caller.identity
                ),
            ));
        }
        // One pass over the bound workers, online ones as members and (mirror, serial)
        // the others as offline: a fan-out service may bind thousands.
        let mut members: Vec<WorkerRef> = Vec::with_capacity(service.workers.len());
        let mut offline: Vec<Arc<str>> = Vec::new();
        let reports_offline = service.algorithm != proto::Algorithm::Roundrobin;
        // A `local` worker bound to a service of another user (bound before the API
        // checked, or made `local` since) does not serve it.
        let mut not_theirs: Option<&str> = None;
        for id in &service.workers {
            if !self.may_serve(team, id, service.owner.as_deref()) {
                not_theirs.get_or_insert(id);
                continue;
            }
            match self.worker(team, id) {
                Some(w) => members.push(w),
                None if reports_offline => offline.push(Arc::from(id.as_str())),
                None => {}
            }
        }
        if service.open_to_announcers {
            for w in self.announcers(team, service_name) {
                if !service.workers.iter().any(|c| **c == *w.identity) {
                    members.push(w);
                }
            }
        }
        // A mirror or serial service with every bound worker offline still routes: the
        // request reports each of them `Offline` instead of naming none of them.
        if members.is_empty() && offline.is_empty() {
            if let Some(id) = not_theirs {
                return Err((
                    ErrorKind::Forbidden,
                    format!(
                        "worker {id} is local to {} and serves no service of {}; service {name} has no other worker",
                        self.owner_of(team, id).unwrap_or_default(),
                        service.owner.as_deref().unwrap_or_default()
                    ),
                ));
            }
            return Err((
                ErrorKind::NoWorkersOnline,
                format!("service {name} has no worker online"),
            ));
        }
        Ok(Route {
            service,
            members,
            offline,
        })
    }

    /// The members of the ad-hoc service `name` of `team` for `caller`: the online workers
    /// of the caller that announce it; when there are none, the `team` workers of the one
    /// other owner that announce it (empty when none does). Workers of several other owners
    /// announcing it make the name ambiguous: refused, rather than spread over owners who
    /// know nothing of each other.
    fn adhoc_members(
        &self,
        team: &str,
        name: &str,
        caller: &Principal,
    ) -> Result<Vec<WorkerRef>, RouteError> {
        let mine = |w: &WorkerRef| self.owner_of(team, &w.identity) == Some(&caller.identity);
        let own: Vec<WorkerRef> = self.announcers(team, name).filter(mine).collect();
        if !own.is_empty() {
            return Ok(own);
        }
        let open: Vec<WorkerRef> = self
            .announcers(team, name)
            .filter(|w| self.may_use_worker(team, &w.identity, caller))
            .collect();
        let owner = |w: &WorkerRef| self.owner_of(team, &w.identity);
        if let Some(first) = open.first().map(owner) {
            if open.iter().any(|w| owner(w) != first) {
                let owners: BTreeSet<&str> = open.iter().filter_map(owner).collect();
                let owners: Vec<&str> = owners.into_iter().collect();
                return Err((
                    ErrorKind::NoSuchService,
                    format!(
                        "{name} is announced by workers of several owners ({}) and none of yours: call a worker by its identity, or configure a service",
                        owners.join(", ")
                    ),
                ));
            }
        }
        Ok(open)
    }
}

/// `map`, keyed by (team, name), regrouped by team, each value made by `f`.
fn by_team<T, U>(map: &BTreeMap<(String, String), T>, f: impl Fn(&T) -> U) -> ByTeam<U> {
    let mut by_team: ByTeam<U> = HashMap::new();
    for ((team, name), value) in map {
        let names = by_team.entry(team.clone()).or_default();
        names.insert(name.clone(), f(value));
    }
    by_team
}

fn unindex(index: &mut HashMap<String, BTreeSet<Arc<str>>>, service: &str, identity: &str) {
    if let Some(ids) = index.get_mut(service) {
        ids.remove(identity);
        if ids.is_empty() {
            index.remove(service);
        }
    }
}

#[cfg(test)]
mod tests;
