//! Users across teams, as an operator sees them (`/api/v1/users`), and a user's change of
//! their own secret (`/api/v1/users/{identity}/secret`).

use proto::text_enum;
use serde::{Deserialize, Serialize};

/// The longest new secret, in characters.
pub const MAX_SECRET: usize = 1024;

text_enum! {
    ("allowance source", "lowercase")
    /// Where a user's team allowance (`max_teams`) comes from.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    #[serde(rename_all = "lowercase")]
    pub enum AllowanceFrom {
        /// The user is an operator: unlimited.
        Operator,
        /// An operator gave the user an allowance of their own.
        User,
        /// The tiers of the teams the user is an admin of: the most generous of their
        /// `max_teams`; 1 when the user is an admin of no team.
        Tier,
    }
}

/// A user.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserView {
    /// Identity.
    pub identity: String,
    /// Whether the user is an operator (administers every team's tier and limits and every
    /// user's allowance; creates any number of teams).
    pub operator: bool,
    /// How many teams the user may create now; `null`: unlimited.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::Limit>))]
    pub max_teams: Option<i64>,
    /// Where `max_teams` comes from.
    pub max_teams_from: AllowanceFrom,
    /// Teams the user created that still exist.
    pub teams_created: i64,
    /// When the user was created (RFC 3339).
    pub created: String,
}

/// A user's new team allowance.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// How many teams the user may create, whatever the tiers of their teams; `null`: none
    /// of their own, the allowance follows the tiers of the teams they are an admin of (see
    /// `QuotaLimits::max_teams`). Required: leaving it out is refused rather than read as
    /// either. An operator's cannot be limited (409).
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
