//! Directories: the folders directly under `/` that hold triggers.

use super::{check_name, config_event};
use crate::auth::AuthUser;
use crate::db::{now_ms, on_db, rfc3339, BUMP_REVISION};
use crate::error::{ApiError, ErrorBody, ResultExt};
use crate::extract::{Json, Path};
use crate::openapi::{doc_type, string, Name};
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use proto::names::MAX_NAME;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What [`directory_name`] accepts: a name, after an optional `/`.
pub(crate) const PATH_PATTERN: &str = concat!("^/?", proto::name_segment_pattern!(), "$");

doc_type! {
    /// A directory's path.
    DirectoryPath => string("`/name` (or `name`): one level under `/`; the name follows the name rule.")
        .min_length(Some(1))
        .max_length(Some(MAX_NAME + 1))
        .pattern(Some(PATH_PATTERN))
}

/// A directory.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct DirectoryView {
    /// Name (one path segment).
    pub name: String,
    /// `/name`.
    #[sqlx(skip)]
    pub path: String,
    /// Triggers in it.
    pub n_triggers: i64,
    /// Who created it.
    pub owner: String,
    /// RFC 3339.
    #[sqlx(skip)]
    pub created: String,
    #[serde(skip)]
    #[schema(ignore)]
    created_ms: i64,
}

/// A new directory.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDirectory {
    /// `/name`: one level under `/`, unique in the team (409 when taken).
    #[schema(value_type = DirectoryPath)]
    pub path: String,
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

const SELECT: &str = "SELECT d.name, d.owner, d.created AS created_ms, \
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
    let mut rows: Vec<DirectoryView> = on_db!(&state.db, pool => {
        let mut query = sqlx::query_as(&sql).bind(user.team_id);
        if let Some(name) = name {
            query = query.bind(name);
        }
        query.fetch_all(pool).await?
    });
    for r in &mut rows {
        r.path = format!("/{}", r.name);
        r.created = rfc3339(r.created_ms);
    }
    Ok(rows)
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
    let revision: i64 = on_db!(&state.db, pool => {
        let mut tx = crate::db::begin(pool).await?;
        let revision: i64 = sqlx::query_scalar(BUMP_REVISION).fetch_one(&mut *tx).await?;
        sqlx::query("INSERT INTO directories (team_id, name, owner, created) VALUES ($1, $2, $3, $4)")
            .bind(user.team_id).bind(name).bind(&user.identity).bind(now)
            .execute(&mut *tx).await
            .on_conflict(|| format!("directory /{name}"))?;
        tx.commit().await?;
        revision
    });
    state.publish(config_event(
        revision,
        &user.team,
        "directory",
        "created",
        &format!("/{name}"),
    ));
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
    let revision: i64 = on_db!(&state.db, pool => {
        let mut tx = crate::db::begin(pool).await?;
        let revision: i64 = sqlx::query_scalar(BUMP_REVISION).fetch_one(&mut *tx).await?;
        let id: Option<i64> = sqlx::query_scalar("SELECT id FROM directories WHERE team_id = $1 AND name = $2")
            .bind(user.team_id).bind(&name).fetch_optional(&mut *tx).await?;
        let Some(id) = id else {
            return Err(ApiError::NotFound(format!("no directory /{name} in team {}", user.team)));
        };
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM triggers WHERE directory_id = $1")
            .bind(id).fetch_one(&mut *tx).await?;
        if n > 0 {
            return Err(ApiError::Conflict(format!("directory /{name} holds {n} triggers")));
        }
        sqlx::query("DELETE FROM directories WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        revision
    });
    state.publish(config_event(
        revision,
        &user.team,
        "directory",
        "deleted",
        &format!("/{name}"),
    ));
    Ok(StatusCode::NO_CONTENT)
}
