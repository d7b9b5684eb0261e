//! Credentials: the JWT keys, argon2 secret hashing, and the [`LoginGuard`] that bounds what
//! logins may cost and what wrong secrets do. Nothing here reads a request or the store.

use crate::error::ApiError;
use crate::settings::LoginLimits;
use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};
use governor::clock::{Clock, DefaultClock, QuantaInstant};
use governor::{DefaultKeyedRateLimiter, NotUntil, Quota, RateLimiter};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use proto::control::Claims;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::OnceLock;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// The JWT signing key and its verifier.
pub struct JwtKeys {
    /// The raw key as hex (what the broker gets in its snapshot).
    pub secret_hex: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl JwtKeys {
    /// Keys from the raw secret bytes.
    pub fn new(secret: &[u8]) -> JwtKeys {
        JwtKeys {
            secret_hex: hex::encode(secret),
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    /// Signs claims (HS256).
    pub fn sign(&self, claims: &Claims) -> Result<String, ApiError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| ApiError::Internal(format!("signing a JWT: {e}")))
    }

    /// Verifies signature and expiry.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let mut validation = Validation::new(Algorithm::HS256);
        // Our clocks are the same clock; an expired token is expired.
        validation.leeway = 0;
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation) {
            // jsonwebtoken still accepts a token during its `exp` second.
            Ok(data) if data.claims.expired_at(std::time::SystemTime::now()) => {
                Err(ApiError::TokenExpired)
            }
            Ok(data) => Ok(data.claims),
            Err(e) => match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => Err(ApiError::TokenExpired),
                _ => Err(ApiError::unauthorized()),
            },
        }
    }
}

/// Bounds what logins may cost and what wrong secrets do, checked before any hashing.
///
/// The rule (see [`LoginLimits`]):
/// - Per client address: a rate limit on attempts, and a lock per (address, identity):
///   `lockout_after` wrong secrets in a row from one address for one identity lock that
///   address's logins as that identity. Only the guessing address is refused: the same
///   identity logs in from any other address (the owner, an operator on the host), so no
///   one can lock a user out by guessing at their secret.
/// - Per identity: a shared budget bounds the secrets checked for it from addresses that
///   have given a wrong one for it since their last good login. An address's first attempt
///   for an identity is checked outside that budget (it still spends a token when one is
///   left), so a right secret is never refused because of other addresses' guesses, while
///   a distributed guesser gets one guess per address and then shares the budget.
/// - At most one argon2 computation per core at a time (each holds 19 MiB).
pub struct LoginGuard {
    by_identity: DefaultKeyedRateLimiter<String>,
    by_address: DefaultKeyedRateLimiter<IpAddr>,
    hashing: Semaphore,
    /// Wrong secrets in a row and locks, by (address, identity cut to `MAX_KEY_BYTES`).
    /// Identities that do not exist are counted and locked the same way, so a lock says
    /// nothing about whether a user exists; the map is pruned above `PRUNE_ABOVE` entries
    /// like the rate limiters, so it does not grow with what callers claim.
    lockouts: std::sync::Mutex<std::collections::HashMap<LockKey, Lockout>>,
    limits: LoginLimits,
}

/// Who guessed (the client address, when known) and for whom (the cut identity).
type LockKey = (Option<IpAddr>, String);

/// One address's wrong secrets in a row for one identity, and its lock.
#[derive(Debug, Default)]
struct Lockout {
    failures: u32,
    /// Locks so far without a good login between (the next is twice as long).
    locks: u32,
    until: Option<std::time::Instant>,
    /// The failures that set the current lock (for the message).
    locked_after: u32,
}

/// Keys a limiter remembers before it forgets those back at their full burst.
const PRUNE_ABOVE: usize = 10_000;
/// Longest identity kept as a limiter key (longer ones are cut).
const MAX_KEY_BYTES: usize = 128;
/// How long a hash waits for a free slot before the call is answered 503.
const HASH_WAIT: Duration = Duration::from_secs(5);

fn quota(burst: u32, period: Duration) -> Quota {
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period.max(Duration::from_millis(1)))
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

/// `identity` cut to at most `MAX_KEY_BYTES` (at a character boundary), as limiters key it.
fn limiter_key(identity: &str) -> &str {
    let mut end = identity.len().min(MAX_KEY_BYTES);
    while !identity.is_char_boundary(end) {
        end -= 1;
    }
    &identity[..end]
}

fn lock_key(identity: &str, address: Option<IpAddr>) -> LockKey {
    (address, limiter_key(identity).to_string())
}

/// Whole seconds until `not_until`, at least 1 (for `Retry-After`).
fn retry_after(not_until: &NotUntil<QuantaInstant>) -> u64 {
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

impl LoginGuard {
    /// Limiters for `limits`; hashing bounded to the number of cores.
    pub fn new(limits: LoginLimits) -> LoginGuard {
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        LoginGuard {
            by_identity: RateLimiter::keyed(quota(limits.identity_burst, limits.identity_period)),
            by_address: RateLimiter::keyed(quota(limits.address_burst, limits.address_period)),
            hashing: Semaphore::new(cores),
            lockouts: std::sync::Mutex::new(std::collections::HashMap::new()),
            limits,
        }
    }

    fn lockouts(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<LockKey, Lockout>> {
        self.lockouts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `LockedOut` while `address`'s logins as `identity` are locked (the right secret too).
    fn check_lock(&self, identity: &str, address: Option<IpAddr>) -> Result<(), ApiError> {
        let lockouts = self.lockouts();
        let Some(lock) = lockouts.get(&lock_key(identity, address)) else {
            return Ok(());
        };
        match lock.until {
            Some(until) if until > std::time::Instant::now() => {
                let left = until - std::time::Instant::now();
                Err(ApiError::LockedOut {
                    identity: identity.to_string(),
                    failures: lock.locked_after,
                    retry_after: (left.as_secs() + u64::from(left.subsec_nanos() > 0)).max(1),
                })
            }
            _ => Ok(()),
        }
    }

    /// Counts a checked secret for `identity` from `address`: a good one clears that
    /// address's count and locks for it; `lockout_after` wrong ones in a row lock that
    /// address's logins as `identity` (see [`LoginLimits`]).
    pub fn record(&self, identity: &str, address: Option<IpAddr>, good: bool) {
        let key = lock_key(identity, address);
        let mut lockouts = self.lockouts();
        if good {
            lockouts.remove(&key);
            return;
        }
        if lockouts.len() > PRUNE_ABOVE {
            let now = std::time::Instant::now();
            lockouts.retain(|_, l| l.until.is_some_and(|u| u > now));
            if lockouts.len() > PRUNE_ABOVE {
                lockouts.clear();
            }
        }
        let limits = &self.limits;
        let lock = lockouts.entry(key).or_default();
        lock.failures += 1;
        if lock.failures >= limits.lockout_after.max(1) {
            let factor = 1u32 << lock.locks.min(16);
            let length = limits
                .lockout
                .saturating_mul(factor)
                .min(limits.lockout_max);
            lock.until = Some(std::time::Instant::now() + length);
            lock.locked_after = lock.failures;
            lock.locks += 1;
            lock.failures = 0;
            tracing::warn!(%identity, ?address, failures = lock.locked_after, lock_s = length.as_secs(), "logins from an address locked after wrong secrets in a row");
        }
    }

    /// Counts one login attempt, in this order: `TooManyRequests` when the address is over
    /// its limit; `LockedOut` while the address's logins as `identity` are locked (so a
    /// locked guesser spends nothing of the identity's budget); `TooManyRequests` when the
    /// address has given a wrong secret for `identity` since its last good login and the
    /// identity's shared budget is spent.
    pub fn admit(&self, identity: &str, address: Option<IpAddr>) -> Result<(), ApiError> {
        if let Some(address) = address {
            self.by_address
                .check_key(&address)
                .map_err(|e| ApiError::TooManyRequests {
                    retry_after: retry_after(&e),
                    what: "login attempts from this address",
                })?;
        }
        self.check_lock(identity, address)?;
        let guessed = self.lockouts().contains_key(&lock_key(identity, address));
        let key = limiter_key(identity).to_string();
        let checked = self.by_identity.check_key(&key);
        if self.by_identity.len().max(self.by_address.len()) > PRUNE_ABOVE {
            self.by_identity.retain_recent();
            self.by_address.retain_recent();
        }
        match checked {
            Err(e) if guessed => Err(ApiError::TooManyRequests {
                retry_after: retry_after(&e),
                what: "login attempts for this identity",
            }),
            // A fresh address is checked even with the budget spent.
            _ => Ok(()),
        }
    }

    /// Runs `work` (argon2) on a blocking thread once one of the hashing slots is free.
    async fn hash<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let _slot = tokio::time::timeout(HASH_WAIT, self.hashing.acquire())
            .await
            .map_err(|_| ApiError::Busy {
                retry_after: 1,
                what: "too many logins at once",
            })?
            .map_err(|e| ApiError::Internal(format!("hashing slots: {e}")))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| ApiError::Internal(format!("hashing task: {e}")))
    }
}

/// argon2id hash of a secret, off the async threads (one of the guard's hashing slots).
pub async fn hash_secret(guard: &LoginGuard, secret: String) -> Result<String, ApiError> {
    guard
        .hash(move || {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default()
                .hash_password(secret.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| ApiError::Internal(format!("hashing a secret: {e}")))
        })
        .await?
}

/// Whether `secret` matches `hash`, off the async threads. With `hash = None` (unknown user)
/// it still spends the same time on a dummy hash, so timing does not reveal who exists.
pub async fn verify_secret(
    guard: &LoginGuard,
    secret: String,
    hash: Option<String>,
) -> Result<bool, ApiError> {
    guard
        .hash(move || {
            static DUMMY: OnceLock<String> = OnceLock::new();
            let known = hash.is_some();
            let hash = match hash {
                Some(h) => h,
                None => DUMMY
                    .get_or_init(|| {
                        let salt = SaltString::generate(&mut OsRng);
                        Argon2::default()
                            .hash_password(b"not a real secret", &salt)
                            .map(|h| h.to_string())
                            .unwrap_or_default()
                    })
                    .clone(),
            };
            let Ok(parsed) = PasswordHash::new(&hash) else {
                return false;
            };
            let ok = Argon2::default()
                .verify_password(secret.as_bytes(), &parsed)
                .is_ok();
            ok && known
        })
        .await
}

/// The token of an `Authorization: Bearer <token>` header, if there is one.
pub(crate) fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Equal-time comparison of two secrets (only their lengths may leak).
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

#[cfg(test)]
mod tests {

    #[test]
    fn each_lock_without_a_good_login_between_is_twice_the_one_before_up_to_the_max() {
        let guard = LoginGuard::new(LoginLimits {
            lockout_after: 1,
            lockout: Duration::from_secs(10),
            lockout_max: Duration::from_secs(25),
            ..LoginLimits::default()
        });
        let at = Some(IpAddr::from([192, 0, 2, 1]));
        let retry = |guard: &LoginGuard| match guard.check_lock("eve", at) {
            Err(ApiError::LockedOut { retry_after, .. }) => retry_after,
            other => panic!("not locked: {other:?}"),
        };
        assert!(guard.check_lock("eve", at).is_ok());
        guard.record("eve", at, false);
        assert_eq!(retry(&guard), 10);
        guard.record("eve", at, false);
        assert_eq!(retry(&guard), 20);
        guard.record("eve", at, false);
        assert_eq!(retry(&guard), 25);
        // Only the guessing address is locked.
        assert!(guard
            .check_lock("eve", Some(IpAddr::from([192, 0, 2, 2])))
            .is_ok());
        assert!(guard.check_lock("eve", None).is_ok());
        guard.record("eve", at, true);
        assert!(guard.check_lock("eve", at).is_ok());
        assert!(guard.check_lock("someone else", at).is_ok());
    }

    use super::*;

    #[test]
    fn jwt_expiry_and_signature() {
        let keys = JwtKeys::new(b"0123456789abcdef0123456789abcdef");
        let now = crate::db::now_ms() as u64 / 1000;
        let claims = |exp| Claims {
            uid: 1,
            sgen: 0,
            sub: "u".into(),
            team: "t".into(),
            role: proto::control::TeamRole::Admin,
            iat: now,
            exp,
        };
        let good = keys.sign(&claims(now + 60)).unwrap();
        assert_eq!(keys.verify(&good).unwrap().sub, "u");
        let expired = keys.sign(&claims(now - 10)).unwrap();
        assert!(matches!(keys.verify(&expired), Err(ApiError::TokenExpired)));
        let other = JwtKeys::new(b"another key of thirty-two bytes!");
        let forged = other.sign(&claims(now + 60)).unwrap();
        assert!(matches!(
            keys.verify(&forged),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(matches!(
            keys.verify("garbage"),
            Err(ApiError::Unauthorized(_))
        ));
    }

    #[test]
    fn same_secret_compares_whole_secrets() {
        assert!(same_secret("broker-token", "broker-token"));
        assert!(!same_secret("broker-token", "broker-tokem"));
        assert!(!same_secret("broker-token", "broker-toke"));
        assert!(!same_secret("", "x"));
    }
}
