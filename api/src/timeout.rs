//! Timeouts as the API writes them: text such as `"10s"` or `"1h 30m"`, at most a week.
//!
//! One rule, [`pattern`], a regular expression: the control plane checks a request's text
//! with it and the OpenAPI document states it.

use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// Longest timeout the API takes: a week (anything longer is a mistake, and it keeps
/// milliseconds far from integer overflow).
pub const MAX_TIMEOUT_MS: u64 = 7 * 24 * 3600 * 1000;

/// The units a timeout may be written in, largest first, with their milliseconds.
const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// A timeout as text (`"10s"`, `"1h 30m"`): a request's text as it was sent, read by
/// [`Timeout::ms`] (so that text which breaks the rule is refused by the handler, 422, as
/// every other rule is), or an answer's, made by [`Timeout::from_ms`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timeout(String);

/// Text that is not a timeout by [`pattern`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("timeout `{0}` is not a duration of at most 7d such as `10s`, `1500ms`, `1h 30m` or `7d`")]
pub struct BadTimeout(pub String);

impl Timeout {
    /// The text as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its milliseconds, when the text follows [`pattern`] (every such text is at most
    /// [`MAX_TIMEOUT_MS`]).
    pub fn ms(&self) -> Result<u64, BadTimeout> {
        let bad = || BadTimeout(self.0.clone());
        if !regex().is_match(&self.0) {
            return Err(bad());
        }
        let mut total: u64 = 0;
        for term in self.0.split(' ') {
            let at = term.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
            let (number, unit) = term.split_at(at);
            let (_, ms) = UNITS.iter().find(|(u, _)| *u == unit).ok_or_else(bad)?;
            let n: u64 = number.parse().map_err(|_| bad())?;
            total = n
                .checked_mul(*ms)
                .and_then(|t| t.checked_add(total))
                .ok_or_else(bad)?;
        }
        Ok(total)
    }

    /// The text of `ms` milliseconds (`"1h 30m"`), in the form [`Timeout::ms`] reads; `None`
    /// for 0 (the default).
    pub fn from_ms(ms: u64) -> Option<Timeout> {
        let mut rest = ms;
        if rest == 0 {
            return None;
        }
        let mut terms = Vec::new();
        for (unit, unit_ms) in UNITS {
            if rest >= unit_ms {
                terms.push(format!("{}{unit}", rest / unit_ms));
                rest %= unit_ms;
            }
        }
        Some(Timeout(terms.join(" ")))
    }
}

impl From<&str> for Timeout {
    fn from(text: &str) -> Timeout {
        Timeout(text.to_string())
    }
}

impl std::fmt::Display for Timeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A regular expression for the decimal integers `0..=max`, without leading zeros.
fn int_range(max: u64) -> String {
    let digits: Vec<u8> = max.to_string().bytes().map(|b| b - b'0').collect();
    let len = digits.len();
    let any = |n: usize| match n {
        0 => String::new(),
        1 => "[0-9]".to_string(),
        n => format!("[0-9]{{{n}}}"),
    };
    let between = |low: u8, high: u8| match high - low {
        0 => low.to_string(),
        _ => format!("[{low}-{high}]"),
    };
    if len == 1 {
        return between(0, digits[0]);
    }
    // Every number with fewer digits.
    let mut alternatives = vec!["[0-9]".to_string()];
    match len {
        2 => {}
        3 => alternatives.push("[1-9][0-9]".into()),
        _ => alternatives.push(format!("[1-9][0-9]{{1,{}}}", len - 2)),
    }
    // Numbers with as many digits as `max` and not above it: the first `i` digits of `max`,
    // then a smaller digit, then anything.
    for i in 0..len {
        let low = u8::from(i == 0);
        if digits[i] > low {
            let prefix: String = digits[..i].iter().map(u8::to_string).collect();
            alternatives.push(format!(
                "{prefix}{}{}",
                between(low, digits[i] - 1),
                any(len - i - 1)
            ));
        }
    }
    alternatives.push(max.to_string());
    format!("(?:{})", alternatives.join("|"))
}

/// The one rule for timeouts written as text, as a regular expression. A timeout is one
/// term (`90s`, `1500ms`, `168h`, `7d`: at most [`MAX_TIMEOUT_MS`]) or terms in descending
/// units, separated by one space, where every term after the first is below one of the unit
/// before it (`1h 30m`, `6d 23h 59m 59s 999ms`), and the first is below the maximum in its
/// unit, so that every text it accepts is at most a week. Units: `d`, `h`, `m`, `s`, `ms`.
pub fn pattern() -> &'static str {
    static PATTERN: OnceLock<String> = OnceLock::new();
    PATTERN.get_or_init(|| {
        let mut alternatives = Vec::new();
        for (unit, ms) in UNITS {
            alternatives.push(format!("{}{unit}", int_range(MAX_TIMEOUT_MS / ms)));
        }
        for (i, (unit, ms)) in UNITS.iter().enumerate().take(UNITS.len() - 1) {
            let mut alternative = format!("{}{unit}", int_range(MAX_TIMEOUT_MS / ms - 1));
            for pair in UNITS[i..].windows(2) {
                let ((_, above), (lower, lower_ms)) = (pair[0], pair[1]);
                alternative.push_str(&format!("(?: {}{lower})?", int_range(above / lower_ms - 1)));
            }
            alternatives.push(alternative);
        }
        format!("^(?:{})$", alternatives.join("|"))
    })
}

fn regex() -> &'static regex::Regex {
    static REGEX: OnceLock<regex::Regex> = OnceLock::new();
    REGEX.get_or_init(|| regex::Regex::new(pattern()).expect("the timeout pattern"))
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Timeout {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        proto::openapi::string(
            "A duration of at most 7 days: one term (`90s`, `1500ms`, `168h`, `7d`) or terms in \
             descending units separated by one space, each after the first below one of the \
             unit before it (`1h 30m`, `6d 23h 59m 59s 999ms`). Units: `d`, `h`, `m`, `s`, \
             `ms`. `0s`: the default.",
        )
        .pattern(Some(pattern()))
        .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Timeout {}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> Option<u64> {
        Timeout::from(text).ms().ok()
    }

    #[test]
    fn timeouts() {
        for (text, want) in [
            ("10s", 10_000),
            ("1h", 3_600_000),
            ("1h 30m", 5_400_000),
            ("168h", 604_800_000),
            ("7d", 604_800_000),
            ("604800000ms", 604_800_000),
            ("6d 23h 59m 59s 999ms", 604_799_999),
            ("0s", 0),
        ] {
            assert_eq!(ms(text), Some(want), "{text}");
        }
        for bad in [
            "soon",
            "",
            " 10s",
            "10s ",
            "10 s",
            "1h30m",
            "10sec",
            "01s",
            "1.5s",
            "-1s",
            "169h",
            "8d",
            "604800001ms",
            "7d 1ms",
            "168h 0m",
            "1h 60m",
            "1m 1h",
            "1s 1s",
            "1h  30m",
            "100000000000000h",
        ] {
            assert_eq!(ms(bad), None, "{bad}");
            assert_eq!(Timeout::from(bad).ms(), Err(BadTimeout(bad.into())));
        }
        assert_eq!(Timeout::from_ms(0), None);
        assert_eq!(Timeout::from_ms(90_000).unwrap().as_str(), "1m 30s");
        assert_eq!(Timeout::from_ms(604_800_000).unwrap().as_str(), "7d");
        assert_eq!(
            serde_json::to_string(&Timeout::from_ms(1500)).unwrap(),
            "\"1s 500ms\""
        );
        let read: Timeout = serde_json::from_str("\"soon\"").unwrap();
        assert_eq!(read.as_str(), "soon");
    }

    /// Every timeout text is read back as the same milliseconds, and every text the pattern
    /// accepts is at most a week.
    #[test]
    fn timeout_texts_round_trip() {
        let mut n: u64 = 1;
        while n <= MAX_TIMEOUT_MS {
            for n in [n, n + 1, MAX_TIMEOUT_MS - n, n * 7 + 999] {
                let n = n.min(MAX_TIMEOUT_MS);
                let text = Timeout::from_ms(n).unwrap_or_else(|| "0s".into());
                assert_eq!(text.ms(), Ok(n), "{text}");
            }
            n = n * 3 + 1;
        }
    }

    /// `int_range` against counting, around every length of number.
    #[test]
    fn integer_ranges() {
        for max in [
            0, 5, 9, 10, 11, 19, 23, 59, 99, 100, 101, 167, 999, 1000, 10079, 604799,
        ] {
            let re = regex::Regex::new(&format!("^{}$", int_range(max))).unwrap();
            for n in 0..=(max + 120) {
                assert_eq!(re.is_match(&n.to_string()), n <= max, "{n} against {max}");
            }
            assert!(!re.is_match(&format!("0{max}")), "leading zero");
            assert!(!re.is_match(""), "empty");
        }
    }
}
