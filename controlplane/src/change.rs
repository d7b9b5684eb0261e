//! A configuration change, made the one way every handler makes one: [`change!`] begins a
//! transaction (on SQLite taking the write lock at once), bumps the revision (table `meta`),
//! runs the handler's SQL in it, tells the other replicas (`NOTIFY`, PostgreSQL), commits, and
//! publishes one typed `ConfigEvent`.

/// `change!(state, object, action, team, name, tx => { ... })` runs the block in a new
/// transaction `tx` (`&mut *tx` is its executor) after the revision is bumped, commits, tells
/// the event stream `{revision, team, object, action, name}`, and is the block's value.
/// Leaving the handler from inside the block (`?`, `return Err(..)`) drops the transaction,
/// which rolls it back, the revision with it, and publishes nothing.
macro_rules! change {
    ($state:expr, $object:expr, $action:expr, $team:expr, $name:expr, $tx:ident => $sql:block) => {{
        let state: &$crate::state::Shared = &$state;
        let (team, name) = (($team).to_string(), ($name).to_string());
        let (event, value) = $crate::db::on_db!(&state.db, pool => {
            let mut $tx = $crate::db::begin(pool).await?;
            let revision: i64 = sqlx::query_scalar($crate::db::BUMP_REVISION)
                .fetch_one(&mut *$tx)
                .await?;
            let value = $sql;
            let event = proto::control::ConfigEvent {
                revision: $crate::db::revision(revision)?,
                team,
                object: $object,
                action: $action,
                name,
            };
            $crate::replicas::Notify::notify(&mut $tx, &state.replica, &event).await?;
            $tx.commit().await?;
            (event, value)
        });
        state.publish(event);
        value
    }};
}
pub(crate) use change;
