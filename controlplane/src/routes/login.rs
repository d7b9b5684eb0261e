//! `POST /api/v1/login`: team, identity and secret for a JWT.

use crate::auth;
use crate::credentials;
use crate::db::{now_ms, on_db, rfc3339};
use crate::error::ApiError;
use crate::extract::Json;
use crate::state::AppState;
use crate::stored::Row;
use api::login::{LoginRequest, LoginResponse};
use api::{ErrorBody, Role};
use axum::extract::State;
use proto::control::Claims;

#[derive(sqlx::FromRow)]
struct LoginRow {
    id: i64,
    secret_gen: i64,
    secret_hash: String,
    role: Option<String>,
}

/// Logs in. Every failure is the same 401, whatever was wrong; too many attempts from one
/// address, or for one identity from addresses that gave it wrong secrets, get 429 with
/// `Retry-After`; wrong secrets in a row lock the address they came from (for that
/// identity), never the identity everywhere.
#[utoipa::path(post, path = "/api/v1/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse),
        (status = 401, description = "Whatever was wrong: the team, the identity, the secret, or the user is not a member of the team", body = ErrorBody),
        (status = 429, description = "`TooManyRequests`: too many attempts from the address, or for the identity from addresses that gave it a wrong secret since their last good login (an address's first attempt is always checked); `LockedOut`: this address's logins as the identity are locked after wrong secrets in a row from it (the right secret too, from this address; other addresses are not locked); retry after `Retry-After`", body = ErrorBody),
        (status = 503, description = "Too many secrets being checked at once; retry after `Retry-After`", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    peer: auth::PeerAddr,
    Json(req): Json<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    // An address locked for this identity is refused here, before the secret is checked:
    // the right one fails too, from there (other addresses are not locked). Identities that
    // do not exist lock the same way (a lock tells nothing).
    state.guard.admit(&state.db, &req.identity, peer.0).await?;
    const SQL: &str = "SELECT u.id, u.secret_gen, u.secret_hash, m.role FROM users u \
        LEFT JOIN teams t ON t.name = $2 \
        LEFT JOIN members m ON m.user_id = u.id AND m.team_id = t.id \
        WHERE u.identity = $1";
    let row: Option<LoginRow> = on_db!(&state.db, pool => {
        sqlx::query_as(SQL).bind(&req.identity).bind(&req.team).fetch_optional(pool).await?
    });
    let (uid, sgen, hash, role) = match row {
        Some(r) => (r.id, r.secret_gen, Some(r.secret_hash), r.role),
        None => (0, 0, None, None),
    };
    let secret_ok = credentials::verify_secret(&state.guard, req.secret, hash).await?;
    state
        .guard
        .record(&state.db, &req.identity, peer.0, secret_ok)
        .await?;
    let Some(role) = role.filter(|_| secret_ok) else {
        return Err(ApiError::unauthorized());
    };
    let member = Row::of("member", &req.team, &req.identity);
    let role = member.text(&role)?;
    Ok(Json(issue(
        &state,
        req.identity,
        uid,
        sgen,
        req.team,
        role,
    )?))
}

/// Signs a new token for `identity` (user id `uid`, secret generation `sgen`) acting in
/// `team` as `role`, valid from now for the configured time.
pub(super) fn issue(
    state: &AppState,
    identity: String,
    uid: i64,
    sgen: i64,
    team: String,
    role: Role,
) -> Result<LoginResponse, ApiError> {
    let now_s = (now_ms() / 1000) as u64;
    let claims = Claims {
        sub: identity,
        uid,
        sgen,
        team,
        role,
        iat: now_s,
        exp: now_s + state.settings.jwt_ttl.as_secs().max(1),
    };
    let token = state.jwt.sign(&claims)?;
    Ok(LoginResponse {
        token,
        expires_at: rfc3339((claims.exp * 1000) as i64),
        team: claims.team,
        identity: claims.sub,
        role,
    })
}
