//! Extractors whose rejections are our JSON errors instead of axum's plain text.
//!
//! They also refuse NUL characters in any string: PostgreSQL cannot store them in text and
//! would fail the query, and no name, secret or description needs one.

use crate::error::ApiError;
use crate::AppState;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection};
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
        let value = match axum::Json::<serde_json::Value>::from_request(req, state).await {
            Ok(axum::Json(value)) => value,
            Err(rejection) => return Err(json_rejection(rejection, state.settings.max_body_bytes)),
        };
        if has_nul(&value) {
            return Err(nul_error());
        }
        serde_json::from_value(value)
            .map(Json)
            .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))
    }
}

/// [`has_nul`]'s rule as a regular expression, for the OpenAPI document: text without NUL.
pub const NO_NUL_PATTERN: &str = r"^[^\x00]*$";

fn nul_error() -> ApiError {
    ApiError::BadRequest("text may not contain NUL characters".into())
}

/// Whether any string (or object key) in `value` holds a NUL character.
fn has_nul(value: &serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

fn json_rejection(rejection: JsonRejection, limit: usize) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => ApiError::BadRequest(e.body_text()),
        JsonRejection::JsonSyntaxError(e) => ApiError::BadRequest(e.body_text()),
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::BadRequest("expected `Content-Type: application/json`".into())
        }
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge(limit)
        }
        other => ApiError::BadRequest(other.body_text()),
    }
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
pub(crate) async fn buffer_body(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let limit = if req.uri().path() == crate::routes::JOBS_PATH {
        crate::routes::JOBS_MAX_BODY.max(state.settings.max_body_bytes)
    } else {
        state.settings.max_body_bytes
    };
    let (parts, body) = req.into_parts();
    let mut stream = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut total: usize = 0;
    while let Some(chunk) = stream.next().await {
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

#[cfg(test)]
mod tests {
    use super::has_nul;
    use serde_json::json;

    #[test]
    fn the_pattern_is_the_rule() {
        let re = regex::Regex::new(super::NO_NUL_PATTERN).unwrap();
        for text in ["", "a", "é a/..\\%\t\n", "a\u{0}b", "\u{0}", "ab\u{0}"] {
            assert_eq!(re.is_match(text), !has_nul(&json!(text)), "{text:?}");
        }
    }

    #[test]
    fn finds_nul_anywhere() {
        assert!(!has_nul(&json!({"a": ["b", 1, null, {"c": "d"}]})));
        assert!(has_nul(&json!("a\u{0}b")));
        assert!(has_nul(&json!({"a": [{"c": "\u{0}"}]})));
        assert!(has_nul(&json!({"k\u{0}": 1})));
    }
}
