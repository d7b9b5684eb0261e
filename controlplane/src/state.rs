//! What every request handler shares: [`Shared`], behind [`AppState`].

use crate::conns::Conns;
use crate::credentials::{bearer_token, same_secret, JwtKeys, LoginGuard};
use crate::db::Db;
use crate::error::ApiError;
use crate::job_store::JobStore;
use crate::metrics::Metrics;
use crate::replicas::Feed;
use crate::settings::ControlSettings;
use crate::streams::Streams;
use proto::control::ConfigEvent;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use tokio::sync::broadcast;

/// Everything a request handler needs.
pub(crate) struct Shared {
    pub(crate) db: Db,
    pub(crate) settings: ControlSettings,
    pub(crate) jwt: JwtKeys,
    pub(crate) broker_token: String,
    pub(crate) events: broadcast::Sender<Feed>,
    /// This process's name among the replicas (random): its own notices are not forwarded.
    pub(crate) replica: String,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) openapi_json: OnceLock<String>,
    pub(crate) guard: LoginGuard,
    pub(crate) streams: Streams,
    pub(crate) jobs: JobStore,
    /// The schedules' runs this process sends.
    pub(crate) runs: crate::scheduler::Runs,
    /// The requests run from the web view, followed here.
    pub(crate) live: crate::web::runs::LiveRuns,
}

pub(crate) type AppState = Arc<Shared>;

impl Shared {
    /// Tells event-stream subscribers about a committed change.
    pub(crate) fn publish(&self, event: ConfigEvent) {
        tracing::debug!(
            revision = event.revision,
            team = %event.team,
            object = %event.object,
            action = %event.action,
            name = %event.name,
            "config changed"
        );
        // No subscribers is fine.
        let _ = self.events.send(Feed::Change(event));
    }
}

impl Shared {
    pub(crate) fn data_dir(&self) -> &Path {
        &self.settings.data_dir
    }

    /// The slot a request without credentials holds until its response is sent (`None`: it
    /// has credentials); `Busy` (503, and the connection closed) when none is free.
    pub(crate) fn anonymous_slot(
        &self,
        conns: &Conns,
        headers: &axum::http::HeaderMap,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ApiError> {
        if self.has_credentials(headers) {
            return Ok(None);
        }
        let busy = ApiError::Busy {
            retry_after: 1,
            what: "too many requests without credentials at once",
        };
        conns.anonymous_slot().map(Some).ok_or(busy)
    }

    /// Whether a request's headers carry a credential that checks out without the store: a
    /// JWT with a good signature and expiry (as a bearer token, or the web view's session
    /// cookie), or the broker token (an HMAC or a compare: cheap enough for every request,
    /// before its body is read).
    fn has_credentials(&self, headers: &axum::http::HeaderMap) -> bool {
        let bearer = bearer_token(headers).is_some_and(|token| {
            same_secret(token, &self.broker_token) || self.jwt.verify(token).is_ok()
        });
        bearer || crate::web::session_token(headers).is_some_and(|t| self.jwt.verify(t).is_ok())
    }
}
