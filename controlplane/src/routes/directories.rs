//! Directories: the folders that hold triggers, at any depth up to `api::directories::MAX_DEPTH`.
//!
//! A directory's row keeps its whole path without the leading `/` (`weatherstation/rpi`), so
//! a path is one unique key; a trigger refers to its directory's id, so moving a directory
//! (one `UPDATE` of the paths under it) moves its triggers with it, ids unchanged.

use crate::auth::AuthUser;
use crate::change::change;
use crate::checks::may_modify;
use crate::db::{now_ms, on_db, rfc3339};
use crate::error::{ApiError, ResultExt};
use crate::extract::{Json, Path};
use crate::state::AppState;
use api::directories::{
    CreateDirectory, DirPath, DirectoryView, PathError, UpdateDirectory, MAX_DEPTH,
};
use api::schema::DirectoryPath;
use api::{Action, ErrorBody, Object};
use axum::extract::State;
use axum::http::StatusCode;

/// A directory as stored.
#[derive(sqlx::FromRow)]
struct DirectoryRow {
    id: i64,
    name: String,
    n_triggers: i64,
    owner: String,
    created: i64,
}

/// A directory path of a request body, checked (422).
pub(crate) fn dir_path(text: &str) -> Result<DirPath, ApiError> {
    DirPath::parse(text).map_err(|e| ApiError::Unprocessable(e.to_string()))
}

/// A directory path of a route, checked (400).
fn route_path(text: &str) -> Result<DirPath, ApiError> {
    DirPath::parse(text).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// The id of directory `$path` (a `&str` without the leading `/`) of team `$team_id`.
macro_rules! dir_id {
    ($tx:expr, $team_id:expr, $path:expr) => {{
        let id: Option<i64> =
            sqlx::query_scalar("SELECT id FROM directories WHERE team_id = $1 AND name = $2")
                .bind($team_id)
                .bind($path)
                .fetch_optional(&mut *$tx)
                .await?;
        id
    }};
}
pub(crate) use dir_id;

/// Refuses a new directory or trigger at `$path` (a [`DirPath`]) when a trigger or a
/// directory already has that path: a name in a directory is one or the other.
macro_rules! refuse_taken {
    ($tx:expr, $team_id:expr, $path:expr) => {{
        let path: &DirPath = $path;
        let dirs: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM directories WHERE team_id = $1 AND name = $2")
                .bind($team_id)
                .bind(path.as_str())
                .fetch_one(&mut *$tx)
                .await?;
        let triggers: i64 =
            match path.parent() {
                None => 0,
                Some(parent) => sqlx::query_scalar(
                    "SELECT COUNT(*) FROM triggers t JOIN directories d ON d.id = t.directory_id \
                     WHERE d.team_id = $1 AND d.name = $2 AND t.name = $3",
                )
                .bind($team_id)
                .bind(parent.as_str())
                .bind(path.name())
                .fetch_one(&mut *$tx)
                .await?,
            };
        if dirs + triggers > 0 {
            let what = if dirs > 0 { "directory" } else { "trigger" };
            return Err(ApiError::Conflict(format!("{what} {path} already exists")));
        }
    }};
}

/// What every directory under `$under` (`a/b/`) and its triggers match:
/// `substr(name, 1, length($2)) = $2`.
const UNDER: &str = "substr(name, 1, length($2)) = $2";

const SELECT: &str = "SELECT d.id, d.name, d.owner, d.created, \
    (SELECT COUNT(*) FROM triggers t WHERE t.directory_id = d.id) AS n_triggers \
    FROM directories d WHERE d.team_id = $1 ORDER BY d.name";

/// The team's directories, or (`only`) the one of that path.
async fn load(
    state: &AppState,
    user: &AuthUser,
    only: Option<&DirPath>,
) -> Result<Vec<DirectoryView>, ApiError> {
    let rows: Vec<DirectoryRow> = on_db!(&state.db, pool => {
        sqlx::query_as(SELECT).bind(user.team_id).fetch_all(pool).await?
    });
    let parent = |name: &str| name.rsplit_once('/').map(|(p, _)| p.to_string());
    let mut children = std::collections::HashMap::<String, i64>::new();
    for r in &rows {
        if let Some(p) = parent(&r.name) {
            *children.entry(p).or_default() += 1;
        }
    }
    let view = |r: DirectoryRow| DirectoryView {
        id: r.id,
        path: format!("/{}", r.name),
        n_directories: children.get(&r.name).copied().unwrap_or(0),
        name: r.name.rsplit('/').next().unwrap_or(&r.name).to_string(),
        n_triggers: r.n_triggers,
        owner: r.owner,
        created: rfc3339(r.created),
    };
    Ok(rows
        .into_iter()
        .filter(|r| only.is_none_or(|p| p.as_str() == r.name))
        .map(view)
        .collect())
}

/// The directory of `path`, as the API shows it.
async fn one(state: &AppState, user: &AuthUser, path: &DirPath) -> Result<DirectoryView, ApiError> {
    load(state, user, Some(path))
        .await?
        .pop()
        .ok_or_else(|| ApiError::NotFound(format!("no directory {path} in team {}", user.team)))
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

/// Creates a directory (`mkdir`; with `parents`, `mkdir -p`).
#[utoipa::path(post, path = "/api/v1/directories", tag = "triggers", security(("jwt" = [])),
    request_body = CreateDirectory,
    responses((status = 201, body = DirectoryView),
        (status = 409, description = "The team has a directory or a trigger of that path", body = ErrorBody),
        (status = 422, description = "Not a directory path, or its parent does not exist (without `parents`)", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn create_directory(
    State(state): State<AppState>,
    user: AuthUser,
    Json(req): Json<CreateDirectory>,
) -> Result<(StatusCode, Json<DirectoryView>), ApiError> {
    let path = dir_path(&req.path)?;
    let now = now_ms();
    change!(state, Object::Directory, Action::Created, user.team, path, tx => {
        // The missing directories above it, nearest first.
        let mut missing = Vec::new();
        let mut above = path.parent();
        while let Some(dir) = above {
            if dir_id!(tx, user.team_id, dir.as_str()).is_some() {
                break;
            }
            above = dir.parent();
            missing.push(dir);
        }
        if let (Some(nearest), false) = (missing.first(), req.parents.unwrap_or(false)) {
            return Err(ApiError::Unprocessable(format!(
                "no directory {nearest} in team {}: create it first (or set `parents`)",
                user.team
            )));
        }
        for dir in missing.iter().rev().chain([&path]) {
            refuse_taken!(tx, user.team_id, dir);
            sqlx::query(
                "INSERT INTO directories (team_id, name, owner, created) VALUES ($1, $2, $3, $4)")
                .bind(user.team_id).bind(dir.as_str()).bind(&user.identity).bind(now)
                .execute(&mut *tx).await.on_conflict(|| format!("directory {dir}"))?;
        }
    });
    Ok((StatusCode::CREATED, Json(one(&state, &user, &path).await?)))
}

/// Deletes an empty directory (`rmdir`); 409 while it holds triggers or directories.
#[utoipa::path(delete, path = "/api/v1/directories/{path}", tag = "triggers", security(("jwt" = [])),
    params(("path" = DirectoryPath, Path, description = "The directory's path, its `/`s as `%2F` (`weatherstation%2Frpi`)")),
    responses((status = 204),
        (status = 404, description = "No such directory in the caller's team", body = ErrorBody),
        (status = 409, description = "The directory holds triggers or directories", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn delete_directory(
    State(state): State<AppState>,
    user: AuthUser,
    Path(path): Path<String>,
) -> Result<StatusCode, ApiError> {
    let path = route_path(&path)?;
    let under = format!("{}/", path.as_str());
    change!(state, Object::Directory, Action::Deleted, user.team, path, tx => {
        let Some(id) = dir_id!(tx, user.team_id, path.as_str()) else {
            return Err(ApiError::NotFound(format!("no directory {path} in team {}", user.team)));
        };
        let triggers: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM triggers WHERE directory_id = $1").bind(id)
                .fetch_one(&mut *tx).await?;
        let dirs: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM directories WHERE team_id = $1 AND {UNDER}"))
            .bind(user.team_id).bind(&under).fetch_one(&mut *tx).await?;
        if triggers + dirs > 0 {
            return Err(ApiError::Conflict(format!(
                "directory {path} holds {triggers} triggers and {dirs} directories"
            )));
        }
        sqlx::query("DELETE FROM directories WHERE id = $1").bind(id).execute(&mut *tx).await?;
    });
    Ok(StatusCode::NO_CONTENT)
}

/// Moves a directory (`mv`) with everything in it: its triggers and the directories under
/// it keep their ids (and the fs their inodes). Moving a directory moves its triggers, so it
/// takes the right to move each of them: the caller owns them all or is an admin.
#[utoipa::path(patch, path = "/api/v1/directories/{path}", tag = "triggers", security(("jwt" = [])),
    params(("path" = DirectoryPath, Path, description = "The directory's path, its `/`s as `%2F` (`weatherstation%2Frpi`)")),
    request_body = UpdateDirectory,
    responses((status = 200, body = DirectoryView),
        (status = 403, description = "It holds triggers of another member, and the caller is no admin", body = ErrorBody),
        (status = 404, description = "No such directory in the caller's team", body = ErrorBody),
        (status = 409, description = "A directory or a trigger has the new path", body = ErrorBody),
        (status = 422, description = "Not a directory path, the new parent does not exist or is inside the directory, or the move would nest deeper than 16 levels", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn update_directory(
    State(state): State<AppState>,
    user: AuthUser,
    Path(path): Path<String>,
    Json(req): Json<UpdateDirectory>,
) -> Result<Json<DirectoryView>, ApiError> {
    let from = route_path(&path)?;
    let to = dir_path(&req.path)?;
    if from != to && from.contains(&to) {
        let (from, to) = (from.as_str().into(), to.as_str().into());
        return Err(ApiError::Unprocessable(
            PathError::IntoItself { from, to }.to_string(),
        ));
    }
    if from != to {
        move_directory(&state, &user, &from, &to).await?;
    }
    Ok(Json(one(&state, &user, &to).await?))
}

/// Renames directory `from` and everything under it to `to`, in one change.
async fn move_directory(
    state: &AppState,
    user: &AuthUser,
    from: &DirPath,
    to: &DirPath,
) -> Result<(), ApiError> {
    let under = format!("{}/", from.as_str());
    let now = now_ms();
    change!(state, Object::Directory, Action::Renamed, user.team, to, tx => {
        if dir_id!(tx, user.team_id, from.as_str()).is_none() {
            return Err(ApiError::NotFound(format!("no directory {from} in team {}", user.team)));
        }
        if let Some(parent) = to.parent() {
            if dir_id!(tx, user.team_id, parent.as_str()).is_none() {
                return Err(ApiError::Unprocessable(format!(
                    "no directory {parent} in team {}: create it first", user.team)));
            }
        }
        refuse_taken!(tx, user.team_id, to);
        let below: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT name FROM directories WHERE team_id = $1 AND {UNDER}"))
            .bind(user.team_id).bind(&under).fetch_all(&mut *tx).await?;
        let deepest = below.iter().map(|d| d.split('/').count()).max().unwrap_or(from.depth());
        if to.depth() + deepest - from.depth() > MAX_DEPTH {
            return Err(ApiError::Unprocessable(PathError::TooDeep {
                what: "directory", path: format!("{to}/..."), max: MAX_DEPTH }.to_string()));
        }
        if !user.is_admin() {
            let owners: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT t.owner FROM triggers t JOIN directories d ON d.id = t.directory_id \
                 WHERE d.team_id = $1 AND (d.name = $3 OR substr(d.name, 1, length($2)) = $2)")
                .bind(user.team_id).bind(&under).bind(from.as_str()).fetch_all(&mut *tx).await?;
            for owner in owners {
                may_modify(user, &owner)?;
            }
        }
        sqlx::query(&format!(
            "UPDATE directories SET name = $3 || substr(name, length($4) + 1) \
             WHERE team_id = $1 AND (name = $4 OR {UNDER})"))
            .bind(user.team_id).bind(&under).bind(to.as_str()).bind(from.as_str())
            .execute(&mut *tx).await.on_conflict(|| format!("directory {to}"))?;
        // Each trigger under it has a new path: a change of its own.
        sqlx::query(
            "UPDATE triggers SET updated = $3 WHERE directory_id IN (SELECT id FROM directories \
             WHERE team_id = $1 AND (name = $2 OR substr(name, 1, length($2) + 1) = $2 || '/'))")
            .bind(user.team_id).bind(to.as_str()).bind(now).execute(&mut *tx).await?;
    });
    Ok(())
}
