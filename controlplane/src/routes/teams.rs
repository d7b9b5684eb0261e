//! Teams and their members (invite, join other teams, roles); their quotas are in `quotas`.

use super::users::{UserRow, USER_SELECT};
use crate::auth::AuthUser;
use crate::change::change;
use crate::checks::{check_name, check_quota};
use crate::credentials;
use crate::db::{now_ms, on_db, rfc3339};
use crate::error::{ApiError, ResultExt};
use crate::extract::{Json, Path};
use crate::state::AppState;
use crate::stored::{readable, Row, Unreadable};
use api::teams::{AddMember, CreateTeam, MemberView, Preset, QuotaLimits, TeamView, UpdateMember};
use api::{Action, ErrorBody, Object, Role};
use axum::extract::State;
use axum::http::StatusCode;
use proto::openapi::Name;
use proto::TextEnum;

#[derive(sqlx::FromRow)]
struct TeamRow {
    id: i64,
    name: String,
    role: String,
    max_workers: Option<i64>,
    max_services: Option<i64>,
    max_triggers: Option<i64>,
    max_users: Option<i64>,
    max_teams: Option<i64>,
    public_services: bool,
    created: i64,
    updated: i64,
}

/// One of the caller's teams: its id, and the team as they see it.
pub(super) struct Team {
    pub(super) id: i64,
    pub(super) view: TeamView,
}

impl TeamRow {
    fn team(self, user: &AuthUser) -> Result<Team, Unreadable> {
        let member = Row::of("member", &self.name, &user.identity);
        let role = member.text(&self.role)?;
        let view = TeamView {
            quota: QuotaLimits {
                max_workers: self.max_workers,
                max_services: self.max_services,
                max_triggers: self.max_triggers,
                max_users: self.max_users,
                max_teams: self.max_teams,
                public_services: self.public_services,
            },
            name: self.name,
            role,
            created: rfc3339(self.created),
            updated: rfc3339(self.updated),
        };
        Ok(Team { id: self.id, view })
    }
}

/// A member as stored.
#[derive(sqlx::FromRow)]
struct MemberRow {
    identity: String,
    role: String,
    operator: bool,
    created: i64,
}

const TEAM_SELECT: &str = "SELECT t.id, t.name, m.role, t.max_workers, t.max_services, \
    t.max_triggers, t.max_users, t.max_teams, t.public_services, t.created, t.updated \
    FROM teams t JOIN members m ON m.team_id = t.id WHERE m.user_id = $1";

/// The caller's membership of `team`; 404 when they are not a member (whether or not it
/// exists: team names are not enumerable).
pub(super) async fn membership(
    state: &AppState,
    user: &AuthUser,
    team: &str,
) -> Result<Team, ApiError> {
    let sql = format!("{TEAM_SELECT} AND t.name = $2");
    let row: Option<TeamRow> = on_db!(&state.db, pool => {
        sqlx::query_as(&sql).bind(user.user_id).bind(team).fetch_optional(pool).await?
    });
    let row = row.ok_or_else(|| ApiError::NotFound(format!("no team {team}")))?;
    Ok(row.team(user)?)
}

/// The caller's membership of `team`, when they are an admin of it; 403 when they are a
/// plain member, 404 when not a member.
pub(super) async fn admin_of(
    state: &AppState,
    user: &AuthUser,
    team: &str,
) -> Result<Team, ApiError> {
    let row = membership(state, user, team).await?;
    if row.view.role != Role::Admin {
        return Err(ApiError::Forbidden(format!(
            "only an admin of team {team} may do this"
        )));
    }
    Ok(row)
}

/// The members of team `$1` that its `max_users` counts: operators are not counted, so that
/// one may join a full team to help.
const COUNTED_MEMBERS: &str = "SELECT COUNT(*) FROM members m \
    JOIN users u ON u.id = m.user_id WHERE m.team_id = $1 AND NOT u.operator";

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
    let teams = rows.into_iter().map(|r| r.team(&user).map(|t| t.view));
    Ok(Json(readable("the list of teams", teams)))
}

/// Creates a team; the caller becomes its admin. A user who is not an operator may create
/// as many teams as their allowance (`GET /api/v1/users/{identity}`: one an operator gave
/// them, else the most generous `max_teams` of the teams they are an admin of, else 1), each
/// in the `free` tier.
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
    change!(state, Object::Team, Action::Created, req.name, req.name, tx => {
        let creator: UserRow = sqlx::query_as(&format!("{USER_SELECT} WHERE u.id = $1"))
            .bind(user.user_id).fetch_one(&mut *tx).await?;
        match creator.allowance().0 {
            Some(limit) if creator.teams_created >= limit => {
                return Err(ApiError::TeamsExceeded {
                    identity: user.identity.clone(),
                    limit,
                });
            }
            _ => {}
        }
        let team_id: i64 = sqlx::query_scalar(
            "INSERT INTO teams (name, max_workers, max_services, max_triggers, max_users, \
             max_teams, public_services, creator_id, created, updated) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) RETURNING id")
            .bind(&req.name).bind(limits.max_workers).bind(limits.max_services)
            .bind(limits.max_triggers).bind(limits.max_users).bind(limits.max_teams)
            .bind(limits.public_services).bind(user.user_id).bind(now).fetch_one(&mut *tx).await
            .on_conflict(|| format!("team {}", req.name))?;
        sqlx::query(
            "INSERT INTO members (team_id, user_id, role, created) VALUES ($1, $2, $3, $4)")
            .bind(team_id).bind(user.user_id).bind(Role::Admin.as_str()).bind(now).execute(&mut *tx)
            .await?;
    });
    let team = membership(&state, &user, &req.name).await?;
    Ok((StatusCode::CREATED, Json(team.view)))
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
    Ok(Json(membership(&state, &user, &team).await?.view))
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
    change!(state, Object::Team, Action::Deleted, team, team, tx => {
        let stranded: Option<String> = sqlx::query_scalar(STRANDED).bind(row.id)
            .fetch_optional(&mut *tx).await?;
        if let Some(identity) = stranded {
            return Err(ApiError::Conflict(format!(
                "team {team} is the only team of operator {identity}: \
                 add them to another team before deleting it"
            )));
        }
        let install: bool = sqlx::query_scalar(INSTALL_TEAM).bind(row.id).fetch_one(&mut *tx)
            .await?;
        if install {
            return Err(install_team_kept(&team, "deleted"));
        }
        sqlx::query("DELETE FROM teams WHERE id = $1").bind(row.id).execute(&mut *tx).await?;
    });
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

/// The members of `team`, each read or its error.
async fn members_of(
    state: &AppState,
    team: &Team,
) -> Result<Vec<Result<MemberView, Unreadable>>, ApiError> {
    const SQL: &str = "SELECT u.identity, m.role, u.operator, m.created FROM members m \
        JOIN users u ON u.id = m.user_id WHERE m.team_id = $1 ORDER BY u.identity";
    let rows: Vec<MemberRow> = on_db!(&state.db, pool => {
        sqlx::query_as(SQL).bind(team.id).fetch_all(pool).await?
    });
    let view = |r: MemberRow| {
        let member = Row::of("member", &team.view.name, &r.identity);
        Ok(MemberView {
            role: member.text(&r.role)?,
            identity: r.identity,
            operator: r.operator,
            joined: rfc3339(r.created),
        })
    };
    Ok(rows.into_iter().map(view).collect())
}

/// Member `identity` of `team`.
async fn member(state: &AppState, team: &Team, identity: &str) -> Result<MemberView, ApiError> {
    let found = members_of(state, team)
        .await?
        .into_iter()
        .find(|m| match m {
            Ok(m) => m.identity == identity,
            Err(_) => false,
        });
    let member = found.ok_or_else(|| ApiError::NotFound(format!("no member {identity}")))?;
    Ok(member?)
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
    let members = members_of(&state, &row).await?;
    Ok(Json(readable("the list of members", members)))
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
    let role = req.role.unwrap_or(Role::Member);
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
    let hash = credentials::hash_secret(&state.guard, req.secret.clone()).await?;
    let now = now_ms();
    change!(state, Object::User, Action::Created, team, req.identity, tx => {
        let n_users: i64 = sqlx::query_scalar(COUNTED_MEMBERS).bind(row.id)
            .fetch_one(&mut *tx).await?;
        check_quota(&team, "users", row.view.quota.max_users, n_users)?;
        let user_id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO users (identity, secret_hash, operator, max_teams, created) \
             VALUES ($1, $2, FALSE, NULL, $3) \
             ON CONFLICT (identity) DO NOTHING RETURNING id")
            .bind(&req.identity).bind(&hash).bind(now).fetch_optional(&mut *tx).await?;
        let Some(user_id) = user_id else {
            return Err(not_added());
        };
        sqlx::query(
            "INSERT INTO members (team_id, user_id, role, created) VALUES ($1, $2, $3, $4)")
            .bind(row.id).bind(user_id).bind(role.as_str()).bind(now).execute(&mut *tx).await
            .on_conflict(|| format!("member {} of team {team}", req.identity))?;
    });
    let member = member(&state, &row, &req.identity).await?;
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
    // After the write lock: two demotions at once cannot both see the other admin.
    change!(state, Object::User, Action::Updated, team, identity, tx => {
        if req.role != Role::Admin {
            let others: i64 = sqlx::query_scalar(OTHER_ADMINS).bind(row.id).bind(&identity)
                .fetch_one(&mut *tx).await?;
            if others == 0 {
                return Err(last_admin(&identity, &team));
            }
        }
        let done = sqlx::query(
            "UPDATE members SET role = $1 WHERE team_id = $2 \
             AND user_id = (SELECT id FROM users WHERE identity = $3)")
            .bind(req.role.as_str()).bind(row.id).bind(&identity).execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            return Err(ApiError::NotFound(format!(
                "no member {identity} in team {team}"
            )));
        }
    });
    Ok(Json(member(&state, &row, &identity).await?))
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
    change!(state, Object::User, Action::Deleted, team, identity, tx => {
        let others: i64 = sqlx::query_scalar(OTHER_ADMINS).bind(row.id).bind(&identity)
            .fetch_one(&mut *tx).await?;
        if others == 0 {
            return Err(last_admin(&identity, &team));
        }
        let stranded: i64 = sqlx::query_scalar(ONLY_TEAM_OF_OPERATOR).bind(row.id).bind(&identity)
            .fetch_one(&mut *tx).await?;
        if stranded > 0 {
            return Err(ApiError::Conflict(format!(
                "team {team} is the only team of operator {identity}: \
                 add them to another team before removing them from it"
            )));
        }
        let install: bool = sqlx::query_scalar(INSTALL_TEAM).bind(row.id).fetch_one(&mut *tx)
            .await?;
        if install {
            let operator: Option<bool> =
                sqlx::query_scalar("SELECT operator FROM users WHERE identity = $1").bind(&identity)
                    .fetch_optional(&mut *tx).await?;
            if operator == Some(true) {
                return Err(install_team_kept(
                    &team,
                    &format!("left by operator {identity}"),
                ));
            }
        }
        let done = sqlx::query(
            "DELETE FROM members WHERE team_id = $1 \
             AND user_id = (SELECT id FROM users WHERE identity = $2)")
            .bind(row.id).bind(&identity).execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            return Err(ApiError::NotFound(format!(
                "no member {identity} in team {team}"
            )));
        }
    });
    Ok(StatusCode::NO_CONTENT)
}
