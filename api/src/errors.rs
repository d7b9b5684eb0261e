//! The body of every error answer: `{"code": "...", "message": "..."}`.

use proto::text_enum;
use serde::{Deserialize, Serialize};

text_enum! {
    ("error code", "PascalCase")
    /// The stable code of an error answer; each goes with one HTTP status (two for
    /// `QuotaExceeded`'s kin: see the route's responses).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    pub enum ErrorCode {
        /// 400: malformed JSON, a wrong type, a missing or unknown field, a bad parameter.
        BadRequest,
        /// 401: no credential, or a bad one.
        Unauthorized,
        /// 401: a JWT past its expiry.
        TokenExpired,
        /// 403: authenticated, but not allowed.
        Forbidden,
        /// 403: a quota or a limit does not allow it.
        QuotaExceeded,
        /// 404: no such object (or not visible to the caller), or no such route.
        NotFound,
        /// 405: the route exists, but not for this method.
        MethodNotAllowed,
        /// 409: a unique name is taken, or the object is in use.
        Conflict,
        /// 408: the request body did not arrive within its deadline.
        RequestTimeout,
        /// 413: the request body is larger than the limit.
        PayloadTooLarge,
        /// 422: well-formed, but it breaks a rule.
        Unprocessable,
        /// 429: over a rate limit; retry after `Retry-After`.
        TooManyRequests,
        /// 429: logins from this address as this user are locked for a while.
        LockedOut,
        /// 503: too busy, or a dependency (the broker) is not available.
        ServiceUnavailable,
        /// 500: an internal failure (logged by the server, never described).
        Internal,
    }
}

/// The JSON body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}
