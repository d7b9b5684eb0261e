//! A cell (issue 27) on hosts of its own: two control-plane replicas on one PostgreSQL
//! database, three broker nodes following both, workers and clients, each in a network
//! namespace ([`tests::netns`]; root, as in CI). What a cell must survive: a replica killed, a
//! node partitioned from the control planes, guesses spread over replicas, a node killed
//! under load, and log shipping through kills of the fs's node; and how it forms (200 workers
//! with one seed each reach every node).

use super::api_abuse::client_from;
use super::fs::{read_sink, write_lines};
use super::replicas::config_event_naming;
use super::trust::{ends, open_events, run, spec};
use anyhow::{bail, ensure, Context, Result};
use proto::ErrorKind;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tests::netns::{broker_peers, Host, Net, Network};
use tests::*;

/// A broker node: its host and its process (none while it is killed).
struct Node {
    host: Host,
    proc: Option<Proc>,
    /// Its flags besides those [`Net::broker`] gives, to start it again alike.
    extra: Vec<String>,
}

/// Two control planes (`a`, `b`) on one PostgreSQL database and broker nodes following both
/// (`--control A,B`).
struct Cell {
    a: Control,
    b: Control,
    api_a: Api,
    api_b: Api,
    team: String,
    nodes: Vec<Node>,
    /// The namespaces; dropped last (after every process above).
    net: Net,
}

impl Cell {
    /// `nodes` broker nodes, each started with `extra` and, when `advertise`, `--advertise
    /// <its data address>:5555` (the cell of the contract; without it, brokers as main has
    /// them, each on its own).
    async fn start(nodes: usize, advertise: bool, extra: &[&str]) -> Result<Cell> {
        let net = Net::new()?;
        let database = net.postgres()?;
        let cp1 = net.host("cp1", &[Network::Control])?;
        let cp2 = net.host("cp2", &[Network::Control])?;
        let node_hosts = (1..=nodes)
            .map(|i| net.host(&format!("node{i}"), &[Network::Control, Network::Data]))
            .collect::<Result<Vec<_>>>()?;
        // The gateway of each replica sends through the first node (its control side).
        let gateway = format!(
            "{}:{}",
            node_hosts[0].control_ip()?,
            tests::netns::BROKER_PORT
        );
        let a = net.control(&cp1, &database, &gateway, None, &[])?;
        let b = net.control(&cp2, &database, &gateway, Some(&a), &[])?;
        let (team, admin, secret) = a.admin.clone();
        let api_a = Api::login(&a.url, &team, &admin, &secret).await?;
        let api_b = Api::login(&b.url, &team, &admin, &secret).await?;
        let mut cell = Cell {
            a,
            b,
            api_a,
            api_b,
            team,
            nodes: Vec::new(),
            net,
        };
        for host in node_hosts {
            let mut flags: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
            if advertise {
                flags.extend(["--advertise".to_string(), host.node_addr()?.to_string()]);
            }
            cell.nodes.push(Node {
                host,
                proc: None,
                extra: flags,
            });
        }
        for i in 0..cell.nodes.len() {
            cell.start_node(i)?;
        }
        Ok(cell)
    }

    /// `A,B`: the control planes' URLs as brokers and tools take them.
    fn urls(&self) -> String {
        format!("{},{}", self.a.url, self.b.url)
    }

    /// Starts node `i` (again), with a few tries: its port may linger for a moment after a
    /// kill.
    fn start_node(&mut self, i: usize) -> Result<Instant> {
        let urls = self.urls();
        let token = self.a.broker_token_file();
        let node = &self.nodes[i];
        let extra: Vec<&str> = node.extra.iter().map(String::as_str).collect();
        let mut attempt = 0;
        let proc = loop {
            match self.net.broker(&node.host, &urls, &token, &extra) {
                Ok(proc) => break proc,
                Err(e) if attempt < 20 => {
                    eprintln!("{} did not start ({e:#}); trying again", node.host.name);
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => return Err(e),
            }
        };
        self.nodes[i].proc = Some(proc);
        Ok(Instant::now())
    }

    /// kill -9 of node `i`; when the signal went (its peers may see it go before the kill
    /// returns).
    fn kill_node(&mut self, i: usize) -> Instant {
        let at = Instant::now();
        if let Some(mut proc) = self.nodes[i].proc.take() {
            proc.kill();
        }
        at
    }

    fn node_addr(&self, i: usize) -> SocketAddr {
        self.nodes[i]
            .host
            .node_addr()
            .expect("a node is on the data network")
    }

    fn node_addrs(&self) -> Vec<SocketAddr> {
        (0..self.nodes.len()).map(|i| self.node_addr(i)).collect()
    }

    /// The admin's JWT (from A).
    fn jwt(&self) -> Result<String> {
        self.api_a.token().context("the admin's token")
    }
}

/// A client of the cell, given every node (the client picks one, and fails over).
async fn connect_cell(nodes: &[SocketAddr], jwt: &str) -> Result<client::Client> {
    let list = client::BrokerList::new(nodes.iter().map(SocketAddr::to_string))?;
    let credential = proto::Credential::Jwt {
        token: jwt.to_string(),
    };
    Ok(client::Client::connect(&list, credential).await?)
}

/// Workers `w1`… on one host of the data network, the `i`th connected to node `i`, and
/// service `svc` (team) bound to them all: each node routes `svc` to the worker connected to
/// it (brokers outside a cell, as main has them).
async fn one_worker_per_node(cell: &Cell, plugins: &Plugins) -> Result<Vec<Proc>> {
    let host = cell.net.host("workers", &[Network::Data])?;
    let mut identities = Vec::new();
    let mut procs = Vec::new();
    for i in 0..cell.nodes.len() {
        let identity = format!("w{}", i + 1);
        let token = cell.api_a.new_worker(&identity).await?;
        procs.push(cell.net.worker(
            &host,
            &cell.node_addr(i).to_string(),
            &cell.team,
            &identity,
            &token,
            plugins.path(),
            &[],
        )?);
        identities.push(identity);
    }
    cell.api_b
        .ok(
            "POST",
            "/api/v1/services",
            json!({"name": "svc", "visibility": "team", "workers": identities}),
        )
        .await?;
    Ok(procs)
}

/// Waits until node `i` answers `svc` from worker `w<i+1>` for `jwt`.
async fn wait_serving(cell: &Cell, i: usize, jwt: &str, within: Duration) -> Result<()> {
    let addr = cell.node_addr(i).to_string();
    let want = vec![format!("w{}", i + 1)];
    wait_until(within, &format!("node {} serving svc", i + 1), || async {
        match connect_jwt(&addr, jwt).await {
            Ok(c) => run(&c, "svc", "echo up")
                .await
                .is_ok_and(|(w, e)| e.is_none() && w == want),
            Err(_) => false,
        }
    })
    .await
}

/// (A4) A replica killed: while both run, A's `/events` carries a change made through B;
/// with A killed (-9), the API answers through B, every node fails over to B, and a member
/// removed through B is cut at all three nodes within 2 s (`Revoked`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_leaves_the_cell_serving() -> Result<()> {
    let started = Instant::now();
    let mut cell = Cell::start(3, false, &[]).await?;
    let plugins = Plugins::core()?;
    let _workers = one_worker_per_node(&cell, &plugins).await?;
    let team = cell.team.clone();
    let dave = cell
        .api_b
        .new_member(&team, "dave", "dave-secret-cell-1")
        .await?;
    let dave_jwt = dave.token().context("dave's token")?;
    for i in 0..cell.nodes.len() {
        wait_serving(&cell, i, &dave_jwt, Duration::from_secs(30)).await?;
    }
    println!("cell up, every node serving: {:?}", started.elapsed());

    // Both alive: a change through B is an event on A's stream.
    let mut events = open_events(&cell.a, &cell.jwt()?).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    cell.api_b
        .ok("POST", "/api/v1/services", json!({"name": "svc2"}))
        .await?;
    let took = config_event_naming(&mut events, "svc2", Duration::from_secs(2)).await?;
    println!("a change through B reached A's /events after {took:?}");

    // Dave connected at every node.
    let mut daves = Vec::new();
    for addr in cell.node_addrs() {
        daves.push(connect_jwt(&addr.to_string(), &dave_jwt).await?);
    }

    // A killed.
    cell.a.proc.kill();
    let killed = Instant::now();
    // The API answers through B, with a token A issued, reads and writes alike.
    let services: Vec<api::services::ServiceView> = serde_json::from_value(
        cell.api_b
            .ok("GET", "/api/v1/services", Value::Null)
            .await?,
    )?;
    let mut names: Vec<_> = services.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["svc", "svc2"]);
    cell.api_b
        .ok("POST", "/api/v1/services", json!({"name": "svc3"}))
        .await?;
    // Every node fails over to B: erin, added through B, is let in at each.
    let erin = cell
        .api_b
        .new_member(&team, "erin", "erin-secret-cell-1")
        .await?;
    let erin_jwt = erin.token().context("erin's token")?;
    for (i, addr) in cell.node_addrs().iter().enumerate() {
        let addr = addr.to_string();
        wait_until(Duration::from_secs(15), "erin let in", || async {
            connect_jwt(&addr, &erin_jwt).await.is_ok()
        })
        .await
        .with_context(|| format!("node {} did not take B's change", i + 1))?;
        println!(
            "node {} took B's change {:?} after A was killed",
            i + 1,
            killed.elapsed()
        );
    }

    // Dave, mid-request at every node, removed through B: cut at all three within 2 s.
    let mut longs = Vec::new();
    for c in &daves {
        longs.push(tokio::spawn(ends(
            c.request(spec("svc", "sleep 30")).await?,
        )));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    cell.api_b
        .ok(
            "DELETE",
            &format!("/api/v1/teams/{team}/members/dave"),
            Value::Null,
        )
        .await?;
    let removed = Instant::now();
    for (i, long) in longs.into_iter().enumerate() {
        let (error, ended) = tokio::time::timeout(Duration::from_secs(10), long)
            .await
            .with_context(|| format!("dave's request at node {} did not end", i + 1))??;
        let after = ended.saturating_duration_since(removed);
        println!("removed through B, cut at node {} after {after:?}", i + 1);
        assert_eq!(error, Some(ErrorKind::Revoked), "node {}", i + 1);
        assert!(after < Duration::from_secs(2), "node {}: {after:?}", i + 1);
    }
    println!(
        "a_killed_replica_leaves_the_cell_serving: {:?}",
        started.elapsed()
    );
    Ok(())
}

/// (A5) A node partitioned: its control-side link down, it serves on for `--max-staleness`
/// (3 s), then closes its connections and refuses new ones with `Stale`, while the other
/// nodes serve on; once the link is up again it serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_fails_closed_and_serves_again_on_heal() -> Result<()> {
    const STALENESS: Duration = Duration::from_secs(3);
    let started = Instant::now();
    let cell = Cell::start(3, false, &["--max-staleness", "3s"]).await?;
    let plugins = Plugins::core()?;
    let _workers = one_worker_per_node(&cell, &plugins).await?;
    let jwt = cell.jwt()?;
    for i in 0..cell.nodes.len() {
        wait_serving(&cell, i, &jwt, Duration::from_secs(30)).await?;
    }
    let node1 = cell.node_addr(0).to_string();
    let node2 = cell.node_addr(1).to_string();
    let c1 = connect_jwt(&node1, &jwt).await?;
    let c2 = connect_jwt(&node2, &jwt).await?;
    assert_eq!(run(&c1, "svc", "echo before").await?.1, None);

    cell.net.cut(&cell.nodes[0].host, Network::Control)?;
    let cut = Instant::now();
    println!("node 1's control-side link down");
    wait_until(
        Duration::from_secs(20),
        "node 1 closing its client",
        || async { c1.is_closed() },
    )
    .await?;
    let closed = cut.elapsed();
    println!("node 1 closed its client {closed:?} after the cut (--max-staleness 3s)");
    // Its last contact was up to one probe (a quarter of the limit) before the cut.
    assert!(
        closed >= STALENESS - STALENESS / 4,
        "closed after {closed:?}"
    );
    // Refused with `Stale`, and still so while the link stays down.
    for _ in 0..2 {
        match connect_jwt(&node1, &jwt).await {
            Err(client::ClientError::Refused { kind, reason }) => {
                assert_eq!(kind, ErrorKind::Stale, "{reason}");
                println!(
                    "node 1 refuses a new client {:?} after the cut: {reason}",
                    cut.elapsed()
                );
            }
            Err(e) => bail!("unexpected error from a stale node: {e}"),
            Ok(_) => bail!("a stale node let a client in"),
        }
        // The others still reach the control planes and serve.
        assert_eq!(
            run(&c2, "svc", "echo during").await?,
            (vec!["w2".to_string()], None)
        );
        tokio::time::sleep(STALENESS).await;
    }

    cell.net.heal(&cell.nodes[0].host, Network::Control)?;
    let healed = Instant::now();
    println!(
        "node 1's control-side link up ({:?} after the cut)",
        cut.elapsed()
    );
    wait_until(Duration::from_secs(30), "node 1 serving again", || async {
        connect_jwt(&node1, &jwt).await.is_ok()
    })
    .await?;
    println!(
        "node 1 lets clients in {:?} after the heal",
        healed.elapsed()
    );
    wait_serving(&cell, 0, &jwt, Duration::from_secs(30)).await?;
    println!(
        "node 1 answers from w1 {:?} after the heal",
        healed.elapsed()
    );
    println!(
        "a_partitioned_node_fails_closed_and_serves_again_on_heal: {:?}",
        started.elapsed()
    );
    Ok(())
}

/// Wrong secrets for `identity` through `replicas` in turn, from the test's address, until
/// an answer is not `Unauthorized` (at most 50): how many were, and that answer.
async fn guesses_until_refused(
    replicas: &[&Control],
    team: &str,
    identity: &str,
    from: std::net::IpAddr,
) -> Result<(usize, (StatusCode, api::ErrorCode))> {
    let http = client_from(from)?;
    for i in 0..50 {
        let replica = replicas[i % replicas.len()];
        let answer = http
            .post(format!("{}/api/v1/login", replica.url))
            .json(&json!({"team": team, "identity": identity, "secret": "wrong"}))
            .send()
            .await?;
        let status = answer.status();
        let body: api::ErrorBody = answer.json().await?;
        if body.code != api::ErrorCode::Unauthorized {
            return Ok((i, (status, body.code)));
        }
    }
    bail!("50 wrong secrets for {identity} and no lock")
}

/// (A6) Wrong secrets spread over both replicas lock the guesser's logins as that identity
/// after as many as through one (`LoginLimits::lockout_after`, 10 by default:
/// controlplane/src/settings.rs), and the lock holds through either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockout_counts_alike_across_replicas() -> Result<()> {
    let started = Instant::now();
    let net = Net::new()?;
    let database = net.postgres()?;
    let cp1 = net.host("cp1", &[Network::Control])?;
    let cp2 = net.host("cp2", &[Network::Control])?;
    let a = net.control(&cp1, &database, "127.0.0.1:5555", None, &[])?;
    let b = net.control(&cp2, &database, "127.0.0.1:5555", Some(&a), &[])?;
    let team = a.admin.0.clone();
    let from = std::net::IpAddr::V4(net.root_ip(Network::Control));

    let (on_one, answer_one) = guesses_until_refused(&[&a], &team, "eve", from).await?;
    let (spread, answer_spread) = guesses_until_refused(&[&a, &b], &team, "mallory", from).await?;
    println!("locked after {on_one} wrong secrets through A alone, {spread} spread over A and B");
    let locked = (StatusCode::TOO_MANY_REQUESTS, api::ErrorCode::LockedOut);
    assert_eq!(answer_one, locked);
    assert_eq!(answer_spread, locked);
    assert_eq!(spread, on_one);
    assert_eq!(on_one, 10, "LoginLimits::lockout_after's default");
    // Locked through either.
    for replica in [&a, &b] {
        let answer = client_from(from)?
            .post(format!("{}/api/v1/login", replica.url))
            .json(&json!({"team": team, "identity": "mallory", "secret": "wrong"}))
            .send()
            .await?;
        let status = answer.status();
        let body: api::ErrorBody = answer.json().await?;
        assert_eq!((status, body.code), locked, "{}", replica.url);
    }
    // The guesser is locked, not the user: the admin logs in through both.
    let (_, admin, secret) = a.admin.clone();
    Api::login(&a.url, &team, &admin, &secret).await?;
    Api::login(&b.url, &team, &admin, &secret).await?;
    println!(
        "lockout_counts_alike_across_replicas: {:?}",
        started.elapsed()
    );
    Ok(())
}

// ---- The cell of the contract (issue 27): nodes with --advertise, workers reaching every
// node from one seed, clients failing over. They need the cellcp, cellwire and cellclient
// branches merged.

/// How many workers the cell tests start: 200 processes (about 14 MB of their own each, the
/// rest shared; the test prints what they took).
const FLEET: usize = 200;

/// Hosts the workers are spread over (each a namespace on the data network).
const WORKER_HOSTS: usize = 10;

/// The fleet: `FLEET` worker processes, `w000`…, the `i`th given node `i % 3` as its one
/// seed, and when they were started.
struct Fleet {
    procs: Vec<Proc>,
    identities: Vec<String>,
    first_started: Instant,
    last_started: Instant,
}

/// Creates and starts the fleet; returns once every process was spawned.
async fn start_fleet(cell: &Cell, plugins: &Plugins) -> Result<Fleet> {
    let hosts = (0..WORKER_HOSTS)
        .map(|h| cell.net.host(&format!("wh{h}"), &[Network::Data]))
        .collect::<Result<Vec<_>>>()?;
    let identities: Vec<String> = (0..FLEET).map(|i| format!("w{i:03}")).collect();
    let mut tokens = Vec::new();
    for identity in &identities {
        tokens.push(cell.api_a.new_worker(identity).await?);
    }
    let first_started = Instant::now();
    let mut procs = Vec::new();
    for (i, (identity, token)) in identities.iter().zip(&tokens).enumerate() {
        let seed = cell.node_addr(i % cell.nodes.len()).to_string();
        procs.push(cell.net.worker(
            &hosts[i % WORKER_HOSTS],
            &seed,
            &cell.team,
            identity,
            token,
            plugins.path(),
            &[],
        )?);
    }
    Ok(Fleet {
        procs,
        identities,
        first_started,
        last_started: Instant::now(),
    })
}

impl Fleet {
    /// What the fleet's processes hold in memory of their own (`RssAnon`), and all in all
    /// (`VmRSS`, shared pages counted in each), in MiB.
    fn memory(&self) -> (u64, u64) {
        let mib = |field: &str| {
            self.procs
                .iter()
                .filter_map(|p| proc_status_bytes(p.pid(), field))
                .sum::<u64>()
                / (1024 * 1024)
        };
        (mib("RssAnon"), mib("VmRSS"))
    }
}

/// Where the fleet stands, as the API shows it: how many workers reach at least one node,
/// how many every live node (`nodes.reached == nodes.live == live`), and the first that does
/// not.
struct Progress {
    reached_one: usize,
    on_all: usize,
    first_not: Option<Value>,
}

async fn progress(api: &Api, identities: &[String], live: u64) -> Result<Progress> {
    let workers = api.ok("GET", "/api/v1/workers", Value::Null).await?;
    let by_identity: HashMap<&str, &Value> = workers
        .as_array()
        .context("a list of workers")?
        .iter()
        .filter_map(|w| Some((w["identity"].as_str()?, w)))
        .collect();
    let mut p = Progress {
        reached_one: 0,
        on_all: 0,
        first_not: None,
    };
    for identity in identities {
        let w = by_identity.get(identity.as_str());
        let reached = w.and_then(|w| w["nodes"]["reached"].as_u64()).unwrap_or(0);
        let all_live = w.and_then(|w| w["nodes"]["live"].as_u64()) == Some(live);
        if reached >= 1 {
            p.reached_one += 1;
        }
        if all_live && reached == live {
            p.on_all += 1;
        } else if p.first_not.is_none() {
            p.first_not = Some(w.map_or(json!({ "identity": identity }), |w| (*w).clone()));
        }
    }
    Ok(p)
}

/// Waits until every worker of `fleet` is on all `live` nodes: when every one reached its
/// first node, and when every one was on all.
async fn wait_all_nodes(
    cell: &Cell,
    fleet: &Fleet,
    live: u64,
    within: Duration,
) -> Result<(Instant, Instant)> {
    let deadline = Instant::now() + within;
    let n = fleet.identities.len();
    let mut all_in = None;
    loop {
        let p = progress(&cell.api_b, &fleet.identities, live).await?;
        let now = Instant::now();
        if p.reached_one == n && all_in.is_none() {
            all_in = Some(now);
        }
        if p.on_all == n {
            return Ok((all_in.unwrap_or(now), now));
        }
        if now > deadline {
            bail!(
                "after {within:?}, {} of {n} workers on {live}/{live} nodes ({} on one at least); the first that is not: {}",
                p.on_all,
                p.reached_one,
                p.first_not.unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the latest run of the node at `advertise` (`GET /api/v1/brokers`) has all
/// of `fleet` connected; when that was.
async fn wait_node_has_fleet(
    cell: &Cell,
    advertise: &str,
    fleet: &Fleet,
    within: Duration,
) -> Result<Instant> {
    let want = fleet.identities.len() as u64;
    let deadline = Instant::now() + within;
    loop {
        let nodes = cell.api_b.ok("GET", "/api/v1/brokers", Value::Null).await?;
        let latest = nodes
            .as_array()
            .context("a list of nodes")?
            .iter()
            .filter(|n| n["advertise"].as_str() == Some(advertise))
            .max_by_key(|n| n["started_unix_ms"].as_u64());
        if latest.and_then(|n| n["team_workers"].as_u64()) == Some(want) {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            bail!("after {within:?}, the node at {advertise} has not all {want} workers: {nodes}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (A1) Joining: 200 workers, each given one node of three as its seed, are connected to
/// all three (the API's `nodes`: 3/3) within 5 s of all being in through their seeds, and
/// `cluster status` shows each node with all 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_workers_with_one_seed_reach_all_three_nodes() -> Result<()> {
    let started = Instant::now();
    let cell = Cell::start(3, true, &[]).await?;
    let plugins = Plugins::core()?;
    let fleet = start_fleet(&cell, &plugins).await?;
    println!(
        "{FLEET} workers spawned in {:?}",
        fleet.last_started - fleet.first_started
    );
    let (all_in, all) = wait_all_nodes(&cell, &fleet, 3, Duration::from_secs(60)).await?;
    let (own, resident) = fleet.memory();
    println!(
        "{FLEET} workers: each on its first node {:?} after the first started ({:?} after the \
         last), all on 3/3 {:?} after that; their memory: {own} MiB of their own, {resident} MiB \
         resident with shared pages",
        all_in - fleet.first_started,
        all_in.saturating_duration_since(fleet.last_started),
        all - all_in
    );
    // From one seed to every node: the processes' own start (200 on two cores) is not the
    // cell's doing, so the clock starts once every worker is in through its seed.
    assert!(
        all - all_in <= Duration::from_secs(5),
        "3/3 only {:?} after every worker was in",
        all - all_in
    );
    // The cell as the CLI shows it: three nodes, each with the fleet.
    let (code, out, err) = run_cli(
        &[
            "cluster",
            "status",
            "--json",
            "--url",
            &cell.urls(),
            "--team",
            &cell.team,
            "--identity",
            &cell.a.admin.1,
            "--secret",
            &cell.a.admin.2,
        ],
        Duration::from_secs(30),
    )?;
    ensure!(code == 0, "cluster status: {out}{err}");
    let status: Value = serde_json::from_str(&out).with_context(|| out.clone())?;
    let nodes = status
        .as_array()
        .or_else(|| status["nodes"].as_array())
        .with_context(|| format!("no nodes in {out}"))?;
    assert_eq!(nodes.len(), 3, "{out}");
    for node in nodes {
        assert_eq!(node["team_workers"].as_u64(), Some(FLEET as u64), "{node}");
    }
    println!(
        "two_hundred_workers_with_one_seed_reach_all_three_nodes: {:?}",
        started.elapsed()
    );
    Ok(())
}

/// What one request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ended {
    /// A `Summary`: the request ran.
    Answered,
    /// An `Error` of this kind (`BrokerLost` when its node was lost).
    Error(ErrorKind),
    /// The client library refused to send it (no node reached), with its error's words.
    NotSent(String),
    /// No final event within the deadline: a request that hangs (never allowed).
    Hung,
}

/// Sends `spec` through `c` and says how it ended, within `within`.
async fn one_request(c: &client::Client, spec: client::RequestSpec, within: Duration) -> Ended {
    let run = async {
        match c.request(spec).await {
            Err(e) => Ended::NotSent(e.to_string()),
            Ok(handle) => {
                let outcome = handle.collect().await;
                if outcome.disconnected {
                    Ended::Error(ErrorKind::BrokerLost)
                } else if let Some(error) = outcome.error {
                    Ended::Error(error.kind)
                } else if outcome.summary.is_some() {
                    Ended::Answered
                } else {
                    Ended::Hung
                }
            }
        }
    };
    tokio::time::timeout(within, run)
        .await
        .unwrap_or(Ended::Hung)
}

/// One client's requests: when each was sent and how it ended.
type Log = Arc<Mutex<Vec<(Instant, Instant, Ended)>>>;

/// The `p`th percentile of `values` (sorted here), nearest rank.
fn percentile(values: &mut [Duration], p: f64) -> Option<Duration> {
    values.sort_unstable();
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values
        .get(rank.saturating_sub(1).min(values.len().saturating_sub(1)))
        .copied()
}

/// (A2) A node killed (-9) under load: 20 clients sending 200 requests a second in all to a
/// roundrobin service of the 200 workers, and a mirror fan-out to all 200 every second.
/// Every request ends with an answer or a typed error (counted; none hangs), the clients of
/// the killed node go on through the others (the 99th percentile of their reconnect times is
/// printed), and the node, started again, has every worker back within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_loses_no_request_silently() -> Result<()> {
    const CLIENTS: usize = 20;
    const PER_CLIENT: Duration = Duration::from_millis(100); // 10 a second each, 200 in all
    const DEADLINE: Duration = Duration::from_secs(15);
    let started = Instant::now();
    let mut cell = Cell::start(3, true, &[]).await?;
    let plugins = Plugins::core()?;
    let fleet = start_fleet(&cell, &plugins).await?;
    cell.api_a
        .ok(
            "POST",
            "/api/v1/services",
            json!({"name": "rr", "visibility": "team", "workers": fleet.identities}),
        )
        .await?;
    cell.api_a
        .ok(
            "POST",
            "/api/v1/services",
            json!({"name": "all", "algorithm": "mirror", "visibility": "team",
                   "workers": fleet.identities}),
        )
        .await?;
    wait_all_nodes(&cell, &fleet, 3, Duration::from_secs(30)).await?;
    let jwt = cell.jwt()?;
    let nodes = cell.node_addrs();

    let stop = Arc::new(AtomicBool::new(false));
    let mut logs: Vec<Log> = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let c = connect_cell(&nodes, &jwt).await?;
        let log: Log = Arc::default();
        logs.push(log.clone());
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(PER_CLIENT);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let sent = Instant::now();
                let spec = request_spec("rr", "echo", "ping", Duration::from_secs(5));
                let ended = one_request(&c, spec, DEADLINE).await;
                log.lock().unwrap().push((sent, Instant::now(), ended));
            }
        }));
    }
    // The fan-out: every second, one mirror request to all 200; how many answered, each time.
    let fanouts: Arc<Mutex<Vec<(Instant, Ended, usize)>>> = Arc::default();
    let fan = {
        let c = connect_cell(&nodes, &jwt).await?;
        let fanouts = fanouts.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let spec = request_spec("all", "echo", "fan", Duration::from_secs(10));
                let run = async {
                    match c.request(spec).await {
                        Err(e) => (Ended::NotSent(e.to_string()), 0),
                        Ok(h) => {
                            let o = h.collect().await;
                            let ok = o.workers.iter().filter(|w| w.exit_code == Some(0)).count();
                            let ended = if o.disconnected {
                                Ended::Error(ErrorKind::BrokerLost)
                            } else if let Some(e) = o.error {
                                Ended::Error(e.kind)
                            } else if o.summary.is_some() {
                                Ended::Answered
                            } else {
                                Ended::Hung
                            };
                            (ended, ok)
                        }
                    }
                };
                let (ended, ok) = tokio::time::timeout(DEADLINE, run)
                    .await
                    .unwrap_or((Ended::Hung, 0));
                fanouts.lock().unwrap().push((sent, ended, ok));
                tokio::time::sleep(Duration::from_secs(1).saturating_sub(sent.elapsed())).await;
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(3)).await;
    let killed = cell.kill_node(0);
    println!("node 1 killed (-9) under load");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restarted = cell.start_node(0)?;
    let advertise = cell.node_addr(0).to_string();
    let back = wait_node_has_fleet(&cell, &advertise, &fleet, Duration::from_secs(30)).await?;
    println!(
        "node 1 restarted; every worker connected to it {:?} after it listened",
        back - restarted
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    fan.await?;

    // Every request accounted for.
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut hung = 0;
    let mut not_sent = Vec::new();
    let mut answered = 0;
    let mut recovery = Vec::new();
    let mut clients_failed = 0;
    let mut total = 0;
    for log in &logs {
        let log = log.lock().unwrap();
        total += log.len();
        for (_, _, ended) in log.iter() {
            *counts.entry(format!("{ended:?}")).or_default() += 1;
            match ended {
                Ended::Answered => answered += 1,
                Ended::Hung => hung += 1,
                Ended::NotSent(e) => not_sent.push(e.clone()),
                Ended::Error(_) => {}
            }
        }
        // From the kill to the client's next answer: a client of the killed node finds out
        // (a request in flight ends with `BrokerLost`, or the next one finds the connection
        // gone) and connects to another node; any other client's is its next request.
        let last_failure = log
            .iter()
            .filter(|(_, end, e)| *end >= killed && *e != Ended::Answered)
            .map(|(_, end, _)| *end)
            .max();
        clients_failed += usize::from(last_failure.is_some());
        let next = log
            .iter()
            .find(|(sent, end, e)| {
                *e == Ended::Answered
                    && match last_failure {
                        Some(failure) => *sent >= failure,
                        None => *end >= killed,
                    }
            })
            .map(|(_, end, _)| *end)
            .context("a client never answered again after the kill")?;
        recovery.push(next - killed);
    }
    println!("{total} requests from {CLIENTS} clients: {counts:?}");
    let p50 = percentile(&mut recovery, 50.0);
    let p99 = percentile(&mut recovery, 99.0);
    println!(
        "{clients_failed} clients saw a request fail; kill → each client's next answer \
         (reconnect for those of node 1): p50 {p50:?}, p99 {p99:?}, all {recovery:?}"
    );
    assert_eq!(hung, 0, "requests that hung");
    assert!(
        not_sent.is_empty(),
        "requests the client could not send: {not_sent:?}"
    );
    assert!(answered > total / 2, "{answered} of {total} answered");
    let fanouts = fanouts.lock().unwrap().clone();
    println!(
        "fan-outs to {FLEET}: {:?}",
        fanouts
            .iter()
            .map(|(at, e, ok)| {
                let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
                let since_kill = ms(at.saturating_duration_since(killed))
                    - ms(killed.saturating_duration_since(*at));
                (format!("{since_kill:+} ms"), e.clone(), *ok)
            })
            .collect::<Vec<_>>()
    );
    assert!(
        fanouts.iter().all(|(_, e, _)| *e != Ended::Hung),
        "a fan-out hung"
    );
    let (_, last, ok) = fanouts.last().context("no fan-out ran")?;
    assert_eq!(
        (last, *ok),
        (&Ended::Answered, FLEET),
        "the last fan-out, after the rejoin"
    );
    assert!(
        back - restarted <= Duration::from_secs(5),
        "{:?}",
        back - restarted
    );
    // Once the killed run's lease is over, every worker is on 3/3 again.
    let (_, settled) = wait_all_nodes(&cell, &fleet, 3, Duration::from_secs(30)).await?;
    println!(
        "every worker on 3/3 again {:?} after the restart",
        settled - restarted
    );
    println!(
        "a_node_killed_under_load_loses_no_request_silently: {:?}",
        started.elapsed()
    );
    Ok(())
}

/// (A3) Log shipping through kills: 200,000 numbered lines written to a `split = "lines"`
/// trigger (through `triggerfs fs` given every node) while the node the fs is connected to is
/// killed (-9) and started again, twice: every line arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_arrive_once_through_two_kills_of_the_fs_node() -> Result<()> {
    const LINES: usize = 200_000;
    const PER_WRITE: usize = 100;
    let started = Instant::now();
    let mut cell = Cell::start(3, true, &[]).await?;
    let plugins = Plugins::core()?;
    let (team, admin, secret) = cell.a.admin.clone();
    // One worker (its idempotency window makes resends through another node run once),
    // given node 1 as its seed.
    let token = cell.api_a.new_worker("ship1").await?;
    let host = cell.net.host("shipper", &[Network::Data])?;
    let _worker = cell.net.worker(
        &host,
        &cell.node_addr(0).to_string(),
        &team,
        "ship1",
        &token,
        plugins.path(),
        &[],
    )?;
    cell.api_a
        .ok(
            "POST",
            "/api/v1/services",
            json!({"name": "ship", "workers": ["ship1"]}),
        )
        .await?;
    let fleet = Fleet {
        procs: Vec::new(),
        identities: vec!["ship1".to_string()],
        first_started: Instant::now(),
        last_started: Instant::now(),
    };
    wait_all_nodes(&cell, &fleet, 3, Duration::from_secs(30)).await?;
    let dir = tempfile::tempdir()?;
    let sink = dir.path().join("access.out");
    cell.api_a
        .ok("POST", "/api/v1/directories", json!({"path": "/logs"}))
        .await?;
    cell.api_a
        .ok(
            "POST",
            "/api/v1/triggers",
            json!({"path": "/logs/access", "plugin": "append", "service": "ship",
                   "split": "lines", "args": {"path": sink.display().to_string()}}),
        )
        .await?;

    // The fs, on this machine (the root namespace, on the data network), given every node.
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt)?;
    let spool = dir.path().join("spool");
    let brokers: Vec<String> = cell.node_addrs().iter().map(|a| a.to_string()).collect();
    let brokers = brokers.join(",");
    let urls = cell.urls();
    let _unmount = Unmount(mnt.clone());
    let (fs, stdout) = Proc::spawn(
        "fs",
        &[
            "fs",
            "--mount",
            mnt.to_str().context("UTF-8")?,
            "--url",
            &urls,
            "--broker",
            &brokers,
            "--team",
            &team,
            "--identity",
            &admin,
            "--secret",
            &secret,
            "--spool",
            spool.to_str().context("UTF-8")?,
            "--quiet",
        ],
    )?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            if line.ends_with("Ready and running in foreground...") {
                let _ = ready_tx.send(());
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_| anyhow::anyhow!("the fs did not get ready:\n{}", fs.stderr()))?;
    let file = mnt.join("logs/access");
    wait_until(
        Duration::from_secs(10),
        "the trigger in the mount",
        || async { file.exists() },
    )
    .await?;

    // About 20,000 lines a second, 100 a write(2): the kills fall mid-run.
    let progress = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (file, progress) = (file.clone(), progress.clone());
        std::thread::spawn(move || {
            write_lines(
                &file,
                "k",
                0,
                LINES,
                PER_WRITE,
                Duration::from_millis(5),
                Some(progress),
            )
        })
    };
    for (round, at) in [(1, LINES / 4), (2, LINES / 2)] {
        wait_until(Duration::from_secs(60), "the writer's progress", || async {
            progress.load(Ordering::Relaxed) >= at
        })
        .await?;
        let peers = broker_peers(fs.pid());
        let node = cell
            .node_addrs()
            .iter()
            .position(|a| peers.contains(a))
            .with_context(|| format!("the fs is connected to no node: {peers:?}"))?;
        cell.kill_node(node);
        println!(
            "kill {round}: node {} (the fs's) killed at line {}",
            node + 1,
            progress.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        cell.start_node(node)?;
        println!("kill {round}: node {} started again", node + 1);
    }
    let (written, error) = writer.join().expect("the writer thread");
    assert_eq!(
        (written, error.map(|e| e.to_string())),
        (LINES, None),
        "every write(2) returned"
    );
    let wrote = started.elapsed();
    wait_until(
        Duration::from_secs(120),
        "every line at the worker",
        || async {
            std::fs::read(&sink).is_ok_and(|b| b.iter().filter(|c| **c == b'\n').count() >= LINES)
        },
    )
    .await
    .with_context(|| format!("the fs said:\n{}", fs.stderr()))?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = read_sink(&sink).remove("k").unwrap_or_default();
    let mut seen = vec![0u32; LINES];
    for &n in &got {
        ensure!(n < LINES, "a line that was not written: {n}");
        seen[n] += 1;
    }
    let missing: Vec<usize> = (0..LINES).filter(|&n| seen[n] == 0).take(10).collect();
    let twice: Vec<usize> = (0..LINES).filter(|&n| seen[n] > 1).take(10).collect();
    let in_order = got.windows(2).all(|w| w[0] < w[1]);
    println!(
        "{} lines at the worker ({LINES} written in {wrote:?}; all there {:?} after the start); in order: {in_order}",
        got.len(),
        started.elapsed()
    );
    assert!(missing.is_empty(), "lines missing: {missing:?}…");
    assert!(twice.is_empty(), "lines twice: {twice:?}…");
    assert_eq!(got.len(), LINES);
    println!(
        "log_lines_arrive_once_through_two_kills_of_the_fs_node: {:?}",
        started.elapsed()
    );
    Ok(())
}

/// Clears the fs's mount when the test ends (a killed fs leaves it behind).
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&self.0)
            .status();
    }
}
