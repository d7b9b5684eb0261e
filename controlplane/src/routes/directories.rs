//! Directories: the folders directly under `/` that hold triggers.

use crate::auth::AuthUser;
use crate::change::change;
use crate::checks::check_name;
use crate::db::{now_ms, on_db, rfc3339};
use crate::error::{ApiError, ResultExt};
use crate::extract::{Json, Path};
use crate::AppState;
use api::directories::{CreateDirectory, DirectoryView};
use api::{Action, ErrorBody, Object};
use axum::extract::State;
use axum::http::StatusCode;
use proto::openapi::Name;

/// A directory as stored.
#[derive(sqlx::FromRow)]
struct DirectoryRow {
    name: String,
    n_triggers: i64,
    owner: String,
    created: i64,
}

/// The directory name of `/name` (or `name`), checked.
pub(crate) fn directory_name(path: &str) -> Result<&str, ApiError> {
    let name = path.strip_prefix('/').unwrap_or(path);
    if name.contains('/') {
        return Err(ApiError::Unprocessable(format!(
            "directory `{path}` must be one level under /"
        )));
    }
    check_name("directory", name)?;
    Ok(name)
}

const SELECT: &str = "SELECT d.name, d.owner, d.created, \
    (SELECT COUNT(*) FROM triggers t WHERE t.directory_id = d.id) AS n_triggers \
    FROM directories d WHERE d.team_id = $1";

async fn load(
    state: &AppState,
    user: &AuthUser,
    name: Option<&str>,
) -> Result<Vec<DirectoryView>, ApiError> {
    let sql = match name {
        Some(_) => format!("{SELECT} AND d.name = $2"),
        None => format!("{SELECT} ORDER BY d.name"),
    };
    let rows: Vec<DirectoryRow> = on_db!(&state.db, pool => {
        let mut query = sqlx::query_as(&sql).bind(user.team_id);
        if let Some(name) = name {
            query = query.bind(name);
        }
        query.fetch_all(pool).await?
    });
    let view = |r: DirectoryRow| DirectoryView {
        path: format!("/{}", r.name),
        name: r.name,
        n_triggers: r.n_triggers,
        owner: r.owner,
        created: rfc3339(r.created),
    };
    Ok(rows.into_iter().map(view).collect())
}

/// The directories of the caller's team.
#[utoipa::path(get, path = "/api/v1/directories", tag = "triggers", security(("jwt" = [])),
    responses((status = 200, body = [DirectoryView]), (status = "default", body = ErrorBody)))]
pub async fn list_directories(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Vec<DirectoryView>>, ApiError> {
    Ok(Json(load(&state, &user, None).await?))
}

/// Creates a directory (mkdir).
#[utoipa::path(post, path = "/api/v1/directories", tag = "triggers", security(("jwt" = [])),
    request_body = CreateDirectory,
    responses((status = 201, body = DirectoryView),
        (status = 409, description = "The team has that directory", body = ErrorBody),
        (status = 422, description = "Not one name under `/`", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn create_directory(
    State(state): State<AppState>,
    user: AuthUser,
    Json(req): Json<CreateDirectory>,
) -> Result<(StatusCode, Json<DirectoryView>), ApiError> {
    let name = directory_name(&req.path)?;
    let now = now_ms();
    let path = format!("/{name}");
    change!(
        state,
        Object::Directory,
        Action::Created,
        user.team,
        path,
        |tx| {
            sqlx::query(
                "INSERT INTO directories (team_id, name, owner, created) VALUES ($1, $2, $3, $4)",
            )
            .bind(user.team_id)
            .bind(name)
            .bind(&user.identity)
            .bind(now)
            .execute(&mut *tx)
            .await
            .on_conflict(|| format!("directory /{name}"))?;
        }
    );
    let dir = load(&state, &user, Some(name))
        .await?
        .pop()
        .ok_or_else(|| ApiError::NotFound(format!("no directory /{name}")))?;
    Ok((StatusCode::CREATED, Json(dir)))
}

/// Deletes an empty directory (rmdir); 409 while it holds triggers.
#[utoipa::path(delete, path = "/api/v1/directories/{name}", tag = "triggers", security(("jwt" = [])),
    params(("name" = Name, Path, description = "Directory name")),
    responses((status = 204),
        (status = 404, description = "No such directory in the caller's team", body = ErrorBody),
        (status = 409, description = "The directory holds triggers", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn delete_directory(
    State(state): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let path = format!("/{name}");
    change!(
        state,
        Object::Directory,
        Action::Deleted,
        user.team,
        path,
        |tx| {
            let id: Option<i64> =
                sqlx::query_scalar("SELECT id FROM directories WHERE team_id = $1 AND name = $2")
                    .bind(user.team_id)
                    .bind(&name)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(id) = id else {
                return Err(ApiError::NotFound(format!(
                    "no directory /{name} in team {}",
                    user.team
                )));
            };
            let n: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM triggers WHERE directory_id = $1")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
            if n > 0 {
                return Err(ApiError::Conflict(format!(
                    "directory /{name} holds {n} triggers"
                )));
            }
            sqlx::query("DELETE FROM directories WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
    );
    Ok(StatusCode::NO_CONTENT)
}
