//! Resolution, isolation and the online/offline news of the registry.

use super::*;
use proto::Algorithm;

fn at(conn_id: u64) -> WorkerAt {
    WorkerAt {
        shard_idx: 0,
        conn_id,
    }
}

fn caller(team: &str, identity: &str) -> Principal {
    Principal::trusted(team, identity)
}

fn service(team: &str, name: &str, visibility: Visibility, workers: &[&str]) -> ServiceConfig {
    ServiceConfig {
        algorithm: Algorithm::Serial,
        workers: workers.iter().map(|w| w.to_string()).collect(),
        visibility,
        owner: Some("alice".into()),
        ..ServiceConfig::implicit(team, name)
    }
}

fn registry() -> Registry {
    let services = [
        service("a", "dc1", Visibility::Team, &["w3", "w1", "w2"]),
        service("a", "mine", Visibility::Local, &["w1"]),
        service("a", "open", Visibility::Public, &["w1"]),
    ];
    let mut open = service("a", "fleet", Visibility::Team, &["w1"]);
    open.open_to_announcers = true;
    let grant = |owner: &str, visibility| WorkerGrant {
        owner: owner.into(),
        visibility,
    };
    Registry::new(Arc::new(RoutingConfig {
        services: services
            .into_iter()
            .chain([open])
            .map(|s| ((s.team.clone(), s.name.clone()), s))
            .collect(),
        workers: [
            (("a".into(), "cw".into()), grant("carol", Visibility::Local)),
            (("a".into(), "w9".into()), grant("bob", Visibility::Team)),
        ]
        .into_iter()
        .collect(),
    }))
}

fn names(route: &Route) -> Vec<String> {
    route
        .members
        .iter()
        .map(|m| m.identity.to_string())
        .collect()
}

/// A configured service routes only to the workers bound to it, in their order: a worker of
/// the team that announces its name does not join it (finding 1 of issue 10).
#[test]
fn configured_services_route_only_to_their_workers() {
    let mut r = registry();
    r.worker_online("a", "w1".into(), at(1), 1, vec![]);
    r.worker_online("a", "w3".into(), at(3), 3, vec![]);
    r.worker_online(
        "a",
        "w9".into(),
        at(9),
        9,
        vec!["dc1".into(), "mine".into()],
    );
    // Same names in another team are other workers.
    r.worker_online("b", "w2".into(), at(20), 20, vec!["dc1".into()]);
    let route = r.resolve(&caller("a", "bob"), "dc1").unwrap();
    assert_eq!(names(&route), ["w3", "w1"]);
    assert_eq!(route.service.algorithm, Algorithm::Serial);
    assert_eq!(
        names(&r.resolve(&caller("a", "alice"), "mine").unwrap()),
        ["w1"]
    );
    assert!(r.configured_elsewhere("a", "dc1", "w9"));
    assert!(!r.configured_elsewhere("a", "dc1", "w1"));
    assert!(!r.configured_elsewhere("a", "logs", "w9"));
    // With nothing bound online, an announcer still does not serve it: the route has no
    // member, and (serial) names every bound worker offline.
    let mut r = registry();
    r.worker_online("a", "w9".into(), at(9), 9, vec!["dc1".into()]);
    let route = r.resolve(&caller("a", "bob"), "dc1").unwrap();
    assert!(route.members.is_empty());
    assert_eq!(offline(&route), ["w3", "w1", "w2"]);
}

fn offline(route: &Route) -> Vec<String> {
    route.offline.iter().map(|w| w.to_string()).collect()
}

/// A config file may open a service to announcers (every peer is trusted there).
#[test]
fn a_service_open_to_announcers_takes_them_after_its_own() {
    let mut r = registry();
    r.worker_online("a", "w9".into(), at(9), 9, vec!["fleet".into()]);
    r.worker_online("a", "w1".into(), at(1), 1, vec![]);
    assert!(!r.configured_elsewhere("a", "fleet", "w9"));
    let route = r.resolve(&caller("a", "bob"), "fleet").unwrap();
    assert_eq!(names(&route), ["w1", "w9"]);
}

/// A `local` worker, and what it announces, is its owner's alone; a `team` one is anyone's
/// in the team; neither reaches another team. An ad-hoc name is its announcers' owner's:
/// each caller reaches their own announcers first.
#[test]
fn worker_visibility_scopes_ad_hoc_services() {
    let mut r = registry();
    r.worker_online("a", "cw".into(), at(1), 1, vec!["deploy".into()]);
    r.worker_online("a", "w9".into(), at(9), 9, vec!["deploy".into()]);
    let carol = caller("a", "carol");
    let bob = caller("a", "bob");
    assert_eq!(names(&r.resolve(&carol, "deploy").unwrap()), ["cw"]);
    assert_eq!(names(&r.resolve(&bob, "deploy").unwrap()), ["w9"]);
    assert_eq!(
        names(&r.resolve(&caller("a", "dave"), "deploy").unwrap()),
        ["w9"]
    );
    assert!(r.resolve(&carol, "cw").is_ok());
    assert_eq!(r.resolve(&bob, "cw").unwrap_err().0, ErrorKind::Forbidden);
    r.worker_offline("a", "w9", at(9));
    assert_eq!(
        r.resolve(&bob, "deploy").unwrap_err().0,
        ErrorKind::NoSuchService
    );
    assert_eq!(
        r.resolve(&caller("b", "eve"), "a/deploy").unwrap_err().0,
        ErrorKind::NoSuchService
    );
}

#[test]
fn identity_and_announced_services_stay_in_their_team() {
    let mut r = registry();
    r.worker_online("a", "w1".into(), at(1), 1, vec!["logs".into()]);
    r.worker_online("a", "w2".into(), at(2), 2, vec!["logs".into()]);
    r.worker_online("b", "w7".into(), at(7), 7, vec!["logs".into()]);
    let bob = caller("a", "bob");
    assert_eq!(names(&r.resolve(&bob, "w2").unwrap()), ["w2"]);
    assert_eq!(names(&r.resolve(&bob, "logs").unwrap()), ["w1", "w2"]);
    assert_eq!(
        names(&r.resolve(&caller("b", "x"), "logs").unwrap()),
        ["w7"]
    );
    assert_eq!(
        r.resolve(&bob, "w7").unwrap_err().0,
        ErrorKind::NoSuchService
    );
    assert_eq!(
        r.resolve(&bob, "nope").unwrap_err().0,
        ErrorKind::NoSuchService
    );
}

#[test]
fn visibility_decides_who_may_call() {
    let mut r = registry();
    r.worker_online("a", "w1".into(), at(1), 1, vec![]);
    let alice = caller("a", "alice");
    let bob = caller("a", "bob");
    let eve = caller("b", "eve");
    assert!(r.resolve(&alice, "mine").is_ok());
    assert_eq!(r.resolve(&bob, "mine").unwrap_err().0, ErrorKind::Forbidden);
    assert!(r.resolve(&bob, "dc1").is_ok());
    assert_eq!(
        r.resolve(&eve, "a/dc1").unwrap_err().0,
        ErrorKind::Forbidden
    );
    assert!(r.resolve(&eve, "a/open").is_ok());
    assert_eq!(
        r.resolve(&eve, "a/w1").unwrap_err().0,
        ErrorKind::NoSuchService
    );
    assert!(
        r.resolve(&bob, "a/dc1").is_ok(),
        "own team may use the long form"
    );
}

#[test]
fn announced_index_follows_announce_reconnect_and_offline() {
    let mut r = registry();
    let bob = caller("a", "bob");
    r.worker_online(
        "a",
        "w2".into(),
        at(2),
        2,
        vec!["logs".into(), "web".into()],
    );
    r.worker_online("a", "w1".into(), at(1), 1, vec!["logs".into()]);
    assert_eq!(names(&r.resolve(&bob, "logs").unwrap()), ["w1", "w2"]);
    // w2 announces again without `logs` (a reconnect with another list).
    r.worker_online("a", "w2".into(), at(5), 5, vec!["web".into()]);
    assert_eq!(names(&r.resolve(&bob, "logs").unwrap()), ["w1"]);
    assert_eq!(names(&r.resolve(&bob, "web").unwrap()), ["w2"]);
    // The old connection's close changes nothing; the new one's removes w2.
    r.worker_offline("a", "w2", at(2));
    assert_eq!(names(&r.resolve(&bob, "web").unwrap()), ["w2"]);
    r.worker_offline("a", "w2", at(5));
    assert_eq!(
        r.resolve(&bob, "web").unwrap_err().0,
        ErrorKind::NoSuchService
    );
    assert_eq!(r.n_online(), 1);
}

#[test]
fn no_workers_online_and_reconnect_races() {
    let mut r = registry();
    let bob = caller("a", "bob");
    // A serial or mirror service reports its bound workers offline; a roundrobin one with
    // none online, and a service with no worker bound, are refused.
    assert_eq!(
        offline(&r.resolve(&bob, "dc1").unwrap()),
        ["w3", "w1", "w2"]
    );
    let mut rr = service("a", "rr", Visibility::Team, &["w1"]);
    rr.algorithm = Algorithm::Roundrobin;
    let empty = service("a", "empty", Visibility::Team, &[]);
    let mut r2 = Registry::new(Arc::new(RoutingConfig {
        services: [rr, empty]
            .into_iter()
            .map(|s| ((s.team.clone(), s.name.clone()), s))
            .collect(),
        workers: Default::default(),
    }));
    for name in ["rr", "empty"] {
        assert_eq!(
            r2.resolve(&bob, name).unwrap_err().0,
            ErrorKind::NoWorkersOnline
        );
    }
    r.worker_online("a", "w1".into(), at(1), 1, vec![]);
    // A reconnect arrives before the old connection's close is noticed.
    r.worker_online("a", "w1".into(), at(5), 5, vec![]);
    r.worker_offline("a", "w1", at(1));
    assert_eq!(r.resolve(&bob, "dc1").unwrap().members[0].at, at(5));
    r.worker_offline("a", "w1", at(5));
    assert_eq!(r.n_online(), 0);
}

/// Two connections of one identity, their news in either order: every replica keeps
/// the newer and says which connection is to be closed.
#[test]
fn the_newest_connection_wins_in_any_order() {
    let bob = caller("a", "bob");
    let mut r = registry();
    assert_eq!(
        r.worker_online("a", "w1".into(), at(1), 1, vec![]),
        Online::New
    );
    assert_eq!(
        r.worker_online("a", "w1".into(), at(1), 1, vec![]),
        Online::Same
    );
    assert_eq!(
        r.worker_online("a", "w1".into(), at(7), 2, vec![]),
        Online::Replaced(at(1))
    );
    assert_eq!(r.online_at("a", "w1"), Some(at(7)));
    let mut other = registry();
    assert_eq!(
        other.worker_online("a", "w1".into(), at(7), 2, vec![]),
        Online::New
    );
    assert_eq!(
        other.worker_online("a", "w1".into(), at(1), 1, vec!["dc1".into()]),
        Online::Stale
    );
    for replica in [&mut r, &mut other] {
        assert_eq!(replica.resolve(&bob, "w1").unwrap().members[0].at, at(7));
        assert_eq!(replica.n_online(), 1);
    }
}

/// Issue 25, finding 3: an ad-hoc name announced by several owners is each announcer's own:
/// another owner's announcement never joins it; a caller who announces nothing of that name
/// reaches the `team` workers of one other owner, and is refused when there are several.
#[test]
fn adhoc_services_belong_to_their_announcers_owner() {
    let grant = |owner: &str, visibility| WorkerGrant {
        owner: owner.into(),
        visibility,
    };
    let mut r = Registry::new(Arc::new(RoutingConfig {
        services: BTreeMap::new(),
        workers: [
            ("aw", grant("admin", Visibility::Local)),
            ("cw", grant("carol", Visibility::Team)),
            ("cx", grant("carol", Visibility::Team)),
            ("iw", grant("ivan", Visibility::Team)),
        ]
        .into_iter()
        .map(|(id, g)| (("a".to_string(), id.to_string()), g))
        .collect(),
    }));
    r.worker_online("a", "aw".into(), at(1), 1, vec!["adhoc1".into()]);
    r.worker_online(
        "a",
        "cw".into(),
        at(2),
        2,
        vec!["adhoc1".into(), "adhoc2".into()],
    );
    r.worker_online("a", "cx".into(), at(3), 3, vec!["adhoc2".into()]);
    r.worker_online("a", "iw".into(), at(4), 4, vec!["adhoc2".into()]);
    let who = |id| caller("a", id);
    assert_eq!(names(&r.resolve(&who("admin"), "adhoc1").unwrap()), ["aw"]);
    assert_eq!(names(&r.resolve(&who("carol"), "adhoc1").unwrap()), ["cw"]);
    assert_eq!(names(&r.resolve(&who("ivan"), "adhoc1").unwrap()), ["cw"]);
    assert_eq!(
        names(&r.resolve(&who("carol"), "adhoc2").unwrap()),
        ["cw", "cx"]
    );
    assert_eq!(names(&r.resolve(&who("ivan"), "adhoc2").unwrap()), ["iw"]);
    let (kind, message) = r.resolve(&who("admin"), "adhoc2").unwrap_err();
    assert_eq!(kind, ErrorKind::NoSuchService);
    assert!(
        message.contains("several owners (carol, ivan)"),
        "{message}"
    );
    // Once one owner's announcers are gone, the name is the other's again.
    r.worker_offline("a", "iw", at(4));
    assert_eq!(
        names(&r.resolve(&who("admin"), "adhoc2").unwrap()),
        ["cw", "cx"]
    );
}

/// Issue 25, finding 2: a configured service reaches a `local` worker only when its owner
/// owns the worker, whatever is bound.
#[test]
fn a_local_worker_serves_only_its_owners_services() {
    let mut r = registry();
    // `registry()`'s services are alice's; cw is carol's `local` worker.
    let mut theirs = service("a", "theirs", Visibility::Team, &["cw", "w1"]);
    theirs.algorithm = Algorithm::Mirror;
    let mut only = service("a", "only", Visibility::Public, &["cw"]);
    only.algorithm = Algorithm::Roundrobin;
    let mut carols = service("a", "carols", Visibility::Public, &["cw"]);
    carols.owner = Some("carol".into());
    let mut routing = RoutingConfig::default();
    for s in [theirs, only, carols] {
        routing.services.insert((s.team.clone(), s.name.clone()), s);
    }
    routing.workers.insert(
        ("a".into(), "cw".into()),
        WorkerGrant {
            owner: "carol".into(),
            visibility: Visibility::Local,
        },
    );
    r.set_routing(Arc::new(routing));
    r.worker_online("a", "cw".into(), at(1), 1, vec![]);
    let route = r.resolve(&caller("a", "bob"), "theirs").unwrap();
    assert!(
        route.members.is_empty() && offline(&route) == ["w1"],
        "{route:?}"
    );
    let (kind, message) = r.resolve(&caller("a", "alice"), "only").unwrap_err();
    assert_eq!(kind, ErrorKind::Forbidden);
    assert!(message.contains("worker cw is local to carol"), "{message}");
    assert_eq!(
        names(&r.resolve(&caller("b", "eve"), "a/carols").unwrap()),
        ["cw"]
    );
}
