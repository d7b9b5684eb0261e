//! When a schedule is due: every so long from an anchor, or a cron expression read in an
//! IANA time zone (jiff-cron over jiff, which resolves DST gaps and folds). Times are
//! milliseconds since the Unix epoch, as the store keeps them.

use jiff::tz::TimeZone;
use jiff::Timestamp;
use std::str::FromStr;

/// Due times looked through at most to find the latest missed one (a cron expression due
/// every second, missed for a day, is 86,400).
const MAX_STEPS: usize = 200_000;

/// A schedule's timetable.
#[derive(Debug, Clone)]
pub(crate) enum Timetable {
    /// Due at `anchor + k * every` for every whole `k`.
    Every { every_ms: i64, anchor_ms: i64 },
    /// Due when the expression matches the wall clock of `tz`.
    Cron {
        schedule: Box<jiff_cron::Schedule>,
        tz: TimeZone,
    },
}

/// Why a timetable cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BadTimetable {
    #[error("cron `{expression}` does not read: {why}")]
    Cron { expression: String, why: String },
    #[error("time zone `{0}` is not an IANA time zone such as Europe/Berlin")]
    Zone(String),
    #[error("every must be at least 1s")]
    TooOften,
}

impl Timetable {
    /// `every` milliseconds from `anchor_ms`.
    pub fn every(every_ms: i64, anchor_ms: i64) -> Result<Timetable, BadTimetable> {
        if every_ms < 1000 {
            return Err(BadTimetable::TooOften);
        }
        Ok(Timetable::Every {
            every_ms,
            anchor_ms,
        })
    }

    /// A cron expression of five fields (minute first), six or seven (second first), or a
    /// shorthand (`@daily`), in time zone `zone` (`UTC` when absent).
    pub fn cron(expression: &str, zone: Option<&str>) -> Result<Timetable, BadTimetable> {
        let zone = zone.unwrap_or("UTC");
        let tz = jiff::tz::db()
            .get(zone)
            .map_err(|_| BadTimetable::Zone(zone.to_string()))?;
        // jiff-cron's expressions start with seconds; the common five-field form has none.
        let full = match expression.split_whitespace().count() {
            5 => format!("0 {expression}"),
            _ => expression.to_string(),
        };
        let schedule = jiff_cron::Schedule::from_str(&full).map_err(|e| BadTimetable::Cron {
            expression: expression.to_string(),
            why: e.to_string(),
        })?;
        Ok(Timetable::Cron {
            schedule: Box::new(schedule),
            tz,
        })
    }

    /// The first due time strictly after `after_ms`; `None` when there is none (a cron
    /// expression whose years are over).
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        match self {
            Timetable::Every {
                every_ms,
                anchor_ms,
            } => {
                let k = (after_ms - anchor_ms).div_euclid(*every_ms) + 1;
                Some(anchor_ms + k * every_ms)
            }
            Timetable::Cron { schedule, tz } => {
                let at = Timestamp::from_millisecond(after_ms).ok()?;
                let next = schedule.after(at.to_zoned(tz.clone())).next()?;
                Some(next.timestamp().as_millisecond())
            }
        }
    }

    /// The due times from `first` (a due time) up to `now`: how many, and the latest.
    /// `None` when `first` is after `now`.
    pub fn passed(&self, first: i64, now: i64) -> Option<(u64, i64)> {
        if first > now {
            return None;
        }
        if let Timetable::Every { every_ms, .. } = self {
            let n = (now - first) / every_ms;
            return Some((n as u64 + 1, first + n * every_ms));
        }
        let (mut n, mut latest) = (1, first);
        for _ in 0..MAX_STEPS {
            match self.next_after(latest) {
                Some(next) if next <= now => (n, latest) = (n + 1, next),
                _ => break,
            }
        }
        Some((n, latest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> i64 {
        text.parse::<Timestamp>().unwrap().as_millisecond()
    }

    fn next_times(t: &Timetable, from: &str, n: usize) -> Vec<String> {
        let mut at = ms(from);
        let mut out = Vec::new();
        for _ in 0..n {
            at = t.next_after(at).unwrap();
            out.push(Timestamp::from_millisecond(at).unwrap().to_string());
        }
        out
    }

    /// Daily at 02:30 and 09:00 in Berlin across both DST changes of 2026: 02:30 does not
    /// exist on 29 March (it runs once, at 03:30 CEST, the instant jiff gives the gap) and
    /// happens twice on 25 October (it runs once); 09:00 moves between 08:00 and 07:00 UTC.
    #[test]
    fn cron_across_dst_in_berlin() {
        let t = Timetable::cron("30 2 * * *", Some("Europe/Berlin")).unwrap();
        assert_eq!(
            next_times(&t, "2026-03-27T12:00:00Z", 4),
            [
                "2026-03-28T01:30:00Z", // CET, UTC+1
                "2026-03-29T01:30:00Z", // the gap: 02:30 is 03:30 CEST
                "2026-03-30T00:30:00Z", // CEST, UTC+2
                "2026-03-31T00:30:00Z",
            ]
        );
        let fall = next_times(&t, "2026-10-23T12:00:00Z", 4);
        assert_eq!(
            fall,
            [
                "2026-10-24T00:30:00Z", // CEST
                "2026-10-25T00:30:00Z", // the fold: the first 02:30, once
                "2026-10-26T01:30:00Z", // CET
                "2026-10-27T01:30:00Z",
            ]
        );
        let nine = Timetable::cron("0 0 9 * * Mon-Fri", Some("Europe/Berlin")).unwrap();
        assert_eq!(
            next_times(&nine, "2026-03-26T12:00:00Z", 3),
            [
                "2026-03-27T08:00:00Z", // Friday, CET
                "2026-03-30T07:00:00Z", // Monday, CEST
                "2026-03-31T07:00:00Z",
            ]
        );
    }

    #[test]
    fn every_counts_from_its_anchor_and_passed_finds_the_latest() {
        let t = Timetable::every(2000, 1_000).unwrap();
        assert_eq!(t.next_after(1_000), Some(3_000));
        assert_eq!(t.next_after(2_999), Some(3_000));
        assert_eq!(t.next_after(3_000), Some(5_000));
        assert_eq!(t.passed(3_000, 2_000), None);
        assert_eq!(t.passed(3_000, 3_000), Some((1, 3_000)));
        assert_eq!(t.passed(3_000, 8_500), Some((3, 7_000)));
        let c = Timetable::cron("0 * * * *", None).unwrap();
        let first = ms("2026-01-01T10:00:00Z");
        assert_eq!(
            c.passed(first, ms("2026-01-01T12:30:00Z")),
            Some((3, ms("2026-01-01T12:00:00Z")))
        );
    }

    #[test]
    fn bad_timetables_are_typed_errors() {
        assert!(matches!(
            Timetable::cron("61 * * * *", None),
            Err(BadTimetable::Cron { .. })
        ));
        assert!(matches!(
            Timetable::cron("not cron", None),
            Err(BadTimetable::Cron { .. })
        ));
        assert!(matches!(
            Timetable::cron("0 3 * * *", Some("Mars/Olympus")),
            Err(BadTimetable::Zone(_))
        ));
        assert!(matches!(
            Timetable::every(999, 0),
            Err(BadTimetable::TooOften)
        ));
    }
}
