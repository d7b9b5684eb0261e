//! Users across teams, as an operator sees them: how many teams each may create (their own
//! allowance, or their teams' tiers'); and a user's change of their own secret.

use super::login::issue;
use crate::auth::{AuthUser, PeerAddr};
use crate::change::change;
use crate::checks::operator_only;
use crate::credentials;
use crate::db::{on_db, rfc3339};
use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::state::AppState;
use api::login::LoginResponse;
use api::users::{AllowanceFrom, ChangeSecret, UpdateUser, UserView, MAX_SECRET};
use api::{Action, ErrorBody, Object};
use axum::extract::State;
use proto::openapi::Name;

/// What only an operator may do here (the 403's message).
const WHAT: &str = "read or change users";

/// A user as stored, with what decides their team allowance.
#[derive(sqlx::FromRow)]
pub(super) struct UserRow {
    identity: String,
    operator: bool,
    /// The allowance an operator gave them (`NULL`: none, the tier decides).
    own_max_teams: Option<i64>,
    /// Teams they are an admin of; of those, how many allow unlimited teams, and the most
    /// any other allows.
    admin_of: i64,
    unlimited_tiers: i64,
    tier_max_teams: Option<i64>,
    pub(super) teams_created: i64,
    created: i64,
}

/// Every user (`WHERE` and `ORDER BY` follow), as [`UserRow`].
pub(super) const USER_SELECT: &str = "SELECT u.identity, u.operator, \
    u.max_teams AS own_max_teams, \
    (SELECT COUNT(*) FROM members m WHERE m.user_id = u.id AND m.role = 'admin') AS admin_of, \
    (SELECT COUNT(*) FROM members m JOIN teams t ON t.id = m.team_id \
     WHERE m.user_id = u.id AND m.role = 'admin' AND t.max_teams IS NULL) AS unlimited_tiers, \
    (SELECT MAX(t.max_teams) FROM members m JOIN teams t ON t.id = m.team_id \
     WHERE m.user_id = u.id AND m.role = 'admin') AS tier_max_teams, \
    (SELECT COUNT(*) FROM teams t WHERE t.creator_id = u.id) AS teams_created, \
    u.created FROM users u";

impl UserRow {
    /// How many teams the user may create (`None`: unlimited), and why: an operator's are
    /// unlimited; else the allowance an operator gave them; else the most generous tier among
    /// the teams they are an admin of (1 when they are an admin of none).
    pub(super) fn allowance(&self) -> (Option<i64>, AllowanceFrom) {
        if self.operator {
            (None, AllowanceFrom::Operator)
        } else if let Some(own) = self.own_max_teams {
            (Some(own), AllowanceFrom::User)
        } else if self.admin_of == 0 {
            (Some(1), AllowanceFrom::Tier)
        } else if self.unlimited_tiers > 0 {
            (None, AllowanceFrom::Tier)
        } else {
            (self.tier_max_teams.or(Some(1)), AllowanceFrom::Tier)
        }
    }

    fn view(self) -> UserView {
        let (max_teams, max_teams_from) = self.allowance();
        UserView {
            identity: self.identity,
            operator: self.operator,
            max_teams,
            max_teams_from,
            teams_created: self.teams_created,
            created: rfc3339(self.created),
        }
    }
}

async fn find(state: &AppState, identity: &str) -> Result<UserView, ApiError> {
    let sql = format!("{USER_SELECT} WHERE u.identity = $1");
    let row: Option<UserRow> = on_db!(&state.db, pool => {
        sqlx::query_as(&sql).bind(identity).fetch_optional(pool).await?
    });
    let row = row.ok_or_else(|| ApiError::NotFound(format!("no user {identity}")))?;
    Ok(row.view())
}

/// Every user of the installation and their team allowance (operators only).
#[utoipa::path(get, path = "/api/v1/users", tag = "users", security(("jwt" = [])),
    responses((status = 200, body = [UserView]),
        (status = 403, description = "The caller is not an operator", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn list_users(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Vec<UserView>>, ApiError> {
    operator_only(&user, WHAT)?;
    let sql = format!("{USER_SELECT} ORDER BY u.identity");
    let rows: Vec<UserRow> = on_db!(&state.db, pool => {
        sqlx::query_as(&sql).fetch_all(pool).await?
    });
    Ok(Json(rows.into_iter().map(UserRow::view).collect()))
}

/// One user and their limit (operators only).
#[utoipa::path(get, path = "/api/v1/users/{identity}", tag = "users", security(("jwt" = [])),
    params(("identity" = Name, Path, description = "User identity")),
    responses((status = 200, body = UserView),
        (status = 403, description = "The caller is not an operator", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn get_user(
    State(state): State<AppState>,
    user: AuthUser,
    Path(identity): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    operator_only(&user, WHAT)?;
    Ok(Json(find(&state, &identity).await?))
}

/// Sets how many teams a user may create (operators only): a number of their own, or `null`
/// for none of their own (the tiers of the teams they are an admin of decide). An operator's
/// teams stay unlimited: a number for one is refused (409), `null` leaves it as it is.
#[utoipa::path(patch, path = "/api/v1/users/{identity}", tag = "users", security(("jwt" = [])),
    params(("identity" = Name, Path, description = "User identity")), request_body = UpdateUser,
    responses((status = 200, body = UserView),
        (status = 403, description = "The caller is not an operator", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "The user is an operator, whose teams are unlimited", body = ErrorBody),
        (status = 422, description = "A negative limit", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn update_user(
    State(state): State<AppState>,
    user: AuthUser,
    Path(identity): Path<String>,
    Json(req): Json<UpdateUser>,
) -> Result<Json<UserView>, ApiError> {
    operator_only(&user, WHAT)?;
    if req.max_teams.is_some_and(|n| n < 0) {
        return Err(ApiError::Unprocessable("a limit cannot be negative".into()));
    }
    // An operator's teams stay unlimited: `null` for one changes nothing (no revision, no
    // event). Whether a user is an operator never changes while the API serves.
    let found = find(&state, &identity).await?;
    if found.operator && req.max_teams.is_none() {
        return Ok(Json(found));
    }
    // A user belongs to no one team: the event names none.
    change!(state, Object::User, Action::Updated, "", identity, tx => {
        let operator: Option<bool> =
            sqlx::query_scalar("SELECT operator FROM users WHERE identity = $1").bind(&identity)
                .fetch_optional(&mut *tx).await?;
        match operator {
            None => return Err(ApiError::NotFound(format!("no user {identity}"))),
            Some(true) => {
                return Err(ApiError::Conflict(format!(
                    "{identity} is an operator: operators may create any number of teams"
                )))
            }
            Some(false) => {
                sqlx::query("UPDATE users SET max_teams = $1 WHERE identity = $2")
                    .bind(req.max_teams).bind(&identity).execute(&mut *tx).await?;
            }
        }
    });
    let view = find(&state, &identity).await?;
    tracing::info!(operator = %user.identity, user = %identity, own = ?req.max_teams,
        max_teams = ?view.max_teams, from = %view.max_teams_from,
        "operator changed a user's team allowance");
    Ok(Json(view))
}

/// Changes the caller's own secret: `identity` must be the caller's, and `current` their
/// secret now. Every JWT of the user issued before the change is refused from then on, by
/// this API and by the broker (which closes the connections they opened); the answer is a new
/// token for the caller's team. Attempts count against the same limits as logins.
#[utoipa::path(put, path = "/api/v1/users/{identity}/secret", tag = "users",
    security(("jwt" = [])),
    params(("identity" = Name, Path, description = "User identity: the caller's own")),
    request_body = ChangeSecret,
    responses((status = 200, body = LoginResponse),
        (status = 403, description = "`identity` is not the caller, or `current` is not their secret", body = ErrorBody),
        (status = 409, description = "The secret changed meanwhile (another change came first)", body = ErrorBody),
        (status = 422, description = "The new secret is empty or longer than 1024 characters", body = ErrorBody),
        (status = 429, description = "Too many attempts for the identity or from the address; retry after `Retry-After`", body = ErrorBody),
        (status = 503, description = "Too many secrets being hashed at once; retry after `Retry-After`", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn change_secret(
    State(state): State<AppState>,
    user: AuthUser,
    peer: PeerAddr,
    Path(identity): Path<String>,
    Json(req): Json<ChangeSecret>,
) -> Result<Json<LoginResponse>, ApiError> {
    if identity != user.identity {
        return Err(ApiError::Forbidden(format!(
            "only {identity} may change their own secret"
        )));
    }
    if req.new.is_empty() {
        return Err(ApiError::Unprocessable("the new secret is empty".into()));
    }
    if req.new.chars().count() > MAX_SECRET {
        return Err(ApiError::Unprocessable(format!(
            "the new secret is longer than {MAX_SECRET} characters"
        )));
    }
    // A wrong `current` is a guess at the secret, as a failed login is (counted and locked
    // the same way).
    state.guard.admit(&state.db, &identity, peer.0).await?;
    let old_hash: String = on_db!(&state.db, pool => {
        sqlx::query_scalar("SELECT secret_hash FROM users WHERE id = $1")
            .bind(user.user_id).fetch_one(pool).await?
    });
    let current_ok =
        credentials::verify_secret(&state.guard, req.current, Some(old_hash.clone())).await?;
    state
        .guard
        .record(&state.db, &identity, peer.0, current_ok)
        .await?;
    if !current_ok {
        return Err(ApiError::Forbidden(
            "the current secret is not right".into(),
        ));
    }
    let new_hash = credentials::hash_secret(&state.guard, req.new).await?;
    // A user belongs to no one team: the event names none (the broker refetches and cuts the
    // connections of older tokens; the user's own event streams end).
    let sgen = change!(state, Object::User, Action::Updated, "", identity, tx => {
        // Only over the hash that was checked: of two changes at once, one wins.
        let sgen: Option<i64> = sqlx::query_scalar(
            "UPDATE users SET secret_hash = $1, secret_gen = secret_gen + 1 \
             WHERE id = $2 AND secret_hash = $3 RETURNING secret_gen")
            .bind(&new_hash).bind(user.user_id).bind(&old_hash).fetch_optional(&mut *tx).await?;
        let Some(sgen) = sgen else {
            return Err(ApiError::Conflict(
                "the secret changed meanwhile: log in with the new one".into(),
            ));
        };
        sgen
    });
    let answer = issue(&state, identity, user.user_id, sgen, user.team, user.role)?;
    Ok(Json(answer))
}
