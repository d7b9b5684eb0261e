//! A benchmark's results and every way they are shown: the aligned table, the JSON document
//! (stable names, see README.md), `.hgrm` percentile files, the SVG latency-percentile chart,
//! and the machine and commit printed with every result.

use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, CellAlignment, Table};
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cpu::CpuFigures;

/// Latencies are recorded in nanoseconds: loopback round trips are tens of microseconds, so
/// microsecond buckets would lose the difference between the systems.
pub(crate) const NANOS_PER_US: f64 = 1_000.0;

/// A histogram of latencies in nanoseconds, from 1 ns to 5 minutes, 3 significant digits
/// (0.1 % error): anything slower than 5 minutes is clamped, and is a failure anyway.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 300_000_000_000, 3).expect("static histogram bounds are valid")
}

/// One system's measurement.
#[derive(Debug, Clone)]
pub struct SystemResult {
    /// `triggerfs`, `relay` or `nats`.
    pub name: &'static str,
    /// Latency of every correctly answered request, in nanoseconds.
    pub hist: Histogram<u64>,
    /// Requests sent while measuring.
    pub sent: u64,
    /// Correct answers to them.
    pub received: u64,
    /// Failed, wrong or timed-out answers.
    pub errors: u64,
    /// The measuring window (first scheduled send to last answer), summed over rounds.
    pub elapsed: Duration,
    /// Fan-out figures (fanout mode, triggerfs only).
    pub fanout: Option<FanoutFigures>,
    /// CPU each of its processes spent while it was measured (`latency`, `throughput`).
    pub cpu: Option<CpuFigures>,
}

/// A system's CPU µs per answered request.
struct CpuPerRequest<'a> {
    /// By process name.
    by_process: Vec<(&'a str, f64)>,
    /// Every process but the load.
    server: f64,
    /// Every process.
    total: f64,
}

/// What a mirror fan-out round measured, over all rounds.
#[derive(Debug, Clone)]
pub struct FanoutFigures {
    /// Time from sending the request to the first `Done`, nanoseconds, one value per round.
    pub first_done: Histogram<u64>,
    /// Workers each round was expected to reach.
    pub workers: u64,
    /// The smallest number of workers that answered `Done` with exit 0 in any round.
    pub ok: u64,
    /// Each complete round's time to the last `Done`, in the order they ran.
    pub rounds: Vec<Duration>,
}

/// `fanout --idle`: memory with many idle workers connected.
#[derive(Debug, Clone)]
pub struct IdleFigures {
    /// Idle workers connected (and seen online by the broker).
    pub workers: u64,
    /// RSS in KiB once they were connected.
    pub rss_kib: u64,
    /// RSS in KiB before they connected (same source).
    pub rss_before_kib: Option<u64>,
    /// Where the figure comes from (process id, and whether in-process workers are included).
    pub source: String,
}

/// The machine a result was measured on.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    /// From /proc/cpuinfo `model name`.
    pub cpu: String,
    /// Cores available to this process.
    pub cores: usize,
    /// /proc/sys/kernel/osrelease.
    pub kernel: String,
    /// `git rev-parse --short HEAD`, or "unknown".
    pub commit: String,
}

impl Machine {
    /// Reads the machine's description; fields that cannot be read are "unknown".
    pub fn detect() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| k.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let commit = std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel,
            commit,
        }
    }
}

/// Everything one benchmark run produced.
#[derive(Debug, Clone)]
pub struct Report {
    /// `latency`, `throughput`, `fanout` or `cell`.
    pub mode: &'static str,
    /// The parameters as they were used (defaults resolved).
    pub params: Map<String, Value>,
    /// Where it ran.
    pub machine: Machine,
    /// One entry per measured system, triggerfs first.
    pub systems: Vec<SystemResult>,
    /// `fanout --idle` only.
    pub idle: Option<IdleFigures>,
    /// Sections of a mode's own (`cell`: `idle_nodes`, `failover`), added to the JSON
    /// document as they are.
    pub sections: Map<String, Value>,
    /// What went wrong besides the systems' errors (`cell`: a request lost at a kill); the
    /// run fails when there is any.
    pub problems: Vec<String>,
    /// Lines explaining what was not measured (e.g. "nats: skipped (...)").
    pub skipped: Vec<String>,
    /// Where files go.
    pub out_dir: PathBuf,
    /// Files written by [`Report::write_files`].
    pub files: Vec<PathBuf>,
}

fn us(nanos: u64) -> f64 {
    nanos as f64 / NANOS_PER_US
}

/// Rounds to 0.1 µs so the JSON does not carry float noise.
fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl SystemResult {
    fn quantile_us(&self, q: f64) -> Option<f64> {
        (!self.hist.is_empty()).then(|| round1(us(self.hist.value_at_quantile(q))))
    }

    /// Median latency in µs (`None` when nothing was answered).
    pub fn p50_us(&self) -> Option<f64> {
        self.quantile_us(0.5)
    }

    /// p99.9 latency in µs.
    pub fn p999_us(&self) -> Option<f64> {
        self.quantile_us(0.999)
    }

    /// This result and a later slice of the same system's measurement, as one.
    pub fn merge(mut self, other: SystemResult) -> SystemResult {
        self.hist
            .add(&other.hist)
            .expect("latency histograms share their bounds");
        self.sent += other.sent;
        self.received += other.received;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.cpu = match (self.cpu.take(), other.cpu) {
            (Some(mut mine), Some(theirs)) => {
                mine.merge(theirs);
                Some(mine)
            }
            (mine, theirs) => mine.or(theirs),
        };
        self
    }

    /// CPU µs per answered request: every process's, the server side's, and the total.
    fn cpu_per_request(&self) -> Option<CpuPerRequest<'_>> {
        let cpu = self.cpu.as_ref()?;
        if self.received == 0 {
            return None;
        }
        let per = |ns: u64| (ns as f64 / self.received as f64 / 1e3 * 100.0).round() / 100.0;
        Some(CpuPerRequest {
            by_process: cpu
                .by_process
                .iter()
                .map(|(name, (_, ns))| (name.as_str(), per(*ns)))
                .collect(),
            server: per(cpu.server_ns()),
            total: per(cpu.total_ns()),
        })
    }

    /// The server side's CPU µs per request (broker and workers; server and responders).
    pub fn server_cpu_us(&self) -> Option<f64> {
        self.cpu_per_request().map(|c| c.server)
    }

    /// Every process's CPU µs per request, the load process's included.
    pub fn total_cpu_us(&self) -> Option<f64> {
        self.cpu_per_request().map(|c| c.total)
    }

    /// Correct answers per second of the measuring window.
    pub fn rps(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            (self.received as f64 / secs).round()
        } else {
            0.0
        }
    }

    fn max_us(&self) -> Option<f64> {
        (!self.hist.is_empty()).then(|| round1(us(self.hist.max())))
    }

    fn mean_us(&self) -> Option<f64> {
        (!self.hist.is_empty()).then(|| round1(self.hist.mean() / NANOS_PER_US))
    }

    fn json(&self) -> Value {
        let mut entry = json!({
            "name": self.name,
            "p50_us": self.p50_us(),
            "p90_us": self.quantile_us(0.9),
            "p99_us": self.quantile_us(0.99),
            "p999_us": self.p999_us(),
            "max_us": self.max_us(),
            "mean_us": self.mean_us(),
            "rps": self.rps(),
            "sent": self.sent,
            "received": self.received,
            "errors": self.errors,
        });
        if let (Some(cpu), Value::Object(map)) = (self.cpu_per_request(), &mut entry) {
            let by: Map<String, Value> = cpu
                .by_process
                .iter()
                .map(|(name, us)| (name.to_string(), json!(us)))
                .collect();
            map.insert("cpu_us_per_req".into(), Value::Object(by));
            map.insert("server_cpu_us_per_req".into(), json!(cpu.server));
            map.insert("total_cpu_us_per_req".into(), json!(cpu.total));
            if let Some(cpu) = &self.cpu {
                map.insert("cpu_unreadable".into(), json!(cpu.unreadable));
            }
        }
        if let (Some(fan), Value::Object(map)) = (&self.fanout, &mut entry) {
            let ms = |h: &Histogram<u64>, q: f64| {
                (!h.is_empty()).then(|| (h.value_at_quantile(q) as f64 / 1e4).round() / 100.0)
            };
            map.insert("first_done_ms".into(), json!(ms(&fan.first_done, 0.5)));
            map.insert("last_done_ms".into(), json!(ms(&self.hist, 0.5)));
            map.insert("last_done_max_ms".into(), json!(ms(&self.hist, 1.0)));
            map.insert("workers".into(), json!(fan.workers));
            map.insert("ok".into(), json!(fan.ok));
            let rounds: Vec<f64> = fan.rounds.iter().map(|d| round_ms(*d)).collect();
            map.insert("last_done_rounds_ms".into(), json!(rounds));
        }
        entry
    }
}

impl Report {
    /// A report with no results yet.
    pub(crate) fn new(mode: &'static str, params: Map<String, Value>, out_dir: PathBuf) -> Report {
        Report {
            mode,
            params,
            machine: crate::Machine::detect(),
            systems: Vec::new(),
            idle: None,
            sections: Map::new(),
            problems: Vec::new(),
            skipped: Vec::new(),
            out_dir,
            files: Vec::new(),
        }
    }

    fn system(&self, name: &str) -> Option<&SystemResult> {
        self.systems.iter().find(|s| s.name == name)
    }

    /// ours / theirs for a latency figure, or ours / theirs for req/s.
    fn ratio(&self, theirs: &str, figure: fn(&SystemResult) -> Option<f64>) -> Option<f64> {
        self.ratio_of("triggerfs", theirs, figure)
    }

    /// `ours` / `theirs` for a figure of two systems.
    fn ratio_of(
        &self,
        ours: &str,
        theirs: &str,
        figure: fn(&SystemResult) -> Option<f64>,
    ) -> Option<f64> {
        let ours = figure(self.system(ours)?)?;
        let theirs = figure(self.system(theirs)?)?;
        (theirs > 0.0).then(|| (ours / theirs * 1000.0).round() / 1000.0)
    }

    fn ratios(&self) -> Map<String, Value> {
        let p50 = |s: &SystemResult| s.p50_us();
        let p999 = |s: &SystemResult| s.p999_us();
        let rps = |s: &SystemResult| Some(s.rps());
        let mut map = Map::new();
        map.insert("p50_vs_relay".into(), json!(self.ratio("relay", p50)));
        map.insert("p999_vs_relay".into(), json!(self.ratio("relay", p999)));
        map.insert("p50_vs_nats".into(), json!(self.ratio("nats", p50)));
        map.insert("rps_vs_nats".into(), json!(self.ratio("nats", rps)));
        map.insert("rps_vs_relay".into(), json!(self.ratio("relay", rps)));
        let server = |s: &SystemResult| s.server_cpu_us();
        let total = |s: &SystemResult| s.total_cpu_us();
        map.insert(
            "server_cpu_vs_nats".into(),
            json!(self.ratio("nats", server)),
        );
        map.insert(
            "server_cpu_vs_relay".into(),
            json!(self.ratio("relay", server)),
        );
        map.insert("total_cpu_vs_nats".into(), json!(self.ratio("nats", total)));
        // Latency without the broker's spin (`latency` mode): against NATS, which has no spin.
        let spin0 = "triggerfs-spin0";
        map.insert(
            "p50_spin0_vs_nats".into(),
            json!(self.ratio_of(spin0, "nats", p50)),
        );
        map.insert(
            "p50_spin0_vs_relay".into(),
            json!(self.ratio_of(spin0, "relay", p50)),
        );
        map
    }

    /// Whether every request sent was answered correctly (and every fan-out reached all
    /// workers).
    pub fn all_ok(&self) -> bool {
        self.problems.is_empty()
            && self.systems.iter().all(|s| {
                s.errors == 0
                    && s.received == s.sent
                    && s.fanout.as_ref().is_none_or(|f| f.ok == f.workers)
            })
    }

    /// The one JSON document `--json` prints. Names are stable; see README.md.
    pub fn json(&self) -> Value {
        let mut params = self.params.clone();
        params.insert("mode".into(), json!(self.mode));
        let mut doc = json!({
            "params": params,
            "machine": self.machine,
            "systems": self.systems.iter().map(SystemResult::json).collect::<Vec<_>>(),
            "ratios": self.ratios(),
        });
        if let (Some(idle), Value::Object(map)) = (&self.idle, &mut doc) {
            map.insert(
                "idle".into(),
                json!({
                    "workers": idle.workers,
                    "rss_kib": idle.rss_kib,
                    "rss_mib": (idle.rss_kib as f64 / 1024.0 * 10.0).round() / 10.0,
                    "rss_before_kib": idle.rss_before_kib,
                    "source": idle.source,
                }),
            );
        }
        if let Value::Object(map) = &mut doc {
            map.extend(self.sections.clone());
        }
        doc
    }

    /// Machine, commit, parameters, the table, the ratios and the files written.
    pub fn print_text(&self, out: &mut dyn Write) -> anyhow::Result<()> {
        let m = &self.machine;
        writeln!(out, "mode:    {}", self.mode)?;
        writeln!(
            out,
            "machine: {} ({} cores), kernel {}",
            m.cpu, m.cores, m.kernel
        )?;
        writeln!(out, "commit:  {}", m.commit)?;
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect();
        writeln!(out, "params:  {}", params.join(" "))?;
        for line in self.skipped.iter().chain(&self.problems) {
            writeln!(out, "{line}")?;
        }
        if !self.systems.is_empty() {
            writeln!(out, "{}", self.table())?;
            let ratios = self.ratios();
            let shown: Vec<String> = ratios
                .iter()
                .filter_map(|(k, v)| v.as_f64().map(|x| format!("{k} {x:.3}")))
                .collect();
            if !shown.is_empty() {
                writeln!(out, "ratios (triggerfs / baseline): {}", shown.join(", "))?;
            }
            for s in &self.systems {
                if let Some(cpu) = s.cpu_per_request() {
                    let each: Vec<String> = cpu
                        .by_process
                        .iter()
                        .map(|(name, us)| format!("{name} {us:.2}"))
                        .collect();
                    writeln!(
                        out,
                        "CPU µs per request, {}: {} (server side {:.2}, all {:.2})",
                        s.name,
                        each.join(", "),
                        cpu.server,
                        cpu.total
                    )?;
                }
            }
        }
        for s in &self.systems {
            if let Some(fan) = &s.fanout {
                let ms = |n: u64| n as f64 / 1e6;
                if !s.hist.is_empty() {
                    writeln!(
                        out,
                        "fanout ({}): {} workers, {} rounds: first Done p50 {:.2} ms, last Done p50 {:.2} ms, max {:.2} ms; fewest ok in a round {}/{}",
                        s.name,
                        fan.workers,
                        s.received + s.errors,
                        ms(fan.first_done.value_at_quantile(0.5)),
                        ms(s.hist.value_at_quantile(0.5)),
                        ms(s.hist.max()),
                        fan.ok,
                        fan.workers
                    )?;
                    let rounds: Vec<String> = fan
                        .rounds
                        .iter()
                        .map(|d| format!("{:.2}", round_ms(*d)))
                        .collect();
                    writeln!(
                        out,
                        "fanout ({}): last Done per round, in order (ms): {}",
                        s.name,
                        rounds.join(" ")
                    )?;
                }
            }
        }
        if let Some(idle) = &self.idle {
            writeln!(
                out,
                "idle: {} workers connected, RSS {:.1} MiB{} ({})",
                idle.workers,
                idle.rss_kib as f64 / 1024.0,
                idle.rss_before_kib
                    .map(|b| format!(", {:.1} MiB before they connected", b as f64 / 1024.0))
                    .unwrap_or_default(),
                idle.source
            )?;
        }
        for f in &self.files {
            writeln!(out, "wrote {}", f.display())?;
        }
        Ok(())
    }

    fn table(&self) -> Table {
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED);
        table.set_header(vec![
            "system",
            "p50 µs",
            "p90 µs",
            "p99 µs",
            "p99.9 µs",
            "max µs",
            "mean µs",
            "req/s",
            "sent",
            "received",
            "errors",
            "server CPU µs/req",
            "all CPU µs/req",
        ]);
        let fmt = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |x| format!("{x:.1}"));
        let fmt2 = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |x| format!("{x:.2}"));
        for s in &self.systems {
            table.add_row(vec![
                s.name.to_string(),
                fmt(s.p50_us()),
                fmt(s.quantile_us(0.9)),
                fmt(s.quantile_us(0.99)),
                fmt(s.p999_us()),
                fmt(s.max_us()),
                fmt(s.mean_us()),
                format!("{:.0}", s.rps()),
                s.sent.to_string(),
                s.received.to_string(),
                s.errors.to_string(),
                fmt2(s.server_cpu_us()),
                fmt2(s.total_cpu_us()),
            ]);
        }
        for col in table.column_iter_mut().skip(1) {
            col.set_cell_alignment(CellAlignment::Right);
        }
        table
    }

    /// Writes `<mode>-<system>.hgrm` per system and `<mode>-latency.svg` into the out dir.
    pub fn write_files(&mut self) -> anyhow::Result<()> {
        let measured: Vec<&SystemResult> =
            self.systems.iter().filter(|s| !s.hist.is_empty()).collect();
        if measured.is_empty() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.out_dir)
            .with_context(|| format!("cannot create {}", self.out_dir.display()))?;
        let mut files = Vec::new();
        for s in &measured {
            let path = self.out_dir.join(format!("{}-{}.hgrm", self.mode, s.name));
            std::fs::write(&path, hgrm(&s.hist))
                .with_context(|| format!("cannot write {}", path.display()))?;
            files.push(path);
        }
        let svg = self.out_dir.join(format!("{}-percentiles.svg", self.mode));
        chart(&svg, self.mode, &measured)?;
        files.push(svg);
        self.files = files;
        Ok(())
    }
}

/// The HdrHistogram percentile-distribution text (`outputPercentileDistribution`, values in
/// microseconds), readable by the HdrHistogram plotter.
pub(crate) fn hgrm(hist: &Histogram<u64>) -> String {
    let mut text = String::new();
    text.push_str(&format!(
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    ));
    let mut total = 0u64;
    for v in hist.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let value = us(v.value_iterated_to());
        if q < 1.0 {
            text.push_str(&format!(
                "{value:>12.3} {q:>2.12} {total:>10} {:>14.2}\n",
                1.0 / (1.0 - q)
            ));
        } else {
            text.push_str(&format!("{value:>12.3} {q:>2.12} {total:>10}\n"));
        }
    }
    text.push_str(&format!(
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]\n",
        hist.mean() / NANOS_PER_US,
        hist.stdev() / NANOS_PER_US
    ));
    text.push_str(&format!(
        "#[Max     = {:>12.3}, Total count    = {:>12}]\n",
        us(hist.max()),
        hist.len()
    ));
    text.push_str(&format!(
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]\n",
        hist.buckets(),
        // As in HdrHistogram: 2^ceil(log2(2 * 10^sigfig)) sub-buckets per bucket.
        (2.0 * 10f64.powi(i32::from(hist.sigfig())))
            .log2()
            .ceil()
            .exp2() as u64
    ));
    text
}

/// The x position of a quantile on an HdrHistogram-style axis: 0 at 0 %, 1 at 90 %, 2 at
/// 99 %, 3 at 99.9 %… so the tail gets as much room as the body.
fn percentile_x(q: f64) -> f64 {
    -(1.0 - q).max(1e-7).log10()
}

/// One latency-percentile chart, all systems on it.
fn chart(path: &Path, mode: &str, systems: &[&SystemResult]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let series: Vec<(&str, Vec<(f64, f64)>)> = systems
        .iter()
        .map(|s| {
            // Stop before the 100 % point: it is at infinity on this axis; cap the tail at
            // one sample out of the whole count instead.
            let cap = 1.0 - 1.0 / (s.hist.len().max(2) as f64);
            let points = s
                .hist
                .iter_quantiles(5)
                .map(|v| {
                    (
                        percentile_x(v.quantile_iterated_to().min(cap)),
                        us(v.value_iterated_to()).max(0.001),
                    )
                })
                .collect();
            (s.name, points)
        })
        .collect();
    let x_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .fold(1.0f64, f64::max)
        .ceil();
    let y_max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(1.0f64, f64::max)
        * 1.5;
    let y_min = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(f64::MAX, f64::min)
        .max(0.001)
        / 1.5;
    let root = SVGBackend::new(path, (1000, 600)).into_drawing_area();
    let draw = |e: &dyn std::fmt::Display| anyhow::anyhow!("cannot draw {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| draw(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("triggerfs bench {mode}: latency by percentile"),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, (y_min..y_max).log_scale())
        .map_err(|e| draw(&e))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_labels(x_max as usize + 1)
        .x_label_formatter(&|x| {
            let pct = 100.0 * (1.0 - 10f64.powf(-x));
            let digits = x.round().max(2.0) as usize - 2;
            format!("{pct:.digits$}%")
        })
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(|e| draw(&e))?;
    let colors = [RED, BLUE, GREEN, MAGENTA, CYAN, BLACK];
    for (i, (name, points)) in series.into_iter().enumerate() {
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| draw(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| draw(&e))?;
    root.present().map_err(|e| draw(&e))?;
    Ok(())
}

/// Milliseconds, rounded to hundredths.
fn round_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &'static str, values_us: &[u64], sent: u64) -> SystemResult {
        let mut hist = latency_histogram();
        for v in values_us {
            hist.record(v * 1000).unwrap();
        }
        SystemResult {
            name,
            hist,
            sent,
            received: values_us.len() as u64,
            errors: sent - values_us.len() as u64,
            elapsed: Duration::from_secs(1),
            fanout: None,
            cpu: None,
        }
    }

    fn report(systems: Vec<SystemResult>) -> Report {
        Report {
            mode: "latency",
            params: Map::new(),
            machine: Machine::detect(),
            systems,
            idle: None,
            sections: Map::new(),
            problems: Vec::new(),
            skipped: Vec::new(),
            out_dir: PathBuf::new(),
            files: Vec::new(),
        }
    }

    #[test]
    fn ratios_are_ours_over_theirs_and_null_when_missing() {
        let r = report(vec![
            result("triggerfs", &[20, 20, 20], 3),
            result("relay", &[10, 10, 10], 3),
        ]);
        let ratios = r.json()["ratios"].clone();
        assert_eq!(ratios["p50_vs_relay"], json!(2.0));
        assert_eq!(ratios["rps_vs_relay"], json!(1.0));
        assert_eq!(ratios["p50_vs_nats"], Value::Null);
        assert_eq!(ratios["rps_vs_nats"], Value::Null);
        assert!(r.all_ok());
    }

    #[test]
    fn a_lost_answer_fails_the_run() {
        let r = report(vec![result("triggerfs", &[20, 20], 3)]);
        assert!(!r.all_ok());
        assert_eq!(r.json()["systems"][0]["errors"], json!(1));
    }

    #[test]
    fn hgrm_ends_with_the_totals_and_counts_every_value() {
        let r = result("relay", &[10, 20, 30, 40], 4);
        let text = hgrm(&r.hist);
        let last_row = text
            .lines()
            .rfind(|l| !l.starts_with('#') && !l.trim().is_empty())
            .unwrap();
        assert_eq!(last_row.split_whitespace().nth(2), Some("4"));
        assert!(text.contains("Total count    =            4"), "{text}");
        assert!(text.starts_with("       Value"), "{text}");
    }

    #[test]
    fn percentile_axis_is_logarithmic() {
        for (q, x) in [(0.0, 0.0), (0.9, 1.0), (0.99, 2.0), (0.999, 3.0)] {
            assert!((percentile_x(q) - x).abs() < 1e-9, "{q}");
        }
    }
}
