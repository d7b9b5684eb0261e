//! The HTTP surface: the router, and one module of handlers per resource, taking and
//! answering the `api` crate's types.
//!
//! Every route is registered through `utoipa_axum::routes!`, so the OpenAPI document is built
//! from the same list the router serves; [`ROUTES`] is that list spelled out, for tests and
//! readers.

mod broker;
mod directories;
pub(crate) mod events;
pub(crate) mod gateway;
mod invitations;
pub(crate) mod jobs;
pub(crate) mod login;
pub(crate) mod nodes;
mod quotas;
pub(crate) mod schedules;
pub(crate) mod services;
mod teams;
mod triggers;
mod users;
pub(crate) mod workers;

pub(crate) use jobs::prune as prune_jobs;

use crate::error::ApiError;
use crate::openapi::ApiDoc;
use crate::state::AppState;
use api::broker::JOBS_MAX_BODY;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

/// Every (method, path) the API serves; the OpenAPI document lists exactly these (the router
/// also serves the web view's, `crate::web::WEB_ROUTES`).
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
    ("GET", "/api/v1/quotas"),
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
    ("PATCH", "/api/v1/directories/{path}"),
    ("DELETE", "/api/v1/directories/{path}"),
    ("GET", "/api/v1/triggers"),
    ("POST", "/api/v1/triggers"),
    ("GET", "/api/v1/triggers/{id}"),
    ("PATCH", "/api/v1/triggers/{id}"),
    ("DELETE", "/api/v1/triggers/{id}"),
    ("POST", "/api/v1/triggers/{id}/hits"),
    ("GET", "/api/v1/users"),
    ("GET", "/api/v1/schedules"),
    ("POST", "/api/v1/schedules"),
    ("GET", "/api/v1/schedules/{name}"),
    ("DELETE", "/api/v1/schedules/{name}"),
    ("POST", "/api/v1/schedules/{name}/run"),
    ("POST", "/api/v1/schedules/{name}/pause"),
    ("POST", "/api/v1/schedules/{name}/resume"),
    ("GET", "/api/v1/users/{identity}"),
    ("PATCH", "/api/v1/users/{identity}"),
    ("PUT", "/api/v1/users/{identity}/secret"),
    ("GET", "/api/v1/broker/snapshot"),
    ("POST", "/api/v1/broker/report"),
    ("PUT", "/api/v1/broker/nodes/{node}"),
    ("DELETE", "/api/v1/broker/nodes/{node}"),
    ("GET", "/api/v1/brokers"),
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
        .routes(routes!(quotas::get_quota, quotas::set_quota))
        .routes(routes!(quotas::list_quotas))
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
        .routes(routes!(
            directories::update_directory,
            directories::delete_directory
        ))
        .routes(routes!(triggers::list_triggers, triggers::create_trigger))
        .routes(routes!(
            triggers::get_trigger,
            triggers::update_trigger,
            triggers::delete_trigger
        ))
        .routes(routes!(triggers::add_hits))
        .routes(routes!(users::list_users))
        .routes(routes!(
            schedules::list_schedules,
            schedules::create_schedule
        ))
        .routes(routes!(schedules::get_schedule, schedules::delete_schedule))
        .routes(routes!(schedules::run_schedule))
        .routes(routes!(schedules::pause_schedule))
        .routes(routes!(schedules::resume_schedule))
        .routes(routes!(users::get_user, users::update_user))
        .routes(routes!(users::change_secret))
        .routes(routes!(broker::snapshot))
        .routes(routes!(broker::report))
        .routes(routes!(nodes::heartbeat, nodes::leave))
        .routes(routes!(nodes::list_brokers))
        .routes(routes!(jobs::ingest).layer(DefaultBodyLimit::max(JOBS_MAX_BODY)))
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
        .merge(crate::web::router(state.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.settings.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::extract::buffer_body,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
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
