//! How the `client` command shows a request: live lines as events arrive, then the report.
//!
//! Everything writes to `impl Write` pairs held in a [`Console`], so tests render into byte
//! vectors. The shape follows the seed's Go client:
//!
//! ```text
//! 2018/04/30 21:14:06 Sending message to service demo (roundrobin)     (stderr)
//! [command/command@demo01]  21:14:07 up  8:26, ...                     (stdout)
//!
//! Exit code: 0
//! Total messages: 1
//! Time ran: 907.914622ms
//!
//! ```

use client::{ClientEvent, Outcome, WorkerOutcome, WorkerStatus};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use proto::{Algorithm, ErrorKind, Stream, TextEnum};
use std::io::{self, Write};
use std::time::{Duration, Instant, SystemTime};

/// Where the command writes, and what it knows about the terminal.
#[derive(Debug)]
pub struct Console<O, E> {
    /// Our standard output.
    pub out: O,
    /// Our standard error.
    pub err: E,
    /// Whether stderr is a terminal (a progress bar is shown only then).
    pub err_is_terminal: bool,
    /// The wall clock for log timestamps; tests pin it.
    pub clock: fn() -> SystemTime,
    /// The time zone of log timestamps: the system's, or UTC in tests.
    pub time_zone: TimeZone,
}

impl Console<io::Stdout, io::Stderr> {
    /// The process's own stdout and stderr.
    pub fn stdio() -> Self {
        use std::io::IsTerminal;
        Console {
            out: io::stdout(),
            err: io::stderr(),
            err_is_terminal: io::stderr().is_terminal(),
            clock: SystemTime::now,
            // `TZ`, else /etc/localtime; UTC when neither can be read.
            time_zone: TimeZone::system(),
        }
    }
}

/// `YYYY/MM/DD HH:MM:SS` in `time_zone`, like the prefix of Go's `log` package.
pub fn log_timestamp(at: SystemTime, time_zone: &TimeZone) -> String {
    // Out of jiff's range (years beyond ±9999) only with a broken clock.
    let at = Timestamp::try_from(at).unwrap_or(Timestamp::UNIX_EPOCH);
    time_zone
        .to_datetime(at)
        .strftime("%Y/%m/%d %H:%M:%S")
        .to_string()
}

/// How often the progress bar may redraw, however many workers answer.
pub const BAR_HZ: u8 = 10;

/// The live counts of a fan-out request, as the progress bar shows them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Workers the request covers (from `Routed`).
    pub n_workers: u32,
    /// Exited 0.
    pub ok: u32,
    /// Exited non-zero, lost, cancelled or failed another way.
    pub failed: u32,
    /// Ran past their timeout.
    pub timed_out: u32,
    /// Accepted and not ended yet.
    pub running: u32,
    /// Not started.
    pub skipped: u32,
    /// Never answered before the deadline.
    pub no_response: u32,
    /// Bound but offline.
    pub offline: u32,
    /// Left running at the quorum.
    pub detached: u32,
    /// Ended, any way.
    pub ended: u32,
}

impl Counts {
    /// Adds one event (`running` tracks `Accepted` until the worker's end).
    pub fn record(&mut self, event: &ClientEvent, was_running: bool) {
        match event {
            ClientEvent::Routed { n_workers, .. } => self.n_workers = *n_workers,
            ClientEvent::Accepted { .. } => self.running += 1,
            ClientEvent::Done { exit_code, .. } => {
                self.end(was_running);
                match exit_code {
                    0 => self.ok += 1,
                    _ => self.failed += 1,
                }
            }
            ClientEvent::Failed { kind, .. } => {
                self.end(was_running);
                match WorkerStatus::of_failure(*kind) {
                    WorkerStatus::Timeout => self.timed_out += 1,
                    WorkerStatus::Skipped => self.skipped += 1,
                    WorkerStatus::NoResponse => self.no_response += 1,
                    WorkerStatus::Offline => self.offline += 1,
                    WorkerStatus::Detached => self.detached += 1,
                    WorkerStatus::Retried => {}
                    _ => self.failed += 1,
                }
            }
            _ => {}
        }
    }

    fn end(&mut self, was_running: bool) {
        self.ended += 1;
        if was_running {
            self.running = self.running.saturating_sub(1);
        }
    }

    /// Workers neither running nor ended.
    pub fn waiting(&self) -> u32 {
        self.n_workers.saturating_sub(self.ended + self.running)
    }

    /// `ok 3 · failed 1 · running 20 · waiting 176`, then the rarer counts when not 0.
    pub fn text(&self) -> String {
        let mut text = format!(
            "ok {} · failed {} · running {} · waiting {}",
            self.ok,
            self.failed,
            self.running,
            self.waiting()
        );
        for (n, what) in [
            (self.timed_out, "timed out"),
            (self.skipped, "skipped"),
            (self.no_response, "no response"),
            (self.offline, "offline"),
            (self.detached, "detached"),
        ] {
            if n > 0 {
                text.push_str(&format!(" · {what} {n}"));
            }
        }
        text
    }
}

/// Renders a request's events as they arrive (nothing in `--json` mode).
#[derive(Debug)]
pub struct LiveRender {
    service: String,
    plugin: String,
    json: bool,
    bar: Option<ProgressBar>,
    counts: Counts,
    /// Workers that accepted and have not ended.
    running: std::collections::HashSet<String>,
    /// Whether the final report is the table (on a terminal).
    table: bool,
    /// Output lines waiting for the next batch under the bar.
    pending: Vec<(Stream, String)>,
    /// When the last batch went out.
    last_flush: Instant,
    /// Batches written (each one redraw of the bar).
    flushes: u64,
    /// The counts the bar shows (its `{counts}` key reads it when it draws).
    bar_counts: std::sync::Arc<std::sync::Mutex<String>>,
    /// Whether the counts changed since the bar was last drawn.
    dirty: bool,
    /// Where the bar draws: stderr (tests count the frames).
    draw_target: fn() -> ProgressDrawTarget,
}

impl LiveRender {
    /// A renderer for a request to `service` with `plugin`; `json` silences live output.
    pub fn new(service: &str, plugin: &str, json: bool) -> LiveRender {
        LiveRender {
            service: service.to_string(),
            plugin: plugin.to_string(),
            json,
            bar: None,
            counts: Counts::default(),
            running: std::collections::HashSet::new(),
            table: false,
            pending: Vec::new(),
            last_flush: Instant::now(),
            flushes: 0,
            bar_counts: Default::default(),
            dirty: false,
            draw_target: || ProgressDrawTarget::stderr_with_hz(BAR_HZ),
        }
    }

    /// Gives the bar the counts as they are now, for its next draw (which is `flush`'s).
    fn show_counts(&mut self) {
        if let Ok(mut text) = self.bar_counts.lock() {
            *text = self.counts.text();
        }
        self.dirty = true;
    }

    /// The live counts so far.
    #[cfg(test)]
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Shows one event.
    pub fn event<O: Write, E: Write>(
        &mut self,
        console: &mut Console<O, E>,
        event: &ClientEvent,
    ) -> io::Result<()> {
        let was_running = match event {
            ClientEvent::Accepted { worker } => {
                self.running.insert(worker.clone());
                false
            }
            ClientEvent::Done { worker, .. } | ClientEvent::Failed { worker, .. } => {
                self.running.remove(worker)
            }
            _ => false,
        };
        self.counts.record(event, was_running);
        if self.json {
            return Ok(());
        }
        match event {
            ClientEvent::Routed {
                algorithm,
                n_workers,
            } => self.routed(console, *algorithm, *n_workers)?,
            ClientEvent::Output {
                worker,
                stream,
                data,
                ..
            } => {
                let line = format!(
                    "[{}@{worker}] {}",
                    self.plugin,
                    String::from_utf8_lossy(data)
                );
                if self.bar.is_some() {
                    // Under the bar, lines go out in batches, one redraw per batch.
                    self.pending.push((*stream, line));
                    self.tick(console)?;
                } else {
                    match stream {
                        Stream::Stdout => self.print(&mut console.out, &line)?,
                        Stream::Stderr => self.print(&mut console.err, &line)?,
                    }
                }
            }
            ClientEvent::Done { .. } | ClientEvent::Failed { .. } => {
                if let Some(bar) = &self.bar {
                    // A worker that failed, timed out, never answered or is offline is
                    // named above the bar as it happens, not only in the final table.
                    if let Some(line) = self.failure_line(event) {
                        self.pending.push((Stream::Stderr, line));
                    }
                    bar.inc(1);
                    self.show_counts();
                    self.tick(console)?;
                }
            }
            ClientEvent::Accepted { .. } if self.bar.is_some() => {
                self.show_counts();
                self.tick(console)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// `Routed`: the first line, and for a fan-out on a terminal the progress bar.
    fn routed<O: Write, E: Write>(
        &mut self,
        console: &mut Console<O, E>,
        algorithm: Algorithm,
        n_workers: u32,
    ) -> io::Result<()> {
        let detail = match algorithm {
            Algorithm::Roundrobin => algorithm.to_string(),
            _ => format!("{algorithm}, {n_workers} workers"),
        };
        let line = format!(
            "{} Sending message to service {} ({detail})",
            log_timestamp((console.clock)(), &console.time_zone),
            self.service
        );
        self.print(&mut console.err, &line)?;
        if algorithm != Algorithm::Roundrobin && console.err_is_terminal {
            self.table = true;
            self.bar = Some(self.progress_bar(n_workers));
            self.show_counts();
        }
        Ok(())
    }

    /// The bar of a fan-out to `n_workers`, with the live counts after it.
    fn progress_bar(&self, n_workers: u32) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(Some(u64::from(n_workers)), (self.draw_target)());
        let counts = self.bar_counts.clone();
        if let Ok(style) =
            ProgressStyle::with_template("{elapsed_precise} {bar:20} {pos}/{len} {counts}")
        {
            bar.set_style(style.with_key(
                "counts",
                move |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    if let Ok(text) = counts.lock() {
                        let _ = w.write_str(&text);
                    }
                },
            ));
        }
        // One redraw path: with a ticker installed, `inc` does not draw, and this one never
        // ticks; the bar is drawn only by `flush`, at most BAR_HZ times a second, however
        // many workers answer.
        bar.enable_steady_tick(Duration::from_secs(24 * 3600));
        bar
    }

    /// The line above the bar for a worker that failed, timed out, never answered or is
    /// offline; none for one that exited 0, was skipped or detached.
    fn failure_line(&self, event: &ClientEvent) -> Option<String> {
        match event {
            ClientEvent::Done {
                worker, exit_code, ..
            } if *exit_code != 0 => Some(format!(
                "[{}@{worker}] failed (exit code {exit_code})",
                self.plugin
            )),
            ClientEvent::Failed {
                worker,
                kind,
                message,
            } if !matches!(kind, ErrorKind::Skipped | ErrorKind::Detached) => Some(format!(
                "[{}@{worker}] {}: {message}",
                self.plugin,
                WorkerStatus::of_failure(*kind).words()
            )),
            _ => None,
        }
    }

    /// Prints the output lines held under the progress bar, at most [`BAR_HZ`] times a
    /// second: each batch clears and redraws the bar once, however many workers answer.
    /// The command calls it on every event and on a timer.
    pub fn tick<O: Write, E: Write>(&mut self, console: &mut Console<O, E>) -> io::Result<()> {
        let due = self.last_flush.elapsed() >= Duration::from_secs(1) / u32::from(BAR_HZ);
        if due {
            self.flush_pending(console)?;
        }
        Ok(())
    }

    fn flush_pending<O: Write, E: Write>(&mut self, console: &mut Console<O, E>) -> io::Result<()> {
        // Without new lines or counts, the bar is still redrawn once a second (its clock).
        let stale = self.bar.is_some() && self.last_flush.elapsed() >= Duration::from_secs(1);
        if self.pending.is_empty() && !self.dirty && !stale {
            return Ok(());
        }
        self.dirty = false;
        let pending = std::mem::take(&mut self.pending);
        let mut write = || -> io::Result<()> {
            for (stream, line) in &pending {
                match stream {
                    Stream::Stdout => writeln!(console.out, "{line}")?,
                    Stream::Stderr => writeln!(console.err, "{line}")?,
                }
            }
            console.out.flush()?;
            console.err.flush()
        };
        match &self.bar {
            Some(bar) => bar.suspend(write)?,
            None => write()?,
        }
        self.last_flush = Instant::now();
        self.flushes += 1;
        Ok(())
    }

    /// Clears the progress bar and writes the final report (or the JSON document).
    pub fn finish<O: Write, E: Write>(
        &mut self,
        console: &mut Console<O, E>,
        outcome: &Outcome,
    ) -> io::Result<()> {
        self.flush_pending(console)?;
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if self.json {
            serde_json::to_writer_pretty(&mut console.out, outcome)?;
            writeln!(console.out)?;
            return console.out.flush();
        }
        if self.table && outcome.error.is_none() {
            writeln!(console.out)?;
            write_table(&mut console.out, outcome)?;
        }
        write_report(&mut console.out, &mut console.err, outcome, !self.table)
    }

    /// One line, flushed at once (live); without a bar (plain lines, or before it exists).
    fn print(&self, to: &mut impl Write, line: &str) -> io::Result<()> {
        writeln!(to, "{line}")?;
        to.flush()
    }
}

/// The text report after the last event: exit codes, summary, counts and time on `out`;
/// errors on `err`.
///
/// `per_worker`: a fan-out request's `Exit code [worker]: ...` lines (the plain form of the
/// table, in the order the workers ended, as the seed printed them); left out when the
/// table was written.
pub fn write_report(
    out: &mut impl Write,
    err: &mut impl Write,
    outcome: &Outcome,
    per_worker: bool,
) -> io::Result<()> {
    if let Some(error) = &outcome.error {
        writeln!(err, "Error: {}: {}", error.kind, error.message)?;
        return err.flush();
    }
    if let Some(n_workers) = outcome.queued {
        writeln!(out, "Queued for {n_workers} worker(s)")?;
        return out.flush();
    }
    writeln!(out)?;
    if outcome.is_fan_out() {
        if per_worker {
            for worker in &outcome.workers {
                writeln!(out, "Exit code [{}]: {}", worker.worker, exit_text(worker))?;
            }
        }
        if let Some(s) = &outcome.summary {
            let retried = outcome.workers.iter();
            let retried = retried
                .filter(|w| w.status == WorkerStatus::Retried)
                .count();
            match retried {
                0 => writeln!(out, "{}", summary_line(s))?,
                n => writeln!(out, "{}, {n} retried elsewhere", summary_line(s))?,
            }
        }
    } else if let Some(worker) = outcome.workers.first() {
        writeln!(out, "Exit code: {}", exit_text(worker))?;
    }
    writeln!(out, "Total messages: {}", outcome.total_messages)?;
    writeln!(out, "Time ran: {}", go_duration(outcome.elapsed))?;
    // The seed ends its report with an empty line.
    writeln!(out)?;
    out.flush()?;
    if outcome.disconnected {
        writeln!(
            err,
            "Error: the connection to the broker dropped before the request ended"
        )?;
        err.flush()?;
    }
    Ok(())
}

/// `Summary: 200 workers, 195 ok, 5 failed, 0 timed out, 0 lost`, then the fleet counts
/// that are not 0 and how the run stopped.
pub fn summary_line(s: &proto::Summary) -> String {
    let mut line = format!(
        "Summary: {} workers, {} ok, {} failed, {} timed out, {} lost",
        s.workers, s.ok, s.failed, s.timed_out, s.lost
    );
    for (n, what) in [
        (s.offline, "offline"),
        (s.no_response, "no response"),
        (s.skipped, "skipped"),
        (s.detached, "detached"),
    ] {
        if n > 0 {
            line.push_str(&format!(", {n} {what}"));
        }
    }
    if s.stopped {
        line.push_str("; stopped by --max-failures");
    }
    if s.quorum_met {
        line.push_str("; quorum met");
    }
    line
}

/// Longest last output line the table shows (longer ones end with `…`).
const LAST_LINE_SHOWN: usize = 60;

/// Every worker of a fan-out request, sorted by outcome (failures first): worker, outcome,
/// exit code, duration, last output line; columns aligned.
pub fn write_table(out: &mut impl Write, outcome: &Outcome) -> io::Result<()> {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(["WORKER", "OUTCOME", "EXIT", "DURATION", "LAST LINE"]);
    for w in outcome.table() {
        let last = w.last_line.as_deref().unwrap_or("");
        let last = match last.char_indices().nth(LAST_LINE_SHOWN) {
            Some((cut, _)) => format!("{}…", &last[..cut]),
            None => last.to_string(),
        };
        table.add_row([
            w.worker.clone(),
            w.status.words().to_string(),
            w.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            w.duration
                .map(|d| go_duration(std::time::Duration::from_millis(d.as_millis() as u64)))
                .unwrap_or_else(|| "-".into()),
            last,
        ]);
    }
    for line in table.lines() {
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// A duration as Go's `time.Duration` prints it, as the seed's `Time ran:` shows it:
/// `0s`, `750ns`, `1.5µs`, `907.914622ms`, `2s`, `1m0.017s`, `1h0m0s`.
pub fn go_duration(d: std::time::Duration) -> String {
    // `whole.rem` with `digits` decimals, trailing zeros (and a bare point) dropped.
    fn decimal(whole: u128, rem: u128, digits: usize) -> String {
        let mut text = whole.to_string();
        if rem != 0 {
            text.push('.');
            text.push_str(format!("{rem:0digits$}").trim_end_matches('0'));
        }
        text
    }
    let nanos = d.as_nanos();
    match nanos {
        0 => "0s".to_string(),
        1..=999 => format!("{nanos}ns"),
        1_000..=999_999 => format!("{}µs", decimal(nanos / 1_000, nanos % 1_000, 3)),
        1_000_000..=999_999_999 => {
            format!("{}ms", decimal(nanos / 1_000_000, nanos % 1_000_000, 6))
        }
        _ => {
            let secs = nanos / 1_000_000_000;
            let (hours, minutes) = (secs / 3600, secs / 60 % 60);
            let mut text = String::new();
            if hours > 0 {
                text.push_str(&format!("{hours}h"));
            }
            if hours > 0 || minutes > 0 {
                text.push_str(&format!("{minutes}m"));
            }
            text.push_str(&decimal(secs % 60, nanos % 1_000_000_000, 9));
            text.push('s');
            text
        }
    }
}

/// `0`, `3`, `lost (WorkerLost: ...)`, `timeout (Timeout: ...)`, `unfinished`.
fn exit_text(worker: &WorkerOutcome) -> String {
    match (worker.exit_code, &worker.error) {
        (Some(code), _) => code.to_string(),
        (None, Some(error)) => format!(
            "{} ({}: {})",
            worker.status.as_str(),
            error.kind,
            error.message
        ),
        (None, None) => WorkerStatus::Unfinished.as_str().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::tz::offset;
    use std::time::{Duration, UNIX_EPOCH};

    /// A console writing into `out` and `err`, on a terminal or not, in UTC.
    fn test_console<'a>(
        out: &'a mut Vec<u8>,
        err: &'a mut Vec<u8>,
        terminal: bool,
    ) -> Console<&'a mut Vec<u8>, &'a mut Vec<u8>> {
        Console {
            out,
            err,
            err_is_terminal: terminal,
            clock: SystemTime::now,
            time_zone: TimeZone::UTC,
        }
    }

    fn done(worker: &str, exit_code: i32) -> ClientEvent {
        ClientEvent::Done {
            worker: worker.into(),
            exit_code,
        }
    }

    fn failed(worker: &str, kind: proto::ErrorKind) -> ClientEvent {
        ClientEvent::Failed {
            worker: worker.into(),
            kind,
            message: "m".into(),
        }
    }

    /// On a terminal a fan-out request counts its workers live and ends with an aligned
    /// table sorted by outcome; without one, the plain `Exit code [w]` lines in that order.
    #[test]
    fn fleet_counts_and_table() {
        use proto::ErrorKind;
        let events = [
            ClientEvent::Routed {
                algorithm: Algorithm::Mirror,
                n_workers: 5,
            },
            failed("off1", ErrorKind::Offline),
            ClientEvent::Accepted { worker: "a".into() },
            ClientEvent::Accepted {
                worker: "bb".into(),
            },
            ClientEvent::Output {
                worker: "a".into(),
                seq: 0,
                stream: Stream::Stdout,
                data: b"0 upgraded, 0 newly installed".to_vec(),
            },
            done("a", 0),
            done("bb", 7),
            failed("c", ErrorKind::Skipped),
            ClientEvent::Accepted { worker: "d".into() },
            ClientEvent::Summary(proto::Summary {
                workers: 4,
                ok: 1,
                failed: 1,
                offline: 1,
                skipped: 1,
                ..Default::default()
            }),
        ];
        for terminal in [true, false] {
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let mut console = test_console(&mut out, &mut err, terminal);
            let mut live = LiveRender::new("dc1", "command", false);
            let mut outcome = Outcome::new("dc1", "command");
            for event in &events {
                outcome.record(event);
                live.event(&mut console, event).unwrap();
            }
            let counts = live.counts().clone();
            assert_eq!(
                (counts.ok, counts.failed, counts.running, counts.waiting()),
                (1, 1, 1, 0)
            );
            assert_eq!(
                counts.text(),
                "ok 1 · failed 1 · running 1 · waiting 0 · skipped 1 · offline 1"
            );
            outcome.finish(Duration::from_millis(30));
            live.finish(&mut console, &outcome).unwrap();
            let text = String::from_utf8(out).unwrap();
            let rows: Vec<&str> = text
                .lines()
                .filter(|l| !l.is_empty() && !l.starts_with('['))
                .collect();
            if terminal {
                let order: Vec<&str> = rows[..6]
                    .iter()
                    .map(|r| r.split_whitespace().next().unwrap())
                    .collect();
                assert_eq!(order, ["WORKER", "bb", "off1", "d", "c", "a"], "{text}");
                let column = |r: &str, word: &str| r.find(word).unwrap();
                assert_eq!(
                    column(rows[0], "OUTCOME"),
                    column(rows[2], "offline"),
                    "{text}"
                );
                assert!(
                    rows[5].contains("ok") && rows[5].ends_with("0 upgraded, 0 newly installed")
                );
                assert!(!text.contains("Exit code ["), "{text}");
            } else {
                assert!(
                    rows[0].starts_with("Exit code [off1]: offline (Offline"),
                    "{text}"
                );
                assert_eq!(rows[2], "Exit code [bb]: 7", "{text}");
            }
            assert!(
                text.contains("Summary: 4 workers, 1 ok, 1 failed, 0 timed out, 0 lost, 1 offline, 1 skipped\n"),
                "{text}"
            );
        }
    }

    /// Frames the bar drew, counted from what it writes.
    static FRAMES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    #[derive(Debug)]
    struct CountingTerm;

    impl indicatif::TermLike for CountingTerm {
        fn width(&self) -> u16 {
            120
        }
        fn move_cursor_up(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> io::Result<()> {
            self.write_str(s)
        }
        fn write_str(&self, s: &str) -> io::Result<()> {
            if s.contains("/1000") {
                FRAMES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(())
        }
        fn clear_line(&self) -> io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The bar has one redraw path: 1,000 workers accepting and ending as fast as they can,
    /// with output, redraw it at most 10 times a second (and once to start and to end).
    #[test]
    fn the_bar_redraws_at_most_ten_times_a_second() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut console = test_console(&mut out, &mut err, true);
        let mut live = LiveRender::new("dc1", "p", false);
        live.draw_target = || ProgressDrawTarget::term_like_with_hz(Box::new(CountingTerm), BAR_HZ);
        let routed = ClientEvent::Routed {
            algorithm: Algorithm::Mirror,
            n_workers: 1000,
        };
        live.event(&mut console, &routed).unwrap();
        let started = Instant::now();
        for round in 0..20u64 {
            for i in 0..1000u64 {
                let worker = format!("w{i}");
                let events = [
                    ClientEvent::Accepted {
                        worker: worker.clone(),
                    },
                    ClientEvent::Output {
                        worker: worker.clone(),
                        seq: round,
                        stream: Stream::Stdout,
                        data: b"line".to_vec(),
                    },
                ];
                for event in &events {
                    live.event(&mut console, event).unwrap();
                }
                if round == 19 {
                    let done = ClientEvent::Done {
                        worker,
                        exit_code: 0,
                    };
                    live.event(&mut console, &done).unwrap();
                }
            }
            std::thread::sleep(Duration::from_millis(15));
        }
        let elapsed = started.elapsed();
        let frames = FRAMES.load(std::sync::atomic::Ordering::Relaxed);
        let most = 2 + elapsed.as_millis() as usize / 100 + 1;
        assert!(
            frames <= most,
            "{frames} frames in {elapsed:?} (at most {most})"
        );
        assert!(frames >= 2, "the bar was drawn {frames} times");
        live.finish(&mut console, &Outcome::new("dc1", "p"))
            .unwrap();
    }

    /// A flood of output under the bar is written in batches: one redraw per tenth of a
    /// second, not one per line, and no line is lost.
    #[test]
    fn output_under_the_bar_is_batched() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut console = test_console(&mut out, &mut err, true);
        let mut live = LiveRender::new("dc1", "p", false);
        let routed = ClientEvent::Routed {
            algorithm: Algorithm::Mirror,
            n_workers: 1000,
        };
        live.event(&mut console, &routed).unwrap();
        let started = Instant::now();
        for i in 0..10_000u64 {
            let event = ClientEvent::Output {
                worker: format!("w{}", i % 1000),
                seq: i / 1000,
                stream: Stream::Stdout,
                data: b"line".to_vec(),
            };
            live.event(&mut console, &event).unwrap();
        }
        let elapsed = started.elapsed();
        let most = 1 + elapsed.as_millis() as u64 / 100 + 1;
        assert!(
            live.flushes <= most,
            "{} batches in {elapsed:?}",
            live.flushes
        );
        live.finish(&mut console, &Outcome::new("dc1", "p"))
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text.lines().filter(|l| l.starts_with("[p@w")).count(),
            10_000
        );
    }

    /// Under the bar, a worker that is offline, failed, timed out or never answered is
    /// named as it happens (on stderr, with the output lines); skipped and detached ones
    /// are counted, not listed one by one; a success is not announced.
    #[test]
    fn failing_workers_are_named_under_the_bar() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut console = test_console(&mut out, &mut err, true);
        let mut live = LiveRender::new("dc1", "p", false);
        let events = [
            ClientEvent::Routed {
                algorithm: Algorithm::Mirror,
                n_workers: 6,
            },
            ClientEvent::Failed {
                worker: "web02".into(),
                kind: ErrorKind::Offline,
                message: "worker web02 is bound to the service but offline".into(),
            },
            ClientEvent::Done {
                worker: "web03".into(),
                exit_code: 100,
            },
            ClientEvent::Done {
                worker: "web04".into(),
                exit_code: 0,
            },
            ClientEvent::Failed {
                worker: "web05".into(),
                kind: ErrorKind::NoResponse,
                message: "worker web05 did not answer before the deadline".into(),
            },
            ClientEvent::Failed {
                worker: "web06".into(),
                kind: ErrorKind::Skipped,
                message: "not started".into(),
            },
        ];
        for event in &events {
            live.event(&mut console, event).unwrap();
        }
        live.finish(&mut console, &Outcome::new("dc1", "p"))
            .unwrap();
        drop(console);
        let err = String::from_utf8(err).unwrap();
        for want in [
            "[p@web02] offline: worker web02 is bound to the service but offline",
            "[p@web03] failed (exit code 100)",
            "[p@web05] no response: worker web05 did not answer before the deadline",
        ] {
            assert!(err.contains(want), "{want}\n{err}");
        }
        assert!(
            !err.contains("[p@web04]") && !err.contains("[p@web06]"),
            "{err}"
        );
    }

    #[test]
    fn durations_are_like_go() {
        let check = |nanos: u64, want: &str| {
            assert_eq!(go_duration(Duration::from_nanos(nanos)), want, "{nanos}")
        };
        check(0, "0s");
        check(1, "1ns");
        check(999, "999ns");
        check(1_000, "1µs");
        check(1_500, "1.5µs");
        check(999_999, "999.999µs");
        check(1_000_000, "1ms");
        check(907_914_622, "907.914622ms");
        check(118_079_784, "118.079784ms");
        check(1_000_000_000, "1s");
        check(2_500_000_000, "2.5s");
        check(59_999_999_999, "59.999999999s");
        check(60_017_000_000, "1m0.017s");
        check(3_600_000_000_000, "1h0m0s");
        check(3_723_000_000_001, "1h2m3.000000001s");
        check(90_000_000_000_000, "25h0m0s");
    }

    #[test]
    fn timestamps_are_like_go_log() {
        let check = |secs: u64, time_zone: &TimeZone, want: &str| {
            let at = UNIX_EPOCH + Duration::from_secs(secs);
            assert_eq!(log_timestamp(at, time_zone), want, "{secs}")
        };
        let utc = TimeZone::UTC;
        check(0, &utc, "1970/01/01 00:00:00");
        check(1_525_122_846, &utc, "2018/04/30 21:14:06");
        check(951_868_799, &utc, "2000/02/29 23:59:59");
        check(951_868_800, &utc, "2000/03/01 00:00:00");
        check(4_102_444_800, &utc, "2100/01/01 00:00:00");
        // A zone east of UTC moves the date forward; one west, back.
        check(
            1_525_122_846,
            &TimeZone::fixed(offset(3)),
            "2018/05/01 00:14:06",
        );
        check(0, &TimeZone::fixed(offset(-5)), "1969/12/31 19:00:00");
    }
}
