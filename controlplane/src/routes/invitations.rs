//! Invitations: a team's admin invites an existing user, who accepts (and joins the team with
//! the invited role) or declines.
//!
//! An invitation is not configuration: creating, withdrawing or declining one moves no
//! revision and publishes no event (an event would tell every member of the team, and the
//! team's invitations are its admins' business). Accepting one is a membership change, with
//! its revision and event, as `POST /api/v1/teams/{team}/members`.

use super::teams::{admin_of, membership};
use crate::auth::AuthUser;
use crate::change::change;
use crate::checks::{check_name, check_quota};
use crate::db::{now_ms, on_db, rfc3339};
use crate::error::{ApiError, ResultExt};
use crate::extract::{Json, Path};
use crate::state::AppState;
use crate::stored::{readable, Row, Unreadable};
use api::invitations::{CreateInvitation, InvitationView};
use api::teams::TeamView;
use api::{Action, ErrorBody, Object, Role};
use axum::extract::State;
use axum::http::StatusCode;
use proto::openapi::Name;
use proto::TextEnum;

/// An invitation as stored.
#[derive(sqlx::FromRow)]
struct InvitationRow {
    team: String,
    identity: String,
    role: String,
    invited_by: String,
    created: i64,
}

impl InvitationRow {
    fn view(self) -> Result<InvitationView, Unreadable> {
        let invitation = Row::of("invitation", &self.team, &self.identity);
        Ok(InvitationView {
            role: invitation.text(&self.role)?,
            team: self.team,
            identity: self.identity,
            invited_by: self.invited_by,
            created: rfc3339(self.created),
        })
    }
}

const SELECT: &str = "SELECT t.name AS team, u.identity, i.role, i.invited_by, i.created \
    FROM invitations i JOIN teams t ON t.id = i.team_id JOIN users u ON u.id = i.user_id";

fn views(rows: Vec<InvitationRow>) -> Vec<InvitationView> {
    readable(
        "the list of invitations",
        rows.into_iter().map(InvitationRow::view),
    )
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
    let role = req.role.unwrap_or(Role::Member);
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
            .bind(row.id).bind(user_id).bind(role.as_str()).bind(&user.identity).bind(now)
            .execute(&mut *tx).await
            .on_conflict(|| format!("an invitation of {} to team {team}", req.identity))?;
        tx.commit().await?;
    });
    let view = InvitationView {
        team,
        identity: req.identity,
        role,
        invited_by: user.identity,
        created: rfc3339(now),
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
    let rows: Vec<InvitationRow> = on_db!(&state.db, pool => {
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
    let rows: Vec<InvitationRow> = on_db!(&state.db, pool => {
        sqlx::query_as(&sql).bind(user.user_id).fetch_all(pool).await?
    });
    Ok(Json(views(rows)))
}

fn no_invitation(team: &str) -> ApiError {
    ApiError::NotFound(format!("no invitation to team {team}"))
}

/// Accepts an invitation: the caller joins the team with the invited role (within the team's
/// `max_users`, which does not count operators: an operator may join a full team to help),
/// and the invitation is gone. Answers the team as the caller now sees it.
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
    // The write lock first: two accepts at once cannot both fit under `max_users`.
    change!(state, Object::User, Action::Created, team, user.identity, tx => {
        let invitation: Option<(i64, String, Option<i64>, i64)> = sqlx::query_as(
            "SELECT t.id, i.role, t.max_users, \
             (SELECT COUNT(*) FROM members m JOIN users u ON u.id = m.user_id \
              WHERE m.team_id = t.id AND NOT u.operator) \
             FROM invitations i JOIN teams t ON t.id = i.team_id \
             WHERE t.name = $1 AND i.user_id = $2")
            .bind(&team).bind(user.user_id).fetch_optional(&mut *tx).await?;
        let Some((team_id, role, max_users, n_users)) = invitation else {
            return Err(no_invitation(&team));
        };
        if !user.operator {
            check_quota(&team, "users", max_users, n_users)?;
        }
        sqlx::query(
            "INSERT INTO members (team_id, user_id, role, created) VALUES ($1, $2, $3, $4)")
            .bind(team_id).bind(user.user_id).bind(&role).bind(now).execute(&mut *tx).await
            .on_conflict(|| format!("member {} of team {team}", user.identity))?;
        sqlx::query("DELETE FROM invitations WHERE team_id = $1 AND user_id = $2").bind(team_id)
            .bind(user.user_id).execute(&mut *tx).await?;
    });
    Ok(Json(membership(&state, &user, &team).await?.view))
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
