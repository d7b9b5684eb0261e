//! Users across teams, as an operator sees them: how many teams each may create.

use super::config_event;
use crate::auth::AuthUser;
use crate::db::{on_db, rfc3339, BUMP_REVISION};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Json, Path};
use crate::openapi::{Limit, Name};
use crate::AppState;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A user.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct UserView {
    /// Identity.
    pub identity: String,
    /// Whether the user is an operator (sets quotas and limits; creates any number of teams).
    pub operator: bool,
    /// How many teams the user may create; `null`: unlimited (every operator).
    #[schema(value_type = Option<Limit>)]
    pub max_teams: Option<i64>,
    /// Teams the user created that still exist.
    pub teams_created: i64,
    /// When the user was created (RFC 3339).
    #[sqlx(skip)]
    pub created: String,
    #[serde(skip)]
    #[schema(ignore)]
    created_ms: i64,
}

/// A user's new limit.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// How many teams the user may create (`null`: unlimited). Required: leaving it out is
    /// refused rather than read as "unlimited". An operator's cannot be limited (409).
    #[serde(deserialize_with = "Option::deserialize")]
    #[schema(value_type = Option<Limit>, required = true)]
    pub max_teams: Option<i64>,
}

const SELECT: &str = "SELECT u.identity, u.operator, u.max_teams, \
    (SELECT COUNT(*) FROM teams t WHERE t.creator_id = u.id) AS teams_created, \
    u.created AS created_ms FROM users u WHERE u.identity = $1";

fn operator_only(user: &AuthUser) -> Result<(), ApiError> {
    if user.operator {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "only an operator may read or change users".into(),
        ))
    }
}

async fn find(state: &AppState, identity: &str) -> Result<UserView, ApiError> {
    let row: Option<UserView> = on_db!(&state.db, pool => {
        sqlx::query_as(SELECT).bind(identity).fetch_optional(pool).await?
    });
    let mut view = row.ok_or_else(|| ApiError::NotFound(format!("no user {identity}")))?;
    view.created = rfc3339(view.created_ms);
    Ok(view)
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
    operator_only(&user)?;
    Ok(Json(find(&state, &identity).await?))
}

/// Sets how many teams a user may create (operators only). An operator's teams stay
/// unlimited: a number for one is refused (409), `null` leaves it as it is.
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
    operator_only(&user)?;
    if req.max_teams.is_some_and(|n| n < 0) {
        return Err(ApiError::Unprocessable("a limit cannot be negative".into()));
    }
    let revision: Option<i64> = on_db!(&state.db, pool => {
        let mut tx = pool.begin().await?;
        let revision: i64 = sqlx::query_scalar(BUMP_REVISION).fetch_one(&mut *tx).await?;
        let operator: Option<bool> = sqlx::query_scalar("SELECT operator FROM users WHERE identity = $1")
            .bind(&identity).fetch_optional(&mut *tx).await?;
        match (operator, req.max_teams) {
            (None, _) => return Err(ApiError::NotFound(format!("no user {identity}"))),
            (Some(true), Some(_)) => return Err(ApiError::Conflict(format!(
                "{identity} is an operator: operators may create any number of teams"))),
            // Nothing changes (dropping the transaction rolls the revision back).
            (Some(true), None) => None,
            (Some(false), max_teams) => {
                sqlx::query("UPDATE users SET max_teams = $1 WHERE identity = $2")
                    .bind(max_teams).bind(&identity).execute(&mut *tx).await?;
                tx.commit().await?;
                Some(revision)
            }
        }
    });
    if let Some(revision) = revision {
        // A user belongs to no one team: the event names none.
        state.publish(config_event(revision, "", "user", "updated", &identity));
    }
    Ok(Json(find(&state, &identity).await?))
}
