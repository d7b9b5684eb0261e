//! Extractors whose rejections are our JSON errors instead of axum's plain text.
//!
//! They also refuse NUL characters in any string: PostgreSQL cannot store them in text and
//! would fail the query, and no name, secret or description needs one.

use crate::error::ApiError;
use crate::json::{nul_error, parse_json};
use crate::settings::HTTP_BODY_MIN_RATE;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::State;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// `axum::Json`, rejecting with `BadRequest` / `PayloadTooLarge` JSON errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let JsonBody(body) = JsonBody::from_request(req, state).await?;
        parse_json(&body, state.settings.max_body_bytes).map(Json)
    }
}

/// A JSON request body, not parsed yet (the content type checked, the body read): for a
/// handler that parses it elsewhere with `json::parse_json` (the job history's, on its own
/// thread).
#[derive(Debug, Clone)]
pub struct JsonBody(pub axum::body::Bytes);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if !json_content_type(req.headers()) {
            return Err(ApiError::BadRequest(
                "expected `Content-Type: application/json`".into(),
            ));
        }
        match axum::body::Bytes::from_request(req, state).await {
            Ok(body) => Ok(JsonBody(body)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::PayloadTooLarge(state.settings.max_body_bytes))
            }
            Err(rejection) => Err(ApiError::BadRequest(rejection.body_text())),
        }
    }
}

/// Whether the request says its body is JSON (`application/json`, or `application/*+json`),
/// as `axum::Json` asks.
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(Ok(text)) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .map(|v| v.to_str())
    else {
        return false;
    };
    let Ok(mime) = text.parse::<mime::Mime>() else {
        return false;
    };
    mime.type_() == "application"
        && (mime.subtype() == "json" || mime.suffix().is_some_and(|s| s == "json"))
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Path`, rejecting with a `BadRequest` JSON error.
#[derive(Debug, Clone)]
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if parts.uri.path().to_ascii_lowercase().contains("%00") {
            return Err(nul_error());
        }
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => Err(path_rejection(rejection)),
        }
    }
}

fn path_rejection(rejection: PathRejection) -> ApiError {
    ApiError::BadRequest(rejection.body_text())
}

/// Past the limit, how much more of a body we read (and discard) before answering 413, so
/// the client sees the answer instead of a reset connection; beyond this we stop reading.
const MAX_DRAIN: usize = 16 * 1024 * 1024;

/// Middleware: reads every request body before routing, up to the limit. A larger one is
/// answered 413 `PayloadTooLarge` (JSON) after draining it, whatever the route, so that no
/// handler answers while the client is still sending (which would reset the connection).
/// A body that has not arrived by its deadline (`http_body_timeout`, plus one second per
/// [`HTTP_BODY_MIN_RATE`] bytes of its `Content-Length` or of what came) is answered
/// 408 `RequestTimeout` and its connection closed: a drip of a byte a second holds nothing
/// for long.
pub(crate) async fn buffer_body(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let limit = if req.uri().path() == api::broker::JOBS_PATH {
        api::broker::JOBS_MAX_BODY.max(state.settings.max_body_bytes)
    } else {
        state.settings.max_body_bytes
    };
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let started = tokio::time::Instant::now();
    let timeout = state.settings.http_body_timeout;
    let (parts, body) = req.into_parts();
    let mut stream = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut total: usize = 0;
    loop {
        let expected = declared.max(total).min(limit.saturating_add(MAX_DRAIN));
        let allowance =
            timeout + std::time::Duration::from_secs((expected / HTTP_BODY_MIN_RATE) as u64);
        let Ok(chunk) = tokio::time::timeout_at(started + allowance, stream.next()).await else {
            return closing(ApiError::RequestTimeout(allowance.as_secs()).into_response());
        };
        let Some(chunk) = chunk else { break };
        let Ok(chunk) = chunk else {
            return ApiError::BadRequest("the request body could not be read".into())
                .into_response();
        };
        total = total.saturating_add(chunk.len());
        if total <= limit {
            buf.extend_from_slice(&chunk);
        } else if total > limit.saturating_add(MAX_DRAIN) {
            break;
        }
    }
    if total > limit {
        return ApiError::PayloadTooLarge(limit).into_response();
    }
    next.run(Request::from_parts(parts, Body::from(buf))).await
}

/// `response` with `Connection: close`: the connection ends once it is written.
pub(crate) fn closing(mut response: axum::response::Response) -> axum::response::Response {
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}
