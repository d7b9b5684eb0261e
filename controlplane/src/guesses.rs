//! Wrong secrets, kept in the store so that every control-plane replica counts the same ones:
//! the locks per (address, identity) (table `login_lockouts`) and the identity's shared
//! budget for addresses that guessed wrong (table `login_budgets`, a GCRA "theoretical arrival
//! time" per identity). The rule is [`LoginLimits`]'s, as [`crate::credentials::LoginGuard`]
//! applies it; spreading guesses over replicas gains nothing.
//!
//! Both tables hold rows for identities callers only claim: when a row may have been added,
//! each is cut back to its live rows above [`PRUNE_ABOVE`] rows (and emptied if that is not
//! enough), so neither grows with what unauthenticated callers send.

use crate::db::{begin, now_ms, on_db, Db};
use crate::error::ApiError;
use crate::settings::LoginLimits;
use std::net::IpAddr;

/// Rows a table keeps before it is pruned.
pub(crate) const PRUNE_ABOVE: i64 = 10_000;

/// The store's key of a lock: the address as text (`""` when unknown) and the cut identity.
fn key(identity: &str, address: Option<IpAddr>) -> (String, String) {
    let address = address.map(|a| a.to_string()).unwrap_or_default();
    (
        address,
        crate::credentials::limiter_key(identity).to_string(),
    )
}

/// Whole seconds from now until `until_ms`, at least 1.
fn seconds_until(until_ms: i64, now: i64) -> u64 {
    u64::try_from((until_ms - now + 999) / 1000)
        .unwrap_or(1)
        .max(1)
}

#[derive(sqlx::FromRow)]
struct LockRow {
    until_ms: i64,
    locked_after: i64,
}

/// `LockedOut` while `address`'s logins as `identity` are locked; else whether that address
/// has given a wrong secret for `identity` since its last good login.
pub(crate) async fn check_lock(
    db: &Db,
    identity: &str,
    address: Option<IpAddr>,
) -> Result<bool, ApiError> {
    let (addr, ident) = key(identity, address);
    const SQL: &str = "SELECT until_ms, locked_after FROM login_lockouts \
        WHERE address = $1 AND identity = $2";
    let row: Option<LockRow> = on_db!(db, pool => {
        sqlx::query_as(SQL).bind(&addr).bind(&ident).fetch_optional(pool).await?
    });
    let now = now_ms();
    match row {
        Some(lock) if lock.until_ms > now => Err(ApiError::LockedOut {
            identity: identity.to_string(),
            failures: u32::try_from(lock.locked_after).unwrap_or(u32::MAX),
            retry_after: seconds_until(lock.until_ms, now),
        }),
        row => Ok(row.is_some()),
    }
}

/// Counts a checked secret for `identity` from `address`: a good one clears that address's
/// count and locks for it; `lockout_after` wrong ones in a row lock that address's logins as
/// `identity` for `lockout`, doubled for each lock before without a good login between, up to
/// `lockout_max`.
pub(crate) async fn record(
    db: &Db,
    limits: &LoginLimits,
    identity: &str,
    address: Option<IpAddr>,
    good: bool,
) -> Result<(), ApiError> {
    let (addr, ident) = key(identity, address);
    if good {
        on_db!(db, pool => {
            sqlx::query("DELETE FROM login_lockouts WHERE address = $1 AND identity = $2")
                .bind(&addr).bind(&ident).execute(pool).await?;
        });
        return Ok(());
    }
    const COUNT: &str = "INSERT INTO login_lockouts (address, identity, failures) \
        VALUES ($1, $2, 1) ON CONFLICT (address, identity) \
        DO UPDATE SET failures = login_lockouts.failures + 1 RETURNING failures, locks";
    const LOCK: &str = "UPDATE login_lockouts SET until_ms = $3, locked_after = failures, \
        locks = locks + 1, failures = 0 WHERE address = $1 AND identity = $2";
    let now = now_ms();
    let (failures, lock) = on_db!(db, pool => {
        let mut tx = begin(pool).await?;
        let (failures, locks): (i64, i64) =
            sqlx::query_as(COUNT).bind(&addr).bind(&ident).fetch_one(&mut *tx).await?;
        let lock = (failures >= i64::from(limits.lockout_after.max(1))).then(|| {
            let factor = 1u32 << u32::try_from(locks).unwrap_or(16).min(16);
            limits.lockout.saturating_mul(factor).min(limits.lockout_max)
        });
        if let Some(length) = lock {
            let until = now.saturating_add(i64::try_from(length.as_millis()).unwrap_or(i64::MAX));
            sqlx::query(LOCK).bind(&addr).bind(&ident).bind(until).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        (failures, lock)
    });
    if let Some(length) = lock {
        tracing::warn!(%identity, ?address, failures, lock_s = length.as_secs(), "logins from an address locked after wrong secrets in a row");
    }
    // The first wrong secret in a row may have added a row: only then can the table have
    // grown past its bound.
    if failures == 1 {
        prune(db, &LOCKOUTS, now).await?;
    }
    Ok(())
}

/// Spends one attempt of `identity`'s shared budget (`identity_burst`, then one per
/// `identity_period`); `Err(retry_after_s)` when none is left (nothing spent).
pub(crate) async fn spend_budget(
    db: &Db,
    limits: &LoginLimits,
    identity: &str,
) -> Result<Result<(), u64>, ApiError> {
    let ident = crate::credentials::limiter_key(identity).to_string();
    let period = i64::try_from(limits.identity_period.as_millis())
        .unwrap_or(i64::MAX / 4)
        .max(1);
    let burst = period.saturating_mul(i64::from(limits.identity_burst.max(1)));
    let now = now_ms();
    // GCRA: an attempt is allowed while its new arrival time is at most `burst` ahead of now.
    const SPEND: &str = "UPDATE login_budgets \
        SET tat = (CASE WHEN tat > $2 THEN tat ELSE $2 END) + $3 \
        WHERE identity = $1 AND (CASE WHEN tat > $2 THEN tat ELSE $2 END) + $3 - $2 <= $4";
    const NEW: &str = "INSERT INTO login_budgets (identity, tat) VALUES ($1, $2) \
        ON CONFLICT (identity) DO NOTHING";
    const TAT: &str = "SELECT tat FROM login_budgets WHERE identity = $1";
    let (added, tat): (u64, Option<i64>) = on_db!(db, pool => {
        let added = sqlx::query(NEW).bind(&ident).bind(now).execute(pool).await?.rows_affected();
        let spent = sqlx::query(SPEND).bind(&ident).bind(now).bind(period).bind(burst)
            .execute(pool).await?.rows_affected();
        if spent > 0 {
            (added, None)
        } else {
            (added, Some(sqlx::query_scalar(TAT).bind(&ident).fetch_one(pool).await?))
        }
    });
    // Only a new identity's row can take the table past its bound.
    if added > 0 {
        prune(db, &BUDGETS, now).await?;
    }
    Ok(match tat {
        None => Ok(()),
        // The next attempt fits once the arrival time is within the burst again.
        Some(tat) => Err(seconds_until(tat + period - burst, now)),
    })
}

/// A table of guesses and its statements: count, delete the rows past, delete all.
struct Table {
    count: &'static str,
    stale: &'static str,
    all: &'static str,
}

const LOCKOUTS: Table = Table {
    count: "SELECT COUNT(*) FROM login_lockouts",
    stale: "DELETE FROM login_lockouts WHERE until_ms <= $1",
    all: "DELETE FROM login_lockouts",
};

const BUDGETS: Table = Table {
    count: "SELECT COUNT(*) FROM login_budgets",
    stale: "DELETE FROM login_budgets WHERE tat <= $1",
    all: "DELETE FROM login_budgets",
};

/// Above [`PRUNE_ABOVE`] rows: deletes those past (no lock, a full budget), and all of them
/// if that is not enough.
async fn prune(db: &Db, table: &Table, now: i64) -> Result<(), ApiError> {
    on_db!(db, pool => {
        let n: i64 = sqlx::query_scalar(table.count).fetch_one(pool).await?;
        if n > PRUNE_ABOVE {
            let gone = sqlx::query(table.stale).bind(now).execute(pool).await?.rows_affected();
            if n - i64::try_from(gone).unwrap_or(0) > PRUNE_ABOVE {
                sqlx::query(table.all).execute(pool).await?;
            }
        }
    });
    Ok(())
}
