//! `triggerfs bench`: request/reply latency, throughput and mirror fan-out of triggerFS,
//! measured in one run against baselines on the same machine (DESIGN.md §9).
//!
//! Every system runs in processes of its own and is driven by a load process of its own, of
//! the same shape for all; the bench only starts them, hands out turns and reports.
//!
//! Layout:
//! - [`BenchArgs`] / [`run`] (this file): the command line and the one entry point.
//! - `systems`: `latency` and `throughput`: starts every system and its load process, then
//!   measures them in turns.
//! - `load`: the load process (`bench-child load`): open-loop at a rate (latency measured from
//!   each request's scheduled send time, so a stall cannot hide) or closed-loop with K in
//!   flight; and the bench's handle on it (a line protocol on its stdin/stdout).
//! - `proc`: child processes (killed with the bench) and the `triggerfs broker` / `triggerfs
//!   worker` processes.
//! - `child` ([`ChildArgs`], [`run_child`]): the hidden `bench-child` roles.
//! - `triggerfs`: the caller that sends requests through the `client` library, and the
//!   in-process workers of `fanout`.
//! - `relay`: the baseline "same hops, nothing else" — a minimal tokio TCP relay in front of an
//!   echo server, with length-prefixed, id-tagged messages.
//! - `nats`: the NATS request/reply baseline (async-nats), skipped when no server answers.
//! - `fanout`: mirror fan-out to N workers (time to first and last `Done`) and the idle-worker
//!   memory measurement.
//! - `soak`: the soak with faults (`bench soak`) and its worker processes.
//! - `stack`: a control plane and the brokers that follow it, as processes.
//! - `cell`: a cell of broker nodes (`bench cell`): each node's RSS with idle workers, CPU
//!   per request through one node and through all, and the clients' failover at a kill.
//! - `report`: the table, the JSON document, `.hgrm` files, the SVG chart, machine and commit.
//!
//! What it is not: a test. Nothing here asserts a timing; the functional test in
//! `bench/tests/` only checks counts and the shape of the JSON.

mod cell;
mod child;
mod cpu;
mod fanout;
mod fsbench;
mod load;
mod nats;
mod nullfuse;
mod nullfuse_uring;
mod proc;
mod relay;
mod report;
mod soak;
mod stack;
mod systems;
mod triggerfs;

pub use cell::{CellArgs, Part};
pub use child::{run as run_child, ChildArgs, LoadChildArgs, Role};
pub use cpu::CpuFigures;
pub use report::{Machine, Report, SystemResult};

use clap::{Args, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// What the triggerFS worker runs for each request of `latency` and `throughput`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    /// The core plugin `echo`, served inside the worker (no process).
    InWorker,
    /// `pyecho`, the persistent Python example plugin (`plugins/examples/pyecho`): started
    /// once, requests over JSON lines.
    Persistent,
    /// `fecho`, a shell script started per request (fork, exec, `sed`).
    Process,
    /// The core plugin `append`, writing numbered lines to a file (checked after the run).
    Append,
}

impl PluginKind {
    /// The row's name in tables, JSON and file names.
    pub fn row(self) -> &'static str {
        match self {
            PluginKind::InWorker => "triggerfs",
            PluginKind::Persistent => "triggerfs-persistent",
            PluginKind::Process => "triggerfs-process",
            PluginKind::Append => "triggerfs-append",
        }
    }

    /// The plugin each request names.
    pub fn plugin(self) -> &'static str {
        match self {
            PluginKind::InWorker => "echo",
            PluginKind::Persistent => "pyecho",
            PluginKind::Process => "fecho",
            PluginKind::Append => "append",
        }
    }
}

/// `triggerfs bench latency|throughput|fanout [flags]`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// What to measure.
    #[command(subcommand)]
    pub mode: Mode,
}

/// The benchmark modes.
#[derive(Subcommand, Debug, Clone)]
pub enum Mode {
    /// Request/reply latency: by default 1 request in flight, 64 B payload, echo.
    Latency(LoadArgs),
    /// Request/reply throughput: by default 256 requests in flight, 2 broker shards.
    Throughput(LoadArgs),
    /// Mirror fan-out to N workers: time from request to first and last `Done`.
    Fanout(FanoutArgs),
    /// Log shipping through a mounted trigger file (`triggerfs fs`) to the in-worker
    /// `append`, end to end, beside a plain file on the same disk.
    Fs(fsbench::FsBenchArgs),
    /// The whole system (control plane, broker, 2,000 workers, 50 clients) at a steady rate
    /// with faults: workers SIGKILLed, the broker and the control plane restarted; every
    /// request must end in an answer or a typed error.
    Soak(soak::SoakArgs),
    /// A cell of broker nodes following one control plane, every worker connected to every
    /// node: each node's RSS with idle workers, CPU per request through one node and through
    /// all, and how long a killed node's clients take to be answered through another.
    Cell(CellArgs),
}

/// Flags every mode has.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Use a running broker at ADDR instead of starting one (then you start the workers).
    #[arg(long, value_name = "ADDR")]
    pub broker: Option<String>,
    /// Broker shards (executor threads) of the broker started here, and threads of the relay
    /// [latency: 1, throughput: 2, fanout: 2].
    #[arg(long)]
    pub shards: Option<usize>,
    /// How long an idle shard of the broker started here polls before sleeping (as
    /// `triggerfs broker --spin`); `0s` never spins.
    #[arg(long, default_value = "30us", value_parser = humantime::parse_duration)]
    pub spin: std::time::Duration,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Where the `.hgrm` files and the SVG chart go.
    #[arg(long, value_name = "DIR", default_value = "bench-results")]
    pub out: PathBuf,
    /// Print exactly one JSON document on stdout (tables and notes go to stderr).
    #[arg(long)]
    pub json: bool,
    /// Systems to measure, comma-separated: triggerfs, relay, nats.
    #[arg(long, value_delimiter = ',', default_value = "triggerfs,relay,nats")]
    pub systems: Vec<System>,
    /// A running NATS server for the `nats` baseline [default: one started for the run from
    /// `--nats-server`; without that binary, 127.0.0.1:4222].
    #[arg(long, value_name = "ADDR")]
    pub nats: Option<String>,
    /// The `nats-server` binary the `nats` baseline starts (on 127.0.0.1, a free port, no
    /// JetStream) [default: `nats-server` on the PATH].
    #[arg(long, value_name = "PATH")]
    pub nats_server: Option<PathBuf>,
    /// The `triggerfs` binary the broker and worker processes run [default: this one].
    #[arg(long, value_name = "PATH", hide = true)]
    pub triggerfs_bin: Option<PathBuf>,
}

impl CommonArgs {
    /// The binary of the broker and worker processes: `--triggerfs-bin`, else this one.
    pub(crate) fn triggerfs_bin(&self) -> anyhow::Result<PathBuf> {
        bin_or_this(&self.triggerfs_bin)
    }

    /// `shards` and `spin_us` of the broker started here (`null` with `--broker`).
    pub(crate) fn insert_broker_params(
        &self,
        params: &mut serde_json::Map<String, serde_json::Value>,
        shards: usize,
    ) {
        let own = self.broker.is_none();
        params.insert("shards".into(), serde_json::json!(own.then_some(shards)));
        let spin_us = self.spin.as_micros() as u64;
        params.insert("spin_us".into(), serde_json::json!(own.then_some(spin_us)));
    }
}

/// Flags of the modes that report on their own (`fs`, `soak`, `cell`).
#[derive(Args, Debug, Clone)]
pub struct OwnArgs {
    /// Print exactly one JSON document on stdout (the human-readable lines go to stderr).
    #[arg(long)]
    pub json: bool,
    /// The `triggerfs` binary the processes run [default: this one].
    #[arg(long, value_name = "PATH", hide = true)]
    pub triggerfs_bin: Option<PathBuf>,
}

impl OwnArgs {
    /// `--triggerfs-bin`, else this executable.
    pub(crate) fn bin(&self) -> anyhow::Result<PathBuf> {
        bin_or_this(&self.triggerfs_bin)
    }
}

/// `bin`, else this executable.
fn bin_or_this(bin: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match bin {
        Some(bin) => Ok(bin.clone()),
        None => {
            std::env::current_exe().map_err(|e| anyhow::anyhow!("cannot find this executable: {e}"))
        }
    }
}

/// Flags of `latency` and `throughput`.
#[derive(Args, Debug, Clone)]
pub struct LoadArgs {
    /// Flags every mode has.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Open loop: send R requests per second on a fixed schedule; latency counts from each
    /// request's scheduled send time. Without it the load is closed-loop (`--in-flight`).
    #[arg(long, value_name = "R")]
    pub rate: Option<f64>,
    /// Closed loop: K requests in flight at all times [latency: 1, throughput: 256]. With
    /// `--rate`, the cap on requests outstanding (default 10000).
    #[arg(long, value_name = "K")]
    pub in_flight: Option<usize>,
    /// Client connections per system; requests spread over them [latency: 1, throughput: 4].
    #[arg(long)]
    pub connections: Option<usize>,
    /// Echo worker processes (triggerfs) and NATS responders in a queue group [latency: 1,
    /// throughput: 2]. With `--broker`, the workers you started.
    #[arg(long)]
    pub workers: Option<usize>,
    /// Also measure `triggerfs-baseline`: a broker, workers and load process run from this
    /// other `triggerfs` binary (e.g. a build of the previous commit: the client library is
    /// part of what changes), in the same run and turns.
    #[arg(long, value_name = "PATH")]
    pub baseline_bin: Option<PathBuf>,
    /// Also measure triggerFS over TLS (row `triggerfs-tls`): a broker of its own with a
    /// development certificate, its workers and the load's connections over `tls://`, in the
    /// same run and turns as plaintext.
    #[arg(long)]
    pub tls: bool,
    /// `latency`: leave out the row `triggerfs-spin0` (the same broker with `--spin 0s`,
    /// measured beside the default spin when the broker started here spins).
    #[arg(long = "no-spin0", action = clap::ArgAction::SetFalse)]
    pub spin_zero_row: bool,
    /// Load applied before measuring, with the same shape.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub warmup: Duration,
    /// How long to measure (ignored with `--count`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Measure exactly N requests per system instead of a duration.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Measure in this many rounds, taking turns: every system measures one slice of the
    /// duration (or count) per round, so a change in the machine's speed during the run
    /// touches every system alike and the ratios hold still. The first round of each
    /// system warms up for `--warmup`, the later ones for a quarter of it.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// The service requests go to (with `--broker`, one your workers serve with `echo`).
    #[arg(long, default_value = "bench")]
    pub service: String,
    /// What triggerFS's workers run per request, one row each in the same run: `in-worker`
    /// (the core `echo`, inside the worker), `persistent` (the Python example `pyecho`,
    /// started once), `process` (a shell script per request),
    /// `append` (the core `append` into a file, checked line by line after the run).
    #[arg(long = "plugin", value_delimiter = ',', default_value = "in-worker")]
    pub plugins: Vec<PluginKind>,
}

/// Flags of `fanout`.
#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    /// Flags every mode has (`--systems` other than triggerfs are not measured here).
    #[command(flatten)]
    pub common: CommonArgs,
    /// Workers the mirror service fans out to. With `--broker`, the workers you started.
    #[arg(long, default_value_t = 1000)]
    pub workers: usize,
    /// Fan-out requests measured, one at a time.
    #[arg(long, default_value_t = 20)]
    pub count: u64,
    /// Processes the workers run in (`bench-child workers`, each one current-thread runtime
    /// with its share of the workers, as `triggerfs worker` runs), when the broker is
    /// started here.
    #[arg(long, default_value_t = 10)]
    pub worker_procs: usize,
    /// Instead: the workers as tasks of the bench's own runtime, beside its client (the
    /// arrangement of `fanout` until issue 30).
    #[arg(long, conflicts_with = "broker")]
    pub in_process_workers: bool,
    /// Fan-out requests sent before measuring.
    #[arg(long, default_value_t = 2)]
    pub warmup_rounds: u64,
    /// The mirror service (with `--broker`, one your workers announce).
    #[arg(long, default_value = "fan")]
    pub service: String,
    /// Instead: connect `--idle-workers` idle workers (always started here) and print the
    /// broker's RSS (the broker process started here, or `--broker` with `--broker-pid`).
    #[arg(long)]
    pub idle: bool,
    /// Idle workers to connect with `--idle`.
    #[arg(long, default_value_t = 10_000)]
    pub idle_workers: usize,
    /// With `--broker --idle`: the broker's process id, whose RSS is read from /proc.
    #[arg(long, value_name = "PID")]
    pub broker_pid: Option<u32>,
    /// Through a control plane: the same rounds, in turns, on a broker that records every
    /// request in the job history and on one started with `--no-job-records`; rows
    /// `triggerfs-jobs` and `triggerfs-nojobs` and the overhead of recording.
    #[arg(long, conflicts_with_all = ["idle", "broker"])]
    pub control: bool,
    /// With `--control`: both brokers without job records (rows `triggerfs-a` and
    /// `triggerfs-b`), everything else the same: the difference the pairing shows when there
    /// is none, i.e. the noise floor of the `--control` figures on this machine.
    #[arg(long, requires = "control")]
    pub noise_floor: bool,
}

/// A system under measurement.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// triggerFS: client → broker → worker (its built-in echo) → broker → client.
    Triggerfs,
    /// The minimal TCP relay baseline.
    Relay,
    /// NATS request/reply.
    Nats,
}

impl System {
    /// The name used in tables, JSON and file names.
    pub fn name(self) -> &'static str {
        match self {
            System::Triggerfs => "triggerfs",
            System::Relay => "relay",
            System::Nats => "nats",
        }
    }
}

/// Runs a benchmark, prints its results and writes its files. Must be called inside a tokio
/// runtime with the multi-thread scheduler (`fanout`'s workers are tasks of it), from the
/// thread that blocks on it: the child processes are started from that thread, and they are
/// killed when it ends.
///
/// Returns the exit status: 0 when every request was answered correctly, 1 otherwise.
pub async fn run(args: BenchArgs) -> anyhow::Result<i32> {
    let json = match &args.mode {
        Mode::Fs(fs) => return fsbench::run(fs).await,
        Mode::Soak(soak) => return soak::run(soak).await,
        Mode::Latency(l) | Mode::Throughput(l) => l.common.json,
        Mode::Fanout(f) => f.common.json,
        Mode::Cell(c) => c.own.json,
    };
    let mut notes = Notes::new(json);
    let mut report = measure(&args, &mut notes).await?;
    report.write_files()?;
    report.print_text(notes.out())?;
    if json {
        let doc = serde_json::to_string_pretty(&report.json())?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{doc}")?;
        stdout.flush()?;
    }
    Ok(if report.all_ok() { 0 } else { 1 })
}

/// Runs a benchmark and returns its report without printing it or writing files; `run` is
/// this plus output. Progress notes (e.g. "nats: skipped") go to `notes`.
pub async fn measure(args: &BenchArgs, notes: &mut Notes) -> anyhow::Result<Report> {
    match &args.mode {
        Mode::Latency(load) => systems::measure_mode("latency", load, notes).await,
        Mode::Throughput(load) => systems::measure_mode("throughput", load, notes).await,
        Mode::Fanout(fan) => fanout::measure(fan, notes).await,
        Mode::Cell(cell) => cell::measure(cell, notes).await,
        Mode::Fs(_) => anyhow::bail!("`bench fs` reports in a table of its own (fsbench::run)"),
        Mode::Soak(_) => anyhow::bail!("`bench soak` reports on its own (soak::run)"),
    }
}

/// Where human-readable lines go: stdout normally, stderr with `--json` (stdout then holds
/// only the JSON document), nowhere when quiet (tests).
pub struct Notes {
    sink: Box<dyn Write + Send>,
    progress: bool,
}

impl Notes {
    /// stdout, or stderr when `json`.
    pub fn new(json: bool) -> Notes {
        use std::io::IsTerminal;
        let sink: Box<dyn Write + Send> = if json {
            Box::new(std::io::stderr())
        } else {
            Box::new(std::io::stdout())
        };
        Notes {
            sink,
            progress: std::io::stderr().is_terminal(),
        }
    }

    /// Discards everything and shows no progress (for tests).
    pub fn quiet() -> Notes {
        Notes {
            sink: Box::new(std::io::sink()),
            progress: false,
        }
    }

    /// Prints one line.
    pub fn line(&mut self, text: impl std::fmt::Display) {
        let _ = writeln!(self.sink, "{text}");
        let _ = self.sink.flush();
    }

    /// Whether to draw progress bars (only when stderr is a terminal).
    pub fn progress(&self) -> bool {
        self.progress
    }

    fn out(&mut self) -> &mut (dyn Write + Send) {
        &mut *self.sink
    }
}
