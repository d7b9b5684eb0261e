//! Errors: [`ControlError`] for starting and serving, [`ApiError`] for one API call.
//!
//! Every [`ApiError`] becomes a JSON body (`api::ErrorBody`: `{"code": "...", "message":
//! "..."}`) with a stable code and HTTP status. Internal causes (database, hashing) are logged, never sent.

use api::{ErrorBody, ErrorCode};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// What can go wrong opening or serving the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The data dir or one of its files could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file in the data dir holds something we cannot use.
    #[error("{path} is not valid: {reason}")]
    BadFile {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The database could not be reached or queried.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The `database_url` is neither `postgres://` nor empty.
    #[error("unsupported database URL `{0}` (expected postgres://...)")]
    UnsupportedDatabase(String),
    /// Hashing a secret failed.
    #[error("hashing a secret: {0}")]
    Hash(String),
    /// The HTTP server failed.
    #[error("serving HTTP: {0}")]
    Serve(#[source] std::io::Error),
}

/// One API call's failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed JSON, wrong types, missing fields, bad path parameters.
    #[error("{0}")]
    BadRequest(String),
    /// No or bad credentials (the same message whatever was wrong).
    #[error("{0}")]
    Unauthorized(String),
    /// A JWT past its expiry.
    #[error("the token has expired; log in again")]
    TokenExpired,
    /// Authenticated, but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// The team's quota does not allow another object.
    #[error("team {team} allows {limit} {what}")]
    QuotaExceeded {
        /// Team name.
        team: String,
        /// The limit.
        limit: i64,
        /// `workers`, `services`, `triggers` or `users`.
        what: &'static str,
    },
    /// The broker refused a request under the team's quota (the message says which).
    #[error("{0}")]
    QuotaReached(String),
    /// The user may not create another team.
    #[error("user {identity} may create {limit} teams")]
    TeamsExceeded {
        /// The user.
        identity: String,
        /// Teams they may create.
        limit: i64,
    },
    /// No such object (or not visible to the caller).
    #[error("{0}")]
    NotFound(String),
    /// The route exists but not for this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A unique name is taken, or the object is in use.
    #[error("{0}")]
    Conflict(String),
    /// The body did not arrive within its deadline (the connection is closed after).
    #[error("the request body did not arrive within {0} s")]
    RequestTimeout(u64),
    /// The body is larger than the limit.
    #[error("the request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// Well-formed, but breaks a rule (name, unknown worker, …).
    #[error("{0}")]
    Unprocessable(String),
    /// A dependency (the broker) is not available.
    #[error("{0}")]
    ServiceUnavailable(String),
    /// Over a rate limit; retry after `retry_after` seconds.
    #[error("too many {what}; retry in {retry_after} s")]
    TooManyRequests {
        /// Seconds until the next attempt is allowed (`Retry-After`).
        retry_after: u64,
        /// What was limited.
        what: &'static str,
    },
    /// An address's logins as a user are locked after too many wrong secrets from it; even
    /// the right one is refused from there until the lock ends (other addresses are not).
    #[error(
        "logins for {identity} from this address are locked after {failures} wrong secrets \
         in a row; retry in {retry_after} s"
    )]
    LockedOut {
        /// Whose.
        identity: String,
        /// Wrong secrets that set the lock.
        failures: u32,
        /// Seconds until the lock ends (`Retry-After`).
        retry_after: u64,
    },
    /// Too busy now; retry after `retry_after` seconds.
    #[error("{what}; retry in {retry_after} s")]
    Busy {
        /// Seconds to wait (`Retry-After`).
        retry_after: u64,
        /// Why.
        what: &'static str,
    },
    /// A database error; logged, never shown.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// Anything else internal; logged, never shown.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The status code and the stable code.
    pub fn status_code(&self) -> (StatusCode, ErrorCode) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, ErrorCode::BadRequest),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            ApiError::TokenExpired => (StatusCode::UNAUTHORIZED, ErrorCode::TokenExpired),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
            ApiError::QuotaExceeded { .. }
            | ApiError::QuotaReached(_)
            | ApiError::TeamsExceeded { .. } => (StatusCode::FORBIDDEN, ErrorCode::QuotaExceeded),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            ApiError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed)
            }
            ApiError::Conflict(_) => (StatusCode::CONFLICT, ErrorCode::Conflict),
            ApiError::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, ErrorCode::RequestTimeout),
            ApiError::PayloadTooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge)
            }
            ApiError::Unprocessable(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::Unprocessable)
            }
            ApiError::ServiceUnavailable(_) | ApiError::Busy { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::ServiceUnavailable,
            ),
            ApiError::TooManyRequests { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRequests)
            }
            ApiError::LockedOut { .. } => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::LockedOut),
            ApiError::Database(_) | ApiError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal)
            }
        }
    }

    /// The one message for every failed login or bad token: no user enumeration.
    pub fn unauthorized() -> ApiError {
        ApiError::Unauthorized("invalid credentials".into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_code();
        match &self {
            ApiError::Database(e) => tracing::error!(error = %e, "database error"),
            ApiError::Internal(e) => tracing::error!(error = %e, "internal error"),
            _ => {}
        }
        let body = ErrorBody {
            code,
            message: self.to_string(),
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let ApiError::TooManyRequests { retry_after, .. }
        | ApiError::Busy { retry_after, .. }
        | ApiError::LockedOut { retry_after, .. } = &self
        {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(*retry_after),
            );
        }
        response
    }
}

/// Turns database constraint violations into API errors; the one place that does it.
pub trait ResultExt<T> {
    /// A unique violation becomes 409 `Conflict` with `what` in the message; a
    /// foreign-key violation 422.
    fn on_conflict(self, what: impl FnOnce() -> String) -> Result<T, ApiError>;
}

impl<T> ResultExt<T> for Result<T, sqlx::Error> {
    fn on_conflict(self, what: impl FnOnce() -> String) -> Result<T, ApiError> {
        self.map_err(|e| {
            if let Some(db) = e.as_database_error() {
                if db.is_unique_violation() {
                    return ApiError::Conflict(format!("{} already exists", what()));
                }
                if db.is_foreign_key_violation() {
                    return ApiError::Unprocessable(format!(
                        "{} refers to a missing object",
                        what()
                    ));
                }
            }
            ApiError::Database(e)
        })
    }
}
