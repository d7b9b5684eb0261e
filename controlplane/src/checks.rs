//! The checks a request passes before it changes anything: the rules of names, texts,
//! timeouts and arguments (422), quotas (403), and who may change an object (403).

use crate::auth::AuthUser;
use crate::error::ApiError;
use api::timeout::{Timeout, MAX_TIMEOUT_MS};
use api::triggers::{MAX_ARGS, MAX_ARG_CHARS};
use api::MAX_DESCRIPTION;
use std::collections::BTreeMap;

/// Refuses names that break `proto::names` rules with 422.
pub(crate) fn check_name(what: &'static str, name: &str) -> Result<(), ApiError> {
    proto::names::check_simple(what, name).map_err(|e| ApiError::Unprocessable(e.to_string()))
}

/// Refuses a description longer than [`MAX_DESCRIPTION`] characters.
pub(crate) fn check_description(text: &Option<String>) -> Result<(), ApiError> {
    match text {
        Some(t) if t.chars().count() > MAX_DESCRIPTION => Err(ApiError::Unprocessable(format!(
            "description is longer than {MAX_DESCRIPTION} characters"
        ))),
        _ => Ok(()),
    }
}

/// Refuses more than [`MAX_ARGS`] arguments, an empty key, or a key or value longer than
/// [`MAX_ARG_CHARS`] characters.
pub(crate) fn check_args(args: &Option<BTreeMap<String, String>>) -> Result<(), ApiError> {
    if let Some(args) = args {
        if args.len() > MAX_ARGS {
            return Err(ApiError::Unprocessable(format!(
                "more than {MAX_ARGS} args"
            )));
        }
        let long = |text: &str| text.chars().count() > MAX_ARG_CHARS;
        for (k, v) in args {
            if k.is_empty() || long(k) || long(v) {
                return Err(ApiError::Unprocessable(format!(
                    "arg keys must be non-empty, keys and values at most {MAX_ARG_CHARS} \
                     characters"
                )));
            }
        }
    }
    Ok(())
}

/// A timeout given as text (`"10s"`, `"1h 30m"`, see `api::timeout::pattern`) or
/// milliseconds; `None` when neither is given.
pub(crate) fn timeout_ms(text: Option<&Timeout>, ms: Option<u64>) -> Result<Option<i64>, ApiError> {
    let ms = match (text, ms) {
        (Some(_), Some(_)) => {
            return Err(ApiError::Unprocessable(
                "give either timeout or timeout_ms, not both".into(),
            ))
        }
        (Some(text), None) => text
            .ms()
            .map_err(|e| ApiError::Unprocessable(e.to_string()))?,
        (None, Some(ms)) => ms,
        (None, None) => return Ok(None),
    };
    if ms > MAX_TIMEOUT_MS {
        return Err(ApiError::Unprocessable(format!(
            "timeout is longer than {}",
            Timeout::from_ms(MAX_TIMEOUT_MS)
                .map(|t| t.to_string())
                .unwrap_or_default()
        )));
    }
    Ok(Some(ms as i64))
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

/// The caller is an operator (the installation's: every team's quota, every user's
/// allowance); anyone else gets 403 "only an operator may {what}".
pub(crate) fn operator_only(user: &AuthUser, what: &str) -> Result<(), ApiError> {
    if user.operator {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!("only an operator may {what}")))
    }
}

/// The caller may change an object: they own it or are an admin of its team.
pub(crate) fn may_modify(user: &AuthUser, owner: &str) -> Result<(), ApiError> {
    if user.is_admin() || user.identity == owner {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "only its owner {owner} or an admin of team {} may change it",
            user.team
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        let check = |text: Option<&str>, ms: Option<u64>, want: Option<Option<i64>>| {
            let text = text.map(Timeout::from);
            let got = timeout_ms(text.as_ref(), ms).ok();
            assert_eq!(got, want, "{text:?} {ms:?}");
        };
        check(Some("10s"), None, Some(Some(10_000)));
        check(Some("1h 30m"), None, Some(Some(5_400_000)));
        check(Some("0s"), None, Some(Some(0)));
        check(None, Some(250), Some(Some(250)));
        check(None, None, Some(None));
        check(Some("soon"), None, None);
        check(Some("8d"), None, None);
        check(Some("1s"), Some(1), None);
        check(None, Some(u64::MAX), None);
        check(None, Some(MAX_TIMEOUT_MS + 1), None);
        let err = timeout_ms(None, Some(MAX_TIMEOUT_MS + 1)).unwrap_err();
        assert_eq!(err.to_string(), "timeout is longer than 7d");
    }

    #[test]
    fn quotas() {
        assert!(check_quota("t", "triggers", None, 1_000).is_ok());
        assert!(check_quota("t", "triggers", Some(3), 2).is_ok());
        let err = check_quota("main", "triggers", Some(3), 3).unwrap_err();
        assert_eq!(err.to_string(), "team main allows 3 triggers");
    }
}
