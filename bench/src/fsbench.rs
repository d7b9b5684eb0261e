//! `triggerfs bench fs`: log shipping through a mounted trigger file, end to end.
//!
//! Starts the whole stack as separate processes of the binary under test (`triggerfs
//! control`, `triggerfs broker --control`, `triggerfs worker`, `triggerfs fs`), makes a
//! `split = "lines"` trigger bound to the in-worker `append` plugin, and has writer threads
//! append lines to the mounted file the way a log writer does. A scenario's figure is lines
//! per second *delivered*: from the first write until the worker's file holds every line;
//! the file is then read back and every line checked (lost, duplicated, out of order per
//! writer). Beside it, in the same run, the same writers write the same bytes to a plain file
//! on the same disk: the ceiling.
//!
//! A third target, a FUSE filesystem that accepts every write and does nothing
//! (`bench-child null-fuse`, mounted as the fs is), is the floor of a write through FUSE: the
//! same writers into it show what the kernel's round trip alone allows, which bounds the
//! one-line-per-write case however cheap the spool and the network become. With
//! `--fuse-uring`, a fourth: the same null filesystem served over FUSE-over-io_uring
//! (`bench-child null-fuse-uring`, a prototype of the transport; see `nullfuse_uring.rs`).
//!
//! Scenarios: `block` (writers appending 64 KiB blocks of 100-byte lines, as nginx's
//! `access_log ... buffer=64k`) and `line` (one writer, one line per `write(2)`, as nginx
//! without `buffer`).

use crate::proc::{command, drain, Spawned};
use anyhow::{bail, Context};
use serde::de::IgnoredAny;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Flags of `bench fs`.
#[derive(clap::Args, Debug, Clone)]
pub struct FsBenchArgs {
    /// Writers of the `block` scenario.
    #[arg(long, default_value_t = 2)]
    pub writers: usize,
    /// Lines each writer of the `block` scenario writes.
    #[arg(long, default_value_t = 1_000_000)]
    pub lines: usize,
    /// Bytes per line, newline included.
    #[arg(long, default_value_t = 100)]
    pub line_bytes: usize,
    /// Bytes per `write(2)` in the `block` scenario (whole lines only).
    #[arg(long, default_value_t = 65536)]
    pub block: usize,
    /// Lines of the `line` scenario (one writer, one line per `write(2)`).
    #[arg(long, default_value_t = 200_000)]
    pub line_lines: usize,
    /// Scenarios to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "block,line")]
    pub scenarios: Vec<Scenario>,
    /// The broker's `--spin` (its default is 30us; on a machine that also runs the writers,
    /// the fs and the worker, `0s` leaves them the cores it would poll on).
    #[arg(long, default_value = "30us")]
    pub broker_spin: String,
    /// FUSE threads of the fs (`triggerfs fs --threads`).
    #[arg(long, default_value_t = 4)]
    pub fs_threads: usize,
    /// Rounds: every scenario runs this many times, in turns, and the table shows the median
    /// with the lowest and highest (a 2-core machine running writers, fs, broker and worker
    /// at once varies a lot from run to run).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Also measure the null filesystem served over FUSE-over-io_uring (sets
    /// /sys/module/fuse/parameters/enable_uring to Y while it mounts, then back; root).
    #[arg(long)]
    pub fuse_uring: bool,
    /// `--json` and the processes' binary.
    #[command(flatten)]
    pub own: crate::OwnArgs,
}

/// A way of writing.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Writers appending 64 KiB blocks of lines.
    Block,
    /// One writer, one line per write.
    Line,
}

/// One scenario's figures.
#[derive(Debug, serde::Serialize)]
struct Row {
    scenario: Scenario,
    writers: usize,
    lines: usize,
    bytes_per_write: usize,
    /// Lines per second the writers' `write(2)` calls took.
    written_per_s: f64,
    /// Lines per second delivered, first write to last line in the worker's file.
    delivered_per_s: f64,
    /// The same writers into a plain file on the same disk.
    ceiling_per_s: f64,
    /// The same writers into a FUSE file that does nothing (`bench-child null-fuse`).
    null_fuse_per_s: f64,
    /// The same over FUSE-over-io_uring (`--fuse-uring`).
    null_fuse_uring_per_s: Option<f64>,
    /// delivered / ceiling.
    ratio: f64,
    /// delivered / null FUSE.
    vs_null_fuse: f64,
    lost: usize,
    duplicated: usize,
    out_of_order: usize,
}

/// A scenario over its rounds: medians, the spread of the delivered rate, and every lost,
/// duplicated or disordered line of every round.
#[derive(Debug, serde::Serialize)]
struct Summary {
    scenario: Scenario,
    writers: usize,
    lines: usize,
    bytes_per_write: usize,
    delivered_per_s: f64,
    delivered_min: f64,
    delivered_max: f64,
    ceiling_per_s: f64,
    /// The null FUSE filesystem's median.
    null_fuse_per_s: f64,
    /// Its median over FUSE-over-io_uring (`--fuse-uring`).
    null_fuse_uring_per_s: Option<f64>,
    /// That median / the null FUSE filesystem's over `/dev/fuse`.
    uring_vs_dev_fuse: Option<f64>,
    /// median delivered / median ceiling.
    ratio: f64,
    /// median delivered / median null FUSE.
    vs_null_fuse: f64,
    lost: usize,
    duplicated: usize,
    out_of_order: usize,
}

/// The median of `v` (0 for none).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl Summary {
    fn of(rounds: &[Row]) -> Summary {
        let first = &rounds[0];
        let delivered: Vec<f64> = rounds.iter().map(|r| r.delivered_per_s).collect();
        let ceiling = median(rounds.iter().map(|r| r.ceiling_per_s).collect());
        let null_fuse = median(rounds.iter().map(|r| r.null_fuse_per_s).collect());
        let uring: Vec<f64> = rounds
            .iter()
            .filter_map(|r| r.null_fuse_uring_per_s)
            .collect();
        let uring = (!uring.is_empty()).then(|| median(uring));
        let med = median(delivered.clone());
        Summary {
            scenario: first.scenario,
            writers: first.writers,
            lines: first.lines,
            bytes_per_write: first.bytes_per_write,
            delivered_per_s: med,
            delivered_min: delivered.iter().copied().fold(f64::INFINITY, f64::min),
            delivered_max: delivered.iter().copied().fold(0.0, f64::max),
            ceiling_per_s: ceiling,
            null_fuse_per_s: null_fuse,
            null_fuse_uring_per_s: uring,
            uring_vs_dev_fuse: uring.map(|u| u / null_fuse.max(1e-9)),
            ratio: med / ceiling.max(1e-9),
            vs_null_fuse: med / null_fuse.max(1e-9),
            lost: rounds.iter().map(|r| r.lost).sum(),
            duplicated: rounds.iter().map(|r| r.duplicated).sum(),
            out_of_order: rounds.iter().map(|r| r.out_of_order).sum(),
        }
    }
}

/// The stack under test.
struct Stack {
    _procs: Vec<Spawned>,
    dir: tempfile::TempDir,
    mnt: PathBuf,
    /// Where the null FUSE filesystem is mounted (every name in it is a file).
    null_mnt: PathBuf,
    /// Where the same over io_uring is mounted (`--fuse-uring`).
    uring_mnt: Option<PathBuf>,
}

impl Drop for Stack {
    /// Stops the processes and unmounts what they served, before the directory goes (also
    /// when a run fails half-way).
    fn drop(&mut self) {
        drop(std::mem::take(&mut self._procs));
        for mnt in [
            Some(&self.mnt),
            Some(&self.null_mnt),
            self.uring_mnt.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            unmount(mnt);
        }
    }
}

/// Starts control plane, broker, worker and fs; makes a trigger per scenario.
async fn start(bin: &Path, args: &FsBenchArgs) -> anyhow::Result<Stack> {
    let dir = tempfile::tempdir().context("cannot create a directory for the stack")?;
    let data = dir.path().join("data");
    let broker = crate::stack::free_addr()?;
    let (control, api) = crate::stack::Control::start(bin, &data, &broker).await?;
    let url = control.url.clone();
    let secret = control.secret.clone();
    let (b, _) = control
        .broker(bin, &broker, &["--spin", &args.broker_spin])
        .await?;
    let mut procs = vec![control.proc, b];
    let worker_token = configure(&api, dir.path(), &args.scenarios).await?;
    procs.push(start_worker(
        bin,
        &broker,
        &worker_token,
        &dir.path().join("plugins"),
    )?);
    let deadline = Instant::now() + crate::proc::READY_DEADLINE;
    loop {
        if crate::stack::online(&api, "w1").await? {
            break;
        }
        if Instant::now() > deadline {
            bail!("the worker did not come online");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt)?;
    let spool = dir.path().join("spool");
    let fs_flags = [
        "--url",
        &url,
        "--broker",
        &broker,
        "--team",
        "main",
        "--identity",
        "admin",
        "--secret",
        &secret,
        "--spool",
        spool.to_str().unwrap_or_default(),
        "--quiet",
        "--threads",
        &args.fs_threads.to_string(),
    ];
    procs.push(start_fs(bin, &mnt, &fs_flags).await?);
    let null_mnt = dir.path().join("null");
    std::fs::create_dir_all(&null_mnt)?;
    let exe = std::env::current_exe()?;
    let threads = args.fs_threads.to_string();
    let null_args = [
        "bench-child",
        "null-fuse",
        "--mount",
        null_mnt.to_str().unwrap_or_default(),
        "--threads",
        &threads,
    ];
    let (null_fs, _, lines) =
        Spawned::start_until("null fuse", command(&exe, null_args), "ready").await?;
    drain(lines);
    procs.push(null_fs);
    let uring_mnt = if args.fuse_uring {
        let mnt = dir.path().join("null-uring");
        std::fs::create_dir_all(&mnt)?;
        let args = [
            "bench-child",
            "null-fuse-uring",
            "--mount",
            mnt.to_str().unwrap_or_default(),
        ];
        // The module parameter is read at FUSE_INIT: Y while the mount starts, then back
        // (the connection keeps the ring); also when starting fails.
        let enabled = crate::nullfuse_uring::EnableUring::set()?;
        let started = Spawned::start_until("null fuse uring", command(&exe, args), "ready").await;
        drop(enabled);
        let (uring_fs, _, lines) = match started {
            Ok(s) => s,
            Err(e) => {
                unmount(&mnt);
                return Err(e.context("FUSE over io_uring"));
            }
        };
        drain(lines);
        procs.push(uring_fs);
        Some(mnt)
    } else {
        None
    };
    Ok(Stack {
        _procs: procs,
        dir,
        mnt,
        null_mnt,
        uring_mnt,
    })
}

/// Creates worker `w1`, the service `ship` on it, the directory `/bench` and a trigger per
/// scenario (`append` to `<dir>/<scenario>.out`); the worker's token.
async fn configure(api: &api::Api, dir: &Path, scenarios: &[Scenario]) -> anyhow::Result<String> {
    let worker_token = crate::stack::new_worker(api, "w1").await?;
    let _: IgnoredAny = api
        .post("/services", &json!({"name": "ship", "workers": ["w1"]}))
        .await?;
    let _: IgnoredAny = api.post("/directories", &json!({"path": "/bench"})).await?;
    for s in scenarios {
        let name = scenario_name(*s);
        let sink = dir.join(format!("{name}.out"));
        let trigger = json!({"path": format!("/bench/{name}"), "plugin": "append", "service": "ship",
                             "split": "lines", "args": {"path": sink.display().to_string()}});
        let _: IgnoredAny = api.post("/triggers", &trigger).await?;
    }
    Ok(worker_token)
}

/// Starts worker `w1` with the core plugins under `plugins`.
fn start_worker(bin: &Path, broker: &str, token: &str, plugins: &Path) -> anyhow::Result<Spawned> {
    crate::proc::write_plugins(plugins)?;
    let (worker, lines) = Spawned::start(
        "worker",
        command(
            bin,
            [
                "worker",
                "--broker",
                broker,
                "--team",
                "main",
                "--identity",
                "w1",
                "--token",
                token,
                "--pluginspath",
                plugins.to_str().unwrap_or_default(),
            ],
        ),
    )?;
    if let Some(lines) = lines {
        drain(lines);
    }
    Ok(worker)
}

/// Starts `triggerfs fs` on `mnt` with `flags`, and waits until it serves.
async fn start_fs(bin: &Path, mnt: &Path, flags: &[&str]) -> anyhow::Result<Spawned> {
    let mut fs_args = vec!["fs", "--mount", mnt.to_str().unwrap_or_default()];
    fs_args.extend_from_slice(flags);
    let (fs, _, mut lines) = Spawned::start_until("fs", command(bin, fs_args), "").await?;
    // The fs logs its start-up; it is serving once it says so.
    let ready = async {
        while let Some(line) = lines.next_line().await? {
            if line.ends_with("Ready and running in foreground...") {
                return anyhow::Ok(true);
            }
        }
        anyhow::Ok(false)
    };
    if !tokio::time::timeout(crate::proc::READY_DEADLINE, ready)
        .await
        .unwrap_or(Ok(false))?
    {
        bail!("the fs did not get ready");
    }
    drain(lines);
    Ok(fs)
}

fn scenario_name(s: Scenario) -> &'static str {
    match s {
        Scenario::Block => "block",
        Scenario::Line => "line",
    }
}

/// Line `n` of writer `w`, `len` bytes with its newline.
fn line(w: usize, n: usize, len: usize) -> String {
    let mut s = format!("w{w} {n:010} ");
    while s.len() + 1 < len {
        s.push('x');
    }
    s.push('\n');
    s
}

/// `writers` threads each write `lines` lines to `path`, `per_write` lines per `write(2)`;
/// returns how long the writing took.
fn write_all(
    path: &Path,
    writers: usize,
    lines: usize,
    line_bytes: usize,
    per_write: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let path = path.to_path_buf();
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut file = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(&path)?;
                let mut n = 0;
                let mut buf = String::with_capacity(per_write * line_bytes);
                while n < lines {
                    buf.clear();
                    let k = per_write.min(lines - n);
                    for i in 0..k {
                        buf.push_str(&line(w, n + i, line_bytes));
                    }
                    file.write_all(buf.as_bytes())?;
                    n += k;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("a writer panicked"))??;
    }
    Ok(started.elapsed())
}

/// Writes back every dirty page (sync(2)).
fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Counts the lines of a growing file, reading only what was added since the last call (the
/// whole file every 5 ms took a good share of a core from the stack under test).
struct LineCounter {
    file: std::fs::File,
    lines: usize,
    buf: Vec<u8>,
}

impl LineCounter {
    fn open(path: &Path) -> std::io::Result<LineCounter> {
        Ok(LineCounter {
            file: std::fs::File::open(path)?,
            lines: 0,
            buf: vec![0; 1 << 20],
        })
    }

    fn count(&mut self) -> std::io::Result<usize> {
        use std::io::Read;
        loop {
            let n = self.file.read(&mut self.buf)?;
            if n == 0 {
                return Ok(self.lines);
            }
            self.lines += self.buf[..n].iter().filter(|c| **c == b'\n').count();
        }
    }
}

/// Lost, duplicated and out-of-order lines in the worker's file.
fn check(path: &Path, writers: usize, lines: usize) -> anyhow::Result<(usize, usize, usize)> {
    let text = std::fs::read_to_string(path)?;
    let mut seen = vec![vec![false; lines]; writers];
    let mut last = vec![None::<usize>; writers];
    let (mut dup, mut disorder) = (0, 0);
    for l in text.lines() {
        let mut parts = l.split(' ');
        let w: Option<usize> = parts
            .next()
            .and_then(|w| w.strip_prefix('w'))
            .and_then(|w| w.parse().ok());
        let n: Option<usize> = parts.next().and_then(|n| n.parse().ok());
        let (Some(w), Some(n)) = (w, n) else { continue };
        if w >= writers || n >= lines {
            continue;
        }
        if std::mem::replace(&mut seen[w][n], true) {
            dup += 1;
        }
        if last[w].is_some_and(|prev| n < prev) {
            disorder += 1;
        }
        last[w] = Some(n);
    }
    let lost = seen.iter().flatten().filter(|s| !**s).count();
    Ok((lost, dup, disorder))
}

/// Runs one scenario: the ceiling first, then through the fs.
async fn scenario(stack: &Stack, s: Scenario, args: &FsBenchArgs) -> anyhow::Result<Row> {
    let name = scenario_name(s);
    let (writers, lines, per_write) = match s {
        Scenario::Block => (
            args.writers,
            args.lines,
            (args.block / args.line_bytes).max(1),
        ),
        Scenario::Line => (1, args.line_lines, 1),
    };
    let total = writers * lines;
    let line_bytes = args.line_bytes.max(24);
    // Each measurement starts with the page cache written back: the previous one's hundreds
    // of MB of dirty pages would otherwise throttle whichever writer comes next.
    settle();
    let plain = stack.dir.path().join(format!("{name}.plain"));
    let ceiling = write_all(&plain, writers, lines, line_bytes, per_write)?;
    let _ = std::fs::remove_file(&plain);
    // The floor of a write through FUSE: the same writes into a filesystem that does nothing.
    let null = stack.null_mnt.join(name);
    let null_fuse = tokio::task::spawn_blocking(move || {
        write_all(&null, writers, lines, line_bytes, per_write)
    })
    .await??;
    let null_fuse_uring = match &stack.uring_mnt {
        Some(mnt) => {
            let path = mnt.join(name);
            let took = tokio::task::spawn_blocking(move || {
                write_all(&path, writers, lines, line_bytes, per_write)
            })
            .await??;
            Some(took)
        }
        None => None,
    };

    settle();
    let trigger = stack.mnt.join("bench").join(name);
    let sink = stack.dir.path().join(format!("{name}.out"));
    // Each round starts from an empty file (the worker's `append` reopens it per batch).
    std::fs::File::create(&sink)?;
    let mut counter = LineCounter::open(&sink)?;
    let started = Instant::now();
    let path = trigger.clone();
    let written = tokio::task::spawn_blocking(move || {
        write_all(&path, writers, lines, line_bytes, per_write)
    })
    .await??;
    // Delivered: until the worker's file has every line (or nothing moves for 60 s).
    let mut seen = 0;
    let mut moved = Instant::now();
    loop {
        let n = counter.count()?;
        if n >= total {
            break;
        }
        if n != seen {
            seen = n;
            moved = Instant::now();
        } else if moved.elapsed() > Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let delivered = started.elapsed();
    let (lost, duplicated, out_of_order) = check(&sink, writers, lines)?;
    let rate = |d: Duration| total as f64 / d.as_secs_f64().max(1e-9);
    Ok(Row {
        scenario: s,
        writers,
        lines: total,
        bytes_per_write: per_write * line_bytes,
        written_per_s: rate(written),
        delivered_per_s: rate(delivered),
        ceiling_per_s: rate(ceiling),
        null_fuse_per_s: rate(null_fuse),
        null_fuse_uring_per_s: null_fuse_uring.map(rate),
        ratio: rate(delivered) / rate(ceiling),
        vs_null_fuse: rate(delivered) / rate(null_fuse),
        lost,
        duplicated,
        out_of_order,
    })
}

/// `triggerfs bench fs`.
pub async fn run(args: &FsBenchArgs) -> anyhow::Result<i32> {
    let bin = args.own.bin()?;
    let stack = start(&bin, args).await?;
    let mut rounds: Vec<Vec<Row>> = args.scenarios.iter().map(|_| Vec::new()).collect();
    for _ in 0..args.rounds {
        for (i, s) in args.scenarios.iter().enumerate() {
            rounds[i].push(scenario(&stack, *s, args).await?);
        }
    }
    let rows: Vec<Summary> = rounds.iter().map(|r| Summary::of(r)).collect();
    let mut table = comfy_table::Table::new();
    let mut header = vec![
        "scenario",
        "writers",
        "lines",
        "bytes/write",
        "delivered/s (min–max)",
        "plain file/s",
        "ratio",
        "null FUSE/s",
        "vs null FUSE",
    ];
    if args.fuse_uring {
        header.extend(["null FUSE io_uring/s", "io_uring / dev"]);
    }
    header.extend(["lost", "dup", "disorder"]);
    table
        .load_preset(comfy_table::presets::UTF8_BORDERS_ONLY)
        .set_header(header);
    for r in &rows {
        let mut row = vec![
            scenario_name(r.scenario).to_string(),
            r.writers.to_string(),
            r.lines.to_string(),
            r.bytes_per_write.to_string(),
            format!(
                "{:.0} ({:.0}–{:.0})",
                r.delivered_per_s, r.delivered_min, r.delivered_max
            ),
            format!("{:.0}", r.ceiling_per_s),
            format!("{:.3}", r.ratio),
            format!("{:.0}", r.null_fuse_per_s),
            format!("{:.3}", r.vs_null_fuse),
        ];
        if let (Some(uring), Some(vs)) = (r.null_fuse_uring_per_s, r.uring_vs_dev_fuse) {
            row.extend([format!("{uring:.0}"), format!("{vs:.3}")]);
        }
        row.extend([
            r.lost.to_string(),
            r.duplicated.to_string(),
            r.out_of_order.to_string(),
        ]);
        table.add_row(row);
    }
    let note = format!(
        "median of {} rounds per scenario; delivered: first write to the last line in the worker's file",
        args.rounds
    );
    if args.own.json {
        eprintln!("{table}\n{note}");
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"mode": "fs", "rounds": args.rounds, "rows": rows, "runs": rounds.iter().flatten().collect::<Vec<_>>()})
            )?
        );
    } else {
        println!("{table}\n{note}");
    }
    let clean = rows
        .iter()
        .all(|r| r.lost == 0 && r.duplicated == 0 && r.out_of_order == 0);
    drop(stack);
    Ok(if clean { 0 } else { 1 })
}

/// Detaches the mount on `mnt` whose server was killed: `fusermount3 -u -z`, or, where that
/// is not installed (or fails), `umount2(MNT_DETACH)` (as root). Without it the mount and
/// its directory outlive the run.
fn unmount(mnt: &Path) {
    let fusermount = std::process::Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(mnt)
        .stderr(std::process::Stdio::null())
        .status();
    if fusermount.is_ok_and(|status| status.success()) {
        return;
    }
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(mnt.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
}
