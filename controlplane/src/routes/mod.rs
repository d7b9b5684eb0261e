//! The HTTP surface: each module owns its routes and its request and response types.
//!
//! Every route is registered through `utoipa_axum::routes!`, so the OpenAPI document is built
//! from the same list the router serves; [`ROUTES`] is that list spelled out, for tests and
//! readers.

mod broker;
mod directories;
mod events;
mod gateway;
mod login;
mod services;
mod teams;
mod triggers;
mod workers;

use crate::error::ApiError;
use crate::openapi::ApiDoc;
use crate::AppState;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use proto::control::ConfigEvent;
use proto::UnknownText;
use std::str::FromStr;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
    ("GET", "/api/v1/broker/snapshot"),
    ("POST", "/api/v1/broker/report"),
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
        .routes(routes!(broker::snapshot))
        .routes(routes!(broker::report))
        .routes(routes!(events::events))
        .routes(routes!(openapi_json))
        .routes(routes!(metrics))
}

/// The complete router with its state, fallbacks, body limit and metrics.
pub(crate) fn router(state: AppState) -> axum::Router {
    let (router, doc) = api().split_for_parts();
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

/// A timeout given as text (`"10s"`, `"1h"`) or milliseconds; `None` when neither is given.
pub(crate) fn parse_timeout(text: Option<&str>, ms: Option<u64>) -> Result<Option<i64>, ApiError> {
    let ms = match (text, ms) {
        (Some(_), Some(_)) => {
            return Err(ApiError::Unprocessable(
                "give either timeout or timeout_ms, not both".into(),
            ))
        }
        (Some(text), None) => {
            let d = humantime::parse_duration(text.trim()).map_err(|e| {
                ApiError::Unprocessable(format!("timeout `{text}` is not a duration: {e}"))
            })?;
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
        }
        (None, Some(ms)) => ms,
        (None, None) => return Ok(None),
    };
    if ms > MAX_TIMEOUT_MS {
        return Err(ApiError::Unprocessable(format!(
            "timeout is longer than {}",
            humantime::format_duration(std::time::Duration::from_millis(MAX_TIMEOUT_MS))
        )));
    }
    Ok(Some(ms as i64))
}

/// `"10s"`-style text of a timeout in milliseconds; `None` for 0 (the default).
pub(crate) fn timeout_text(ms: i64) -> Option<String> {
    (ms > 0).then(|| {
        humantime::format_duration(std::time::Duration::from_millis(ms as u64)).to_string()
    })
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
        check(None, Some(250), Some(Some(250)));
        check(None, None, Some(None));
        check(Some("soon"), None, None);
        check(Some("1s"), Some(1), None);
        check(None, Some(u64::MAX), None);
        check(Some("100000000000000h"), None, None);
        assert_eq!(timeout_text(0), None);
        assert_eq!(timeout_text(90_000).as_deref(), Some("1m 30s"));
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
