//! `GET /api/v1/events`: configuration changes as server-sent events (`event: config`).
//! The broker (broker token) sees every team; a user (JWT) only their team.

use crate::auth::EventsCaller;
use crate::error::ErrorBody;
use crate::AppState;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::{self, Stream};
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;

/// Keep-alive comment interval: well under the idle timeouts of common proxies (60 s).
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The stream of configuration changes.
#[utoipa::path(get, path = "/api/v1/events", tag = "broker",
    security(("jwt" = []), ("broker_token" = [])),
    responses((status = 200, description = "`text/event-stream`: `event: config`, `data: ConfigEvent` JSON; `event: lagged` when events were dropped (re-read the snapshot)",
        content_type = "text/event-stream", body = crate::openapi::ConfigEventDoc),
        (status = "default", body = ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    caller: EventsCaller,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let team = match caller {
        EventsCaller::Broker => None,
        EventsCaller::User(user) => Some(user.team),
    };
    let rx = state.events.subscribe();
    let stream = stream::unfold((rx, team), |(mut rx, team)| async move {
        loop {
            match rx.recv().await {
                Ok(event) => {
                    if team.as_ref().is_some_and(|t| *t != event.team) {
                        continue;
                    }
                    let data = serde_json::to_string(&event).unwrap_or_default();
                    let sse = Event::default().event("config").data(data);
                    return Some((Ok(sse), (rx, team)));
                }
                Err(RecvError::Lagged(n)) => {
                    let sse = Event::default().event("lagged").data(n.to_string());
                    return Some((Ok(sse), (rx, team)));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}
