//! Invitations: a team's admin invites an existing user, who accepts or declines
//! (`/api/v1/teams/{team}/invitations`, `/api/v1/invitations`).

use crate::teams::Role;
use serde::{Deserialize, Serialize};

/// A pending invitation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InvitationView {
    /// The team the user is invited to.
    pub team: String,
    /// The invited user.
    pub identity: String,
    /// The role they get when they accept.
    pub role: Role,
    /// The admin who invited them.
    pub invited_by: String,
    /// When (RFC 3339).
    pub created: String,
}

/// Invite an existing user to the team.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateInvitation {
    /// The user's identity; the user must exist (422), be no member of the team yet and not
    /// be invited to it already (409).
    #[cfg_attr(feature = "openapi", schema(value_type = proto::openapi::Name))]
    pub identity: String,
    /// The role they get when they accept (default `member`).
    pub role: Option<Role>,
}
