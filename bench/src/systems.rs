//! `bench latency` and `bench throughput`: every system in processes of its own, each
//! driven by a load process of the same shape (`load.rs`), all started first and then
//! measured in turns.
//!
//! - `triggerfs` (and `triggerfs-baseline` with `--baseline-bin`): a `triggerfs broker`
//!   process (no control plane, the service from its own config file) and `--workers`
//!   `triggerfs worker` processes answering `echo` themselves; or `--broker ADDR`.
//! - `relay`: `bench-child relay` in front of `bench-child echo`.
//! - `nats`: a `bench-child nats-responders` process per responder, against a `nats-server`
//!   started for the run (or the one at `--nats`).

use crate::cpu::{Sample, Watched};
use crate::load::{LoadProc, Shape, Stop};
use crate::proc::{command, drain, start_triggerfs, Spawned, TriggerfsProcs, TriggerfsSetup};
use crate::report::{Report, SystemResult};
use crate::{LoadArgs, Notes, PluginKind, System};
use anyhow::Context;
use serde_json::{json, Map};
use std::path::Path;

/// One system, started: what serves it and its load process.
struct Started {
    load: LoadProc,
    /// The processes that serve it, whose CPU time is read while it is measured.
    watched: Vec<Watched>,
    /// `append`'s file, checked after the run.
    append_file: Option<std::path::PathBuf>,
    /// The broker and workers (`triggerfs`).
    _triggerfs: Option<TriggerfsProcs>,
    /// Server processes (baselines).
    _servers: Vec<Spawned>,
}

impl Started {
    fn new(load: LoadProc) -> Started {
        Started {
            load,
            watched: Vec::new(),
            append_file: None,
            _triggerfs: None,
            _servers: Vec::new(),
        }
    }
}

/// Resolved parameters of `latency` / `throughput`: the shape, connections, shards and
/// workers.
fn shape_of(mode: &str, args: &LoadArgs) -> (Shape, usize, usize, usize) {
    let throughput = mode == "throughput";
    let in_flight = args.in_flight.unwrap_or(if throughput { 256 } else { 1 });
    let connections = args
        .connections
        .unwrap_or(if throughput { 4 } else { 1 })
        .max(1);
    let shards = args
        .common
        .shards
        .unwrap_or(if throughput { 2 } else { 1 })
        .max(1);
    let workers = args
        .workers
        .unwrap_or(if throughput { 2 } else { 1 })
        .max(1);
    let shape = Shape {
        rate: args.rate,
        in_flight,
        warmup: args.warmup,
        stop: args.count.map_or(Stop::After(args.duration), Stop::Count),
        payload: args.common.payload,
    };
    (shape, connections, shards, workers)
}

/// What every system's start needs.
struct Plan<'a> {
    args: &'a LoadArgs,
    /// This binary: the `bench-child` roles.
    exe: &'a Path,
    connections: usize,
    shards: usize,
    workers: usize,
}

impl Plan<'_> {
    /// The flags of every load process.
    fn load_args(&self, system: System, addr: &str, target: &str) -> Vec<String> {
        let mut words = vec!["--system".to_string(), system.name().into()];
        words.extend(["--addr".into(), addr.to_string()]);
        words.extend(["--connections".into(), self.connections.to_string()]);
        words.extend(["--target".into(), target.to_string()]);
        words
    }

    /// triggerFS from `bin` (or the running `--broker`): one broker and its workers, and a
    /// load process (a row) per plugin kind in `kinds`, all run from `bin`; `name` replaces
    /// the first kind's row name (the baseline).
    async fn triggerfs(
        &self,
        name: Option<&'static str>,
        bin: &Path,
        kinds: &[PluginKind],
        tls: Option<&tls::DevFiles>,
        spin: std::time::Duration,
    ) -> anyhow::Result<Vec<Started>> {
        let service = &self.args.service;
        let mut words;
        let procs = match &self.args.common.broker {
            Some(addr) => {
                words = self.load_args(System::Triggerfs, addr, service);
                words.extend(["--ready".into(), service.clone()]);
                None
            }
            None => {
                let prefix = "bench-w";
                let procs = start_triggerfs(&TriggerfsSetup {
                    bin,
                    shards: self.shards,
                    spin,
                    service,
                    algorithm: "roundrobin",
                    workers: self.workers,
                    prefix,
                    tls,
                })
                .await?;
                words = self.load_args(System::Triggerfs, &procs.addr, service);
                if let Some(files) = tls {
                    // `--ca` is the binary's global flag: the load process's trust.
                    words.extend(["--ca".into(), files.ca.display().to_string()]);
                }
                // Each worker is also a service of its own name: ask each one, so that the
                // measurement starts with all of them online.
                for i in 0..self.workers {
                    words.extend(["--ready".into(), format!("{prefix}{i}")]);
                }
                Some(procs)
            }
        };
        // The broker first, then the workers (`start_triggerfs`'s order).
        let watched: Vec<Watched> = procs
            .iter()
            .flat_map(|p| p.procs.iter().enumerate())
            .filter_map(|(i, proc)| {
                let name = match i {
                    0 => "broker".to_string(),
                    i => format!("worker{}", i - 1),
                };
                Watched::server(name, proc.pid())
            })
            .collect();
        let mut started = Vec::with_capacity(kinds.len());
        for (i, kind) in kinds.iter().enumerate() {
            let mut words = words.clone();
            words.extend(["--kind".into(), kind_arg(*kind)]);
            let append_file = match (kind, &procs) {
                (PluginKind::Append, Some(procs)) => Some(procs.append_file()),
                (PluginKind::Append, None) => {
                    anyhow::bail!(
                        "--plugin append writes a file of the broker's workers: leave out --broker"
                    )
                }
                _ => None,
            };
            if let Some(path) = &append_file {
                words.extend(["--append-file".into(), path.display().to_string()]);
            }
            let row = match name {
                Some(name) if i == 0 => name,
                _ => kind.row(),
            };
            // The load process too is `bin`'s: its client library speaks `bin`'s protocol.
            let load = LoadProc::start(bin, row, words).await?;
            started.push(Started {
                append_file,
                watched: watched.clone(),
                ..Started::new(load)
            });
        }
        // The processes live as long as the first row.
        if let Some(first) = started.first_mut() {
            first._triggerfs = procs;
        }
        Ok(started)
    }

    async fn relay(&self) -> anyhow::Result<Started> {
        let (echo, echo_addr) =
            Spawned::listening("echo server", command(self.exe, ["bench-child", "echo"])).await?;
        let threads = self.shards.to_string();
        let relay_args = [
            "bench-child",
            "relay",
            "--upstream",
            &echo_addr,
            "--threads",
            &threads,
        ];
        let (relay, relay_addr) =
            Spawned::listening("relay", command(self.exe, relay_args)).await?;
        let words = self.load_args(System::Relay, &relay_addr, "");
        let load = LoadProc::start(self.exe, "relay", words).await?;
        let watched = [("relay", &relay), ("echo", &echo)]
            .into_iter()
            .filter_map(|(name, proc)| Watched::server(name, proc.pid()))
            .collect();
        Ok(Started {
            watched,
            _servers: vec![echo, relay],
            ..Started::new(load)
        })
    }

    /// `None` when no NATS server answers. A NATS server of its own (`nats-server` on the
    /// PATH, as its users would start one) unless `--nats` names a running one; responders
    /// in processes of their own, one connection and one current-thread runtime each, as
    /// `triggerfs worker` runs.
    async fn nats(&self) -> anyhow::Result<Option<Started>> {
        let common = &self.args.common;
        let mut servers = Vec::new();
        let mut watched = Vec::new();
        let server = match (&common.nats, crate::nats::server_binary(common)) {
            (None, Some(bin)) => {
                let (proc, addr) = crate::nats::start_server(&bin).await?;
                watched.extend(Watched::server("nats-server", proc.pid()));
                servers.push(proc);
                addr
            }
            (named, _) => {
                let addr = named
                    .clone()
                    .unwrap_or_else(|| crate::nats::DEFAULT_ADDR.into());
                watched.extend(Watched::server(
                    "nats-server",
                    crate::cpu::listener_pid(&addr),
                ));
                addr
            }
        };
        // A subject of our own, so that two benchmarks on one server do not answer each other.
        let subject = format!("triggerfs.bench.{}", rand::random::<u64>());
        for i in 0..self.workers {
            let words = [
                "bench-child",
                "nats-responders",
                "--nats",
                &server,
                "--subject",
                &subject,
                "--responders",
                "1",
            ];
            let (proc, status, lines) =
                Spawned::start_until("nats responder", command(self.exe, words), "").await?;
            if status == crate::nats::SKIP {
                return Ok(None);
            }
            drain(lines);
            watched.extend(Watched::server(format!("responder{i}"), proc.pid()));
            servers.push(proc);
        }
        let words = self.load_args(System::Nats, &server, &subject);
        let load = LoadProc::start(self.exe, "nats", words).await?;
        Ok(Some(Started {
            watched,
            _servers: servers,
            ..Started::new(load)
        }))
    }
}

/// The parameters printed with the results.
fn params(
    args: &LoadArgs,
    shape: &Shape,
    connections: usize,
    shards: usize,
    workers: usize,
    rounds: u64,
) -> Map<String, serde_json::Value> {
    let common = &args.common;
    let mut params = Map::new();
    params.insert("payload".into(), json!(shape.payload));
    let load = if shape.rate.is_some() {
        "open"
    } else {
        "closed"
    };
    params.insert("load".into(), json!(load));
    params.insert("rate".into(), json!(shape.rate));
    params.insert("in_flight".into(), json!(shape.in_flight));
    params.insert("connections".into(), json!(connections));
    params.insert("tls".into(), json!(args.tls));
    common.insert_broker_params(&mut params, shards);
    params.insert("workers".into(), json!(workers));
    params.insert("warmup_s".into(), json!(shape.warmup.as_secs_f64()));
    match shape.stop {
        Stop::After(d) => {
            params.insert("duration_s".into(), json!(d.as_secs_f64()));
            params.insert("count".into(), json!(null));
        }
        Stop::Count(n) => {
            params.insert("duration_s".into(), json!(null));
            params.insert("count".into(), json!(n));
        }
    }
    params.insert("broker".into(), json!(common.broker));
    params.insert("systems".into(), json!(common.systems));
    let mut kinds = args.plugins.clone();
    kinds.sort();
    kinds.dedup();
    params.insert("plugins".into(), json!(kinds));
    params.insert("rounds".into(), json!(rounds));
    params.insert("process_per_system".into(), json!(true));
    if let Some(bin) = &args.baseline_bin {
        params.insert("baseline_bin".into(), json!(bin.display().to_string()));
    }
    params
}

/// `bench latency` and `bench throughput`: every chosen system under the same load.
///
/// Call it on the thread that runs the bench (see `proc::command`).
pub(crate) async fn measure_mode(
    mode: &'static str,
    args: &LoadArgs,
    notes: &mut Notes,
) -> anyhow::Result<Report> {
    let (shape, connections, shards, workers) = shape_of(mode, args);
    let common = &args.common;
    if args.baseline_bin.is_some() && common.broker.is_some() {
        anyhow::bail!("--baseline-bin starts brokers of its own: leave out --broker");
    }
    if args.tls && common.broker.is_some() {
        anyhow::bail!("--tls starts a broker of its own: leave out --broker");
    }
    let rounds = match shape.stop {
        Stop::Count(n) => u64::from(args.rounds).min(n.max(1)),
        Stop::After(_) => u64::from(args.rounds),
    };
    let params = params(args, &shape, connections, shards, workers, rounds);
    let mut report = Report::new(mode, params, common.out.clone());
    let mut order = common.systems.clone();
    // triggerfs first so that ratios read naturally in the table.
    order.sort_by_key(|s| *s as u8);
    order.dedup();

    let exe =
        std::env::current_exe().map_err(|e| anyhow::anyhow!("cannot find this executable: {e}"))?;
    let triggerfs_bin = common.triggerfs_bin()?;
    let plan = Plan {
        args,
        exe: &exe,
        connections,
        shards,
        workers,
    };
    // Everything is started first and stays up, so that the systems can take turns. What
    // was started is killed when `started` drops, on success or error alike.
    let mut started: Vec<Started> = Vec::new();
    // A development CA and a certificate for 127.0.0.1, as `triggerfs up --tls` makes them.
    let tls_files = match args.tls {
        true => {
            let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
            let files = tls::dev_files(dir.path(), &["127.0.0.1".to_string()])?;
            Some((dir, files))
        }
        false => None,
    };
    for system in order {
        match system {
            System::Triggerfs => {
                let mut kinds = args.plugins.clone();
                kinds.sort();
                kinds.dedup();
                let spin = common.spin;
                let tfs = plan.triggerfs(None, &triggerfs_bin, &kinds, None, spin);
                started.extend(tfs.await?);
                if let Some(baseline) = &args.baseline_bin {
                    let kinds = [PluginKind::InWorker];
                    let name = Some("triggerfs-baseline");
                    let tfs = plan.triggerfs(name, baseline, &kinds, None, spin);
                    started.extend(tfs.await?);
                }
                if spin0_row(mode, args) {
                    // The spin buys latency with CPU no other system spends: the same
                    // broker without it, in the same turns.
                    let kinds = [PluginKind::InWorker];
                    let name = Some("triggerfs-spin0");
                    let zero = std::time::Duration::ZERO;
                    let tfs = plan.triggerfs(name, &triggerfs_bin, &kinds, None, zero);
                    started.extend(tfs.await?);
                }
                if let Some(files) = &tls_files {
                    let kinds = [PluginKind::InWorker];
                    let name = Some("triggerfs-tls");
                    let tls = Some(&files.1);
                    let tfs = plan.triggerfs(name, &triggerfs_bin, &kinds, tls, spin);
                    started.extend(tfs.await?);
                }
            }
            System::Relay => started.push(plan.relay().await?),
            System::Nats => match plan.nats().await? {
                Some(nats) => started.push(nats),
                None => {
                    let addr = common.nats.as_deref().unwrap_or(crate::nats::DEFAULT_ADDR);
                    let line = format!("nats: skipped (no server on {addr})");
                    report.skipped.push(line);
                }
            },
        }
    }

    let mut turns: Vec<Turn> = started
        .iter_mut()
        .map(|s| Turn {
            load: &mut s.load,
            watched: &s.watched,
        })
        .collect();
    let results = in_turns(&mut turns, &shape, rounds, notes.progress()).await?;
    // Every line `append` was sent is in its file once.
    for system in &started {
        if let Some(path) = &system.append_file {
            let lines = crate::triggerfs::check_appended(path)?;
            report
                .params
                .insert("append_lines_checked".into(), json!(lines));
        }
    }
    drop(started);
    report.systems.extend(results);
    Ok(report)
}

/// A load process and the processes whose CPU time its turns count.
pub(crate) struct Turn<'a> {
    pub load: &'a mut LoadProc,
    pub watched: &'a [Watched],
}

/// Measures `shape` in `rounds` rounds, taking turns: in each round every one of `turns`
/// measures one slice (`Shape::slice`); each one's slices merged, in the order of `turns`.
pub(crate) async fn in_turns(
    turns: &mut [Turn<'_>],
    shape: &Shape,
    rounds: u64,
    progress: bool,
) -> anyhow::Result<Vec<SystemResult>> {
    let mut results: Vec<Option<SystemResult>> = turns.iter().map(|_| None).collect();
    for round in 0..rounds {
        let slice = shape.slice(round, rounds);
        for (turn, result) in turns.iter_mut().zip(results.iter_mut()) {
            let measured = measure_turn(turn, &slice, progress).await?;
            *result = Some(match result.take() {
                Some(so_far) => so_far.merge(measured),
                None => measured,
            });
        }
    }
    Ok(results.into_iter().flatten().collect())
}

/// One turn: the slice measured by its load process, and the CPU time every one of its
/// processes spent from the end of the warm-up to the answer.
async fn measure_turn(
    turn: &mut Turn<'_>,
    slice: &Shape,
    progress: bool,
) -> anyhow::Result<SystemResult> {
    let mut watched = turn.watched.to_vec();
    watched.extend(turn.load.pid().map(|pid| Watched {
        name: "load".into(),
        pid,
        server: false,
    }));
    turn.load.start_run(slice, progress).await?;
    tokio::time::sleep(slice.warmup).await;
    let before = Sample::take(&watched);
    let mut measured = turn.load.finish_run().await?;
    measured.cpu = Some(before.until(&Sample::take(&watched)));
    Ok(measured)
}

/// Whether `latency` also measures the broker with `--spin 0s` (row `triggerfs-spin0`):
/// when the broker started here spins.
fn spin0_row(mode: &str, args: &LoadArgs) -> bool {
    mode == "latency"
        && !args.common.spin.is_zero()
        && args.common.broker.is_none()
        && args.spin_zero_row
}

/// `--kind` of a load process.
fn kind_arg(kind: PluginKind) -> String {
    use clap::ValueEnum;
    kind.to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}
