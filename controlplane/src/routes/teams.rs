//! Teams, their members (invite, join other teams, roles) and quotas.

use super::{check_name, check_quota, config_event};
use crate::auth::{self, AuthUser};
use crate::db::{now_ms, on_db, rfc3339, BUMP_REVISION};
use crate::error::{ApiError, ErrorBody, ResultExt};
use crate::extract::{Json, Path};
use crate::openapi::{Limit, Name, Secret};
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use proto::{text_enum, TextEnum};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

text_enum! {
    ("role", "lowercase")
    /// A member's role in a team: an `admin` may invite, remove and change members and delete
    /// the team, and change any object of it; a `member` only their own objects.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
    #[serde(rename_all = "lowercase")]
    pub enum Role {
        /// Manages the team.
        Admin,
        /// Uses the team.
        Member,
    }
}

text_enum! {
    ("preset", "lowercase")
    /// A tier's limits: `free` (2 workers, 1 service, 3 triggers, 2 users, no public
    /// services), `basic` (25, 5, 26, 9), `advanced` (100, 20, 51, 25), `unlimited`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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
#[derive(Debug, Serialize, ToSchema)]
pub struct TeamView {
    /// Name.
    pub name: String,
    /// The caller's role in it.
    #[schema(value_type = Role)]
    pub role: String,
    /// Limits.
    pub quota: QuotaLimits,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339.
    pub updated: String,
}

/// A team's limits; `null` means unlimited.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, sqlx::FromRow, PartialEq, Eq)]
pub struct QuotaLimits {
    /// Workers.
    pub max_workers: Option<i64>,
    /// Services.
    pub max_services: Option<i64>,
    /// Triggers.
    pub max_triggers: Option<i64>,
    /// Users (members).
    pub max_users: Option<i64>,
    /// Whether services may be `public` (not in the `free` tier).
    pub public_services: bool,
}

impl QuotaLimits {
    /// The seed's price table: `free`, `basic`, `advanced`; and `unlimited`.
    pub fn preset(preset: Preset) -> QuotaLimits {
        let limits = |w, s, t, u, public_services| QuotaLimits {
            max_workers: Some(w),
            max_services: Some(s),
            max_triggers: Some(t),
            max_users: Some(u),
            public_services,
        };
        match preset {
            Preset::Free => limits(2, 1, 3, 2, false),
            Preset::Basic => limits(25, 5, 26, 9, true),
            Preset::Advanced => limits(100, 20, 51, 25, true),
            Preset::Unlimited => QuotaLimits {
                max_workers: None,
                max_services: None,
                max_triggers: None,
                max_users: None,
                public_services: true,
            },
        }
    }
}

/// Limits and current use.
#[derive(Debug, Serialize, ToSchema)]
pub struct QuotaView {
    /// Team.
    pub team: String,
    /// Limits (`null`: unlimited).
    #[serde(flatten)]
    pub limits: QuotaLimits,
    /// Objects now.
    pub used: QuotaUse,
}

/// Objects a team has now.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
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
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaRequest {
    /// A tier's limits; give no other field with it.
    pub preset: Option<Preset>,
    /// Workers (`null`: unlimited).
    #[schema(value_type = Option<Limit>)]
    pub max_workers: Option<i64>,
    /// Services (`null`: unlimited).
    #[schema(value_type = Option<Limit>)]
    pub max_services: Option<i64>,
    /// Triggers (`null`: unlimited).
    #[schema(value_type = Option<Limit>)]
    pub max_triggers: Option<i64>,
    /// Users (`null`: unlimited).
    #[schema(value_type = Option<Limit>)]
    pub max_users: Option<i64>,
    /// Whether services may be `public` (default true).
    pub public_services: Option<bool>,
}

/// A new team.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTeam {
    /// Name, unique in the install (409 when taken).
    #[schema(value_type = Name)]
    pub name: String,
}

/// A member of a team.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct MemberView {
    /// Identity.
    pub identity: String,
    /// `admin` or `member`.
    #[schema(value_type = Role)]
    pub role: String,
    /// Whether the user may set quotas.
    pub operator: bool,
    /// When they joined (RFC 3339).
    #[sqlx(skip)]
    pub joined: String,
    #[serde(skip)]
    #[schema(ignore)]
    created: i64,
}

/// A new user, made a member of the team. A user who exists already joins a team only by
/// accepting an invitation (`POST /api/v1/teams/{team}/invitations`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    /// Identity, unique in the install: one that a user has already is refused (422; the
    /// answer does not say whether a user has it, nor would it be otherwise).
    #[schema(value_type = Name)]
    pub identity: String,
    /// The new user's secret.
    #[schema(value_type = Secret)]
    pub secret: String,
    /// Default `member`.
    pub role: Option<Role>,
}

/// A new role.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMember {
    /// The role; demoting the team's last admin is refused (409).
    pub role: Role,
}

#[derive(sqlx::FromRow)]
pub(super) struct TeamRow {
    pub(super) id: i64,
    name: String,
    role: String,
    max_workers: Option<i64>,
    max_services: Option<i64>,
    max_triggers: Option<i64>,
    pub(super) max_users: Option<i64>,
    public_services: bool,
    created: i64,
    updated: i64,
}

impl TeamRow {
    pub(super) fn view(self) -> TeamView {
        TeamView {
            quota: QuotaLimits {
                max_workers: self.max_workers,
                max_services: self.max_services,
                max_triggers: self.max_triggers,
                max_users: self.max_users,
                public_services: self.public_services,
            },
            name: self.name,
            role: self.role,
            created: rfc3339(self.created),
            updated: rfc3339(self.updated),
        }
    }
}

const TEAM_SELECT: &str = "SELECT t.id, t.name, m.role, t.max_workers, t.max_services, \
    t.max_triggers, t.max_users, t.public_services, t.created, t.updated \
    FROM teams t JOIN members m ON m.team_id = t.id WHERE m.user_id = $1";

/// The caller's membership of `team`; 404 when they are not a member (whether or not it
/// exists: team names are not enumerable).
pub(super) async fn membership(
    state: &AppState,
    user: &AuthUser,
    team: &str,
) -> Result<TeamRow, ApiError> {
    let sql = format!("{TEAM_SELECT} AND t.name = $2");
    let row: Option<TeamRow> = on_db!(&state.db, pool => {
        sqlx::query_as(&sql).bind(user.user_id).bind(team).fetch_optional(pool).await?
    });
    row.ok_or_else(|| ApiError::NotFound(format!("no team {team}")))
}

pub(super) async fn admin_of(
    state: &AppState,
    user: &AuthUser,
    team: &str,
) -> Result<TeamRow, ApiError> {
    let row = membership(state, user, team).await?;
    if row.role != "admin" {
        return Err(ApiError::Forbidden(format!(
            "only an admin of team {team} may do this"
        )));
    }
    Ok(row)
}

/// Admins of a team other than `identity`.
const OTHER_ADMINS: &str = "SELECT COUNT(*) FROM members m JOIN users u ON u.id = m.user_id \
    WHERE m.team_id = $1 AND m.role = 'admin' AND u.identity <> $2";

/// Whether `identity` is an operator whose only team is `team_id`.
const ONLY_TEAM_OF_OPERATOR: &str = "SELECT COUNT(*) FROM users u WHERE u.identity = $2 \
    AND u.operator = TRUE AND NOT EXISTS \
    (SELECT 1 FROM members o WHERE o.user_id = u.id AND o.team_id <> $1)";

fn last_admin(identity: &str, team: &str) -> ApiError {
    ApiError::Conflict(format!(
        "{identity} is the last admin of team {team}: make another member an admin first"
    ))
}

/// The teams the caller is a member of.
#[utoipa::path(get, path = "/api/v1/teams", tag = "teams", security(("jwt" = [])),
    responses((status = 200, body = [TeamView]), (status = "default", body = ErrorBody)))]
pub async fn list_teams(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Vec<TeamView>>, ApiError> {
    let sql = format!("{TEAM_SELECT} ORDER BY t.name");
    let rows: Vec<TeamRow> = on_db!(&state.db, pool => {
        sqlx::query_as(&sql).bind(user.user_id).fetch_all(pool).await?
    });
    Ok(Json(rows.into_iter().map(TeamRow::view).collect()))
}

/// Creates a team; the caller becomes its admin. A user who is not an operator may create
/// as many teams as their `max_teams` (one, by default), each in the `free` tier.
#[utoipa::path(post, path = "/api/v1/teams", tag = "teams", security(("jwt" = [])),
    request_body = CreateTeam,
    responses((status = 201, body = TeamView),
        (status = 403, description = "`QuotaExceeded`: the caller has created as many teams as their `max_teams`", body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
        (status = 422, description = "The name breaks the name rule", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn create_team(
    State(state): State<AppState>,
    user: AuthUser,
    Json(req): Json<CreateTeam>,
) -> Result<(StatusCode, Json<TeamView>), ApiError> {
    check_name("team", &req.name)?;
    let now = now_ms();
    // Operators' teams are unlimited; anyone else's start in the free tier.
    let limits = QuotaLimits::preset(if user.operator {
        Preset::Unlimited
    } else {
        Preset::Free
    });
    let revision: i64 = on_db!(&state.db, pool => {
        let mut tx = crate::db::begin(pool).await?;
        let revision: i64 = sqlx::query_scalar(BUMP_REVISION).fetch_one(&mut *tx).await?;
        let (max_teams, created): (Option<i64>, i64) = sqlx::query_as(
            "SELECT max_teams, (SELECT COUNT(*) FROM teams WHERE creator_id = $1) \
             FROM users WHERE id = $1")
            .bind(user.user_id).fetch_one(&mut *tx).await?;
        match max_teams {
            Some(limit) if !user.operator && created >= limit => {
                return Err(ApiError::TeamsExceeded { identity: user.identity.clone(), limit });
            }
            _ => {}
        }
        let team_id: i64 = sqlx::query_scalar(
            "INSERT INTO teams (name, max_workers, max_services, max_triggers, max_users, \
             public_services, creator_id, created, updated) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING id")
            .bind(&req.name).bind(limits.max_workers).bind(limits.max_services)
            .bind(limits.max_triggers).bind(limits.max_users).bind(limits.public_services)
            .bind(user.user_id).bind(now).fetch_one(&mut *tx).await
            .on_conflict(|| format!("team {}", req.name))?;
        sqlx::query("INSERT INTO members (team_id, user_id, role, created) VALUES ($1, $2, 'admin', $3)")
            .bind(team_id).bind(user.user_id).bind(now).execute(&mut *tx).await?;
        tx.commit().await?;
        revision
    });
    state.publish(config_event(
        revision, &req.name, "team", "created", &req.name,
    ));
    let team = membership(&state, &user, &req.name).await?;
    Ok((StatusCode::CREATED, Json(team.view())))
}

/// One of the caller's teams.
#[utoipa::path(get, path = "/api/v1/teams/{team}", tag = "teams", security(("jwt" = [])),
    params(("team" = Name, Path, description = "Team name")),
    responses((status = 200, body = TeamView),
        (status = 404, description = "The caller is not a member of such a team", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn get_team(
    State(state): State<AppState>,
    user: AuthUser,
    Path(team): Path<String>,
) -> Result<Json<TeamView>, ApiError> {
    Ok(Json(membership(&state, &user, &team).await?.view()))
}

/// Deletes a team and everything in it (admins only; its members keep their accounts). Not
/// the only team of an operator, nor the install's team (409).
#[utoipa::path(delete, path = "/api/v1/teams/{team}", tag = "teams", security(("jwt" = [])),
    params(("team" = Name, Path, description = "Team name")),
    responses((status = 204),
        (status = 403, description = "The caller is not an admin of the team", body = ErrorBody),
        (status = 404, description = "The caller is not a member of such a team", body = ErrorBody),
        (status = 409, description = "It is the only team of an operator, or the install's team (the one made with the first admin, which `up` and the configuration it wrote log in to)", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn delete_team(
    State(state): State<AppState>,
    user: AuthUser,
    Path(team): Path<String>,
) -> Result<StatusCode, ApiError> {
    let row = admin_of(&state, &user, &team).await?;
    // An operator must keep a team to log in to (the install's admin would be locked out).
    const STRANDED: &str = "SELECT u.identity FROM members m JOIN users u ON u.id = m.user_id \
        WHERE m.team_id = $1 AND u.operator = TRUE AND NOT EXISTS \
        (SELECT 1 FROM members o WHERE o.user_id = u.id AND o.team_id <> $1) \
        ORDER BY u.identity LIMIT 1";
    let revision: i64 = on_db!(&state.db, pool => {
        let mut tx = crate::db::begin(pool).await?;
        let revision: i64 = sqlx::query_scalar(BUMP_REVISION).fetch_one(&mut *tx).await?;
        let stranded: Option<String> = sqlx::query_scalar(STRANDED)
            .bind(row.id).fetch_optional(&mut *tx).await?;
        if let Some(identity) = stranded {
            return Err(ApiError::Conflict(format!(
                "team {team} is the only team of operator {identity}: \
                 add them to another team before deleting it")));
        }
        let install: bool = sqlx::query_scalar(INSTALL_TEAM)
            .bind(row.id).fetch_one(&mut *tx).await?;
        if install {
            return Err(install_team_kept(&team, "deleted"));
        }
        sqlx::query("DELETE FROM teams WHERE id = $1").bind(row.id).execute(&mut *tx).await?;
        tx.commit().await?;
        revision
    });
    state.publish(config_event(revision, &team, "team", "deleted", &team));
    Ok(StatusCode::NO_CONTENT)
}

/// Whether `team_id` is the install's team: the one made with the first admin
/// ([`crate::ControlPlane::bootstrap`]), which `up` logs in to at every start and whose name
/// the configuration it wrote holds. It is never deleted, nor left by an operator, whatever
/// other teams they are in: that would lock the install's admin out after a restart.
/// (Checked in the change's transaction.)
const INSTALL_TEAM: &str = "SELECT install FROM teams WHERE id = $1";

fn install_team_kept(team: &str, what: &str) -> ApiError {
    ApiError::Conflict(format!(
        "team {team} is the install's team (made with the first admin; `up` and the \
         configuration it wrote log in to it): it cannot be {what}"
    ))
}

async fn members_of(state: &AppState, team_id: i64) -> Result<Vec<MemberView>, ApiError> {
    const SQL: &str = "SELECT u.identity, m.role, u.operator, m.created FROM members m \
        JOIN users u ON u.id = m.user_id WHERE m.team_id = $1 ORDER BY u.identity";
    let mut rows: Vec<MemberView> = on_db!(&state.db, pool => {
        sqlx::query_as(SQL).bind(team_id).fetch_all(pool).await?
    });
    for r in &mut rows {
        r.joined = rfc3339(r.created);
    }
    Ok(rows)
}

/// The members of one of the caller's teams.
#[utoipa::path(get, path = "/api/v1/teams/{team}/members", tag = "teams", security(("jwt" = [])),
    params(("team" = Name, Path, description = "Team name")),
    responses((status = 200, body = [MemberView]),
        (status = 404, description = "The caller is not a member of such a team", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn list_members(
    State(state): State<AppState>,
    user: AuthUser,
    Path(team): Path<String>,
) -> Result<Json<Vec<MemberView>>, ApiError> {
    let row = membership(&state, &user, &team).await?;
    Ok(Json(members_of(&state, row.id).await?))
}

/// Creates a user as a member of the team (admins only; `secret` required). Nobody is added
/// without their consent: a user who exists joins through an invitation, which they accept
/// (`POST /api/v1/teams/{team}/invitations`). The answer does not tell who exists: a body
/// without a secret is refused before any identity is looked at, and every identity that a
/// user has gets the same 422.
#[utoipa::path(post, path = "/api/v1/teams/{team}/members", tag = "teams", security(("jwt" = [])),
    params(("team" = Name, Path, description = "Team name")), request_body = AddMember,
    responses((status = 201, body = MemberView),
        (status = 403, description = "The caller is not an admin of the team, or `QuotaExceeded`: the team has as many users as it may", body = ErrorBody),
        (status = 404, description = "The caller is not a member of such a team", body = ErrorBody),
        (status = 422, description = "A name that breaks the rule, an empty secret, or an identity a user has already (one answer for every such identity: an existing user is invited instead)", body = ErrorBody),
        (status = 503, description = "Too many secrets being hashed at once; retry after `Retry-After`", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn add_member(
    State(state): State<AppState>,
    user: AuthUser,
    Path(team): Path<String>,
    Json(req): Json<AddMember>,
) -> Result<(StatusCode, Json<MemberView>), ApiError> {
    let row = admin_of(&state, &user, &team).await?;
    check_name("identity", &req.identity)?;
    let role = req.role.unwrap_or(Role::Member).as_str();
    // One answer for every identity that is not created, whether a user has it or not.
    let not_added = || {
        ApiError::Unprocessable(format!(
            "{} was not added: this route creates a new user, with a secret, under an identity \
             no user has; a user who exists joins team {team} by accepting an invitation \
             (POST /api/v1/teams/{team}/invitations)",
            req.identity
        ))
    };
    if req.secret.is_empty() {
        return Err(ApiError::Unprocessable("secret is empty".into()));
    }
    let hash = auth::hash_secret(&state.guard, req.secret.clone()).await?;
    let now = now_ms();
    let revision: i64 = on_db!(&state.db, pool => {
        let mut tx = crate::db::begin(pool).await?;
        let revision: i64 = sqlx::query_scalar(BUMP_REVISION).fetch_one(&mut *tx).await?;
        let n_users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM members WHERE team_id = $1")
            .bind(row.id).fetch_one(&mut *tx).await?;
        check_quota(&team, "users", row.max_users, n_users)?;
        let user_id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO users (identity, secret_hash, operator, created) VALUES ($1, $2, FALSE, $3) \
             ON CONFLICT (identity) DO NOTHING RETURNING id")
            .bind(&req.identity).bind(&hash).bind(now).fetch_optional(&mut *tx).await?;
        let Some(user_id) = user_id else {
            return Err(not_added());
        };
        sqlx::query("INSERT INTO members (team_id, user_id, role, created) VALUES ($1, $2, $3, $4)")
            .bind(row.id).bind(user_id).bind(role).bind(now).execute(&mut *tx).await
            .on_conflict(|| format!("member {} of team {team}", req.identity))?;
        tx.commit().await?;
        revision
    });
    state.publish(config_event(
        revision,
        &team,
        "user",
        "created",
        &req.identity,
    ));
    let member = members_of(&state, row.id)
        .await?
        .into_iter()
        .find(|m| m.identity == req.identity)
        .ok_or_else(|| ApiError::NotFound(format!("no member {}", req.identity)))?;
    Ok((StatusCode::CREATED, Json(member)))
}

/// Changes a member's role (admins only). The team's last admin cannot be demoted.
#[utoipa::path(patch, path = "/api/v1/teams/{team}/members/{identity}", tag = "teams",
    security(("jwt" = [])), request_body = UpdateMember,
    params(("team" = Name, Path, description = "Team name"),
           ("identity" = Name, Path, description = "Member identity")),
    responses((status = 200, body = MemberView),
        (status = 403, description = "The caller is not an admin of the team", body = ErrorBody),
        (status = 404, description = "No such team for the caller, or no such member", body = ErrorBody),
        (status = 409, description = "The member is the team's last admin", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn update_member(
    State(state): State<AppState>,
    user: AuthUser,
    Path((team, identity)): Path<(String, String)>,
    Json(req): Json<UpdateMember>,
) -> Result<Json<MemberView>, ApiError> {
    let row = admin_of(&state, &user, &team).await?;
    let revision: i64 = on_db!(&state.db, pool => {
        let mut tx = crate::db::begin(pool).await?;
        // After the write lock: two demotions at once cannot both see the other admin.
        let revision: i64 = sqlx::query_scalar(BUMP_REVISION).fetch_one(&mut *tx).await?;
        if req.role != Role::Admin {
            let others: i64 = sqlx::query_scalar(OTHER_ADMINS)
                .bind(row.id).bind(&identity).fetch_one(&mut *tx).await?;
            if others == 0 {
                return Err(last_admin(&identity, &team));
            }
        }
        let done = sqlx::query("UPDATE members SET role = $1 WHERE team_id = $2 \
            AND user_id = (SELECT id FROM users WHERE identity = $3)")
            .bind(req.role.as_str()).bind(row.id).bind(&identity).execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            return Err(ApiError::NotFound(format!("no member {identity} in team {team}")));
        }
        tx.commit().await?;
        revision
    });
    state.publish(config_event(revision, &team, "user", "updated", &identity));
    let member = members_of(&state, row.id)
        .await?
        .into_iter()
        .find(|m| m.identity == identity)
        .ok_or_else(|| ApiError::NotFound(format!("no member {identity}")))?;
    Ok(Json(member))
}

/// Removes a member from the team (admins only; the user keeps their other teams). Not the
/// team's last admin, nor an operator from their only team (409): neither a team without an
/// admin nor an operator who cannot log in.
#[utoipa::path(delete, path = "/api/v1/teams/{team}/members/{identity}", tag = "teams",
    security(("jwt" = [])),
    params(("team" = Name, Path, description = "Team name"),
           ("identity" = Name, Path, description = "Member identity")),
    responses((status = 204),
        (status = 403, description = "The caller is not an admin of the team", body = ErrorBody),
        (status = 404, description = "No such team for the caller, or no such member", body = ErrorBody),
        (status = 409, description = "The member is the team's last admin, an operator whose only team it is, or an operator of the install's team (the one made with the first admin)", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn remove_member(
    State(state): State<AppState>,
    user: AuthUser,
    Path((team, identity)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let row = admin_of(&state, &user, &team).await?;
    let revision: i64 = on_db!(&state.db, pool => {
        let mut tx = crate::db::begin(pool).await?;
        let revision: i64 = sqlx::query_scalar(BUMP_REVISION).fetch_one(&mut *tx).await?;
        let others: i64 = sqlx::query_scalar(OTHER_ADMINS)
            .bind(row.id).bind(&identity).fetch_one(&mut *tx).await?;
        if others == 0 {
            return Err(last_admin(&identity, &team));
        }
        let stranded: i64 = sqlx::query_scalar(ONLY_TEAM_OF_OPERATOR)
            .bind(row.id).bind(&identity).fetch_one(&mut *tx).await?;
        if stranded > 0 {
            return Err(ApiError::Conflict(format!(
                "team {team} is the only team of operator {identity}: \
                 add them to another team before removing them from it")));
        }
        let install: bool = sqlx::query_scalar(INSTALL_TEAM)
            .bind(row.id).fetch_one(&mut *tx).await?;
        if install {
            let operator: Option<bool> = sqlx::query_scalar(
                "SELECT operator FROM users WHERE identity = $1")
                .bind(&identity).fetch_optional(&mut *tx).await?;
            if operator == Some(true) {
                return Err(install_team_kept(&team, &format!("left by operator {identity}")));
            }
        }
        let done = sqlx::query("DELETE FROM members WHERE team_id = $1 \
            AND user_id = (SELECT id FROM users WHERE identity = $2)")
            .bind(row.id).bind(&identity).execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            return Err(ApiError::NotFound(format!("no member {identity} in team {team}")));
        }
        tx.commit().await?;
        revision
    });
    state.publish(config_event(revision, &team, "user", "deleted", &identity));
    Ok(StatusCode::NO_CONTENT)
}

async fn quota_view(state: &AppState, row: &TeamRow) -> Result<QuotaView, ApiError> {
    const SQL: &str = "SELECT \
        (SELECT COUNT(*) FROM workers WHERE team_id = $1) AS workers, \
        (SELECT COUNT(*) FROM services WHERE team_id = $1) AS services, \
        (SELECT COUNT(*) FROM triggers WHERE team_id = $1) AS triggers, \
        (SELECT COUNT(*) FROM members WHERE team_id = $1) AS users";
    let used: QuotaUse = on_db!(&state.db, pool => {
        sqlx::query_as(SQL).bind(row.id).fetch_one(pool).await?
    });
    Ok(QuotaView {
        team: row.name.clone(),
        limits: QuotaLimits {
            max_workers: row.max_workers,
            max_services: row.max_services,
            max_triggers: row.max_triggers,
            max_users: row.max_users,
            public_services: row.public_services,
        },
        used,
    })
}

/// A team's limits and use.
#[utoipa::path(get, path = "/api/v1/teams/{team}/quota", tag = "teams", security(("jwt" = [])),
    params(("team" = Name, Path, description = "Team name")),
    responses((status = 200, body = QuotaView),
        (status = 404, description = "The caller is not a member of such a team", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn get_quota(
    State(state): State<AppState>,
    user: AuthUser,
    Path(team): Path<String>,
) -> Result<Json<QuotaView>, ApiError> {
    let row = membership(&state, &user, &team).await?;
    Ok(Json(quota_view(&state, &row).await?))
}

/// Sets a team's limits (operators only): a preset or explicit numbers.
#[utoipa::path(put, path = "/api/v1/teams/{team}/quota", tag = "teams", security(("jwt" = [])),
    params(("team" = Name, Path, description = "Team name")), request_body = QuotaRequest,
    responses((status = 200, body = QuotaView),
        (status = 403, description = "The caller is not an operator", body = ErrorBody),
        (status = 404, description = "The caller is not a member of such a team", body = ErrorBody),
        (status = 422, description = "A preset with explicit limits, or a negative limit", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn set_quota(
    State(state): State<AppState>,
    user: AuthUser,
    Path(team): Path<String>,
    Json(req): Json<QuotaRequest>,
) -> Result<Json<QuotaView>, ApiError> {
    if !user.operator {
        return Err(ApiError::Forbidden(
            "only an operator may set quotas".into(),
        ));
    }
    let row = membership(&state, &user, &team).await?;
    let explicit = QuotaLimits {
        max_workers: req.max_workers,
        max_services: req.max_services,
        max_triggers: req.max_triggers,
        max_users: req.max_users,
        public_services: req.public_services.unwrap_or(true),
    };
    let limits = match req.preset {
        Some(preset) => {
            if explicit != QuotaLimits::preset(Preset::Unlimited) || req.public_services.is_some() {
                return Err(ApiError::Unprocessable(
                    "give either a preset or explicit limits, not both".into(),
                ));
            }
            QuotaLimits::preset(preset)
        }
        None => explicit,
    };
    for n in [
        limits.max_workers,
        limits.max_services,
        limits.max_triggers,
        limits.max_users,
    ]
    .into_iter()
    .flatten()
    {
        if n < 0 {
            return Err(ApiError::Unprocessable("a limit cannot be negative".into()));
        }
    }
    let now = now_ms();
    let revision: i64 = on_db!(&state.db, pool => {
        let mut tx = crate::db::begin(pool).await?;
        let revision: i64 = sqlx::query_scalar(BUMP_REVISION).fetch_one(&mut *tx).await?;
        sqlx::query("UPDATE teams SET max_workers = $1, max_services = $2, max_triggers = $3, \
            max_users = $4, public_services = $5, updated = $6 WHERE id = $7")
            .bind(limits.max_workers).bind(limits.max_services).bind(limits.max_triggers)
            .bind(limits.max_users).bind(limits.public_services).bind(now).bind(row.id)
            .execute(&mut *tx).await?;
        tx.commit().await?;
        revision
    });
    state.publish(config_event(revision, &team, "team", "updated", &team));
    let row = membership(&state, &user, &team).await?;
    Ok(Json(quota_view(&state, &row).await?))
}
