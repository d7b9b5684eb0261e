//! `GET /api/v1/events`: configuration changes as server-sent events (`event: config`).
//! The broker (broker token) sees every team; a user (JWT) only their team, and a user's
//! stream ends when they leave the team (removed, or the team deleted) or their token expires.

use crate::auth::{AuthUser, EventsCaller};
use crate::db::on_db;
use crate::error::ApiError;
use crate::replicas::Feed;
use crate::state::AppState;
use api::{Action, ErrorBody, Object};
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::{self, Stream};
use proto::control::ConfigEvent;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// Keep-alive comment interval: well under the idle timeouts of common proxies (60 s).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The stream of configuration changes.
#[utoipa::path(get, path = "/api/v1/events", tag = "broker",
    security(("jwt" = []), ("broker_token" = [])),
    responses((status = 200, description = "`text/event-stream`: `event: config`, `data: ConfigEvent` JSON; `event: lagged` when events were dropped, or another replica's may have been missed (`data`: how many, or `unknown`; re-read the snapshot)",
        content_type = "text/event-stream", body = ConfigEvent),
        (status = 429, description = "`TooManyRequests`: the user has as many event streams open as they may (`max_event_streams_per_user`, 8)", body = ErrorBody),
        (status = 503, description = "The control plane has as many event streams open as it may (`max_event_streams`, 1024)", body = ErrorBody),
        (status = "default", body = ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    caller: EventsCaller,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let watch = match caller {
        EventsCaller::Broker => None,
        EventsCaller::User(user) => {
            let claims = state.jwt.verify(&user.token)?;
            Some(Watch {
                user,
                expires_at: claims.exp,
                sgen: claims.sgen,
            })
        }
    };
    // The broker's own stream is not counted: it must always get one.
    let slot = match &watch {
        None => None,
        Some(w) => Some(state.streams.open(&state.settings, w.user.user_id)?),
    };
    let rx = state.events.subscribe();
    let stream = stream::unfold(
        (rx, watch, state, slot),
        |(mut rx, watch, state, slot)| async move {
            loop {
                let received = match &watch {
                    None => rx.recv().await,
                    Some(w) => tokio::select! {
                        r = rx.recv() => r,
                        // The token expired: so does the stream it opened.
                        _ = tokio::time::sleep(w.left()) => return None,
                    },
                };
                match received {
                    Ok(Feed::Change(event)) => {
                        if let Some(w) = &watch {
                            // A change to the user themself (their secret) names no team.
                            let own = event.team.is_empty() && w.touched_by(&event);
                            if event.team != w.user.team && !own {
                                continue;
                            }
                            // Removed from the team (or the team deleted), or the secret changed:
                            // the stream ends now.
                            if w.touched_by(&event) && !w.still_member(&state).await {
                                return None;
                            }
                        }
                        let data = serde_json::to_string(&event).unwrap_or_default();
                        let sse = Event::default().event("config").data(data);
                        return Some((Ok(sse), (rx, watch, state, slot)));
                    }
                    // Events were dropped here, or another replica's may have been missed.
                    missed @ (Ok(Feed::Gap) | Err(RecvError::Lagged(_))) => {
                        // Missed events may have removed the caller: check before going on.
                        if let Some(w) = &watch {
                            if !w.still_member(&state).await {
                                return None;
                            }
                        }
                        // How many were dropped here; `unknown` when another replica's were.
                        let n = match missed {
                            Err(RecvError::Lagged(n)) => n.to_string(),
                            _ => "unknown".to_string(),
                        };
                        let sse = Event::default().event("lagged").data(n);
                        return Some((Ok(sse), (rx, watch, state, slot)));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

/// A user's stream, and what ends it.
struct Watch {
    user: AuthUser,
    /// The token's `exp` (seconds since the Unix epoch).
    expires_at: u64,
    /// The token's `sgen`: the stream ends when the user's secret changes.
    sgen: i64,
}

impl Watch {
    fn left(&self) -> Duration {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Duration::from_secs(self.expires_at).saturating_sub(now)
    }

    /// Whether `event` may have removed the user from the team.
    fn touched_by(&self, event: &ConfigEvent) -> bool {
        (event.object == Object::User && event.name == self.user.identity)
            || (event.object == Object::Team && event.action == Action::Deleted)
    }

    /// Whether the user is still a member of the team and their secret has not changed since
    /// the token (a failing store counts as no).
    async fn still_member(&self, state: &AppState) -> bool {
        const SQL: &str = "SELECT COUNT(*) FROM members m JOIN users u ON u.id = m.user_id \
            WHERE m.user_id = $1 AND m.team_id = $2 AND u.secret_gen = $3";
        let n: Result<i64, ApiError> = async {
            Ok(on_db!(&state.db, pool => {
                sqlx::query_scalar(SQL).bind(self.user.user_id).bind(self.user.team_id)
                    .bind(self.sgen).fetch_one(pool).await?
            }))
        }
        .await;
        matches!(n, Ok(1))
    }
}
