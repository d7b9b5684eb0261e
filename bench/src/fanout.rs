//! `bench fanout`: a mirror `echo` to N connected workers, one request at a time; per round,
//! the time from sending the request to the first and to the last `Done`, and the summary.
//! `--idle` instead connects many idle workers and reads the broker's resident memory.
//!
//! There is no baseline for fan-out (the targets are absolute), so only triggerFS is measured.

use crate::cpu::{Sample, Watched};
use crate::proc::{start_triggerfs, TriggerfsProcs, TriggerfsSetup};
use crate::report::{latency_histogram, FanoutFigures, IdleFigures, Report, SystemResult};
use crate::triggerfs::{self, Workers};
use crate::{FanoutArgs, Notes, System};
use anyhow::{bail, Context};
use client::{Client, ClientEvent};
use proto::Summary;
use serde_json::{json, Map};
use std::time::Duration;
use tokio::time::Instant;

/// How long all workers may take to be online before the run gives up: 10,000 connections
/// and handshakes on a busy 2-core machine take seconds, not minutes.
const ONLINE_DEADLINE: Duration = Duration::from_secs(120);

/// After the last idle worker is online, wait this long before reading RSS, so that every
/// connection has exchanged a heartbeat (1 s by default) and settled its buffers.
const IDLE_SETTLE: Duration = Duration::from_secs(3);

/// File descriptors besides the workers' sockets: the runtime, the broker's io_uring
/// rings, the client, stdio.
const SPARE_FDS: u64 = 1024;

/// What one mirror round saw.
struct Round {
    first_done: Option<Duration>,
    last_done: Option<Duration>,
    n_done: u64,
    summary: Option<Summary>,
}

async fn mirror_round(client: &Client, service: &str, payload: &[u8]) -> anyhow::Result<Round> {
    let sent_at = Instant::now();
    let mut handle = client
        .request(triggerfs::echo_request(service, payload.to_vec()))
        .await?;
    let mut round = Round {
        first_done: None,
        last_done: None,
        n_done: 0,
        summary: None,
    };
    while let Some(event) = handle.next().await {
        match event {
            ClientEvent::Done { exit_code, .. } => {
                let at = sent_at.elapsed();
                round.first_done.get_or_insert(at);
                round.last_done = Some(at);
                if exit_code == 0 {
                    round.n_done += 1;
                }
            }
            ClientEvent::Summary(summary) => round.summary = Some(summary),
            ClientEvent::Error { kind, message } => bail!("{kind}: {message}"),
            _ => {}
        }
    }
    Ok(round)
}

/// Sends mirror rounds until one is answered by `n` workers (exit 0: a service configured in
/// a control plane counts its offline workers among those it was sent to), or the deadline
/// passes. A lost connection does not end the wait: the client connects again at its next
/// request (10,000 workers connecting at once, or 1,000 on a loaded machine, can keep a 2-core
/// broker so busy that a client connected meanwhile misses its heartbeats and is dropped).
async fn wait_online(client: &Client, service: &str, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + ONLINE_DEADLINE;
    let mut seen = 0;
    let mut last_error = String::from("none");
    loop {
        match mirror_round(client, service, b"online?").await {
            Ok(round) => {
                seen = round.summary.map_or(0, |s| s.ok as usize);
                if seen >= n {
                    return Ok(());
                }
            }
            Err(e) => {
                last_error = format!("{e:#}");
                tracing::warn!(error = %last_error, "waiting for the workers: a round failed");
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "only {seen} of {n} workers came online within {ONLINE_DEADLINE:?} \
                 (last error: {last_error})"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A client of the broker at `addr`, logged in with `jwt` (empty: none), once [`wait_online`]
/// saw `n` workers of `service`.
pub(crate) async fn online_client(
    addr: &str,
    jwt: &str,
    service: &str,
    n: usize,
) -> anyhow::Result<Client> {
    let client = triggerfs::connect_as(addr, jwt).await?;
    wait_online(&client, service, n).await?;
    Ok(client)
}

/// Raises the open-file limit so that `sockets` more descriptors fit (the workers' ends of
/// their connections live in this process). As root the hard limit can be raised
/// too; otherwise the soft limit goes as high as the hard one.
fn raise_fd_limit(sockets: u64) {
    let wanted = sockets + SPARE_FDS;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= wanted {
            return;
        }
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: limit.rlim_max.max(wanted),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            let soft = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &soft);
            tracing::warn!(
                wanted,
                hard = limit.rlim_max,
                "cannot raise the open-file limit; workers may fail to connect"
            );
        }
    }
}

/// VmRSS of a process in KiB, from /proc/<pid>/status.
pub(crate) fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn params(args: &FanoutArgs, shards: usize) -> Map<String, serde_json::Value> {
    let common = &args.common;
    let mut params = Map::new();
    params.insert("payload".into(), json!(common.payload));
    common.insert_broker_params(&mut params, shards);
    params.insert("broker".into(), json!(common.broker));
    params.insert("service".into(), json!(args.service));
    params.insert("idle".into(), json!(args.idle));
    params.insert("control".into(), json!(args.control));
    if args.idle {
        params.insert("idle_workers".into(), json!(args.idle_workers));
    } else {
        params.insert("workers".into(), json!(args.workers));
        params.insert("count".into(), json!(args.count));
        params.insert("warmup_rounds".into(), json!(args.warmup_rounds));
        params.insert("in_process_workers".into(), json!(args.in_process_workers));
        if !args.in_process_workers && common.broker.is_none() {
            params.insert("worker_procs".into(), json!(args.worker_procs));
        }
    }
    params.insert("systems".into(), json!([System::Triggerfs]));
    params
}

/// `bench fanout` (and `--idle`).
pub(crate) async fn measure(args: &FanoutArgs, notes: &mut Notes) -> anyhow::Result<Report> {
    let common = &args.common;
    if !common.systems.contains(&System::Triggerfs) {
        bail!("fanout measures triggerfs only; add it to --systems");
    }
    let shards = common.shards.unwrap_or(2).max(1);
    let mut report = Report::new("fanout", params(args, shards), common.out.clone());
    for other in common.systems.iter().filter(|s| **s != System::Triggerfs) {
        let line = format!(
            "{}: not measured in fanout mode (no fan-out baseline)",
            other.name()
        );
        report.skipped.push(line);
    }
    if args.idle {
        report.idle = Some(idle(args, shards).await?);
        return Ok(report);
    }
    if args.control {
        report.systems = controlled(args, shards, notes).await?;
        return Ok(report);
    }
    let n = args.workers;
    let service = args.service.clone();
    let (addr, broker) = match &common.broker {
        Some(addr) => (addr.clone(), None),
        None => {
            raise_fd_limit(n as u64);
            let broker = start_broker(args, shards, &service).await?;
            (broker.addr.clone(), Some(broker))
        }
    };
    // The CPU each process spends over the measured rounds.
    let mut watched: Vec<Watched> = Vec::new();
    let client_side = |name: &str| Watched {
        name: name.to_string(),
        pid: std::process::id(),
        server: false,
    };
    // With --broker the user started the workers.
    let workers = match &broker {
        None => {
            watched.push(client_side("client"));
            None
        }
        Some(broker) => {
            watched.extend(Watched::server("broker", broker.procs[0].pid()));
            if args.in_process_workers {
                let services = std::slice::from_ref(&service);
                let workers = Workers::start(&addr, "fan-w", n, services)?;
                watched.push(client_side("bench (client + workers)"));
                Some(FanWorkers::InProcess(workers))
            } else {
                let procs = WorkerProcs::start(&addr, n, args.worker_procs, &service).await?;
                for p in &procs.procs {
                    watched.extend(Watched::server("workers", p.pid()));
                }
                watched.push(client_side("client"));
                Some(FanWorkers::Procs(procs))
            }
        }
    };
    let outcome = async {
        let client = online_client(&addr, "", &service, n).await?;
        anyhow::Ok(rounds(&client, &service, n, args, &watched, notes).await)
    }
    .await;
    match workers {
        Some(FanWorkers::InProcess(workers)) => workers.stop().await,
        Some(FanWorkers::Procs(procs)) => drop(procs),
        None => {}
    }
    drop(broker);
    report.systems.push(outcome?);
    Ok(report)
}

/// Where `fanout`'s workers run.
enum FanWorkers {
    /// `--in-process-workers`: tasks of the bench's own runtime, beside its client.
    InProcess(Workers),
    /// Processes of their own (`bench-child workers`), each one current-thread runtime.
    Procs(WorkerProcs),
}

/// `bench-child workers` processes and their identity files.
struct WorkerProcs {
    procs: Vec<crate::proc::Spawned>,
    _dir: tempfile::TempDir,
}

impl WorkerProcs {
    /// `n` workers `fan-w<i>` announcing `service`, spread over `procs` processes of this
    /// binary in contiguous blocks.
    async fn start(addr: &str, n: usize, procs: usize, service: &str) -> anyhow::Result<Self> {
        let bin = std::env::current_exe().context("cannot find this binary")?;
        let dir = tempfile::tempdir().context("cannot create a directory")?;
        let procs_n = procs.clamp(1, n.max(1));
        let services = [service.to_string()];
        let mut started = Vec::with_capacity(procs_n);
        for k in 0..procs_n {
            let ids: String = (k * n / procs_n..(k + 1) * n / procs_n)
                .map(|i| format!("fan-w{i} \n"))
                .collect();
            let path = dir.path().join(format!("ids-{k}"));
            std::fs::write(&path, ids).context("cannot write the workers' identities")?;
            let name = format!("workers {k}");
            let proc =
                crate::soak::start_workers(&bin, addr, triggerfs::TEAM, &path, &services, &name)
                    .await?;
            started.push(proc);
        }
        Ok(WorkerProcs {
            procs: started,
            _dir: dir,
        })
    }
}

/// A `triggerfs broker` process with the mirror `service`, no workers of its own.
async fn start_broker(
    args: &FanoutArgs,
    shards: usize,
    service: &str,
) -> anyhow::Result<TriggerfsProcs> {
    let bin = args.common.triggerfs_bin()?;
    start_triggerfs(&TriggerfsSetup {
        bin: &bin,
        shards,
        spin: args.common.spin,
        service,
        algorithm: "mirror",
        workers: 0,
        prefix: "",
        tls: None,
    })
    .await
}

/// `fanout --idle`: connects idle workers (always in this process) to a broker process, or
/// to `--broker` whose pid is `--broker-pid`, and reads the broker's RSS.
async fn idle(args: &FanoutArgs, shards: usize) -> anyhow::Result<IdleFigures> {
    let n = args.idle_workers;
    let service = if args.service == "fan" {
        "idle".to_string()
    } else {
        args.service.clone()
    };
    raise_fd_limit(n as u64);
    let (addr, pid, broker) = match (&args.common.broker, args.broker_pid) {
        (Some(addr), Some(pid)) => (addr.clone(), pid.to_string(), None),
        (Some(_), None) => {
            bail!("--idle with --broker needs --broker-pid to read the broker's RSS")
        }
        (None, _) => {
            let broker = start_broker(args, shards, &service).await?;
            let pid = broker.procs[0]
                .pid()
                .context("the broker process is gone")?;
            (broker.addr.clone(), pid.to_string(), Some(broker))
        }
    };
    let rss_before = rss_kib(&pid);
    let workers = Workers::start(&addr, "idle-w", n, std::slice::from_ref(&service))?;
    let outcome = async {
        drop(online_client(&addr, "", &service, n).await?);
        tokio::time::sleep(IDLE_SETTLE).await;
        rss_kib(&pid).with_context(|| format!("cannot read /proc/{pid}/status"))
    }
    .await;
    workers.stop().await;
    drop(broker);
    Ok(IdleFigures {
        workers: n as u64,
        rss_kib: outcome?,
        rss_before_kib: rss_before,
        source: format!("broker process {pid}"),
    })
}

/// Rounds of one system, added up.
struct Rounds {
    n: usize,
    last_done: hdrhistogram::Histogram<u64>,
    first_done: hdrhistogram::Histogram<u64>,
    received: u64,
    errors: u64,
    fewest_ok: u64,
    sent: u64,
    elapsed: Duration,
    /// Each complete round's time to the last `Done`.
    last: Vec<Duration>,
    /// `fanout --control`: the median of `last` in each block.
    blocks: Vec<Duration>,
}

impl Rounds {
    fn new(n: usize) -> Rounds {
        Rounds {
            n,
            last_done: latency_histogram(),
            first_done: latency_histogram(),
            received: 0,
            errors: 0,
            fewest_ok: n as u64,
            sent: 0,
            elapsed: Duration::ZERO,
            last: Vec::new(),
            blocks: Vec::new(),
        }
    }

    /// Runs one round and adds it.
    async fn run(&mut self, client: &Client, service: &str, payload: &[u8]) {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        let n = self.n as u64;
        let started = Instant::now();
        self.sent += 1;
        match mirror_round(client, service, payload).await {
            Ok(round) => {
                let ok = round.summary.as_ref().map_or(0, |s| u64::from(s.ok));
                self.fewest_ok = self.fewest_ok.min(ok).min(round.n_done);
                if ok == n && round.n_done == n {
                    self.received += 1;
                    if let (Some(first), Some(last)) = (round.first_done, round.last_done) {
                        self.first_done.saturating_record(nanos(first));
                        self.last_done.saturating_record(nanos(last));
                        self.last.push(last);
                    }
                } else {
                    tracing::warn!(ok, n_done = round.n_done, n, "fan-out round incomplete");
                    self.errors += 1;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "fan-out round failed");
                self.fewest_ok = 0;
                self.errors += 1;
            }
        }
        self.elapsed += started.elapsed();
    }

    fn result(self, name: &'static str) -> SystemResult {
        SystemResult {
            name,
            hist: self.last_done,
            sent: self.sent,
            received: self.received,
            errors: self.errors,
            elapsed: self.elapsed,
            fanout: Some(FanoutFigures {
                first_done: self.first_done,
                workers: self.n as u64,
                ok: self.fewest_ok,
                rounds: self.last,
            }),
            cpu: None,
        }
    }
}

/// The measured rounds, one request at a time.
async fn rounds(
    client: &Client,
    service: &str,
    n: usize,
    args: &FanoutArgs,
    watched: &[Watched],
    notes: &Notes,
) -> SystemResult {
    let payload = vec![b'x'; args.common.payload];
    for _ in 0..args.warmup_rounds {
        let _ = mirror_round(client, service, &payload).await;
    }
    let bar = notes.progress().then(|| {
        let bar = indicatif::ProgressBar::new(args.count);
        bar.set_prefix("fanout");
        bar
    });
    let mut rounds = Rounds::new(n);
    let before = Sample::take(watched);
    for _ in 0..args.count {
        rounds.run(client, service, &payload).await;
        if let Some(bar) = &bar {
            bar.inc(1);
        }
    }
    let cpu = before.until(&Sample::take(watched));
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let mut result = rounds.result("triggerfs");
    result.cpu = (!watched.is_empty()).then_some(cpu);
    result
}

/// `fanout --control`: the same fan-out through two brokers that follow one control plane,
/// one recording every request in the job history (as any broker with `--control` does) and
/// one started with `--no-job-records`; the same workers (identities and tokens from the
/// control plane) connected to both, blocks of rounds taken in turns. Rows `triggerfs-jobs` and
/// `triggerfs-nojobs`, and the overhead of recording on the median time to the last `Done`.
async fn controlled(
    args: &FanoutArgs,
    shards: usize,
    notes: &mut Notes,
) -> anyhow::Result<Vec<SystemResult>> {
    let bin = args.common.triggerfs_bin()?;
    let n = args.workers;
    raise_fd_limit(2 * n as u64);
    let dir = tempfile::tempdir().context("cannot create a directory")?;
    let addrs = [crate::stack::free_addr()?, crate::stack::free_addr()?];
    let (control, api) =
        crate::stack::Control::start(&bin, &dir.path().join("data"), &addrs[0]).await?;
    notes.line(format!(
        "fanout --control: creating {n} workers in the control plane"
    ));
    let ids = crate::stack::new_fleet(&api, "fan-w", n, &args.service, "mirror").await?;
    let spin = format!("{}us", args.common.spin.as_micros());
    let shards = shards.to_string();
    let flags = ["--shards", shards.as_str(), "--spin", spin.as_str()];
    let mut without_flags = flags.to_vec();
    without_flags.push("--no-job-records");
    let with_flags = if args.noise_floor {
        &without_flags[..]
    } else {
        &flags[..]
    };
    let pair = BrokerPair {
        args,
        bin,
        control,
        addrs,
        ids,
        api: api.clone(),
        payload: vec![b'x'; args.common.payload],
    };
    let (mut rec, mut bare) = (Rounds::new(n), Rounds::new(n));
    // Two halves, the recording broker on the first address (the one started first, and the
    // one the control plane's gateway uses) in the first and on the second in the other:
    // with neither broker recording (`--noise-floor`), the first measured up to 5 % slower
    // than the second in one arrangement, which would otherwise count as recording's.
    for half in 0..2u64 {
        let (rec_flags, bare_flags): (&[&str], &[&str]) = match half {
            0 => (with_flags, &without_flags),
            _ => (&without_flags, with_flags),
        };
        let brokers = [rec_flags, bare_flags];
        pair.half(half, brokers, [&mut rec, &mut bare]).await?;
    }
    recording_overhead(args, &api, rec, bare, notes).await
}

/// The two brokers of `fanout --control` and what they run on.
struct BrokerPair<'a> {
    args: &'a FanoutArgs,
    bin: std::path::PathBuf,
    control: crate::stack::Control,
    addrs: [String; 2],
    /// The workers' identities and tokens.
    ids: Vec<(String, String)>,
    /// The control plane's API (the clients' JWT, fresh for each half).
    api: api::Api,
    payload: Vec<u8>,
}

impl BrokerPair<'_> {
    /// Half `half` of the rounds: the recording broker (`flags[0]`, its rounds `rounds[0]`)
    /// on the first address in half 0 and on the second in half 1, the other (`flags[1]`,
    /// `rounds[1]`) on the other address, the same workers connected to both.
    async fn half(
        &self,
        half: u64,
        flags: [&[&str]; 2],
        rounds: [&mut Rounds; 2],
    ) -> anyhow::Result<()> {
        let (args, service) = (self.args, &self.args.service);
        let [first_addr, second_addr] = &self.addrs;
        let (first, _) = self.control.broker(&self.bin, first_addr, flags[0]).await?;
        let (second, _) = self
            .control
            .broker(&self.bin, second_addr, flags[1])
            .await?;
        let services = std::slice::from_ref(service);
        let first_workers = Workers::start_in(first_addr, "main", &self.ids, services)?;
        let second_workers = Workers::start_in(second_addr, "main", &self.ids, services)?;
        let (rec_addr, bare_addr) = match half {
            0 => (first_addr, second_addr),
            _ => (second_addr, first_addr),
        };
        let outcome = async {
            let jwt = self.api.jwt().await?;
            let with = triggerfs::connect_as(rec_addr, &jwt).await?;
            let without = triggerfs::connect_as(bare_addr, &jwt).await?;
            wait_online(&with, service, args.workers).await?;
            wait_online(&without, service, args.workers).await?;
            for _ in 0..args.warmup_rounds {
                let _ = mirror_round(&with, service, &self.payload).await;
                let _ = mirror_round(&without, service, &self.payload).await;
            }
            let until = args.count * (half + 1) / 2;
            let [rec, bare] = rounds;
            self.in_turns([(rec, &with), (bare, &without)], until).await;
            anyhow::Ok(())
        }
        .await;
        first_workers.stop().await;
        second_workers.stop().await;
        drop((first, second));
        outcome
    }

    /// Long blocks of back-to-back rounds in turns until each of `sides` sent `until`, each
    /// after a quiet pause and one round that is not counted. The recording broker's
    /// records are made and sent, and the control plane stores them, after their requests
    /// ended, every `DRAIN_EVERY`, on the same two cores: within a block that work lands on
    /// the block's own later rounds, as it would for a user sending fan-outs back to back;
    /// the pause lets the last of it end before the other broker's block starts, so none of
    /// it lands there.
    async fn in_turns(&self, mut sides: [(&mut Rounds, &Client); 2], until: u64) {
        let service = &self.args.service;
        while sides.iter().any(|(rounds, _)| rounds.sent < until) {
            for (rounds, client) in sides.iter_mut() {
                tokio::time::sleep(QUIET).await;
                let _ = mirror_round(client, service, &self.payload).await;
                let from = rounds.last.len();
                for _ in 0..BLOCK.min(until.saturating_sub(rounds.sent)) {
                    rounds.run(client, service, &self.payload).await;
                }
                rounds.blocks.push(median(&rounds.last[from..]));
            }
            sides.reverse();
        }
    }
}

/// What recording costs, from the rounds with it (`rec`) and without (`bare`): per pair of
/// blocks and on the median time to the last `Done`; the two rows.
async fn recording_overhead(
    args: &FanoutArgs,
    api: &api::Api,
    rec: Rounds,
    bare: Rounds,
    notes: &mut Notes,
) -> anyhow::Result<Vec<SystemResult>> {
    let (n, service) = (args.workers, &args.service);
    // Each block against the other broker's block next to it: the machine's speed
    // drifts over tens of seconds, less within a pair.
    let pairs: Vec<f64> = rec
        .blocks
        .iter()
        .zip(&bare.blocks)
        .filter(|(_, b)| !b.is_zero())
        .map(|(r, b)| (ms(*r) / ms(*b) - 1.0) * 100.0)
        .collect();
    let paired = crate::fsbench::median(pairs.clone());
    let (adds, names) = match args.noise_floor {
        false => ("recording adds", ["triggerfs-jobs", "triggerfs-nojobs"]),
        true => (
            "broker a (no records either) differs by",
            ["triggerfs-a", "triggerfs-b"],
        ),
    };
    notes.line(format!(
        "fanout --control: per pair of blocks, {adds} {} %: median {paired:+.1} %",
        pairs
            .iter()
            .map(|p| format!("{p:+.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    // The recording broker's records, as the control plane stored them (checked so that
    // "with" is not silently "without").
    if !args.noise_floor {
        let recorded = recorded_jobs(api, service, args.count).await?;
        notes.line(format!(
            "fanout --control: the control plane holds {recorded} jobs of `{service}`"
        ));
    }
    let (m_rec, m_bare) = (median(&rec.last), median(&bare.last));
    let worst = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
    notes.line(format!(
        "fanout --control: time to the last Done to {n} workers over {} rounds each: \
         {} median {:.2} ms (worst {:.2} ms), {} median {:.2} ms (worst {:.2} ms): \
         {adds} {:+.1} %",
        args.count,
        names[0],
        ms(m_rec),
        ms(worst(&rec.last)),
        names[1],
        ms(m_bare),
        ms(worst(&bare.last)),
        (ms(m_rec) / ms(m_bare).max(1e-9) - 1.0) * 100.0
    ));
    Ok(vec![rec.result(names[0]), bare.result(names[1])])
}

/// The jobs of `service` in the history, once there are at least `want` (within 30 s).
async fn recorded_jobs(api: &api::Api, service: &str, want: u64) -> anyhow::Result<u64> {
    /// A page of `GET /jobs` (the fields counted).
    #[derive(serde::Deserialize)]
    struct JobsPage {
        jobs: Vec<serde::de::IgnoredAny>,
        next_cursor: Option<String>,
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut count = 0u64;
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/jobs?service={service}&limit=500");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let page: JobsPage = api.get(&path).await?;
            count += page.jobs.len() as u64;
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        if count >= want {
            return Ok(count);
        }
        if Instant::now() > deadline {
            bail!("only {count} jobs of {service} were recorded, expected at least {want}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `fanout --control`: rounds per block (see [`controlled`]), about 2.3 s of fan-outs to
/// 1,000 workers here: the records of all but the block's last `DRAIN_EVERY` (200 ms) are
/// made, sent and stored while the block runs.
const BLOCK: u64 = 100;

/// `fanout --control`: the pause before each block, for the last block's records to be
/// delivered and stored (`DRAIN_EVERY` and one post).
const QUIET: Duration = Duration::from_millis(1000);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    match v.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2,
    }
}
