//! Who is calling: the extractors of a user's JWT, the broker token, and the peer's address.
//!
//! [`AuthUser`] is a user with a valid JWT who is still a member of the token's team;
//! [`BrokerAuth`] is the broker, holding the broker token; [`EventsCaller`] is either (the
//! event stream serves both). A missing or bad credential is always an error, never a silent
//! "anonymous" (the reason realworld-axum-sqlx keeps `MaybeAuthUser` apart from `AuthUser`).

use crate::credentials::same_secret;
use crate::db::on_db;
use crate::error::ApiError;
use crate::state::AppState;
use crate::stored::Row;
use api::Role;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use std::net::{IpAddr, SocketAddr};

/// The client's IP address, when the server recorded it (`ControlPlane::serve` does).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for PeerAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(PeerAddr(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("missing Authorization: Bearer header".into()))?;
    let text = header.to_str().map_err(|_| ApiError::unauthorized())?;
    text.strip_prefix("Bearer ")
        .map(str::trim)
        .ok_or_else(|| ApiError::Unauthorized("missing Authorization: Bearer header".into()))
}

/// A user, authenticated by JWT, acting in the token's team (of which they are a member).
#[derive(Debug, Clone)]
pub struct AuthUser {
    /// `users.id`.
    pub user_id: i64,
    /// Identity.
    pub identity: String,
    /// `teams.id` of the token's team.
    pub team_id: i64,
    /// The token's team.
    pub team: String,
    /// Current role in that team (from the store, not the token).
    pub role: Role,
    /// Whether the user may set quotas.
    pub operator: bool,
    /// The bearer JWT itself (the gateway presents it to the broker).
    pub token: String,
}

impl AuthUser {
    /// Whether the caller is an admin of their team.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

#[derive(sqlx::FromRow)]
struct MemberRow {
    user_id: i64,
    secret_gen: i64,
    operator: bool,
    team_id: i64,
    role: String,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        AuthUser::from_token(state, bearer(parts)?.to_string()).await
    }
}

impl AuthUser {
    /// The user of JWT `token` (the API's bearer token, or the web view's session cookie),
    /// still a member of its team, with the secret it was issued under.
    pub(crate) async fn from_token(state: &AppState, token: String) -> Result<AuthUser, ApiError> {
        let claims = state.jwt.verify(&token)?;
        const SQL: &str =
            "SELECT u.id AS user_id, u.secret_gen, u.operator, t.id AS team_id, m.role \
             FROM users u JOIN members m ON m.user_id = u.id JOIN teams t ON t.id = m.team_id \
             WHERE u.identity = $1 AND t.name = $2 AND u.id = $3";
        // `u.id`: a token outlives neither its user nor a later user of the same identity.
        let row: Option<MemberRow> = on_db!(&state.db, pool => {
            sqlx::query_as(SQL).bind(&claims.sub).bind(&claims.team).bind(claims.uid)
                .fetch_optional(pool).await?
        });
        let row = row.ok_or_else(ApiError::unauthorized)?;
        // A token outlives no change of its user's secret either.
        if row.secret_gen != claims.sgen {
            return Err(ApiError::Unauthorized(
                "the secret has changed since this token was issued; log in again".into(),
            ));
        }
        let member = Row::of("member", &claims.team, &claims.sub);
        Ok(AuthUser {
            role: member.text(&row.role)?,
            user_id: row.user_id,
            identity: claims.sub,
            team_id: row.team_id,
            team: claims.team,
            operator: row.operator,
            token,
        })
    }
}

/// The broker, holding the broker token.
#[derive(Debug, Clone, Copy)]
pub struct BrokerAuth;

impl FromRequestParts<AppState> for BrokerAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if same_secret(bearer(parts)?, &state.broker_token) {
            Ok(BrokerAuth)
        } else {
            Err(ApiError::unauthorized())
        }
    }
}

/// Whoever may read the event stream: the broker (every team) or a user (their team).
#[derive(Debug, Clone)]
pub enum EventsCaller {
    /// The broker token.
    Broker,
    /// A user's JWT.
    User(AuthUser),
}

impl FromRequestParts<AppState> for EventsCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if same_secret(bearer(parts)?, &state.broker_token) {
            return Ok(EventsCaller::Broker);
        }
        AuthUser::from_request_parts(parts, state)
            .await
            .map(EventsCaller::User)
    }
}
