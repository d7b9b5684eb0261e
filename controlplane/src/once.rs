//! Periodic work that runs once across replicas: several control planes on one PostgreSQL
//! database each try a session advisory lock before a round of the work, and only the one
//! that gets it does the round (the scheduler's, the job history's pruning, the sweep of broker nodes). SQLite has one
//! process per file: there the round always runs.

use crate::db::Db;
use std::future::Future;

/// The advisory lock keys, one per kind of periodic work (PostgreSQL's `bigint` space is
/// the database's: these spell `tfs` and a number).
#[derive(Debug, Clone, Copy)]
#[repr(i64)]
pub(crate) enum Work {
    /// Starting the schedules' due runs.
    Schedules = 0x7466_7300_0001,
    /// Deleting the jobs past their retention.
    PruneJobs = 0x7466_7300_0002,
    /// Sweeping the broker nodes whose lease ran out.
    SweepNodes = 0x7466_7300_0003,
}

/// Runs `round` if no other process is running a round of `work` on the same database;
/// `Ok(None)` when another one is. On PostgreSQL the lock is held on one pooled connection
/// for the round and released after it (or by the server when this process dies).
pub(crate) async fn once<T, F>(db: &Db, work: Work, round: F) -> Result<Option<T>, sqlx::Error>
where
    F: Future<Output = T>,
{
    let pool = match db {
        Db::Sqlite(_) => return Ok(Some(round.await)),
        Db::Postgres(pool) => pool,
    };
    let key = work as i64;
    let mut conn = pool.acquire().await?;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(&mut *conn)
        .await?;
    if !got {
        return Ok(None);
    }
    let value = round.await;
    let released: Result<bool, _> = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
        .bind(key)
        .fetch_one(&mut *conn)
        .await;
    if released.is_err() {
        // A session lock outlives its round on a connection that goes back to the pool:
        // close that connection, which releases it.
        let _ = conn.detach();
    }
    Ok(Some(value))
}
