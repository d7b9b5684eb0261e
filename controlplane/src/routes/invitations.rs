//! Invitations: a team's admin invites an existing user, who accepts (and joins the team with
//! the invited role) or declines.
//!
//! An invitation is not configuration: creating, withdrawing or declining one moves no
//! revision and publishes no event (an event would tell every member of the team, and the
//! team's invitations are its admins' business). Accepting one is a membership change, with
//! its revision and event, as `POST /api/v1/teams/{team}/members`.

use super::teams::{admin_of, membership, Role, TeamView};
use super::{check_name, check_quota, config_event};
use crate::auth::AuthUser;
use crate::db::{now_ms, on_db, rfc3339, BUMP_REVISION};
use crate::error::{ApiError, ErrorBody, ResultExt};
use crate::extract::{Json, Path};
use crate::openapi::Name;
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use proto::TextEnum;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A pending invitation.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct InvitationView {
    /// The team the user is invited to.
    pub team: String,
    /// The invited user.
    pub identity: String,
    /// The role they get when they accept.
    #[schema(value_type = Role)]
    pub role: String,
    /// The admin who invited them.
    pub invited_by: String,
    /// When (RFC 3339).
    #[sqlx(skip)]
    pub created: String,
    #[serde(skip)]
    #[schema(ignore)]
    created_ms: i64,
}

/// Invite an existing user to the team.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInvitation {
    /// The user's identity; the user must exist (422), be no member of the team yet and not
    /// be invited to it already (409).
    #[schema(value_type = Name)]
    pub identity: String,
    /// The role they get when they accept (default `member`).
    pub role: Option<Role>,
}

const SELECT: &str = "SELECT t.name AS team, u.identity, i.role, i.invited_by, \
    i.created AS created_ms FROM invitations i JOIN teams t ON t.id = i.team_id \
    JOIN users u ON u.id = i.user_id";

fn views(mut rows: Vec<InvitationView>) -> Vec<InvitationView> {
    for r in &mut rows {
        r.created = rfc3339(r.created_ms);
    }
    rows
}

/// Invites an existing user to the team (admins only). They join when they accept
/// (`POST /api/v1/invitations/{team}/accept`).
#[utoipa::path(post, path = "/api/v1/teams/{team}/invitations", tag = "invitations",
    security(("jwt" = [])),
    params(("team" = Name, Path, description = "Team name")), request_body = CreateInvitation,
    responses((status = 201, body = InvitationView),
        (status = 403, description = "The caller is not an admin of the team", body = ErrorBody),
        (status = 404, description = "The caller is not a member of such a team", body = ErrorBody),
        (status = 409, description = "The user is already a member of the team, or already invited to it", body = ErrorBody),
        (status = 422, description = "The identity breaks the name rule, or no user has it", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn create_invitation(
    State(state): State<AppState>,
    user: AuthUser,
    Path(team): Path<String>,
    Json(req): Json<CreateInvitation>,
) -> Result<(StatusCode, Json<InvitationView>), ApiError> {
    let row = admin_of(&state, &user, &team).await?;
    check_name("identity", &req.identity)?;
    let role = req.role.unwrap_or(Role::Member).as_str();
    let now = now_ms();
    on_db!(&state.db, pool => {
        let mut tx = crate::db::begin(pool).await?;
        let invited: Option<(i64, i64)> = sqlx::query_as(
            "SELECT u.id, (SELECT COUNT(*) FROM members m WHERE m.user_id = u.id \
             AND m.team_id = $2) FROM users u WHERE u.identity = $1")
            .bind(&req.identity).bind(row.id).fetch_optional(&mut *tx).await?;
        let user_id = match invited {
            None => return Err(ApiError::Unprocessable(format!(
                "user {} does not exist", req.identity))),
            Some((_, member)) if member > 0 => return Err(ApiError::Conflict(format!(
                "{} is already a member of team {team}", req.identity))),
            Some((id, _)) => id,
        };
        sqlx::query("INSERT INTO invitations (team_id, user_id, role, invited_by, created) \
            VALUES ($1, $2, $3, $4, $5)")
            .bind(row.id).bind(user_id).bind(role).bind(&user.identity).bind(now)
            .execute(&mut *tx).await
            .on_conflict(|| format!("an invitation of {} to team {team}", req.identity))?;
        tx.commit().await?;
    });
    let view = InvitationView {
        team,
        identity: req.identity,
        role: role.to_string(),
        invited_by: user.identity,
        created: rfc3339(now),
        created_ms: now,
    };
    Ok((StatusCode::CREATED, Json(view)))
}

/// The team's pending invitations (admins only).
#[utoipa::path(get, path = "/api/v1/teams/{team}/invitations", tag = "invitations",
    security(("jwt" = [])),
    params(("team" = Name, Path, description = "Team name")),
    responses((status = 200, body = [InvitationView]),
        (status = 403, description = "The caller is not an admin of the team", body = ErrorBody),
        (status = 404, description = "The caller is not a member of such a team", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn list_team_invitations(
    State(state): State<AppState>,
    user: AuthUser,
    Path(team): Path<String>,
) -> Result<Json<Vec<InvitationView>>, ApiError> {
    let row = admin_of(&state, &user, &team).await?;
    let sql = format!("{SELECT} WHERE i.team_id = $1 ORDER BY u.identity");
    let rows: Vec<InvitationView> = on_db!(&state.db, pool => {
        sqlx::query_as(&sql).bind(row.id).fetch_all(pool).await?
    });
    Ok(Json(views(rows)))
}

/// Withdraws an invitation (admins only).
#[utoipa::path(delete, path = "/api/v1/teams/{team}/invitations/{identity}", tag = "invitations",
    security(("jwt" = [])),
    params(("team" = Name, Path, description = "Team name"),
           ("identity" = Name, Path, description = "The invited user")),
    responses((status = 204),
        (status = 403, description = "The caller is not an admin of the team", body = ErrorBody),
        (status = 404, description = "No such team for the caller, or no invitation of that user to it", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn withdraw_invitation(
    State(state): State<AppState>,
    user: AuthUser,
    Path((team, identity)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let row = admin_of(&state, &user, &team).await?;
    let done = on_db!(&state.db, pool => {
        sqlx::query("DELETE FROM invitations WHERE team_id = $1 \
            AND user_id = (SELECT id FROM users WHERE identity = $2)")
            .bind(row.id).bind(&identity).execute(pool).await?.rows_affected()
    });
    if done == 0 {
        return Err(ApiError::NotFound(format!(
            "no invitation of {identity} to team {team}"
        )));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's own pending invitations, to every team.
#[utoipa::path(get, path = "/api/v1/invitations", tag = "invitations", security(("jwt" = [])),
    responses((status = 200, body = [InvitationView]), (status = "default", body = ErrorBody)))]
pub async fn list_my_invitations(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Vec<InvitationView>>, ApiError> {
    let sql = format!("{SELECT} WHERE i.user_id = $1 ORDER BY t.name");
    let rows: Vec<InvitationView> = on_db!(&state.db, pool => {
        sqlx::query_as(&sql).bind(user.user_id).fetch_all(pool).await?
    });
    Ok(Json(views(rows)))
}

fn no_invitation(team: &str) -> ApiError {
    ApiError::NotFound(format!("no invitation to team {team}"))
}

/// Accepts an invitation: the caller joins the team with the invited role (within the team's
/// `max_users`), and the invitation is gone. Answers the team as the caller now sees it.
#[utoipa::path(post, path = "/api/v1/invitations/{team}/accept", tag = "invitations",
    security(("jwt" = [])),
    params(("team" = Name, Path, description = "Team name")),
    responses((status = 200, body = TeamView),
        (status = 403, description = "`QuotaExceeded`: the team has as many users as it may (the invitation stays)", body = ErrorBody),
        (status = 404, description = "The caller has no invitation to such a team", body = ErrorBody),
        (status = 409, description = "The caller is already a member of the team", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn accept_invitation(
    State(state): State<AppState>,
    user: AuthUser,
    Path(team): Path<String>,
) -> Result<Json<TeamView>, ApiError> {
    let now = now_ms();
    let revision: i64 = on_db!(&state.db, pool => {
        let mut tx = crate::db::begin(pool).await?;
        // The write lock first: two accepts at once cannot both fit under `max_users`.
        let revision: i64 = sqlx::query_scalar(BUMP_REVISION).fetch_one(&mut *tx).await?;
        let invitation: Option<(i64, String, Option<i64>, i64)> = sqlx::query_as(
            "SELECT t.id, i.role, t.max_users, \
             (SELECT COUNT(*) FROM members m WHERE m.team_id = t.id) \
             FROM invitations i JOIN teams t ON t.id = i.team_id \
             WHERE t.name = $1 AND i.user_id = $2")
            .bind(&team).bind(user.user_id).fetch_optional(&mut *tx).await?;
        let Some((team_id, role, max_users, n_users)) = invitation else {
            return Err(no_invitation(&team));
        };
        check_quota(&team, "users", max_users, n_users)?;
        sqlx::query("INSERT INTO members (team_id, user_id, role, created) VALUES ($1, $2, $3, $4)")
            .bind(team_id).bind(user.user_id).bind(&role).bind(now).execute(&mut *tx).await
            .on_conflict(|| format!("member {} of team {team}", user.identity))?;
        sqlx::query("DELETE FROM invitations WHERE team_id = $1 AND user_id = $2")
            .bind(team_id).bind(user.user_id).execute(&mut *tx).await?;
        tx.commit().await?;
        revision
    });
    state.publish(config_event(
        revision,
        &team,
        "user",
        "created",
        &user.identity,
    ));
    Ok(Json(membership(&state, &user, &team).await?.view()))
}

/// Declines an invitation: it is gone, and the caller does not join.
#[utoipa::path(delete, path = "/api/v1/invitations/{team}", tag = "invitations",
    security(("jwt" = [])),
    params(("team" = Name, Path, description = "Team name")),
    responses((status = 204),
        (status = 404, description = "The caller has no invitation to such a team", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn decline_invitation(
    State(state): State<AppState>,
    user: AuthUser,
    Path(team): Path<String>,
) -> Result<StatusCode, ApiError> {
    let done = on_db!(&state.db, pool => {
        sqlx::query("DELETE FROM invitations WHERE user_id = $1 \
            AND team_id = (SELECT id FROM teams WHERE name = $2)")
            .bind(user.user_id).bind(&team).execute(pool).await?.rows_affected()
    });
    if done == 0 {
        return Err(no_invitation(&team));
    }
    Ok(StatusCode::NO_CONTENT)
}
