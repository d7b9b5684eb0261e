//! Teams' tiers and limits: a team's quota, read by its members; every team's, read and set
//! by operators (the installation's operator role), whether or not they are members.
//!
//! A caller who is not an operator learns nothing of a team they are not in: reading its
//! quota is 404 as for any team route, and setting or listing quotas is 403 before any team
//! is looked at.

use crate::auth::AuthUser;
use crate::change::change;
use crate::checks::operator_only;
use crate::db::{now_ms, on_db};
use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::state::AppState;
use api::teams::{Preset, QuotaLimits, QuotaRequest, QuotaUse, QuotaView};
use api::{Action, ErrorBody, Object};
use axum::extract::State;
use proto::openapi::Name;

/// What only an operator may do here (the 403's message).
const WHAT: &str = "read every team's quota or set one";

/// A team's limits and use as stored.
#[derive(sqlx::FromRow)]
struct QuotaRow {
    id: i64,
    name: String,
    max_workers: Option<i64>,
    max_services: Option<i64>,
    max_triggers: Option<i64>,
    max_users: Option<i64>,
    max_teams: Option<i64>,
    public_services: bool,
    workers: i64,
    services: i64,
    triggers: i64,
    users: i64,
}

/// Every team's limits and use (`WHERE` and `ORDER BY` follow). Operators are not counted
/// among a team's users (`max_users` does not count them either).
const QUOTA_SELECT: &str = "SELECT t.id, t.name, t.max_workers, t.max_services, \
    t.max_triggers, t.max_users, t.max_teams, t.public_services, \
    (SELECT COUNT(*) FROM workers w WHERE w.team_id = t.id) AS workers, \
    (SELECT COUNT(*) FROM services s WHERE s.team_id = t.id) AS services, \
    (SELECT COUNT(*) FROM triggers g WHERE g.team_id = t.id) AS triggers, \
    (SELECT COUNT(*) FROM members m JOIN users u ON u.id = m.user_id \
     WHERE m.team_id = t.id AND NOT u.operator) AS users \
    FROM teams t";

impl QuotaRow {
    fn view(self) -> QuotaView {
        let limits = QuotaLimits {
            max_workers: self.max_workers,
            max_services: self.max_services,
            max_triggers: self.max_triggers,
            max_users: self.max_users,
            max_teams: self.max_teams,
            public_services: self.public_services,
        };
        QuotaView {
            team: self.name,
            tier: limits.tier(),
            limits,
            used: QuotaUse {
                workers: self.workers,
                services: self.services,
                triggers: self.triggers,
                users: self.users,
            },
        }
    }
}

/// Team `team`'s quota, for `user`: an operator reads any team's, anyone else only that of
/// a team they are a member of (404 otherwise, whether or not it exists).
async fn quota_of(state: &AppState, user: &AuthUser, team: &str) -> Result<QuotaRow, ApiError> {
    let sql = format!(
        "{QUOTA_SELECT} WHERE t.name = $1 AND ($2 OR EXISTS \
         (SELECT 1 FROM members m WHERE m.team_id = t.id AND m.user_id = $3))"
    );
    let row: Option<QuotaRow> = on_db!(&state.db, pool => {
        sqlx::query_as(&sql).bind(team).bind(user.operator).bind(user.user_id)
            .fetch_optional(pool).await?
    });
    row.ok_or_else(|| ApiError::NotFound(format!("no team {team}")))
}

/// Every team of the installation with its tier, limits and use (operators only).
#[utoipa::path(get, path = "/api/v1/quotas", tag = "teams", security(("jwt" = [])),
    responses((status = 200, body = [QuotaView]),
        (status = 403, description = "The caller is not an operator", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn list_quotas(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Vec<QuotaView>>, ApiError> {
    operator_only(&user, WHAT)?;
    let sql = format!("{QUOTA_SELECT} ORDER BY t.name");
    let rows: Vec<QuotaRow> = on_db!(&state.db, pool => {
        sqlx::query_as(&sql).fetch_all(pool).await?
    });
    Ok(Json(rows.into_iter().map(QuotaRow::view).collect()))
}

/// A team's tier, limits and use: any team's for an operator, else one the caller is a
/// member of.
#[utoipa::path(get, path = "/api/v1/teams/{team}/quota", tag = "teams", security(("jwt" = [])),
    params(("team" = Name, Path, description = "Team name")),
    responses((status = 200, body = QuotaView),
        (status = 404, description = "No such team, or (not an operator) the caller is not a member of it", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn get_quota(
    State(state): State<AppState>,
    user: AuthUser,
    Path(team): Path<String>,
) -> Result<Json<QuotaView>, ApiError> {
    Ok(Json(quota_of(&state, &user, &team).await?.view()))
}

/// The limits `req` asks for: a preset, or explicit numbers.
fn limits_of(req: &QuotaRequest) -> Result<QuotaLimits, ApiError> {
    let explicit = QuotaLimits {
        max_workers: req.max_workers,
        max_services: req.max_services,
        max_triggers: req.max_triggers,
        max_users: req.max_users,
        max_teams: req.max_teams,
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
    let numbers = [
        limits.max_workers,
        limits.max_services,
        limits.max_triggers,
        limits.max_users,
        limits.max_teams,
    ];
    if numbers.into_iter().flatten().any(|n| n < 0) {
        return Err(ApiError::Unprocessable("a limit cannot be negative".into()));
    }
    Ok(limits)
}

/// Sets a team's tier or limits (operators only, on any team): a preset, or explicit
/// numbers. The team's admins may then create as many teams as its `max_teams` allows,
/// unless an operator gave them an allowance of their own.
#[utoipa::path(put, path = "/api/v1/teams/{team}/quota", tag = "teams", security(("jwt" = [])),
    params(("team" = Name, Path, description = "Team name")), request_body = QuotaRequest,
    responses((status = 200, body = QuotaView),
        (status = 403, description = "The caller is not an operator", body = ErrorBody),
        (status = 404, description = "No such team", body = ErrorBody),
        (status = 422, description = "A preset with explicit limits, or a negative limit", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn set_quota(
    State(state): State<AppState>,
    user: AuthUser,
    Path(team): Path<String>,
    Json(req): Json<QuotaRequest>,
) -> Result<Json<QuotaView>, ApiError> {
    operator_only(&user, WHAT)?;
    let limits = limits_of(&req)?;
    let row = quota_of(&state, &user, &team).await?;
    let now = now_ms();
    change!(state, Object::Team, Action::Updated, team, team, tx => {
        sqlx::query(
            "UPDATE teams SET max_workers = $1, max_services = $2, max_triggers = $3, \
             max_users = $4, max_teams = $5, public_services = $6, updated = $7 WHERE id = $8")
            .bind(limits.max_workers).bind(limits.max_services).bind(limits.max_triggers)
            .bind(limits.max_users).bind(limits.max_teams).bind(limits.public_services)
            .bind(now).bind(row.id).execute(&mut *tx).await?;
    });
    let view = quota_of(&state, &user, &team).await?.view();
    let tier = view.tier.map_or("limits of its own", |t| t.into());
    tracing::info!(operator = %user.identity, team = %team, tier, limits = ?view.limits,
        "operator set a team's quota");
    Ok(Json(view))
}
