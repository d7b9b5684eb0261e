//! `bench cell`: a cell of broker nodes (issue 27), measured three ways.
//!
//! Processes: a control plane (`triggerfs control`, SQLite), `--nodes` brokers following it
//! as the nodes of one cell (`triggerfs broker --control … --advertise 127.0.0.1:PORT`), and
//! workers in processes of their own (`bench-child workers`: the worker library, as
//! `triggerfs worker` runs it), each given the first node as its one seed and so connected
//! to every node. Workers and services are made through the API before the nodes start.
//!
//! - `idle`: `--idle-workers` idle workers over `--idle-procs` processes (a process holds a
//!   socket per worker and node, and a process may open at most 20,000 files here): every
//!   node's RSS once each node reaches all of them, and before they connected.
//! - `cpu`: `--workers` echo workers (a process each) serve a roundrobin service. Two load
//!   processes (`bench-child load`, logged in with the admin's JWT) take turns
//!   (`systems::in_turns`): `cell-1node`, its connections all to the first node, and
//!   `cell-Nnodes`, its connections spread over the nodes. Each turn counts the CPU time of
//!   every node, worker, the control plane and the load (`cpu.rs`) per answered request.
//! - `failover`: `--kills` times, `--clients` clients connected to one node (each node in
//!   turn) send echo requests one after another; the node is SIGKILLed. For each client:
//!   the time from the kill to its first answer through another node. How the requests in
//!   flight at the kill ended (an answer, a typed error, or none: lost). Then the node starts
//!   again on its address and the bench waits until it reaches every worker.

use crate::cpu::{Sample, Watched};
use crate::fanout::{online_client, rss_kib};
use crate::load::{LoadProc, Shape, Stop};
use crate::proc::Spawned;
use crate::report::{Report, SystemResult};
use crate::soak::{error_name, follow, start_worker_procs, End, WorkerProc};
use crate::stack::{new_fleet, new_service, Control};
use crate::systems::{in_turns, Turn};
use crate::Notes;
use anyhow::Context;
use client::{Client, RequestSpec};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Flags of `bench cell`.
#[derive(clap::Args, Debug, Clone)]
pub struct CellArgs {
    /// Broker nodes of the cell.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(2..=16))]
    pub nodes: u16,
    /// What to measure, comma-separated: `idle` (each node's RSS with idle workers), `cpu`
    /// (CPU per request through one node and through all), `failover` (a node killed under
    /// its clients).
    #[arg(long, value_delimiter = ',', default_value = "idle,cpu,failover")]
    pub parts: Vec<Part>,
    /// Shards (executor threads) of each node.
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
    /// How long an idle shard polls before sleeping (`triggerfs broker --spin`); `0s`, the
    /// default here, never spins: three spinning nodes would take the two cores.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub spin: Duration,
    /// `cpu` and `failover`: echo workers serving the roundrobin service, a process each.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// `cpu`: connections of each load process (spread over the nodes in `cell-Nnodes`).
    #[arg(long, default_value_t = 6)]
    pub connections: usize,
    /// `cpu`: requests in flight (closed loop); with `--rate`, the cap on requests
    /// outstanding.
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// `cpu`: open loop, R requests a second on a fixed schedule, instead of the closed
    /// loop: below what the nodes' job-history queues and the control plane keep up with,
    /// every request is recorded, as when the machines are not saturated.
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,
    /// `cpu`: payload size in bytes.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// `cpu`: load applied before each turn's measurement (a quarter of it after the first
    /// round).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// `cpu`: how long each load process measures, over all rounds.
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// `cpu`: rounds of turns.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// `idle`: idle workers, each connected to every node.
    #[arg(long, default_value_t = 10_000)]
    pub idle_workers: usize,
    /// `idle`: processes the idle workers are spread over (each holds a socket per worker
    /// and node), started one after the other.
    #[arg(long, default_value_t = 10)]
    pub idle_procs: usize,
    /// The nodes record no job history (`triggerfs broker --no-job-records`): the request
    /// path alone. Past what the control plane stores, a node drops records rather than
    /// slow requests, so a saturated run measures a varying share of recording.
    #[arg(long)]
    pub no_job_records: bool,
    /// `failover`: clients connected to the node that is killed.
    #[arg(long, default_value_t = 20)]
    pub clients: usize,
    /// `failover`: kills, each node in turn, started again after each.
    #[arg(long, default_value_t = 5)]
    pub kills: usize,
    /// `failover`: each client's pause after an answer before its next request.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    pub pause: Duration,
    /// Where the `.hgrm` files and the SVG chart go.
    #[arg(long, value_name = "DIR", default_value = "bench-results")]
    pub out: PathBuf,
    /// `--json` and the processes' binary.
    #[command(flatten)]
    pub own: crate::OwnArgs,
}

/// A part of `bench cell`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    /// Each node's RSS with `--idle-workers` connected to every node.
    Idle,
    /// CPU per request through one node and through all.
    Cpu,
    /// A node SIGKILLed under its clients.
    Failover,
}

/// After every node reached the idle workers, wait this long before reading RSS: every
/// connection exchanges a heartbeat (1 s) and settles its buffers.
const IDLE_SETTLE: Duration = Duration::from_secs(3);
/// How long each client sends before its node is killed.
const BEFORE_KILL: Duration = Duration::from_secs(1);
/// A client not answered through another node this long after the kill has not recovered.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(20);
/// Each failover request's timeout at the broker.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A failover request with no final event this long after it was sent is lost (it hung).
const LOST_AFTER: Duration = Duration::from_secs(10);

/// The roundrobin service of `cpu` and `failover`.
const SERVICE: &str = "cell";
/// A mirror service over the same workers: a node reaches them all when a fan-out does.
const ALL: &str = "cell-all";
/// The mirror service of the idle workers.
const IDLE: &str = "cell-idle";

/// The cell: its control plane and nodes.
struct Cell {
    bin: PathBuf,
    control: Control,
    /// Each node's address (listened on and advertised).
    addrs: Vec<String>,
    /// Each node's process; `None` while it is killed.
    nodes: Vec<Option<Spawned>>,
    /// Every node's flags besides its address.
    flags: Vec<String>,
}

impl Cell {
    /// Starts node `i` on its address, advertised to the cell as that address.
    async fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let addr = self.addrs[i].as_str();
        let mut flags = vec!["--advertise", addr];
        flags.extend(self.flags.iter().map(String::as_str));
        let (proc, _) = self.control.broker(&self.bin, addr, &flags).await?;
        self.nodes[i] = Some(proc);
        Ok(())
    }

    /// SIGKILLs node `i` and reaps it.
    async fn kill(&mut self, i: usize) {
        if let Some(mut node) = self.nodes[i].take() {
            node.kill().await;
        }
    }

    /// `node1`… and their process ids.
    fn watched(&self) -> Vec<Watched> {
        let pids = self.nodes.iter().map(|n| n.as_ref().and_then(Spawned::pid));
        pids.enumerate()
            .filter_map(|(i, pid)| Watched::server(format!("node{}", i + 1), pid))
            .collect()
    }

    /// Waits until node `i` reaches `n` workers of the mirror `service`.
    async fn wait_reaches(
        &self,
        i: usize,
        jwt: &str,
        service: &str,
        n: usize,
    ) -> anyhow::Result<()> {
        online_client(&self.addrs[i], jwt, service, n)
            .await
            .map(drop)
            .with_context(|| format!("node{} does not reach the workers of {service}", i + 1))
    }
}

/// A free address on 127.0.0.1 below the ephemeral port range, so that no outgoing
/// connection takes a killed node's port before it starts again on it.
fn node_addr() -> anyhow::Result<String> {
    use rand::Rng;
    for _ in 0..100 {
        let port: u16 = rand::thread_rng().gen_range(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(format!("127.0.0.1:{port}"));
        }
    }
    anyhow::bail!("no free port in 20000..32000")
}

/// The 1-, 5- and 15-minute load averages.
fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn params(args: &CellArgs) -> Map<String, Value> {
    let mut params = Map::new();
    params.insert("nodes".into(), json!(args.nodes));
    params.insert("parts".into(), json!(args.parts));
    params.insert("shards".into(), json!(args.shards));
    params.insert("spin_us".into(), json!(args.spin.as_micros() as u64));
    params.insert("workers".into(), json!(args.workers));
    params.insert("connections".into(), json!(args.connections));
    params.insert("in_flight".into(), json!(args.in_flight));
    params.insert("rate".into(), json!(args.rate));
    params.insert("payload".into(), json!(args.payload));
    params.insert("warmup_s".into(), json!(args.warmup.as_secs_f64()));
    params.insert("duration_s".into(), json!(args.duration.as_secs_f64()));
    params.insert("rounds".into(), json!(args.rounds));
    params.insert("idle_workers".into(), json!(args.idle_workers));
    params.insert("idle_procs".into(), json!(args.idle_procs));
    params.insert("clients".into(), json!(args.clients));
    params.insert("kills".into(), json!(args.kills));
    params.insert("no_job_records".into(), json!(args.no_job_records));
    params.insert("pause_ms".into(), json!(args.pause.as_millis() as u64));
    params
}

/// `bench cell`. Call it on the thread that runs the bench (see `proc::command`).
pub(crate) async fn measure(args: &CellArgs, notes: &mut Notes) -> anyhow::Result<Report> {
    let bin = args.own.bin()?;
    let mut report = Report::new("cell", params(args), args.out.clone());
    report
        .sections
        .insert("loadavg_start".into(), json!(loadavg()));
    let has = |part: Part| args.parts.contains(&part);
    let dir = tempfile::tempdir().context("cannot create a directory for the cell")?;
    let addrs = (0..args.nodes)
        .map(|_| node_addr())
        .collect::<anyhow::Result<Vec<_>>>()?;
    // The gateway of the control plane is given every node.
    let (control, api) = Control::start(&bin, &dir.path().join("data"), &addrs.join(",")).await?;
    let mut load_ids = Vec::new();
    if has(Part::Cpu) || has(Part::Failover) {
        load_ids = new_fleet(&api, "cell-w", args.workers.max(1), SERVICE, "roundrobin").await?;
        new_service(&api, ALL, "mirror", &load_ids).await?;
    }
    let mut idle_ids = Vec::new();
    if has(Part::Idle) {
        let n = args.idle_workers.max(1);
        notes.line(format!(
            "cell: creating {n} idle workers in the control plane"
        ));
        let made = Instant::now();
        idle_ids = new_fleet(&api, "idle-w", n, IDLE, "mirror").await?;
        notes.line(format!("cell: {n} workers made in {:.1?}", made.elapsed()));
    }
    let jwt = api.jwt().await?;
    let jwt_file = dir.path().join("jwt");
    std::fs::write(&jwt_file, &jwt)?;
    let shards = args.shards.max(1).to_string();
    let spin = format!("{}us", args.spin.as_micros());
    let mut cell = Cell {
        bin,
        control,
        nodes: addrs.iter().map(|_| None).collect(),
        addrs,
        flags: vec!["--shards".into(), shards, "--spin".into(), spin],
    };
    if args.no_job_records {
        cell.flags.push("--no-job-records".into());
    }
    for i in 0..cell.addrs.len() {
        cell.start_node(i).await?;
    }
    notes.line(format!("cell: nodes {}", cell.addrs.join(", ")));
    if has(Part::Idle) {
        let idle = idle(&cell, args, &idle_ids, &jwt, dir.path(), notes).await?;
        report.sections.insert("idle_nodes".into(), idle);
    }
    if has(Part::Cpu) || has(Part::Failover) {
        let workers = args.workers.max(1);
        let procs = start_worker_procs(
            &cell.bin,
            &cell.addrs[0],
            dir.path(),
            "cell",
            &load_ids,
            workers,
        );
        let procs = procs.await?;
        for i in 0..cell.addrs.len() {
            cell.wait_reaches(i, &jwt, ALL, workers).await?;
        }
        if has(Part::Cpu) {
            let rows = cpu(&cell, args, &procs, &jwt_file, notes).await?;
            report
                .sections
                .insert("cpu".into(), cpu_section(&rows, notes));
            report.systems = rows;
        }
        if has(Part::Failover) {
            let failover = failover(&mut cell, args, &jwt, notes).await?;
            if let Some(problem) = failover.problem() {
                report.problems.push(problem);
            }
            report.sections.insert("failover".into(), failover.json());
        }
        drop(procs);
    }
    report
        .sections
        .insert("loadavg_end".into(), json!(loadavg()));
    Ok(report)
}

/// `idle`: the idle workers' processes started, given the first node; each node's RSS (and
/// open descriptors) once every node reaches them all.
async fn idle(
    cell: &Cell,
    args: &CellArgs,
    ids: &[(String, String)],
    jwt: &str,
    dir: &Path,
    notes: &mut Notes,
) -> anyhow::Result<Value> {
    let n = ids.len();
    let pids: Vec<Option<u32>> = cell.watched().iter().map(|w| Some(w.pid)).collect();
    let rss = |pid: Option<u32>| pid.and_then(|p| rss_kib(&p.to_string()));
    let before: Vec<Option<u64>> = pids.iter().map(|p| rss(*p)).collect();
    let base: Vec<usize> = pids.iter().map(|p| fds(*p).unwrap_or(0)).collect();
    let started = Instant::now();
    // One process at a time, each once every node holds the sockets of those before it:
    // 30,000 handshakes at once on two cores leave the nodes too busy to send heartbeats,
    // the workers give up on them ("broker silent") and connect again, and it never settles.
    let mut procs = Vec::new();
    let per = n.div_ceil(args.idle_procs.clamp(1, n.max(1)));
    for (i, chunk) in ids.chunks(per).enumerate() {
        let name = format!("idle{i}");
        let proc = start_worker_procs(&cell.bin, &cell.addrs[0], dir, &name, chunk, 1).await?;
        procs.extend(proc);
        let want = (i * per + chunk.len()).min(n);
        wait_sockets(&pids, &base, want).await?;
    }
    for i in 0..cell.addrs.len() {
        cell.wait_reaches(i, jwt, IDLE, n).await?;
    }
    let online = started.elapsed();
    tokio::time::sleep(IDLE_SETTLE).await;
    let after: Vec<Option<u64>> = pids.iter().map(|p| rss(*p)).collect();
    let fds: Vec<Option<usize>> = pids.iter().map(|p| fds(*p)).collect();
    let worker_rss: u64 = procs
        .iter()
        .filter_map(|w| rss(w.proc.as_ref()?.pid()))
        .sum();
    stop_workers(procs).await;
    let mib = |k: &Option<u64>| k.map(|k| (k as f64 / 1024.0 * 10.0).round() / 10.0);
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        notes.line(format!(
            "idle: node{} RSS {:?} MiB with {n} workers connected ({:?} MiB before), {:?} fds",
            i + 1,
            mib(a).unwrap_or_default(),
            mib(b).unwrap_or_default(),
            fds[i].unwrap_or_default()
        ));
    }
    notes.line(format!(
        "idle: every node reached all {n} workers {online:.1?} after their processes started; \
         the {} worker processes' RSS {:.1} MiB in all",
        args.idle_procs.clamp(1, n.max(1)),
        worker_rss as f64 / 1024.0
    ));
    // The nodes and the control plane settle the workers' departure before what follows.
    let mut quiet = cell.watched();
    quiet.extend(Watched::server("control", cell.control.proc.pid()));
    wait_quiet(&quiet).await;
    Ok(json!({
        "workers": n,
        "rss_kib": after,
        "rss_mib": after.iter().map(mib).collect::<Vec<_>>(),
        "rss_before_kib": before,
        "fds": fds,
        "online_s": online.as_secs_f64(),
        "worker_procs_rss_kib": worker_rss,
    }))
}

/// Open descriptors of a process.
fn fds(pid: Option<u32>) -> Option<usize> {
    Some(
        std::fs::read_dir(format!("/proc/{}/fd", pid?))
            .ok()?
            .count(),
    )
}

/// Waits until each of `pids` has 98 % of `want` descriptors more than `base` (its workers'
/// sockets; a few of the process's own may close meanwhile, and the mirror through each
/// node checks every worker at the end), at most `proc::READY_DEADLINE`.
async fn wait_sockets(pids: &[Option<u32>], base: &[usize], want: usize) -> anyhow::Result<()> {
    let want = want * 98 / 100;
    let deadline = Instant::now() + crate::proc::READY_DEADLINE;
    loop {
        let now: Vec<usize> = pids.iter().map(|p| fds(*p).unwrap_or(0)).collect();
        let short = now
            .iter()
            .zip(base)
            .any(|(now, base)| now - base.min(now) < want);
        if !short {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("the nodes hold {now:?} descriptors ({base:?} before), not {want} more");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stops worker processes (SIGKILL) and reaps them.
async fn stop_workers(procs: Vec<WorkerProc>) {
    for mut w in procs {
        if let Some(proc) = w.proc.as_mut() {
            proc.kill().await;
        }
    }
}

/// Waits, at most 30 s, until `procs` together spend less than 5 % of a core over a second.
async fn wait_quiet(procs: &[Watched]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let before = Sample::take(procs);
        tokio::time::sleep(Duration::from_secs(1)).await;
        if before.until(&Sample::take(procs)).total_ns() < 50_000_000 {
            return;
        }
    }
}

/// `cpu`: the two load processes, through the first node and through all, in turns.
async fn cpu(
    cell: &Cell,
    args: &CellArgs,
    workers: &[WorkerProc],
    jwt_file: &Path,
    notes: &mut Notes,
) -> anyhow::Result<Vec<SystemResult>> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let words = |addr: &str| -> Vec<String> {
        let jwt_file = jwt_file.display().to_string();
        let connections = args.connections.max(1).to_string();
        [
            "--system",
            "triggerfs",
            "--addr",
            addr,
            "--connections",
            &connections,
        ]
        .into_iter()
        .chain(["--target", SERVICE, "--jwt-file", &jwt_file])
        .map(String::from)
        .collect()
    };
    // A row's name is `&'static str` (as every mode's systems); one per run.
    let all_name: &'static str = Box::leak(format!("cell-{}nodes", args.nodes).into_boxed_str());
    let mut one = LoadProc::start(&exe, "cell-1node", words(&cell.addrs[0])).await?;
    let mut all = LoadProc::start(&exe, all_name, words(&cell.addrs.join(","))).await?;
    let mut watched = cell.watched();
    for (i, w) in workers.iter().enumerate() {
        let pid = w.proc.as_ref().and_then(Spawned::pid);
        watched.extend(Watched::server(format!("worker{i}"), pid));
    }
    watched.extend(Watched::server("control", cell.control.proc.pid()));
    let shape = Shape {
        rate: args.rate,
        in_flight: args.in_flight.max(2),
        warmup: args.warmup,
        stop: Stop::After(args.duration),
        payload: args.payload,
    };
    let mut turns = [
        Turn {
            load: &mut one,
            watched: &watched,
        },
        Turn {
            load: &mut all,
            watched: &watched,
        },
    ];
    in_turns(&mut turns, &shape, u64::from(args.rounds), notes.progress()).await
}

/// Per row: µs per answered request of the nodes (each and summed), the workers, the
/// control plane and the load; printed, and the JSON section `cpu`.
fn cpu_section(rows: &[SystemResult], notes: &mut Notes) -> Value {
    let mut section = Map::new();
    for row in rows {
        let Some(cpu) = &row.cpu else { continue };
        let per = |ns: u64| (ns as f64 / row.received.max(1) as f64 / 1e3 * 100.0).round() / 100.0;
        let sum = |prefix: &str| {
            let ns = cpu
                .by_process
                .iter()
                .filter(|(name, _)| name.starts_with(prefix));
            per(ns.map(|(_, (_, ns))| ns).sum())
        };
        let nodes: Map<String, Value> = cpu
            .by_process
            .iter()
            .filter(|(name, _)| name.starts_with("node"))
            .map(|(name, (_, ns))| (name.clone(), json!(per(*ns))))
            .collect();
        let figures = json!({
            "rps": row.rps(),
            "nodes_us_per_req": nodes,
            "nodes_sum_us_per_req": sum("node"),
            "workers_us_per_req": sum("worker"),
            "control_us_per_req": sum("control"),
            "load_us_per_req": sum("load"),
        });
        notes.line(format!(
            "cpu, {}: {} req/s; µs per request: nodes {} (sum {:.2}), workers {:.2}, control plane {:.2}, load {:.2}",
            row.name,
            row.rps(),
            nodes
                .iter()
                .map(|(name, us)| format!("{name} {us}"))
                .collect::<Vec<_>>()
                .join(", "),
            sum("node"),
            sum("worker"),
            sum("control"),
            sum("load"),
        ));
        section.insert(row.name.to_string(), figures);
    }
    Value::Object(section)
}

/// One failover request: when it was sent and ended, the node it went to, how it ended.
struct Sent {
    sent: Instant,
    ended: Instant,
    node: Option<String>,
    end: End,
}

/// What every kill saw.
#[derive(Default)]
struct Failover {
    /// Each client's time from its node's kill to its first answer through another node.
    recovery: Vec<Duration>,
    /// Clients with no such answer within `RECOVERY_DEADLINE`.
    never: usize,
    /// How the requests in flight at a kill ended, by kind.
    in_flight: BTreeMap<String, u64>,
    /// How every request sent from a kill on ended, by kind.
    after_kill: BTreeMap<String, u64>,
    /// Per kill: the node, the median and the longest recovery.
    kills: Vec<Value>,
    /// From a restarted node's `listening` to its reaching every worker.
    rejoin: Vec<Duration>,
}

impl Failover {
    fn lost(&self) -> u64 {
        let lost = |m: &BTreeMap<String, u64>| -> u64 {
            m.iter()
                .filter(|(k, _)| k.starts_with("lost"))
                .map(|(_, v)| v)
                .sum()
        };
        lost(&self.in_flight) + lost(&self.after_kill)
    }

    /// What makes the run fail: a request lost, a client that never recovered.
    fn problem(&self) -> Option<String> {
        (self.lost() > 0 || self.never > 0).then(|| {
            format!(
                "failover: {} requests lost, {} clients never answered through another node",
                self.lost(),
                self.never
            )
        })
    }

    fn json(&self) -> Value {
        let mut sorted = self.recovery.clone();
        sorted.sort();
        let ms = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 1e5).round() / 100.0);
        json!({
            "recovery_ms": {
                "n": sorted.len(),
                "p50": ms(percentile(&sorted, 50.0)),
                "p99": ms(percentile(&sorted, 99.0)),
                "max": ms(sorted.last().copied()),
                "min": ms(sorted.first().copied()),
            },
            "never_recovered": self.never,
            "in_flight_at_kill": self.in_flight,
            "after_kill": self.after_kill,
            "lost": self.lost(),
            "kills": self.kills,
            "rejoin_ms": self.rejoin.iter().map(|d| ms(Some(*d))).collect::<Vec<_>>(),
        })
    }
}

/// The `p`th percentile (nearest rank) of sorted `values`.
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.saturating_sub(1)).copied()
}

/// How a request ended, as counted.
fn kind(end: &End) -> String {
    match end {
        End::Answered => "answered".into(),
        End::Failed(kind) => kind.clone(),
        End::Lost(why) => format!("lost: {why}"),
    }
}

/// A failover client: requests one after another until `stop`, a pause after each answer.
async fn client_loop(
    client: Client,
    stop: Arc<AtomicBool>,
    pause: Duration,
    log: Arc<Mutex<Vec<Sent>>>,
) {
    let spec = RequestSpec {
        service: SERVICE.into(),
        plugin: "echo".into(),
        payload: b"failover".to_vec(),
        timeout: Some(REQUEST_TIMEOUT),
        ..RequestSpec::default()
    };
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let (node, end) = match client.request(spec.clone()).await {
            Ok(handle) => {
                let node = handle.broker().to_string();
                (Some(node), follow(handle, LOST_AFTER).await)
            }
            Err(e) => (None, End::Failed(format!("send: {}", error_name(&e)))),
        };
        let answered = matches!(end, End::Answered);
        log.lock().unwrap().push(Sent {
            sent,
            ended: Instant::now(),
            node,
            end,
        });
        match answered {
            true => tokio::time::sleep(pause).await,
            // The client library waits before connecting again after a failed round.
            false => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// Whether `log` has an answer through a node other than `victim` that ended after `killed`;
/// its end.
fn recovered(log: &[Sent], victim: &str, killed: Instant) -> Option<Instant> {
    log.iter()
        .find(|s| {
            matches!(s.end, End::Answered)
                && s.ended >= killed
                && s.node.as_deref().is_some_and(|n| n != victim)
        })
        .map(|s| s.ended)
}

/// `failover`: `--kills` kills, each node in turn, each under `--clients` clients.
async fn failover(
    cell: &mut Cell,
    args: &CellArgs,
    jwt: &str,
    notes: &mut Notes,
) -> anyhow::Result<Failover> {
    let mut seen = Failover::default();
    let workers = args.workers.max(1);
    for k in 0..args.kills {
        let victim = k % cell.addrs.len();
        let addr = cell.addrs[victim].clone();
        let stop = Arc::new(AtomicBool::new(false));
        let mut logs = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..args.clients.max(1) {
            let client = crate::triggerfs::connect_as(&addr, jwt).await?;
            let log: Arc<Mutex<Vec<Sent>>> = Arc::default();
            logs.push(log.clone());
            tasks.push(tokio::spawn(client_loop(
                client,
                stop.clone(),
                args.pause,
                log,
            )));
        }
        tokio::time::sleep(BEFORE_KILL).await;
        let killed = Instant::now();
        cell.kill(victim).await;
        let all_back = || {
            logs.iter()
                .all(|l| recovered(&l.lock().unwrap(), &addr, killed).is_some())
        };
        while !all_back() && killed.elapsed() < RECOVERY_DEADLINE {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await?;
        }
        let mut times = Vec::new();
        for log in &logs {
            let log = log.lock().unwrap();
            match recovered(&log, &addr, killed) {
                Some(at) => times.push(at - killed),
                None => seen.never += 1,
            }
            for s in log.iter().filter(|s| s.ended >= killed) {
                let counts = match s.sent < killed {
                    true => &mut seen.in_flight,
                    false => &mut seen.after_kill,
                };
                *counts.entry(kind(&s.end)).or_default() += 1;
            }
        }
        times.sort();
        let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
        notes.line(format!(
            "failover: kill {} of node{}: {} of {} clients answered through another node, median {:.1} ms, longest {:.1} ms after the kill",
            k + 1,
            victim + 1,
            times.len(),
            logs.len(),
            ms(percentile(&times, 50.0)),
            ms(times.last().copied())
        ));
        seen.kills.push(json!({
            "node": victim + 1,
            "recovered": times.len(),
            "p50_ms": percentile(&times, 50.0).map(|d| d.as_secs_f64() * 1e3),
            "max_ms": times.last().map(|d| d.as_secs_f64() * 1e3),
        }));
        seen.recovery.extend(times);
        cell.start_node(victim).await?;
        let listening = Instant::now();
        cell.wait_reaches(victim, jwt, ALL, workers).await?;
        seen.rejoin.push(listening.elapsed());
    }
    notes.line(format!(
        "failover: requests in flight at a kill ended {:?}; every request sent after a kill {:?}",
        seen.in_flight, seen.after_kill
    ));
    Ok(seen)
}
