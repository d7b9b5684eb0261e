//! `bench soak`: the whole system under a steady load while it is being hurt (issue 16).
//!
//! Processes: a control plane (`triggerfs control`, SQLite), a broker that follows it
//! (`triggerfs broker --control`), and `--workers` workers spread over `--worker-procs`
//! processes (`bench-child workers`: the worker library, one task per identity, each
//! with its own TCP connection and its own token from the control plane). The bench itself
//! runs `--clients` client connections (logged in with the admin's JWT) that together send
//! `--rate` requests a second (`echo` on a roundrobin service bound to every worker).
//!
//! Faults, spread over the run: `--worker-kills` SIGKILLs of a random worker process (started
//! again a second later, its workers reconnect), one SIGKILL and restart of the broker (at
//! 35 % of the run) and one of the control plane (at 65 %).
//!
//! Every request is accounted for: `answered` (a `Summary` with the worker's `Done`), `failed`
//! with a typed error (the broker's `Error`, a worker's `Failed`, the client library's
//! `BrokerLost`, or a typed `ClientError` when sending or connecting, each counted by its
//! kind), or `lost`: no final event within `--timeout` plus `--lost-after`, or an event
//! stream that ended without one. The broker's peak RSS (VmHWM) and open descriptors are
//! sampled from /proc every 100 ms, over both broker processes. Exit status 1 when any
//! request was lost.

use crate::proc::{command, Spawned, StdoutLines};
use crate::stack::{free_addr, new_fleet, serving, Control};
use anyhow::{bail, Context};
use client::{Client, ClientError, ClientEvent, RequestHandle, RequestSpec};
use proto::Credential;
use rand::Rng;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Flags of `bench soak`.
#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// How long the load runs (the faults are spread over it).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub duration: Duration,
    /// Connected workers (each a connection and an identity of its own).
    #[arg(long, default_value_t = 2000)]
    pub workers: usize,
    /// Processes the workers are spread over (a SIGKILL takes one process's workers).
    #[arg(long, default_value_t = 20)]
    pub worker_procs: usize,
    /// Client connections sending requests.
    #[arg(long, default_value_t = 50)]
    pub clients: usize,
    /// Requests per second over all clients.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// The share of requests that run `fsleep` (a shell script that sleeps 1 s, a process
    /// per request) instead of the in-worker `echo`, so that SIGKILLs and the broker's
    /// restart catch requests while they run.
    #[arg(long, default_value_t = 0.2)]
    pub slow_share: f64,
    /// SIGKILLs of a random worker process during the run.
    #[arg(long, default_value_t = 10)]
    pub worker_kills: usize,
    /// Each request's timeout.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub timeout: Duration,
    /// A request with no final event this long after its timeout is lost.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub lost_after: Duration,
    /// Broker shards.
    #[arg(long, default_value_t = 2)]
    pub shards: usize,
    /// `--json` and the processes' binary.
    #[command(flatten)]
    pub own: crate::OwnArgs,
}

/// The service every request goes to.
const SERVICE: &str = "soak";

/// The slow requests' plugin: a process that runs for a second.
const SLOW_PLUGIN: &str = "#!/bin/sh\nsleep 1\necho slept\n";

/// How long a worker process stays dead after a SIGKILL.
const DEAD_FOR: Duration = Duration::from_secs(1);

/// `bench-child workers`: runs a worker per `identity token` line of `ids` (team `team`,
/// announcing `services`), prints `ready` and runs until stdin closes or the process is
/// killed.
pub(crate) fn workers_main(
    broker: &str,
    team: &str,
    ids: &Path,
    services: &[String],
) -> anyhow::Result<i32> {
    let text =
        std::fs::read_to_string(ids).with_context(|| format!("cannot read {}", ids.display()))?;
    let plugins = tempfile::tempdir()?;
    crate::proc::write_plugins(plugins.path())?;
    let fsleep = plugins.path().join("fsleep/fsleep");
    std::fs::create_dir_all(plugins.path().join("fsleep"))?;
    std::fs::write(&fsleep, SLOW_PLUGIN)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fsleep, std::fs::Permissions::from_mode(0o755))?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for line in text.lines() {
            let (identity, token) = line.split_once(' ').context("an `identity token` line")?;
            let config = crate::triggerfs::worker_config(
                broker,
                team,
                identity,
                token,
                plugins.path(),
                services,
            );
            let mut stop = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                let shutdown = async move {
                    let _ = stop.changed().await;
                };
                if let Err(error) = worker::run(config, shutdown).await {
                    tracing::error!(%error, "soak worker failed");
                }
            }));
        }
        println!("ready");
        let _ = std::io::stdout().flush();
        let _ = tokio::task::spawn_blocking(crate::proc::wait_stdin_closed).await;
        let _ = stop_tx.send(true);
        for task in tasks {
            let _ = task.await;
        }
        anyhow::Ok(0)
    })
}

/// How requests ended.
#[derive(Default)]
struct Tally {
    sent: u64,
    answered: u64,
    failed: BTreeMap<String, u64>,
    lost: u64,
    /// Lost requests' reasons (`no final event`, `stream ended`), for the report.
    lost_why: BTreeMap<&'static str, u64>,
    /// Answers per second of the run.
    answered_per_s: Vec<u64>,
    /// Typed failures per second of the run.
    failed_per_s: Vec<u64>,
}

/// Adds one to `per_s[second]`.
fn bump(per_s: &mut Vec<u64>, second: usize) {
    if per_s.len() <= second {
        per_s.resize(second + 1, 0);
    }
    per_s[second] += 1;
}

/// How one request ended.
pub(crate) enum End {
    Answered,
    Failed(String),
    Lost(&'static str),
}

impl Tally {
    fn end(&mut self, end: End, second: usize) {
        match end {
            End::Answered => {
                self.answered += 1;
                bump(&mut self.answered_per_s, second);
            }
            End::Failed(kind) => {
                *self.failed.entry(kind).or_default() += 1;
                bump(&mut self.failed_per_s, second);
            }
            End::Lost(why) => {
                self.lost += 1;
                *self.lost_why.entry(why).or_default() += 1;
            }
        }
    }

    fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }
}

/// A `ClientError`'s variant name (with the broker's kind for `Refused`): the typed error a
/// caller of the library gets.
pub(crate) fn error_name(e: &ClientError) -> String {
    if let ClientError::Refused { kind, .. } = e {
        return format!("Refused({kind})");
    }
    let debug = format!("{e:?}");
    let name: String = debug
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    name
}

/// Reads a request's events to its final one, within `bound`.
pub(crate) async fn follow(mut handle: RequestHandle, bound: Duration) -> End {
    let read = async {
        let (mut ok, mut failed) = (false, None);
        while let Some(event) = handle.next().await {
            match event {
                ClientEvent::Done { exit_code, .. } => ok = exit_code == 0,
                ClientEvent::Failed { kind, .. } => failed = Some(format!("Failed({kind})")),
                ClientEvent::Summary(summary) => {
                    return if ok && summary.ok >= 1 {
                        End::Answered
                    } else {
                        End::Failed(failed.unwrap_or_else(|| "Summary(not ok)".into()))
                    };
                }
                ClientEvent::Error { kind, .. } => return End::Failed(format!("Error({kind})")),
                ClientEvent::Queued { .. } => return End::Failed("Queued".into()),
                _ => {}
            }
        }
        End::Lost("stream ended without a final event")
    };
    tokio::time::timeout(bound, read)
        .await
        .unwrap_or(End::Lost("no final event in time"))
}

/// What every client task shares.
struct Load {
    addr: String,
    jwt: String,
    period: Duration,
    spec: RequestSpec,
    /// `spec` running `fsleep`, for a `slow_share` of the requests.
    slow_spec: RequestSpec,
    slow_share: f64,
    bound: Duration,
    started: Instant,
    stop: AtomicBool,
    tally: Mutex<Tally>,
}

impl Load {
    /// The load `args` asks for, over `clients` connections to the broker at `addr` logged
    /// in with `jwt`; it starts now.
    fn new(args: &SoakArgs, clients: usize, addr: &str, jwt: &str) -> Load {
        let spec = RequestSpec {
            service: SERVICE.into(),
            plugin: "echo".into(),
            payload: b"soak".to_vec(),
            timeout: Some(args.timeout),
            ..RequestSpec::default()
        };
        Load {
            addr: addr.to_string(),
            jwt: jwt.to_string(),
            period: Duration::from_secs_f64(clients as f64 / args.rate.max(0.001)),
            slow_spec: RequestSpec {
                plugin: "fsleep".into(),
                ..spec.clone()
            },
            slow_share: args.slow_share,
            spec,
            bound: args.timeout + args.lost_after,
            started: Instant::now(),
            stop: AtomicBool::new(false),
            tally: Mutex::new(Tally::default()),
        }
    }

    fn end(&self, end: End) {
        let second = self.started.elapsed().as_secs() as usize;
        self.tally.lock().unwrap().end(end, second);
    }
}

/// One client connection sending a request every `period`, reconnecting when the broker
/// dropped it; waits for its requests' ends before returning.
async fn client_loop(load: Arc<Load>, offset: Duration) {
    let mut client: Option<Client> = None;
    let mut inflight = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval_at(load.started + offset, load.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if load.stop.load(Ordering::Relaxed) {
            break;
        }
        load.tally.lock().unwrap().sent += 1;
        while inflight.try_join_next().is_some() {}
        if client.as_ref().is_none_or(Client::is_closed) {
            let credential = Credential::Jwt {
                token: load.jwt.clone(),
            };
            match Client::connect(&client::BrokerList::one(load.addr.clone()), credential).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    client = None;
                    load.end(End::Failed(format!("connect: {}", error_name(&e))));
                    continue;
                }
            }
        }
        let Some(c) = &client else { continue };
        let spec = if rand::thread_rng().gen_bool(load.slow_share.clamp(0.0, 1.0)) {
            &load.slow_spec
        } else {
            &load.spec
        };
        match c.request(spec.clone()).await {
            Ok(handle) => {
                let load = load.clone();
                inflight.spawn(async move {
                    let end = follow(handle, load.bound).await;
                    load.end(end);
                });
            }
            Err(e) => load.end(End::Failed(format!("send: {}", error_name(&e)))),
        }
    }
    while inflight.join_next().await.is_some() {}
}

/// The broker's peaks, over every broker process of the run.
#[derive(Default)]
struct Peaks {
    rss_kib: u64,
    fds: u64,
}

/// (VmHWM in KiB, open descriptors) of a process.
fn sample(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((hwm, fds))
}

/// Samples the broker every 100 ms while `sampling` is set.
async fn sample_while(pid: Arc<AtomicU32>, peaks: Arc<Mutex<Peaks>>, sampling: Arc<AtomicBool>) {
    while sampling.load(Ordering::Relaxed) {
        take_sample(&pid, &peaks);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn take_sample(pid: &AtomicU32, peaks: &Mutex<Peaks>) {
    if let Some((hwm, fds)) = sample(pid.load(Ordering::Relaxed)) {
        let mut p = peaks.lock().unwrap();
        p.rss_kib = p.rss_kib.max(hwm);
        p.fds = p.fds.max(fds);
    }
}

/// A worker process and its ids file.
pub(crate) struct WorkerProc {
    pub proc: Option<Spawned>,
    ids: PathBuf,
}

/// Spreads `ids` (identity, token) over `procs` worker processes (`start_worker_proc`) given
/// `broker`, their ids files `<name>-<i>.ids` in `dir`.
pub(crate) async fn start_worker_procs(
    bin: &Path,
    broker: &str,
    dir: &Path,
    name: &str,
    ids: &[(String, String)],
    procs: usize,
) -> anyhow::Result<Vec<WorkerProc>> {
    let n = ids.len();
    let procs = procs.clamp(1, n.max(1));
    let mut workers = Vec::with_capacity(procs);
    for (i, chunk) in ids.chunks(n.div_ceil(procs).max(1)).enumerate() {
        let path = dir.join(format!("{name}-{i}.ids"));
        let text: String = chunk.iter().map(|(id, t)| format!("{id} {t}\n")).collect();
        std::fs::write(&path, text)?;
        let proc = start_worker_proc(bin, broker, &path, i).await?;
        workers.push(WorkerProc {
            proc: Some(proc),
            ids: path,
        });
    }
    Ok(workers)
}

/// Starts `bench-child workers`: a worker per line of `ids` (team `main`), given
/// `broker` (one seed of a cell is enough); returns once they were started.
pub(crate) async fn start_worker_proc(
    bin: &Path,
    broker: &str,
    ids: &Path,
    i: usize,
) -> anyhow::Result<Spawned> {
    start_workers(bin, broker, "main", ids, &[], &format!("workers {i}")).await
}

/// Starts `bench-child workers` from `bin`: a worker per line of `ids` in team `team`, each
/// announcing `services`; returns once they are started (not necessarily online).
pub(crate) async fn start_workers(
    bin: &Path,
    broker: &str,
    team: &str,
    ids: &Path,
    services: &[String],
    name: &str,
) -> anyhow::Result<Spawned> {
    let ids = ids.display().to_string();
    let mut args = vec![
        "bench-child",
        "workers",
        "--broker",
        broker,
        "--team",
        team,
        "--ids",
        &ids,
    ];
    for service in services {
        args.extend(["--service", service]);
    }
    let (proc, _, lines): (Spawned, String, StdoutLines) =
        Spawned::start_until(name, command(bin, args), "ready").await?;
    crate::proc::drain(lines);
    Ok(proc)
}

/// What can happen at a moment of the run.
#[derive(Debug, Clone, Copy)]
enum Fault {
    KillWorkers(usize),
    StartWorkers(usize),
    RestartBroker,
    RestartControl,
}

/// The faults and when they happen: the worker kills spread over 10–90 % of the run, the
/// broker's restart at 35 %, the control plane's at 65 %.
fn schedule(args: &SoakArgs) -> Vec<(Duration, Fault)> {
    let d = args.duration;
    let mut rng = rand::thread_rng();
    let mut events = vec![
        (d.mul_f64(0.35), Fault::RestartBroker),
        (d.mul_f64(0.65), Fault::RestartControl),
    ];
    let kills = args.worker_kills;
    for k in 0..kills {
        let at = d.mul_f64(0.1 + 0.8 * (k as f64 + 0.5) / kills as f64);
        let which = rng.gen_range(0..args.worker_procs.max(1));
        events.push((at, Fault::KillWorkers(which)));
        events.push((at + DEAD_FOR, Fault::StartWorkers(which)));
    }
    events.sort_by_key(|(at, _)| *at);
    events
}

/// `bench soak`; the exit status (0 when nothing was lost).
pub(crate) async fn run(args: &SoakArgs) -> anyhow::Result<i32> {
    let mut notes: Box<dyn Write> = if args.own.json {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    let bin = args.own.bin()?;
    let n = args.workers;
    let dir = tempfile::tempdir().context("cannot create a directory for the soak")?;
    let addr = free_addr()?;
    let (control, api) = Control::start(&bin, &dir.path().join("data"), &addr).await?;
    writeln!(notes, "soak: creating {n} workers in the control plane")?;
    let ids = new_fleet(&api, "soak-w", n, SERVICE, "roundrobin").await?;
    let mut stack = Stack::start(args, bin, addr, control, dir.path(), &ids).await?;
    writeln!(
        notes,
        "soak: {} worker processes started; waiting for {n} workers online",
        stack.workers.len()
    )?;
    let online = workers_online(&api, n, crate::proc::READY_DEADLINE).await;
    if online < n {
        bail!("only {online} of {n} workers came online");
    }
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = tokio::spawn(sample_while(
        stack.pid.clone(),
        stack.peaks.clone(),
        sampling.clone(),
    ));
    let clients = args.clients.max(1);
    let jwt = api.jwt().await?;
    let load = Arc::new(Load::new(args, clients, &stack.addr, &jwt));
    writeln!(
        notes,
        "soak: {clients} clients at {} req/s for {:?}",
        args.rate, args.duration
    )?;
    let loops: Vec<_> = (0..clients)
        .map(|c| {
            let offset = load.period.mul_f64(c as f64 / clients as f64);
            tokio::spawn(client_loop(load.clone(), offset))
        })
        .collect();
    for (at, fault) in schedule(args) {
        tokio::time::sleep_until(load.started + at).await;
        stack.apply(fault).await?;
        writeln!(notes, "soak: {:>6.1}s {fault:?}", at.as_secs_f64())?;
    }
    tokio::time::sleep_until(load.started + args.duration).await;
    load.stop.store(true, Ordering::Relaxed);
    for l in loops {
        let _ = l.await;
    }
    let elapsed = load.started.elapsed();
    // The last worker process restarted may still be reporting in.
    let online = workers_online(&api, n, Duration::from_secs(15)).await;
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    report(args, &mut notes, stack, &load, elapsed, online)
}

/// How many of `n` workers serve the soak's service, polled until all do or `within` passed.
async fn workers_online(api: &api::Api, n: usize, within: Duration) -> usize {
    let by = Instant::now() + within;
    loop {
        let online = serving(api, SERVICE).await.unwrap_or(0);
        if online >= n || Instant::now() > by {
            return online;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The soak's processes besides the bench: the control plane, the broker and the worker
/// processes, hurt by [`Stack::apply`].
struct Stack {
    bin: PathBuf,
    /// The broker's address.
    addr: String,
    control: Control,
    broker: Option<Spawned>,
    shards: String,
    /// The running broker's pid, for the sampler.
    pid: Arc<AtomicU32>,
    peaks: Arc<Mutex<Peaks>>,
    workers: Vec<WorkerProc>,
    faults: Faults,
}

/// The faults done, for the report.
#[derive(serde::Serialize, Clone, Copy, Default)]
struct Faults {
    worker_process_kills: u64,
    workers_per_process: usize,
    broker_restarts: u64,
    control_restarts: u64,
}

impl Stack {
    /// Starts the broker and the worker processes, `ids` spread over `--worker-procs`.
    async fn start(
        args: &SoakArgs,
        bin: PathBuf,
        addr: String,
        control: Control,
        dir: &Path,
        ids: &[(String, String)],
    ) -> anyhow::Result<Stack> {
        let n = args.workers;
        let shards = args.shards.to_string();
        let (broker, _) = control.broker(&bin, &addr, &["--shards", &shards]).await?;
        let pid = Arc::new(AtomicU32::new(broker.pid().unwrap_or(0)));
        let procs_n = args.worker_procs.clamp(1, n.max(1));
        let workers = start_worker_procs(&bin, &addr, dir, "workers", ids, procs_n).await?;
        let faults = Faults {
            workers_per_process: n.div_ceil(procs_n),
            ..Faults::default()
        };
        Ok(Stack {
            bin,
            addr,
            control,
            broker: Some(broker),
            shards,
            pid,
            peaks: Arc::default(),
            workers,
            faults,
        })
    }

    /// Does `fault`.
    async fn apply(&mut self, fault: Fault) -> anyhow::Result<()> {
        match fault {
            Fault::KillWorkers(i) => {
                if let Some(mut p) = self.workers[i].proc.take() {
                    p.kill().await;
                    self.faults.worker_process_kills += 1;
                }
            }
            Fault::StartWorkers(i) => {
                if self.workers[i].proc.is_none() {
                    let ids = self.workers[i].ids.clone();
                    let proc = start_worker_proc(&self.bin, &self.addr, &ids, i).await?;
                    self.workers[i].proc = Some(proc);
                }
            }
            Fault::RestartBroker => {
                take_sample(&self.pid, &self.peaks);
                if let Some(mut b) = self.broker.take() {
                    b.kill().await;
                }
                let flags = ["--shards", self.shards.as_str()];
                let (b, _) = self.control.broker(&self.bin, &self.addr, &flags).await?;
                self.pid.store(b.pid().unwrap_or(0), Ordering::Relaxed);
                self.broker = Some(b);
                self.faults.broker_restarts += 1;
            }
            Fault::RestartControl => {
                self.control.restart(&self.bin).await?;
                self.faults.control_restarts += 1;
            }
        }
        Ok(())
    }
}

/// Takes the broker's last sample, stops the processes, and prints the run's summary (and
/// its JSON document with `--json`) for a load that ran `elapsed`, with `online` workers at
/// its end; the exit status.
fn report(
    args: &SoakArgs,
    notes: &mut dyn Write,
    stack: Stack,
    load: &Load,
    elapsed: Duration,
    online: usize,
) -> anyhow::Result<i32> {
    take_sample(&stack.pid, &stack.peaks);
    let fds_at_end = sample(stack.pid.load(Ordering::Relaxed)).map_or(0, |(_, f)| f);
    let peaks = std::mem::take(&mut *stack.peaks.lock().unwrap());
    let faults = stack.faults;
    drop(stack);
    let tally = std::mem::take(&mut *load.tally.lock().unwrap());
    let n = args.workers;
    let accounted = tally.answered + tally.failed_total() + tally.lost;
    let doc = json!({
        "mode": "soak",
        "params": {
            "duration_s": args.duration.as_secs_f64(),
            "workers": n,
            "worker_procs": args.worker_procs.clamp(1, n.max(1)),
            "clients": args.clients.max(1),
            "rate": args.rate,
            "slow_share": args.slow_share,
            "timeout_s": args.timeout.as_secs_f64(),
            "lost_after_s": args.lost_after.as_secs_f64(),
            "shards": args.shards,
        },
        "faults": faults,
        "sent": tally.sent,
        "answered": tally.answered,
        "failed": tally.failed_total(),
        "failed_by_kind": tally.failed,
        "lost": tally.lost,
        "lost_by_reason": tally.lost_why,
        "unaccounted": tally.sent.saturating_sub(accounted),
        "elapsed_s": elapsed.as_secs_f64(),
        "answered_per_s": tally.answered_per_s,
        "failed_per_s": tally.failed_per_s,
        "workers_online_at_end": online,
        "broker_peak_rss_kib": peaks.rss_kib,
        "broker_peak_fds": peaks.fds,
        "broker_fds_at_end": fds_at_end,
    });
    writeln!(
        notes,
        "soak: sent {} answered {} failed {} (typed: {:?}) lost {}",
        tally.sent,
        tally.answered,
        tally.failed_total(),
        tally.failed,
        tally.lost
    )?;
    writeln!(
        notes,
        "soak: broker peak RSS {:.1} MiB, peak fds {}, fds at end {fds_at_end}; {online} of {n} workers online at the end",
        peaks.rss_kib as f64 / 1024.0,
        peaks.fds
    )?;
    if args.own.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(if tally.lost == 0 && accounted == tally.sent {
        0
    } else {
        1
    })
}
