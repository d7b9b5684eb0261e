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
use proto::{Algorithm, Stream, TextEnum};
use std::io::{self, Write};
use std::time::SystemTime;

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

/// Renders a request's events as they arrive (nothing in `--json` mode).
#[derive(Debug)]
pub struct LiveRender {
    service: String,
    plugin: String,
    json: bool,
    bar: Option<ProgressBar>,
}

impl LiveRender {
    /// A renderer for a request to `service` with `plugin`; `json` silences live output.
    pub fn new(service: &str, plugin: &str, json: bool) -> LiveRender {
        LiveRender {
            service: service.to_string(),
            plugin: plugin.to_string(),
            json,
            bar: None,
        }
    }

    /// Shows one event.
    pub fn event<O: Write, E: Write>(
        &mut self,
        console: &mut Console<O, E>,
        event: &ClientEvent,
    ) -> io::Result<()> {
        if self.json {
            return Ok(());
        }
        match event {
            ClientEvent::Routed {
                algorithm,
                n_workers,
            } => {
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
                if *algorithm != Algorithm::Roundrobin && console.err_is_terminal {
                    let bar = ProgressBar::with_draw_target(
                        Some(u64::from(*n_workers)),
                        ProgressDrawTarget::stderr(),
                    );
                    if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} done") {
                        bar.set_style(style);
                    }
                    self.bar = Some(bar);
                }
            }
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
                match stream {
                    Stream::Stdout => self.print(&mut console.out, &line)?,
                    Stream::Stderr => self.print(&mut console.err, &line)?,
                }
            }
            ClientEvent::Done { .. } | ClientEvent::Failed { .. } => {
                if let Some(bar) = &self.bar {
                    bar.inc(1);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Clears the progress bar and writes the final report (or the JSON document).
    pub fn finish<O: Write, E: Write>(
        &mut self,
        console: &mut Console<O, E>,
        outcome: &Outcome,
    ) -> io::Result<()> {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if self.json {
            serde_json::to_writer_pretty(&mut console.out, outcome)?;
            writeln!(console.out)?;
            return console.out.flush();
        }
        write_report(&mut console.out, &mut console.err, outcome)
    }

    /// One line, flushed at once (live), without tearing the progress bar.
    fn print(&self, to: &mut impl Write, line: &str) -> io::Result<()> {
        let mut write = || {
            writeln!(to, "{line}")?;
            to.flush()
        };
        match &self.bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }
}

/// The text report after the last event: exit codes, summary, counts and time on `out`;
/// errors on `err`.
pub fn write_report(
    out: &mut impl Write,
    err: &mut impl Write,
    outcome: &Outcome,
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
        for worker in &outcome.workers {
            writeln!(out, "Exit code [{}]: {}", worker.worker, exit_text(worker))?;
        }
        if let Some(s) = &outcome.summary {
            writeln!(
                out,
                "Summary: {} workers, {} ok, {} failed, {} timed out, {} lost",
                s.workers, s.ok, s.failed, s.timed_out, s.lost
            )?;
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
