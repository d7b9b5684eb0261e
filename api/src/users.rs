//! Users across teams, as an operator sees them, and a user's change of their own secret
//! (`/api/v1/users/{identity}`).

use serde::{Deserialize, Serialize};

/// The longest new secret, in characters.
pub const MAX_SECRET: usize = 1024;

/// A user.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserView {
    /// Identity.
    pub identity: String,
    /// Whether the user is an operator (sets quotas and limits; creates any number of teams).
    pub operator: bool,
    /// How many teams the user may create; `null`: unlimited (every operator).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::Limit>))]
    pub max_teams: Option<i64>,
    /// Teams the user created that still exist.
    pub teams_created: i64,
    /// When the user was created (RFC 3339).
    pub created: String,
}

/// A user's new limit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// How many teams the user may create (`null`: unlimited). Required: leaving it out is
    /// refused rather than read as "unlimited". An operator's cannot be limited (409).
    #[serde(deserialize_with = "Option::deserialize")]
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = Option<crate::schema::Limit>, required = true)
    )]
    pub max_teams: Option<i64>,
}

/// A change of one's own secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ChangeSecret {
    /// The secret now (403 when it is not).
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::Secret))]
    pub current: String,
    /// The new secret.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::NewSecret))]
    pub new: String,
}
