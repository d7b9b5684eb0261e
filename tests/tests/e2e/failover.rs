//! Clients failing over between broker nodes (issue 27, the client side): one control plane,
//! two brokers following it (A and B), worker `w1` connected to A and `w2` to B, both serving
//! `ship` (a worker connected to every node is another piece of the cell).
//!
//! - `triggerfs client --broker A,B` and the control plane's gateway (`--broker A,B`) work
//!   with A down; a request in flight through A ends with `BrokerLost` (exit 3 for the
//!   command) when A is killed with SIGKILL, and the library client's next request goes
//!   through B.
//! - The fs module (`--broker A,B`) shipping numbered lines through a `split = "lines"`
//!   trigger while its broker is killed: every line arrives and the spool drains. At least
//!   once, not exactly once: a record resent through B runs on `w2`, whose idempotency window
//!   did not see it on `w1` (exactly once across nodes needs one worker on every node).

use super::fs::{read_sink, write_lines, Rig};
use anyhow::{bail, Context, Result};
use client::{BrokerList, Client, ClientEvent};
use proto::{Credential, ErrorKind};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tests::*;

/// A broker node and the worker connected to it.
struct Node {
    addr: String,
    broker: Option<Proc>,
    worker: Option<Proc>,
}

impl Node {
    /// SIGKILL of the broker.
    fn kill_broker(&mut self) {
        if let Some(mut broker) = self.broker.take() {
            broker.kill();
        }
    }
}

/// The control plane (its gateway sending through A or B), the admin's API and JWT, the two
/// nodes with their workers.
struct Cell {
    control: Control,
    api: Api,
    jwt: String,
    nodes: [Node; 2],
    plugins: Plugins,
}

impl Cell {
    async fn start() -> Result<Cell> {
        let ports = [free_port(), free_port()];
        let addrs = ports.map(|p| format!("127.0.0.1:{p}"));
        let control = Control::start(&addrs.join(","))?;
        let (team, admin, secret) = control.admin.clone();
        let api = Api::login(&control.url, &team, &admin, &secret).await?;
        let tokens = [api.new_worker("w1").await?, api.new_worker("w2").await?];
        api.ok(
            "POST",
            "/api/v1/services",
            json!({"name": "ship", "workers": ["w1", "w2"]}),
        )
        .await?;
        api.ok("POST", "/api/v1/directories", json!({"path": "/logs"}))
            .await?;
        let plugins = Plugins::core()?;
        let token_file = control.broker_token_file();
        let mut nodes = Vec::new();
        for (i, port) in ports.into_iter().enumerate() {
            // No spinning, no pinning: four shards spinning on a small test machine starve
            // the rest (handshakes past the worker's 5 s).
            let spin = ["--spin", "0s"];
            let (broker, _) = start_broker_following(&control.url, &token_file, port, &spin)?;
            let identity = format!("w{}", i + 1);
            let worker = start_worker(
                addrs[i].parse()?,
                &identity,
                &plugins,
                &["--team", &team, "--token", &tokens[i]],
            )?;
            nodes.push(Node {
                addr: addrs[i].clone(),
                broker: Some(broker),
                worker: Some(worker),
            });
        }
        let jwt = api.token().context("the admin's JWT")?;
        let nodes: [Node; 2] = nodes.try_into().map_err(|_| anyhow::anyhow!("two nodes"))?;
        // Each node serves `ship` with its own worker.
        for (node, worker) in nodes.iter().zip(["w1", "w2"]) {
            let last = Mutex::new(None);
            wait_until(Duration::from_secs(30), "each node serving", || async {
                let served = served_by(&node.addr, &jwt).await;
                let ok = served.as_ref().is_ok_and(|w| w == worker);
                *last.lock().unwrap() = Some(served);
                ok
            })
            .await
            .with_context(|| {
                let worker_err = node.worker.as_ref().map(Proc::stderr).unwrap_or_default();
                let broker_err = node.broker.as_ref().map(Proc::stderr).unwrap_or_default();
                format!(
                    "{worker} through {}: {:?}\nworker: {worker_err}\nbroker: {broker_err}",
                    node.addr,
                    last.lock().unwrap()
                )
            })?;
        }
        Ok(Cell {
            control,
            api,
            jwt,
            nodes,
            plugins,
        })
    }

    fn brokers(&self) -> String {
        format!("{},{}", self.nodes[0].addr, self.nodes[1].addr)
    }
}

/// Which worker ran `echo` on `ship` through the broker at `addrs`, or what went wrong.
async fn served_by(addrs: &str, jwt: &str) -> Result<String> {
    let brokers: BrokerList = addrs.parse()?;
    let credential = Credential::Jwt {
        token: jwt.to_string(),
    };
    let client = Client::connect(&brokers, credential).await?;
    let outcome = request(
        &client,
        "ship",
        "command",
        "echo hi",
        Duration::from_secs(10),
    )
    .await?;
    match (outcome.exit_status(), outcome.workers.first()) {
        (0, Some(w)) => Ok(w.worker.clone()),
        _ => bail!("{outcome:?}"),
    }
}

/// A library client given A,B whose connection is to `want` (the list is shuffled: it tries
/// again until the shuffle picks `want`).
async fn client_on(cell: &Cell, want: &str) -> Result<Client> {
    let brokers: BrokerList = cell.brokers().parse()?;
    for _ in 0..50 {
        let credential = Credential::Jwt {
            token: cell.jwt.clone(),
        };
        let client = Client::connect(&brokers, credential).await?;
        if client.addr() == want {
            return Ok(client);
        }
    }
    bail!("50 connections to {brokers}, none to {want}")
}

/// `triggerfs client` with JWT `jwt` through `brokers`: (exit code, stdout, stderr).
fn run_client(jwt: &str, brokers: &str, command: &str) -> Result<(i32, String, String)> {
    run_cli(
        &[
            "client",
            "--broker",
            brokers,
            "--token",
            jwt,
            "--service",
            "ship",
            "--plugin",
            "command",
            "--command",
            command,
        ],
        Duration::from_secs(60),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_fail_over_to_the_other_broker() -> Result<()> {
    let mut cell = Cell::start().await?;
    let a = cell.nodes[0].addr.clone();
    let b = cell.nodes[1].addr.clone();

    // Two long requests through A: the command's and the library's.
    // The plugin's `sleep` says `sleep 29.PID`; the command's own argv does not (the shell
    // works the number out), so only the run matches.
    let pid = std::process::id();
    let marker = format!("sleep 29.{pid}");
    let command = {
        let (jwt, a) = (cell.jwt.clone(), a.clone());
        std::thread::spawn(move || run_client(&jwt, &a, &format!("sleep 29.$(({pid}))")))
    };
    let client = client_on(&cell, &a).await?;
    let spec = request_spec("ship", "command", "sleep 30", Duration::from_secs(60));
    let mut long = client.request(spec).await?;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), long.next())
            .await
            .context("no Accepted for the long request")?;
        match event {
            Some(ClientEvent::Accepted { worker }) => {
                assert_eq!(worker, "w1");
                break;
            }
            Some(ClientEvent::Routed { .. }) => {}
            other => bail!("the long request: {other:?}"),
        }
    }
    wait_until(
        Duration::from_secs(10),
        "the command's run on w1",
        || async { process_running(&marker) },
    )
    .await?;

    cell.nodes[0].kill_broker();
    let killed = Instant::now();
    let last = tokio::time::timeout(Duration::from_secs(10), long.next())
        .await
        .context("the long request did not end")?;
    let lost_after = killed.elapsed();
    let Some(ClientEvent::Error { kind, message }) = last else {
        bail!("the long request ended with {last:?}");
    };
    assert_eq!(kind, ErrorKind::BrokerLost, "{message}");
    assert!(message.contains(&a), "{message}");
    println!("a request in flight through A ended with BrokerLost {lost_after:?} after the kill");
    assert!(lost_after < Duration::from_secs(3), "{lost_after:?}");
    let (code, out, err) = command
        .join()
        .map_err(|_| anyhow::anyhow!("the command thread panicked"))??;
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        err.ends_with("Error: the connection to the broker dropped before the request ended\n"),
        "{err}"
    );

    // The library client's next request goes through B.
    let spec = request_spec("ship", "command", "echo after", Duration::from_secs(10));
    let next = client.request(spec).await?;
    assert_eq!(next.broker(), b);
    let outcome = next.collect().await;
    assert_eq!(outcome.exit_status(), 0, "{outcome:?}");
    assert_eq!(outcome.workers[0].worker, "w2");
    assert_eq!(client.addr(), b);

    // `triggerfs client --broker A,B` with A down, whichever it tries first.
    for _ in 0..4 {
        let (code, out, err) = run_client(&cell.jwt, &cell.brokers(), "echo through b")?;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("through b"), "{out}");
    }
    // The gateway (its control plane given A,B) too.
    for _ in 0..4 {
        let body = json!({"plugin": "command", "command": "echo via the gateway"});
        let events = gateway_events(&cell.control.url, &cell.jwt, "ship", &body)?;
        let done = events
            .iter()
            .any(|e| e["event"] == "done" && e["worker"] == "w2" && e["exit_code"] == 0);
        assert!(done, "{events:?}");
    }
    Ok(())
}

/// The fs given A,B writes 20,000 numbered lines into a `split = "lines"` trigger while the
/// broker it is connected to is killed: it connects to the other, sends what was not
/// acknowledged again, and every line arrives (at least once); the spool drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fs_sends_through_the_other_broker() -> Result<()> {
    const N: usize = 20_000;
    let cell = Cell::start().await?;
    let dir = tempfile::tempdir()?;
    std::fs::create_dir(dir.path().join("mnt"))?;
    let brokers = cell.brokers();
    let Cell {
        control,
        api,
        nodes,
        plugins,
        ..
    } = cell;
    let mut nodes = nodes;
    let worker = nodes[0].worker.take().context("w1")?;
    let mut rig = Rig {
        control,
        api,
        port: 0,
        broker: None,
        _worker: worker,
        _plugins: plugins,
        dir,
        fs: None,
        fs_out: Arc::new(Mutex::new(Vec::new())),
        fs_flags: Vec::new(),
        brokers,
    };
    rig.start_fs()?;
    rig.log_trigger("access", json!({})).await?;
    let connected = |rig: &Rig| -> Vec<String> {
        rig.fs_output()
            .lines()
            .filter_map(|l| l.split("Connected to broker at ").nth(1))
            .map(|a| a.trim_end_matches('.').to_string())
            .collect()
    };
    wait_until(Duration::from_secs(10), "the fs connected", || async {
        !connected(&rig).is_empty()
    })
    .await?;
    let first = connected(&rig)[0].clone();
    let victim = nodes
        .iter()
        .position(|n| n.addr == first)
        .with_context(|| format!("the fs connected to {first}, not a node"))?;

    let file = rig.mnt().join("logs/access");
    let progress = Arc::new(AtomicUsize::new(0));
    let p = progress.clone();
    // 2,000 writes 1.5 ms apart: the run lasts 3 s or more, with requests in flight when
    // the node dies.
    let writer = std::thread::spawn(move || {
        write_lines(&file, "x", 0, N, 10, Duration::from_micros(1500), Some(p))
    });
    wait_until(Duration::from_secs(60), "the writer halfway", || async {
        progress.load(Ordering::Relaxed) >= N / 2
    })
    .await?;
    nodes[victim].kill_broker();
    let (n, err) = writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))?;
    assert_eq!((n, err.map(|e| e.to_string())), (N, None));

    let sink = rig.sink("access");
    wait_until(
        Duration::from_secs(90),
        "every line at a worker",
        || async {
            let got = read_sink(&sink);
            let mut seen = vec![false; N];
            for i in got.get("x").into_iter().flatten() {
                if let Some(s) = seen.get_mut(*i) {
                    *s = true;
                }
            }
            seen.iter().all(|s| *s)
        },
    )
    .await
    .with_context(|| rig.fs_output())?;
    let got = read_sink(&sink);
    let lines = &got["x"];
    assert!(lines.iter().all(|i| *i < N), "only the lines written");
    println!(
        "{} lines arrived for {N} written ({} sent again through the other node ran twice)",
        lines.len(),
        lines.len() - N
    );
    let after = connected(&rig);
    assert!(
        after.iter().any(|a| *a != first),
        "the fs connected to the other node: {after:?}"
    );

    // The spool drains: the answers of the last lines (which acknowledge them) trail their
    // run by a round trip; then a stop finds nothing left. (The stop waits for the kernel to
    // let go of the mount, which on a loaded machine running other tests has taken ~50 s.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fs = rig.fs.take().context("fs")?;
    fs.signal(libc::SIGTERM);
    wait_until(Duration::from_secs(90), "the stop line", || async {
        rig.fs_output().contains("Stopped.")
    })
    .await
    .with_context(|| format!("{}\n{}", rig.fs_output(), fs.stderr()))?;
    let out = rig.fs_output();
    assert!(out.contains(" 0 requests left in the spool."), "{out}");
    drop(fs);
    Ok(())
}
