//! `POST /api/v1/login`: team, identity and secret for a JWT.

use crate::teams::Role;
use serde::{Deserialize, Serialize};

/// Credentials.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The team to act in. No team has a name that breaks the name rule: such a login fails
    /// like any other (401).
    #[cfg_attr(feature = "openapi", schema(value_type = proto::openapi::Name))]
    pub team: String,
    /// User identity (a name, as `team`).
    #[cfg_attr(feature = "openapi", schema(value_type = proto::openapi::Name))]
    pub identity: String,
    /// The user's secret (never empty, as `team`).
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::Secret))]
    pub secret: String,
}

/// A JWT and what it stands for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LoginResponse {
    /// HS256 JWT; send as `Authorization: Bearer <token>`.
    pub token: String,
    /// RFC 3339 expiry.
    pub expires_at: String,
    /// Team.
    pub team: String,
    /// Identity.
    pub identity: String,
    /// `admin` or `member`.
    pub role: Role,
}
