//! What several control-plane processes on one PostgreSQL database share, so that any of
//! them serves any caller: the secrets (the JWT signing key and the broker token, table
//! `cluster_secrets`: the first replica's are everyone's), and the configuration events
//! (`NOTIFY` on channel [`CHANNEL`] in the change's own transaction; each replica `LISTEN`s
//! and hands the other replicas' events to its own subscribers). On SQLite there is one
//! process: the secrets are the data dir's files and the events stay in the process.

use crate::db::Db;
use crate::error::ControlError;
use proto::control::ConfigEvent;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgListener, PgPool};
use std::time::Duration;
use tokio::sync::broadcast;

/// The `LISTEN`/`NOTIFY` channel of configuration events.
pub(crate) const CHANNEL: &str = "triggerfs_config";

/// What an event stream's subscribers receive.
#[derive(Debug, Clone)]
pub(crate) enum Feed {
    /// A committed change, made by this replica or another.
    Change(ConfigEvent),
    /// Other replicas' events may have been missed (this replica's listening connection was
    /// lost and made again): subscribers re-read what they follow.
    Gap,
}

/// A `NOTIFY` payload: the event and the replica that made it (which has told its own
/// subscribers already).
#[derive(Serialize, Deserialize)]
struct Notice {
    from: String,
    event: ConfigEvent,
}

/// The value of shared secret `name`: on PostgreSQL the one stored first by any replica
/// (`local` when this replica is the first), on SQLite `local`.
pub(crate) async fn shared_secret(
    db: &Db,
    name: &str,
    local: String,
) -> Result<String, ControlError> {
    let Db::Postgres(pool) = db else {
        return Ok(local);
    };
    sqlx::query("INSERT INTO cluster_secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(name)
        .bind(&local)
        .execute(pool)
        .await?;
    let value: String = sqlx::query_scalar("SELECT value FROM cluster_secrets WHERE name = $1")
        .bind(name)
        .fetch_one(pool)
        .await?;
    Ok(value)
}

/// Sends a committed change to the other replicas: `NOTIFY` in the change's transaction, so
/// they hear of it when, and only if, it commits. Nothing on SQLite.
pub(crate) trait Notify {
    /// Queues `event`'s notice in this transaction.
    async fn notify(&mut self, replica: &str, event: &ConfigEvent) -> Result<(), sqlx::Error>;
}

impl Notify for sqlx::Transaction<'_, sqlx::Sqlite> {
    async fn notify(&mut self, _: &str, _: &ConfigEvent) -> Result<(), sqlx::Error> {
        Ok(())
    }
}

impl Notify for sqlx::Transaction<'_, sqlx::Postgres> {
    async fn notify(&mut self, replica: &str, event: &ConfigEvent) -> Result<(), sqlx::Error> {
        let notice = Notice {
            from: replica.to_string(),
            event: event.clone(),
        };
        let payload = serde_json::to_string(&notice).map_err(|e| sqlx::Error::Encode(e.into()))?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload)
            .execute(&mut **self)
            .await?;
        Ok(())
    }
}

/// How long a replica waits before listening again after its listening connection failed.
const RELISTEN_AFTER: Duration = Duration::from_secs(1);

/// Hands other replicas' events to `events` until aborted; after a lost connection, a
/// [`Feed::Gap`]. Nothing to do on SQLite (`None`).
pub(crate) fn spawn_listener(
    db: &Db,
    replica: String,
    events: broadcast::Sender<Feed>,
) -> Option<tokio::task::JoinHandle<()>> {
    let Db::Postgres(pool) = db else {
        return None;
    };
    let pool = pool.clone();
    Some(tokio::spawn(async move {
        loop {
            if let Err(e) = listen(&pool, &replica, &events).await {
                tracing::warn!(error = %e, "not listening to other replicas' changes; again in 1 s");
            }
            tokio::time::sleep(RELISTEN_AFTER).await;
        }
    }))
}

/// Listens on [`CHANNEL`] and forwards until the connection fails.
async fn listen(
    pool: &PgPool,
    replica: &str,
    events: &broadcast::Sender<Feed>,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    // Changes made between the last event forwarded and this `LISTEN` were not heard.
    let _ = events.send(Feed::Gap);
    while let Some(notification) = listener.try_recv().await? {
        match serde_json::from_str::<Notice>(notification.payload()) {
            Ok(notice) if notice.from == replica => {}
            Ok(notice) => {
                let _ = events.send(Feed::Change(notice.event));
            }
            Err(e) => {
                tracing::warn!(error = %e, "a change notice that does not read; subscribers re-read");
                let _ = events.send(Feed::Gap);
            }
        }
    }
    Ok(())
}
