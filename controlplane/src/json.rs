//! JSON bodies: the checks every body passes before it is parsed (a JSON object, no NUL
//! character in any string: PostgreSQL cannot store one in text and would fail the query,
//! and no name, secret or description needs one), and the parse, with JSON errors.

use crate::error::ApiError;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

/// Parses a JSON body into `T`, refusing NUL in any string and a body that is no object
/// first ([`check_text`]); `limit` is what a
/// `PayloadTooLarge` says. Checked on the text, then parsed straight into `T`, with no
/// `Value` tree in between (a job record of 1,000 workers is 6,000 keys and values a tree
/// would allocate).
pub(crate) fn parse_json<T: DeserializeOwned>(body: &[u8], limit: usize) -> Result<T, ApiError> {
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

/// The refusal of a body or a path with a NUL character in it.
pub(crate) fn nul_error() -> ApiError {
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

/// The refusal of a body that does not parse.
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
