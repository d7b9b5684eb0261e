//! Teams, their members (roles) and quotas: `/api/v1/teams/...`.

use proto::text_enum;
use serde::{Deserialize, Serialize};

pub use proto::control::TeamRole as Role;

text_enum! {
    ("preset", "lowercase")
    /// A tier's limits, as the seed's price table: `free` (2 workers, 1 service, 3 triggers,
    /// 2 users, 1 team per admin, no public services), `basic` (25, 5, 26, 9, 1),
    /// `advanced` (100, 20, 51, 25, 2 teams), `unlimited`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
    #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
    #[serde(rename_all = "lowercase")]
    pub enum Preset {
        /// The free tier.
        Free,
        /// The basic tier.
        Basic,
        /// The advanced tier.
        Advanced,
        /// No limits.
        Unlimited,
    }
}

/// A team, as one of its members sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TeamView {
    /// Name.
    pub name: String,
    /// The caller's role in it.
    pub role: Role,
    /// Limits.
    pub quota: QuotaLimits,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339.
    pub updated: String,
}

/// A team's limits; `null` means unlimited.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QuotaLimits {
    /// Workers.
    pub max_workers: Option<i64>,
    /// Services.
    pub max_services: Option<i64>,
    /// Triggers.
    pub max_triggers: Option<i64>,
    /// Users (members; operators are not counted).
    pub max_users: Option<i64>,
    /// Teams each admin of this team may create, unless an operator gave them an allowance
    /// of their own (the most generous of the teams they are an admin of counts; a user who
    /// is an admin of no team may create 1).
    pub max_teams: Option<i64>,
    /// Whether services may be `public` (not in the `free` tier).
    pub public_services: bool,
}

impl QuotaLimits {
    /// The seed's price table: `free`, `basic`, `advanced`; and `unlimited`.
    pub fn preset(preset: Preset) -> QuotaLimits {
        let limits = |w, s, t, u, teams, public_services| QuotaLimits {
            max_workers: Some(w),
            max_services: Some(s),
            max_triggers: Some(t),
            max_users: Some(u),
            max_teams: Some(teams),
            public_services,
        };
        match preset {
            Preset::Free => limits(2, 1, 3, 2, 1, false),
            Preset::Basic => limits(25, 5, 26, 9, 1, true),
            Preset::Advanced => limits(100, 20, 51, 25, 2, true),
            Preset::Unlimited => QuotaLimits {
                max_workers: None,
                max_services: None,
                max_triggers: None,
                max_users: None,
                max_teams: None,
                public_services: true,
            },
        }
    }

    /// The preset these limits are, if any (`None`: limits of their own).
    pub fn tier(&self) -> Option<Preset> {
        <Preset as strum::VariantArray>::VARIANTS
            .iter()
            .copied()
            .find(|p| QuotaLimits::preset(*p) == *self)
    }
}

/// Limits and current use.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QuotaView {
    /// Team.
    pub team: String,
    /// The preset the limits are (`null`: limits of their own).
    pub tier: Option<Preset>,
    /// Limits (`null`: unlimited).
    #[serde(flatten)]
    pub limits: QuotaLimits,
    /// Objects now.
    pub used: QuotaUse,
}

/// Objects a team has now.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QuotaUse {
    /// Workers.
    pub workers: i64,
    /// Services.
    pub services: i64,
    /// Triggers.
    pub triggers: i64,
    /// Members.
    pub users: i64,
}

/// New limits: a preset, or explicit numbers (omitted or `null` ones become unlimited). A
/// preset with any other field is refused (422).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct QuotaRequest {
    /// A tier's limits; give no other field with it.
    pub preset: Option<Preset>,
    /// Workers (`null`: unlimited).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::Limit>))]
    pub max_workers: Option<i64>,
    /// Services (`null`: unlimited).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::Limit>))]
    pub max_services: Option<i64>,
    /// Triggers (`null`: unlimited).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::Limit>))]
    pub max_triggers: Option<i64>,
    /// Users (`null`: unlimited).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::Limit>))]
    pub max_users: Option<i64>,
    /// Teams each admin of the team may create (`null`: unlimited).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::Limit>))]
    pub max_teams: Option<i64>,
    /// Whether services may be `public` (default true).
    pub public_services: Option<bool>,
}

/// A new team.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateTeam {
    /// Name, unique in the install (409 when taken).
    #[cfg_attr(feature = "openapi", schema(value_type = proto::openapi::Name))]
    pub name: String,
}

/// A member of a team.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemberView {
    /// Identity.
    pub identity: String,
    /// `admin` or `member`.
    pub role: Role,
    /// Whether the user is an operator (administers every team's tier and limits).
    pub operator: bool,
    /// When they joined (RFC 3339).
    pub joined: String,
}

/// A new user, made a member of the team. A user who exists already joins a team only by
/// accepting an invitation (`POST /api/v1/teams/{team}/invitations`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    /// Identity, unique in the install: one that a user has already is refused (422; the
    /// answer does not say whether a user has it, nor would it be otherwise).
    #[cfg_attr(feature = "openapi", schema(value_type = proto::openapi::Name))]
    pub identity: String,
    /// The new user's secret.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::Secret))]
    pub secret: String,
    /// Default `member`.
    pub role: Option<Role>,
}

/// A new role.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateMember {
    /// The role; demoting the team's last admin is refused (409).
    pub role: Role,
}
