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
        let JsonBody(body) = JsonBody::from_request(req, state).await?;
        parse_json(&body, state.settings.max_body_bytes).map(Json)
    }
}

/// A JSON request body, not parsed yet (the content type checked, the body read): for a
/// handler that parses it elsewhere with [`parse_json`] (the job history's, on its own
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

/// Parses a JSON body into `T`, refusing NUL in any string and a body that is no object
/// first ([`check_text`]); `limit` is what a
/// `PayloadTooLarge` says. Checked on the text, then parsed straight into `T`, with no
/// `Value` tree in between (a job record of 1,000 workers is 6,000 keys and values a tree
/// would allocate).
pub fn parse_json<T: DeserializeOwned>(body: &[u8], limit: usize) -> Result<T, ApiError> {
    check_text(body)?;
    match axum::Json::<T>::from_bytes(body) {
        Ok(axum::Json(value)) => Ok(value),
        Err(rejection) => Err(json_rejection(rejection, limit)),
    }
}

/// What every body is checked for before it is parsed: no NUL in any string ([`has_nul`]),
/// and a JSON object ([`require_object`]).
pub(crate) fn check_text(body: &[u8]) -> Result<(), ApiError> {
    if has_nul(body) {
        return Err(nul_error());
    }
    require_object(body)
}

/// Refuses a body that is not a JSON object. Every body this API takes is an object, and
/// serde would otherwise read a struct from an array of its fields in order (`[null, null]`
/// as a worker's changes). Whitespace before the `{` is allowed; what follows is the parser's.
fn require_object(body: &[u8]) -> Result<(), ApiError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(()),
        _ => Err(ApiError::BadRequest(
            "the request body must be a JSON object (`{...}`)".into(),
        )),
    }
}

fn nul_error() -> ApiError {
    ApiError::BadRequest("text may not contain NUL characters".into())
}

/// Whether the JSON text `body` has a NUL character in any string (or object key). JSON text
/// holds no raw control character in a string (the parser refuses one), so a NUL can only
/// be written `\u0000`: an escape when the backslashes in a row before `u0000` are odd in
/// number (`\\u0000` is a backslash, then `u0000`).
pub(crate) fn has_nul(body: &[u8]) -> bool {
    if body.contains(&0) {
        return true;
    }
    memchr::memmem::find_iter(body, br"\u0000").any(|at| {
        let backslashes = body[..=at]
            .iter()
            .rev()
            .take_while(|&&b| b == b'\\')
            .count();
        backslashes % 2 == 1
    })
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
/// A body that has not arrived by its deadline (`http_body_timeout`, plus one second per
/// [`crate::HTTP_BODY_MIN_RATE`] bytes of its `Content-Length` or of what came) is answered
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
            timeout + std::time::Duration::from_secs((expected / crate::HTTP_BODY_MIN_RATE) as u64);
        let Ok(chunk) = tokio::time::timeout_at(started + allowance, stream.next()).await else {
            return crate::closing(ApiError::RequestTimeout(allowance.as_secs()).into_response());
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

#[cfg(test)]
mod tests {
    use super::has_nul;
    use serde_json::json;

    fn text(value: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&value).unwrap()
    }

    #[test]
    fn the_pattern_is_the_rule() {
        let re = regex::Regex::new(proto::names::NO_NUL_PATTERN).unwrap();
        for t in [
            "",
            "a",
            "é a/..\\%\t\n",
            "a\u{0}b",
            "\u{0}",
            "ab\u{0}",
            "\\u0000",
        ] {
            assert_eq!(re.is_match(t), !has_nul(&text(json!(t))), "{t:?}");
        }
    }

    #[test]
    fn finds_nul_anywhere() {
        assert!(!has_nul(&text(json!({"a": ["b", 1, null, {"c": "d"}]}))));
        assert!(has_nul(&text(json!("a\u{0}b"))));
        assert!(has_nul(&text(json!({"a": [{"c": "\u{0}"}]}))));
        assert!(has_nul(&text(json!({"k\u{0}": 1}))));
    }

    #[test]
    fn counts_the_backslashes_before_an_escape() {
        // A backslash, then `u0000`: no NUL.
        assert!(!has_nul(br#"{"a": "\\u0000"}"#));
        // A backslash, then a NUL.
        assert!(has_nul(br#"{"a": "\\\u0000"}"#));
        assert!(has_nul(br#"["\u0000"]"#));
        assert!(!has_nul(br#"["u0000", "\\\\u0000"]"#));
        // Raw, which no JSON parser takes either.
        assert!(has_nul(b"[\"\0\"]"));
    }
}
