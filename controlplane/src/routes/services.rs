//! Services of the caller's team: algorithm, timeout, visibility, bound workers.

use crate::auth::AuthUser;
use crate::change::change;
use crate::checks::{check_description, check_name, check_quota, may_modify, timeout_ms};
use crate::db::{now_ms, on_db, rfc3339};
use crate::error::{ApiError, ResultExt};
use crate::extract::{Json, Path};
use crate::stored::{readable, Row, Unreadable};
use crate::AppState;
use api::services::{BindWorker, CreateService, ServiceView, UpdateService};
use api::{Action, Algorithm, ErrorBody, Object, Timeout, Visibility, WorkerState};
use axum::extract::State;
use axum::http::StatusCode;
use proto::openapi::Name;
use proto::TextEnum;

#[derive(sqlx::FromRow)]
struct ServiceRow {
    id: i64,
    name: String,
    description: String,
    algorithm: String,
    timeout_ms: i64,
    visibility: String,
    batch: Option<i64>,
    stop_on_failure: bool,
    retry: bool,
    history: String,
    owner: String,
    created: i64,
    updated: i64,
}

#[derive(sqlx::FromRow)]
struct BindingRow {
    service_id: i64,
    identity: String,
    state: String,
    owner: String,
    visibility: String,
}

impl ServiceRow {
    fn view(self, team: &str, bound: &[&BindingRow]) -> Result<ServiceView, Unreadable> {
        let service = Row {
            object: "service",
            team,
            name: &self.name,
        };
        // A bound worker serves when it is online and not another user's `local` one; one
        // whose state or visibility does not read is left out (and logged).
        let serves = |b: &BindingRow| {
            let worker = Row {
                object: "worker",
                team,
                name: &b.identity,
            };
            let online = worker.text::<WorkerState>(&b.state)? == WorkerState::Online;
            let local = worker.text::<Visibility>(&b.visibility)? == Visibility::Local;
            Ok(online && (!local || b.owner == self.owner))
        };
        let serving = bound
            .iter()
            .map(|b| Ok(serves(b)?.then(|| b.identity.clone())));
        let serving = readable("a service's serving workers", serving);
        Ok(ServiceView {
            algorithm: service.text(&self.algorithm)?,
            visibility: service.text(&self.visibility)?,
            history: service.text(&self.history)?,
            timeout: Timeout::from_ms(service.number(self.timeout_ms)?),
            workers: bound.iter().map(|b| b.identity.clone()).collect(),
            serving: serving.into_iter().flatten().collect(),
            name: self.name,
            description: self.description,
            timeout_ms: self.timeout_ms,
            batch: self.batch,
            stop_on_failure: self.stop_on_failure,
            retry: self.retry,
            owner: self.owner,
            created: rfc3339(self.created),
            updated: rfc3339(self.updated),
        })
    }
}

const SELECT: &str = "SELECT id, name, description, algorithm, timeout_ms, visibility, batch, \
    stop_on_failure, retry, history, owner, created, updated FROM services WHERE team_id = $1";
const BINDINGS: &str = "SELECT sw.service_id, w.identity, w.state, w.owner, w.visibility \
    FROM service_workers sw \
    JOIN workers w ON w.id = sw.worker_id WHERE w.team_id = $1 ORDER BY sw.service_id, sw.position";

async fn load(
    state: &AppState,
    user: &AuthUser,
    name: Option<&str>,
) -> Result<Vec<Result<ServiceView, Unreadable>>, ApiError> {
    let sql = match name {
        Some(_) => format!("{SELECT} AND name = $2"),
        None => format!("{SELECT} ORDER BY name"),
    };
    let (rows, bindings): (Vec<ServiceRow>, Vec<BindingRow>) = on_db!(&state.db, pool => {
        let mut query = sqlx::query_as(&sql).bind(user.team_id);
        if let Some(name) = name {
            query = query.bind(name);
        }
        let rows = query.fetch_all(pool).await?;
        let bindings = sqlx::query_as(BINDINGS).bind(user.team_id).fetch_all(pool).await?;
        (rows, bindings)
    });
    Ok(rows
        .into_iter()
        .map(|row| {
            let bound: Vec<&BindingRow> =
                bindings.iter().filter(|b| b.service_id == row.id).collect();
            row.view(&user.team, &bound)
        })
        .collect())
}

async fn find(state: &AppState, user: &AuthUser, name: &str) -> Result<ServiceView, ApiError> {
    let view = load(state, user, Some(name))
        .await?
        .pop()
        .ok_or_else(|| ApiError::NotFound(format!("no service {name} in team {}", user.team)))?;
    Ok(view?)
}

fn check_workers(workers: &[String]) -> Result<(), ApiError> {
    for (i, w) in workers.iter().enumerate() {
        check_name("worker", w)?;
        if workers[..i].contains(w) {
            return Err(ApiError::Unprocessable(format!(
                "worker {w} is listed twice"
            )));
        }
    }
    Ok(())
}

/// Refuses `public` in a team whose tier does not allow public services.
fn check_public(team: &str, visibility: Option<Visibility>, allowed: bool) -> Result<(), ApiError> {
    if visibility == Some(Visibility::Public) && !allowed {
        return Err(ApiError::Forbidden(format!(
            "the tier of team {team} does not allow public services"
        )));
    }
    Ok(())
}

/// A service and a worker of one team may not share a name (the broker routes by name).
pub(crate) fn name_taken(name: &str, team: &str) -> ApiError {
    ApiError::Conflict(format!(
        "{name} is already the name of a service or a worker in team {team}"
    ))
}

fn batch_value(batch: Option<u32>) -> Option<i64> {
    batch.filter(|b| *b > 0).map(i64::from)
}

/// Who binds workers to which service: binding a worker takes the right to use it.
struct Binding<'a> {
    /// The caller.
    user: &'a AuthUser,
    /// The service's name.
    service: &'a str,
    /// The service's owner.
    owner: &'a str,
    /// The service's visibility after the change.
    visibility: Visibility,
    /// Workers bound before that stay bound without a new check (the service was not
    /// widened): they were checked when they were bound.
    kept: &'a [String],
}

/// Wider visibilities reach more callers: `local` < `team` < `public`.
fn reach(visibility: Visibility) -> u8 {
    match visibility {
        Visibility::Local => 0,
        Visibility::Team => 1,
        Visibility::Public => 2,
    }
}

impl Binding<'_> {
    /// Whether worker `identity` (owned by `worker_owner`, of `visibility`) may serve this
    /// service: its owner may bind it to any service of theirs; a `local` worker serves
    /// only its owner's services (the broker routes no other); another's `team` worker an
    /// admin may bind anywhere, a plain member into a service no wider than `team`.
    fn check(
        &self,
        identity: &str,
        worker_owner: &str,
        visibility: Visibility,
    ) -> Result<(), ApiError> {
        if self.kept.iter().any(|k| k == identity) {
            return Ok(());
        }
        let (service, owner) = (self.service, self.owner);
        match visibility {
            Visibility::Local if worker_owner != owner => Err(ApiError::Forbidden(format!(
                "worker {identity} is local to {worker_owner}: it serves only services of theirs, \
                 and service {service} is {owner}'s"
            ))),
            Visibility::Local => Ok(()),
            _ if worker_owner == self.user.identity || self.user.is_admin() => Ok(()),
            _ if self.visibility == Visibility::Public => Err(ApiError::Forbidden(format!(
                "worker {identity} is {worker_owner}'s: a member binds another's worker only to \
                 a service of visibility local or team, and service {service} would be public; \
                 an admin of team {} may bind it",
                self.user.team
            ))),
            _ => Ok(()),
        }
    }
}

/// Binds `workers` (replacing any binding) inside the caller's transaction, each checked
/// by the [`Binding`].
macro_rules! bind_workers {
    ($tx:expr, $binding:expr, $service_id:expr, $workers:expr) => {{
        let binding: &Binding = $binding;
        let user = binding.user;
        sqlx::query("DELETE FROM service_workers WHERE service_id = $1")
            .bind($service_id)
            .execute(&mut *$tx)
            .await?;
        for (position, identity) in $workers.iter().enumerate() {
            let worker: Option<(i64, String, String)> = sqlx::query_as(
                "SELECT id, owner, visibility FROM workers WHERE team_id = $1 AND identity = $2",
            )
            .bind(user.team_id)
            .bind(identity)
            .fetch_optional(&mut *$tx)
            .await?;
            let Some((worker_id, worker_owner, visibility)) = worker else {
                return Err(ApiError::Unprocessable(format!(
                    "no worker {identity} in team {}",
                    user.team
                )));
            };
            let worker = Row {
                object: "worker",
                team: &user.team,
                name: identity,
            };
            let visibility = worker.text(&visibility)?;
            binding.check(identity, &worker_owner, visibility)?;
            sqlx::query(
                "INSERT INTO service_workers (service_id, worker_id, position) VALUES ($1, $2, $3)",
            )
            .bind($service_id)
            .bind(worker_id)
            .bind(position as i64)
            .execute(&mut *$tx)
            .await?;
        }
    }};
}

/// The services of the caller's team.
#[utoipa::path(get, path = "/api/v1/services", tag = "services", security(("jwt" = [])),
    responses((status = 200, body = [ServiceView]), (status = "default", body = ErrorBody)))]
pub async fn list_services(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Vec<ServiceView>>, ApiError> {
    let views = load(&state, &user, None).await?;
    Ok(Json(readable("the list of services", views)))
}

/// Creates a service owned by the caller.
#[utoipa::path(post, path = "/api/v1/services", tag = "services", security(("jwt" = [])),
    request_body = CreateService,
    responses((status = 201, body = ServiceView),
        (status = 403, description = "`QuotaExceeded`: the team has as many services as it may; or `public` where its tier has no public services; or a listed worker the caller may not bind: another user's `local` worker (it serves only its owner's services), or, for a member who is not an admin, another's `team` worker in a `public` service", body = ErrorBody),
        (status = 409, description = "A service or a worker of the team has that name", body = ErrorBody),
        (status = 422, description = "A field breaks its rule, both timeouts are given, or a listed worker does not exist", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn create_service(
    State(state): State<AppState>,
    user: AuthUser,
    Json(req): Json<CreateService>,
) -> Result<(StatusCode, Json<ServiceView>), ApiError> {
    check_name("service", &req.name)?;
    check_description(&req.description)?;
    let timeout_ms = timeout_ms(req.timeout.as_ref(), req.timeout_ms)?.unwrap_or(0);
    let workers = req.workers.unwrap_or_default();
    check_workers(&workers)?;
    let now = now_ms();
    change!(
        state,
        Object::Service,
        Action::Created,
        user.team,
        req.name,
        |tx| {
            let (limit, used, public_ok): (Option<i64>, i64, bool) = sqlx::query_as(
                "SELECT max_services, (SELECT COUNT(*) FROM services WHERE team_id = $1), \
             public_services FROM teams WHERE id = $1",
            )
            .bind(user.team_id)
            .fetch_one(&mut *tx)
            .await?;
            check_quota(&user.team, "services", limit, used)?;
            check_public(&user.team, req.visibility, public_ok)?;
            let worker_named: Option<i64> =
                sqlx::query_scalar("SELECT id FROM workers WHERE team_id = $1 AND identity = $2")
                    .bind(user.team_id)
                    .bind(&req.name)
                    .fetch_optional(&mut *tx)
                    .await?;
            if worker_named.is_some() {
                return Err(name_taken(&req.name, &user.team));
            }
            let service_id: i64 = sqlx::query_scalar(
            "INSERT INTO services (team_id, name, description, algorithm, timeout_ms, visibility, \
             batch, stop_on_failure, retry, owner, created, updated, history) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12) RETURNING id")
            .bind(user.team_id).bind(&req.name).bind(req.description.as_deref().unwrap_or(""))
            .bind(req.algorithm.unwrap_or(Algorithm::Roundrobin).as_str())
            .bind(timeout_ms)
            .bind(req.visibility.unwrap_or_default().as_str())
            .bind(batch_value(req.batch))
            .bind(req.stop_on_failure.unwrap_or(false)).bind(req.retry.unwrap_or(false))
            .bind(&user.identity).bind(now)
            .bind(req.history.unwrap_or_default().as_str())
            .fetch_one(&mut *tx).await
            .on_conflict(|| format!("service {}", req.name))?;
            let binding = Binding {
                user: &user,
                service: &req.name,
                owner: &user.identity,
                visibility: req.visibility.unwrap_or_default(),
                kept: &[],
            };
            bind_workers!(tx, &binding, service_id, workers);
        }
    );
    Ok((
        StatusCode::CREATED,
        Json(find(&state, &user, &req.name).await?),
    ))
}

/// One service.
#[utoipa::path(get, path = "/api/v1/services/{name}", tag = "services", security(("jwt" = [])),
    params(("name" = Name, Path, description = "Service name")),
    responses((status = 200, body = ServiceView),
        (status = 404, description = "No service of that name in the caller's team", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn get_service(
    State(state): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
) -> Result<Json<ServiceView>, ApiError> {
    Ok(Json(find(&state, &user, &name).await?))
}

async fn service_id(
    state: &AppState,
    user: &AuthUser,
    name: &str,
) -> Result<(i64, String), ApiError> {
    let row: Option<(i64, String)> = on_db!(&state.db, pool => {
        sqlx::query_as("SELECT id, owner FROM services WHERE team_id = $1 AND name = $2")
            .bind(user.team_id).bind(name).fetch_optional(pool).await?
    });
    row.ok_or_else(|| ApiError::NotFound(format!("no service {name} in team {}", user.team)))
}

/// Changes a service (its owner or an admin).
#[utoipa::path(patch, path = "/api/v1/services/{name}", tag = "services", security(("jwt" = [])),
    params(("name" = Name, Path, description = "Service name")), request_body = UpdateService,
    responses((status = 200, body = ServiceView),
        (status = 403, description = "The caller neither owns the service nor is an admin of the team; or `public` where the team's tier has no public services; or a listed worker the caller may not bind: another user's `local` worker (it serves only its owner's services), or, for a member who is not an admin, another's `team` worker in a `public` service (a change to a wider visibility checks every bound worker again)", body = ErrorBody),
        (status = 404, description = "No service of that name in the caller's team", body = ErrorBody),
        (status = 422, description = "A field breaks its rule, both timeouts are given, or a listed worker does not exist", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn update_service(
    State(state): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
    Json(req): Json<UpdateService>,
) -> Result<Json<ServiceView>, ApiError> {
    check_description(&req.description)?;
    let timeout_ms = timeout_ms(req.timeout.as_ref(), req.timeout_ms)?;
    if let Some(workers) = &req.workers {
        check_workers(workers)?;
    }
    let (id, owner) = service_id(&state, &user, &name).await?;
    may_modify(&user, &owner)?;
    let now = now_ms();
    change!(
        state,
        Object::Service,
        Action::Updated,
        user.team,
        name,
        |tx| {
            if req.visibility == Some(Visibility::Public) {
                let public_ok: bool =
                    sqlx::query_scalar("SELECT public_services FROM teams WHERE id = $1")
                        .bind(user.team_id)
                        .fetch_one(&mut *tx)
                        .await?;
                check_public(&user.team, req.visibility, public_ok)?;
            }
            // What is bound stays bound unless the service is widened, which checks it all again.
            let (stored_visibility, bound): (String, Vec<String>) = (
            sqlx::query_scalar("SELECT visibility FROM services WHERE id = $1")
                .bind(id).fetch_one(&mut *tx).await?,
            sqlx::query_scalar("SELECT w.identity FROM service_workers sw \
                JOIN workers w ON w.id = sw.worker_id WHERE sw.service_id = $1 ORDER BY sw.position")
                .bind(id).fetch_all(&mut *tx).await?,
        );
            let service = Row {
                object: "service",
                team: &user.team,
                name: &name,
            };
            let before: Visibility = service.text(&stored_visibility)?;
            let visibility = req.visibility.unwrap_or(before);
            let widened = reach(visibility) > reach(before);
            let binding = Binding {
                user: &user,
                service: &name,
                owner: &owner,
                visibility,
                kept: if widened { &[] } else { &bound },
            };
            sqlx::query(
                "UPDATE services SET \
            description = COALESCE($1, description), algorithm = COALESCE($2, algorithm), \
            timeout_ms = COALESCE($3, timeout_ms), visibility = COALESCE($4, visibility), \
            batch = CASE WHEN $5 THEN $6 ELSE batch END, \
            stop_on_failure = COALESCE($7, stop_on_failure), retry = COALESCE($8, retry), \
            history = COALESCE($11, history), updated = $9 WHERE id = $10",
            )
            .bind(req.description.as_deref())
            .bind(req.algorithm.map(TextEnum::as_str))
            .bind(timeout_ms)
            .bind(req.visibility.map(TextEnum::as_str))
            .bind(req.batch.is_some())
            .bind(batch_value(req.batch))
            .bind(req.stop_on_failure)
            .bind(req.retry)
            .bind(now)
            .bind(id)
            .bind(req.history.map(TextEnum::as_str))
            .execute(&mut *tx)
            .await?;
            match (&req.workers, widened) {
                (Some(workers), _) => bind_workers!(tx, &binding, id, workers),
                (None, true) => bind_workers!(tx, &binding, id, bound),
                (None, false) => {}
            }
        }
    );
    Ok(Json(find(&state, &user, &name).await?))
}

/// Deletes a service (its owner or an admin).
#[utoipa::path(delete, path = "/api/v1/services/{name}", tag = "services", security(("jwt" = [])),
    params(("name" = Name, Path, description = "Service name")),
    responses((status = 204),
        (status = 403, description = "The caller neither owns the service nor is an admin of the team", body = ErrorBody),
        (status = 404, description = "No service of that name in the caller's team", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn delete_service(
    State(state): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (id, owner) = service_id(&state, &user, &name).await?;
    may_modify(&user, &owner)?;
    change!(
        state,
        Object::Service,
        Action::Deleted,
        user.team,
        name,
        |tx| {
            sqlx::query("DELETE FROM services WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
    );
    Ok(StatusCode::NO_CONTENT)
}

/// Binds `workers` to `service` instead of its workers (one more, one fewer): those bound
/// before stay without a new check, a new one is checked.
async fn rebind(
    state: &AppState,
    user: &AuthUser,
    service: &ServiceView,
    workers: Vec<String>,
) -> Result<Json<ServiceView>, ApiError> {
    let name = &service.name;
    let binding = Binding {
        user,
        service: name,
        owner: &service.owner,
        visibility: service.visibility,
        kept: &service.workers,
    };
    let (id, _) = service_id(state, user, name).await?;
    let now = now_ms();
    change!(
        state,
        Object::Service,
        Action::Updated,
        user.team,
        name,
        |tx| {
            bind_workers!(tx, &binding, id, workers);
            sqlx::query("UPDATE services SET updated = $1 WHERE id = $2")
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
    );
    Ok(Json(find(state, user, name).await?))
}

/// Binds one more worker of the team to the service (at the end).
#[utoipa::path(post, path = "/api/v1/services/{name}/workers", tag = "services",
    security(("jwt" = [])), params(("name" = Name, Path, description = "Service name")),
    request_body = BindWorker,
    responses((status = 200, body = ServiceView),
        (status = 403, description = "The caller neither owns the service nor is an admin of the team; or a worker the caller may not bind: another user's `local` worker (it serves only its owner's services), or, for a member who is not an admin, another's `team` worker in a `public` service", body = ErrorBody),
        (status = 404, description = "No service of that name in the caller's team", body = ErrorBody),
        (status = 409, description = "The worker is bound already", body = ErrorBody),
        (status = 422, description = "An identity that breaks the name rule, or no such worker in the team", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn add_service_worker(
    State(state): State<AppState>,
    user: AuthUser,
    Path(name): Path<String>,
    Json(req): Json<BindWorker>,
) -> Result<Json<ServiceView>, ApiError> {
    check_name("worker", &req.identity)?;
    let service = find(&state, &user, &name).await?;
    may_modify(&user, &service.owner)?;
    if service.workers.contains(&req.identity) {
        return Err(ApiError::Conflict(format!(
            "worker {} is already bound to service {name}",
            req.identity
        )));
    }
    let mut workers = service.workers.clone();
    workers.push(req.identity);
    rebind(&state, &user, &service, workers).await
}

/// Unbinds a worker from the service.
#[utoipa::path(delete, path = "/api/v1/services/{name}/workers/{identity}", tag = "services",
    security(("jwt" = [])),
    params(("name" = Name, Path, description = "Service name"),
           ("identity" = Name, Path, description = "Worker identity")),
    responses((status = 200, body = ServiceView),
        (status = 403, description = "The caller neither owns the service nor is an admin of the team", body = ErrorBody),
        (status = 404, description = "No such service in the caller's team, or the worker is not bound to it", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn remove_service_worker(
    State(state): State<AppState>,
    user: AuthUser,
    Path((name, identity)): Path<(String, String)>,
) -> Result<Json<ServiceView>, ApiError> {
    let service = find(&state, &user, &name).await?;
    may_modify(&user, &service.owner)?;
    if !service.workers.contains(&identity) {
        return Err(ApiError::NotFound(format!(
            "worker {identity} is not bound to service {name}"
        )));
    }
    let workers: Vec<String> = service
        .workers
        .iter()
        .filter(|w| **w != identity)
        .cloned()
        .collect();
    rebind(&state, &user, &service, workers).await
}
