//! The HTTP surface: each module owns its routes and its request and response types.
//!
//! Every route is registered through `utoipa_axum::routes!`, so the OpenAPI document is built
//! from the same list the router serves; [`ROUTES`] is that list spelled out, for tests and
//! readers.

mod broker;
mod directories;
pub(crate) mod events;
mod gateway;
mod invitations;
mod jobs;
mod login;
mod services;
mod teams;
mod triggers;
mod users;
mod workers;

pub(crate) use jobs::prune as prune_jobs;
pub(crate) use jobs::{JOBS_MAX_BODY, JOBS_PATH};
pub(crate) use users::MAX_SECRET;
pub(crate) use workers::MAX_DESCRIPTION;

use crate::error::ApiError;
use crate::openapi::ApiDoc;
use crate::AppState;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use proto::control::ConfigEvent;
use proto::UnknownText;
use std::str::FromStr;
use std::sync::OnceLock;
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

/// The most services one worker's state report may list (a worker announces a handful).
pub(crate) const MAX_ANNOUNCED: usize = 64;

/// Every (method, path) the router serves; the OpenAPI document lists exactly these.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/login"),
    ("GET", "/api/v1/teams"),
    ("POST", "/api/v1/teams"),
    ("GET", "/api/v1/teams/{team}"),
    ("DELETE", "/api/v1/teams/{team}"),
    ("GET", "/api/v1/teams/{team}/members"),
    ("POST", "/api/v1/teams/{team}/members"),
    ("PATCH", "/api/v1/teams/{team}/members/{identity}"),
    ("DELETE", "/api/v1/teams/{team}/members/{identity}"),
    ("GET", "/api/v1/teams/{team}/quota"),
    ("PUT", "/api/v1/teams/{team}/quota"),
    ("GET", "/api/v1/teams/{team}/invitations"),
    ("POST", "/api/v1/teams/{team}/invitations"),
    ("DELETE", "/api/v1/teams/{team}/invitations/{identity}"),
    ("GET", "/api/v1/invitations"),
    ("POST", "/api/v1/invitations/{team}/accept"),
    ("DELETE", "/api/v1/invitations/{team}"),
    ("GET", "/api/v1/workers"),
    ("POST", "/api/v1/workers"),
    ("GET", "/api/v1/workers/{identity}"),
    ("PATCH", "/api/v1/workers/{identity}"),
    ("DELETE", "/api/v1/workers/{identity}"),
    ("POST", "/api/v1/workers/{identity}/regenerate"),
    ("GET", "/api/v1/services"),
    ("POST", "/api/v1/services"),
    ("GET", "/api/v1/services/{name}"),
    ("PATCH", "/api/v1/services/{name}"),
    ("DELETE", "/api/v1/services/{name}"),
    ("POST", "/api/v1/services/{name}/workers"),
    ("DELETE", "/api/v1/services/{name}/workers/{identity}"),
    ("POST", "/api/v1/services/{name}/requests"),
    ("GET", "/api/v1/directories"),
    ("POST", "/api/v1/directories"),
    ("DELETE", "/api/v1/directories/{name}"),
    ("GET", "/api/v1/triggers"),
    ("POST", "/api/v1/triggers"),
    ("GET", "/api/v1/triggers/{id}"),
    ("PATCH", "/api/v1/triggers/{id}"),
    ("DELETE", "/api/v1/triggers/{id}"),
    ("POST", "/api/v1/triggers/{id}/hits"),
    ("GET", "/api/v1/users/{identity}"),
    ("PATCH", "/api/v1/users/{identity}"),
    ("PUT", "/api/v1/users/{identity}/secret"),
    ("GET", "/api/v1/broker/snapshot"),
    ("POST", "/api/v1/broker/report"),
    ("POST", "/api/v1/broker/jobs"),
    ("GET", "/api/v1/jobs"),
    ("GET", "/api/v1/jobs/{id}"),
    ("GET", "/api/v1/events"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/metrics"),
];

fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(login::login))
        .routes(routes!(teams::list_teams, teams::create_team))
        .routes(routes!(teams::get_team, teams::delete_team))
        .routes(routes!(teams::list_members, teams::add_member))
        .routes(routes!(teams::update_member, teams::remove_member))
        .routes(routes!(teams::get_quota, teams::set_quota))
        .routes(routes!(
            invitations::list_team_invitations,
            invitations::create_invitation
        ))
        .routes(routes!(invitations::withdraw_invitation))
        .routes(routes!(invitations::list_my_invitations))
        .routes(routes!(invitations::accept_invitation))
        .routes(routes!(invitations::decline_invitation))
        .routes(routes!(workers::list_workers, workers::create_worker))
        .routes(routes!(
            workers::get_worker,
            workers::update_worker,
            workers::delete_worker
        ))
        .routes(routes!(workers::regenerate_token))
        .routes(routes!(services::list_services, services::create_service))
        .routes(routes!(
            services::get_service,
            services::update_service,
            services::delete_service
        ))
        .routes(routes!(services::add_service_worker))
        .routes(routes!(services::remove_service_worker))
        .routes(routes!(gateway::run_request))
        .routes(routes!(
            directories::list_directories,
            directories::create_directory
        ))
        .routes(routes!(directories::delete_directory))
        .routes(routes!(triggers::list_triggers, triggers::create_trigger))
        .routes(routes!(
            triggers::get_trigger,
            triggers::update_trigger,
            triggers::delete_trigger
        ))
        .routes(routes!(triggers::add_hits))
        .routes(routes!(users::get_user, users::update_user))
        .routes(routes!(users::change_secret))
        .routes(routes!(broker::snapshot))
        .routes(routes!(broker::report))
        .routes(routes!(jobs::ingest).layer(DefaultBodyLimit::max(jobs::JOBS_MAX_BODY)))
        .routes(routes!(jobs::list_jobs))
        .routes(routes!(jobs::get_job))
        .routes(routes!(events::events))
        .routes(routes!(openapi_json))
        .routes(routes!(metrics))
}

/// The complete router with its state, fallbacks, body limit and metrics.
pub(crate) fn router(state: AppState) -> axum::Router {
    let (router, mut doc) = api().split_for_parts();
    crate::openapi::layer_responses(&mut doc);
    state.openapi_json.get_or_init(|| {
        doc.to_pretty_json()
            .unwrap_or_else(|_| "{\"openapi\":\"3.1.0\"}".to_string())
    });
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.settings.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::extract::buffer_body,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::track,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The OpenAPI document of this API.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
async fn openapi_json(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> impl IntoResponse {
    let text = state.openapi_json.get().cloned().unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        text,
    )
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(axum::extract::State(state): axum::extract::State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        state.metrics.render(),
    )
}

/// Refuses names that break `proto::names` rules with 422.
pub(crate) fn check_name(what: &'static str, name: &str) -> Result<(), ApiError> {
    proto::names::check_simple(what, name).map_err(|e| ApiError::Unprocessable(e.to_string()))
}

/// A configuration event.
pub(crate) fn config_event(
    revision: i64,
    team: &str,
    object: &str,
    action: &str,
    name: &str,
) -> ConfigEvent {
    ConfigEvent {
        revision: u64::try_from(revision).unwrap_or(0),
        team: team.to_string(),
        object: object.to_string(),
        action: action.to_string(),
        name: name.to_string(),
    }
}

/// Longest timeout we store: a week (anything longer is a mistake, and it keeps
/// milliseconds far from integer overflow).
pub(crate) const MAX_TIMEOUT_MS: u64 = 7 * 24 * 3600 * 1000;

/// The units a timeout may be written in, largest first, with their milliseconds.
const TIMEOUT_UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

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

/// The one rule for timeouts written as text, as a regular expression: the request
/// validation runs it and the OpenAPI document states it. A timeout is one term (`90s`,
/// `1500ms`, `168h`, `7d`: at most [`MAX_TIMEOUT_MS`]) or terms in descending units,
/// separated by one space, where every term after the first is below one of the unit before
/// it (`1h 30m`, `6d 23h 59m 59s 999ms`), and the first is below the maximum in its unit, so
/// that every text it accepts is at most a week. Units: `d`, `h`, `m`, `s`, `ms`.
pub(crate) fn timeout_pattern() -> &'static str {
    static PATTERN: OnceLock<String> = OnceLock::new();
    PATTERN.get_or_init(|| {
        let mut alternatives = Vec::new();
        for (unit, ms) in TIMEOUT_UNITS {
            alternatives.push(format!("{}{unit}", int_range(MAX_TIMEOUT_MS / ms)));
        }
        for (i, (unit, ms)) in TIMEOUT_UNITS
            .iter()
            .enumerate()
            .take(TIMEOUT_UNITS.len() - 1)
        {
            let mut alternative = format!("{}{unit}", int_range(MAX_TIMEOUT_MS / ms - 1));
            for pair in TIMEOUT_UNITS[i..].windows(2) {
                let ((_, above), (lower, lower_ms)) = (pair[0], pair[1]);
                alternative.push_str(&format!("(?: {}{lower})?", int_range(above / lower_ms - 1)));
            }
            alternatives.push(alternative);
        }
        format!("^(?:{})$", alternatives.join("|"))
    })
}

fn timeout_regex() -> &'static regex::Regex {
    static REGEX: OnceLock<regex::Regex> = OnceLock::new();
    REGEX.get_or_init(|| regex::Regex::new(timeout_pattern()).expect("the timeout pattern"))
}

/// Milliseconds of a timeout text that matches [`timeout_pattern`].
fn timeout_text_ms(text: &str) -> Option<u64> {
    if !timeout_regex().is_match(text) {
        return None;
    }
    let mut total: u64 = 0;
    for term in text.split(' ') {
        let at = term.find(|c: char| !c.is_ascii_digit())?;
        let (number, unit) = term.split_at(at);
        let (_, ms) = TIMEOUT_UNITS.iter().find(|(u, _)| *u == unit)?;
        total = total.checked_add(number.parse::<u64>().ok()?.checked_mul(*ms)?)?;
    }
    Some(total)
}

/// A timeout given as text (`"10s"`, `"1h 30m"`, see [`timeout_pattern`]) or milliseconds;
/// `None` when neither is given.
pub(crate) fn parse_timeout(text: Option<&str>, ms: Option<u64>) -> Result<Option<i64>, ApiError> {
    let ms = match (text, ms) {
        (Some(_), Some(_)) => {
            return Err(ApiError::Unprocessable(
                "give either timeout or timeout_ms, not both".into(),
            ))
        }
        (Some(text), None) => timeout_text_ms(text).ok_or_else(|| {
            ApiError::Unprocessable(format!(
                "timeout `{text}` is not a duration of at most 7d such as `10s`, `1500ms`, \
                 `1h 30m` or `7d`"
            ))
        })?,
        (None, Some(ms)) => ms,
        (None, None) => return Ok(None),
    };
    if ms > MAX_TIMEOUT_MS {
        return Err(ApiError::Unprocessable(format!(
            "timeout is longer than {}",
            timeout_text(MAX_TIMEOUT_MS as i64).unwrap_or_default()
        )));
    }
    Ok(Some(ms as i64))
}

/// The text of a timeout in milliseconds (`"1h 30m"`), in the form [`parse_timeout`] reads;
/// `None` for 0 (the default).
pub(crate) fn timeout_text(ms: i64) -> Option<String> {
    let mut rest = u64::try_from(ms).ok().filter(|ms| *ms > 0)?;
    let mut terms = Vec::new();
    for (unit, unit_ms) in TIMEOUT_UNITS {
        if rest >= unit_ms {
            terms.push(format!("{}{unit}", rest / unit_ms));
            rest %= unit_ms;
        }
    }
    Some(terms.join(" "))
}

/// The caller may change an object: they own it or are an admin of its team.
pub(crate) fn may_modify(user: &crate::auth::AuthUser, owner: &str) -> Result<(), ApiError> {
    if user.role == "admin" || user.identity == owner {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "only its owner {owner} or an admin of team {} may change it",
            user.team
        )))
    }
}

/// A stored row whose enum text names no known value (edited by hand, or written by a newer
/// version). The text is never guessed at: lists and the broker snapshot leave the row out,
/// a read of that one object answers `Internal`, and each says so in an error log line.
#[derive(Debug, thiserror::Error)]
#[error("{object} {name} of team {team} cannot be read: {source}")]
pub(crate) struct Unreadable {
    object: &'static str,
    team: String,
    name: String,
    #[source]
    source: UnknownText,
}

impl From<Unreadable> for ApiError {
    fn from(e: Unreadable) -> ApiError {
        ApiError::Internal(e.to_string())
    }
}

/// Reads the stored text of one enum column of `object` `name` in `team`.
pub(crate) fn stored<T: FromStr<Err = UnknownText>>(
    text: &str,
    object: &'static str,
    team: &str,
    name: &str,
) -> Result<T, Unreadable> {
    text.parse().map_err(|source| Unreadable {
        object,
        team: team.to_string(),
        name: name.to_string(),
        source,
    })
}

/// The rows that could be read; every other one is logged and left out of `answer`.
pub(crate) fn readable<V>(
    answer: &'static str,
    rows: impl IntoIterator<Item = Result<V, Unreadable>>,
) -> Vec<V> {
    rows.into_iter()
        .filter_map(|row| {
            row.map_err(|e| tracing::error!(error = %e, left_out_of = answer, "unreadable row"))
                .ok()
        })
        .collect()
}

/// Fails with `QuotaExceeded` when `used` has reached `limit` (`None`: unlimited).
pub(crate) fn check_quota(
    team: &str,
    what: &'static str,
    limit: Option<i64>,
    used: i64,
) -> Result<(), ApiError> {
    match limit {
        Some(limit) if used >= limit => Err(ApiError::QuotaExceeded {
            team: team.to_string(),
            limit,
            what,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        let check = |text: Option<&str>, ms: Option<u64>, want: Option<Option<i64>>| {
            let got = parse_timeout(text, ms).ok();
            assert_eq!(got, want, "{text:?} {ms:?}");
        };
        check(Some("10s"), None, Some(Some(10_000)));
        check(Some("1h"), None, Some(Some(3_600_000)));
        check(Some("1h 30m"), None, Some(Some(5_400_000)));
        check(Some("168h"), None, Some(Some(604_800_000)));
        check(Some("7d"), None, Some(Some(604_800_000)));
        check(Some("604800000ms"), None, Some(Some(604_800_000)));
        check(Some("6d 23h 59m 59s 999ms"), None, Some(Some(604_799_999)));
        check(Some("0s"), None, Some(Some(0)));
        check(None, Some(250), Some(Some(250)));
        check(None, None, Some(None));
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
            check(Some(bad), None, None);
        }
        check(Some("1s"), Some(1), None);
        check(None, Some(u64::MAX), None);
        check(None, Some(MAX_TIMEOUT_MS + 1), None);
        assert_eq!(timeout_text(0), None);
        assert_eq!(timeout_text(90_000).as_deref(), Some("1m 30s"));
        assert_eq!(timeout_text(604_800_000).as_deref(), Some("7d"));
    }

    /// Every timeout text is read back as the same milliseconds, and every text the pattern
    /// accepts is at most a week.
    #[test]
    fn timeout_texts_round_trip() {
        let mut ms: u64 = 1;
        while ms <= MAX_TIMEOUT_MS {
            for n in [ms, ms + 1, MAX_TIMEOUT_MS - ms, ms * 7 + 999] {
                let n = n.min(MAX_TIMEOUT_MS);
                let text = timeout_text(n as i64).unwrap_or_else(|| "0s".into());
                assert_eq!(
                    parse_timeout(Some(&text), None).ok(),
                    Some(Some(n as i64)),
                    "{text}"
                );
            }
            ms = ms * 3 + 1;
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

    #[test]
    fn unreadable_rows_are_left_out_or_internal() {
        let read = |text: &str| stored::<proto::Algorithm>(text, "service", "main", "s");
        assert_eq!(read("mirror").ok(), Some(proto::Algorithm::Mirror));
        let err = read("random").unwrap_err();
        assert_eq!(
            err.to_string(),
            "service s of team main cannot be read: unknown algorithm `random` \
             (expected one of roundrobin, mirror, serial)"
        );
        assert_eq!(
            readable("a list", [read("serial"), read(""), read("mirror")]).len(),
            2
        );
        let api: ApiError = err.into();
        assert_eq!(api.status_code().1, "Internal");
    }

    #[test]
    fn quotas() {
        assert!(check_quota("t", "triggers", None, 1_000).is_ok());
        assert!(check_quota("t", "triggers", Some(3), 2).is_ok());
        let err = check_quota("main", "triggers", Some(3), 3).unwrap_err();
        assert_eq!(err.to_string(), "team main allows 3 triggers");
    }
}
