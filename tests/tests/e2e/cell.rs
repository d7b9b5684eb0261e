//! A cell of broker nodes (issue 27) on 127.0.0.1: one control plane, three brokers with
//! `--advertise` following it, and a worker given one seed. The worker learns the other
//! nodes from its seed and connects to all three; a request through any node reaches it; a
//! keyed request resent through another node runs once (the worker's window); with one node
//! SIGKILLed it serves through the others, and it rejoins the node when it is back on its
//! port; a node that drains leaves the cell at once.
//!
//! What needs the control plane's side of the cell (`PUT /api/v1/broker/nodes/{node}`, the
//! workers' `nodes` and `GET /api/v1/brokers` in the API; branch `cellcp`): the worker
//! learning the nodes other than its seed, so every step past "connected to its seed".

use anyhow::{Context, Result};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};
use tests::*;

/// How long a worker may take to be on every node.
const ON_EVERY_NODE: Duration = Duration::from_secs(20);

/// A node of the test's cell: its address, the broker and its `/metrics`.
struct Node {
    addr: String,
    port: u16,
    proc: Proc,
    metrics: String,
    /// Its id in the cell.
    id: String,
}

impl Node {
    fn start(control: &Control, port: u16) -> Result<Node> {
        let (proc, metrics, id) =
            start_cell_node(&control.url, &control.broker_token_file(), port, &[])?;
        Ok(Node {
            addr: format!("127.0.0.1:{port}"),
            port,
            proc,
            metrics,
            id,
        })
    }

    /// Waits until `n` workers are connected here.
    async fn wait_workers(&self, n: u64, within: Duration) -> Result<Duration> {
        let start = Instant::now();
        wait_until(
            within,
            &format!("{n} worker(s) on {}", self.addr),
            || async {
                broker_connections(&self.metrics, "worker")
                    .await
                    .is_ok_and(|got| got == n)
            },
        )
        .await?;
        Ok(start.elapsed())
    }
}

/// A mirror request through `node` reaches `w1`, and only it.
async fn mirror_reaches_w1(node: &Node, jwt: &str) -> Result<()> {
    let c = connect_jwt(&node.addr, jwt)
        .await
        .with_context(|| format!("connecting to {}", node.addr))?;
    let outcome = request(&c, "svc", "echo", "hi", Duration::from_secs(20)).await?;
    let workers: Vec<&str> = outcome.workers.iter().map(|w| w.worker.as_str()).collect();
    anyhow::ensure!(
        workers == ["w1"] && outcome.exit_status() == 0,
        "through {}: {outcome:?}",
        node.addr
    );
    Ok(())
}

/// A keyed `append` of `line` to `path` through `node`.
async fn keyed_append(node: &Node, jwt: &str, path: &Path, line: &str, seq: u64) -> Result<()> {
    let c = connect_jwt(&node.addr, jwt).await?;
    let spec = client::RequestSpec {
        service: "w1".into(),
        plugin: "append".into(),
        payload: format!("{line}\n").into_bytes(),
        args: vec![("path".into(), path.display().to_string())],
        timeout: Some(Duration::from_secs(20)),
        key: Some(proto::IdemKey {
            source: *b"cell-spool-01234",
            seq,
        }),
        ..client::RequestSpec::default()
    };
    let outcome = c.request(spec).await?.collect().await;
    anyhow::ensure!(
        outcome.exit_status() == 0,
        "through {}: {outcome:?}",
        node.addr
    );
    Ok(())
}

async fn cell(db: Db) -> Result<()> {
    let ports = [free_port(), free_port(), free_port()];
    let control = Control::start_on(&format!("127.0.0.1:{}", ports[0]), db)?;
    let (api, team) = (admin_api(&control).await?, control.admin.0.clone());
    let token = api.new_worker("w1").await?;
    api.ok(
        "POST",
        "/api/v1/services",
        json!({"name": "svc", "algorithm": "mirror", "visibility": "team", "workers": ["w1"]}),
    )
    .await?;
    let mut nodes = Vec::new();
    for port in ports {
        nodes.push(Node::start(&control, port)?);
    }

    // One seed: the first node.
    let plugins = Plugins::core()?;
    let worker = start_worker(
        nodes[0].addr.parse()?,
        "w1",
        &plugins,
        &["--team", &team, "--token", &token],
    )?;
    let on_seed = nodes[0].wait_workers(1, ON_EVERY_NODE).await;
    on_seed.with_context(|| format!("the worker said:\n{}", worker.stderr()))?;
    // Needs the control plane's node endpoints: the worker learns the other two.
    for node in &nodes {
        let took = node.wait_workers(1, ON_EVERY_NODE).await;
        let took = took.with_context(|| format!("the worker said:\n{}", worker.stderr()))?;
        println!("w1 on {} ({took:?} later)", node.addr);
    }
    // Every node reports it (`BrokerReport::node`): the control plane counts 3 of 3.
    wait_until(ON_EVERY_NODE, "w1 on 3/3 nodes in the API", || async {
        let w1 = api.ok("GET", "/api/v1/workers/w1", json!(null)).await;
        w1.is_ok_and(|w| w["nodes"] == json!({"reached": 3, "live": 3}) && w["state"] == "ONLINE")
    })
    .await?;
    let jwt = api.token().context("token")?;
    for node in &nodes {
        mirror_reaches_w1(node, &jwt).await?;
    }

    // A keyed request sent again through another node runs once.
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("log");
    keyed_append(&nodes[0], &jwt, &log, "once", 1).await?;
    keyed_append(&nodes[2], &jwt, &log, "once", 1).await?;
    keyed_append(&nodes[1], &jwt, &log, "once", 1).await?;
    assert_eq!(std::fs::read_to_string(&log)?, "once\n");

    // A node SIGKILLed: the worker serves on through the others.
    nodes[1].proc.kill();
    for node in [&nodes[0], &nodes[2]] {
        mirror_reaches_w1(node, &jwt).await?;
        assert_eq!(broker_connections(&node.metrics, "worker").await?, 1);
    }
    // Back on its port (a new node id): the worker rejoins it.
    let back = Instant::now();
    nodes[1] = Node::start(&control, nodes[1].port)?;
    nodes[1].wait_workers(1, ON_EVERY_NODE).await?;
    println!(
        "w1 back on the restarted node {:?} after its start",
        back.elapsed()
    );
    for node in &nodes {
        mirror_reaches_w1(node, &jwt).await?;
        // Never twice on one node (a second connection would supersede the first).
        assert_eq!(broker_connections(&node.metrics, "worker").await?, 1);
    }

    // A node that drains (SIGTERM) leaves the cell at once (`DELETE`), well before its
    // lease (10 s) would run out.
    nodes[2].proc.signal(libc::SIGTERM);
    let id = nodes[2].id.clone();
    wait_until(
        Duration::from_secs(4),
        "the drained node out of the cell",
        || async {
            let listed = api.ok("GET", "/api/v1/brokers", json!(null)).await;
            listed.is_ok_and(|b| {
                b.as_array()
                    .is_some_and(|b| !b.iter().any(|n| n["node"] == id))
            })
        },
    )
    .await?;
    mirror_reaches_w1(&nodes[0], &jwt).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_one_seed_serves_through_every_node() -> Result<()> {
    cell(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_one_seed_serves_through_every_node_on_postgres() -> Result<()> {
    cell(Db::Postgres).await
}
