//! Credentials: the JWT keys, argon2 secret hashing, and the [`LoginGuard`] that bounds what
//! logins may cost and what wrong secrets do (counted in the store, `guesses`). Nothing here
//! reads a request.

use crate::db::Db;
use crate::error::ApiError;
use crate::guesses;
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
///
/// The locks and the identity's budget are kept in the store (`guesses`), so replicas on one
/// database count the same guesses; the address's rate limit is this process's.
pub struct LoginGuard {
    by_address: DefaultKeyedRateLimiter<IpAddr>,
    hashing: Semaphore,
    limits: LoginLimits,
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
pub(crate) fn limiter_key(identity: &str) -> &str {
    let mut end = identity.len().min(MAX_KEY_BYTES);
    while !identity.is_char_boundary(end) {
        end -= 1;
    }
    &identity[..end]
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
            by_address: RateLimiter::keyed(quota(limits.address_burst, limits.address_period)),
            hashing: Semaphore::new(cores),
            limits,
        }
    }

    /// Counts a checked secret for `identity` from `address` (in the store: every replica
    /// counts the same): a good one clears that address's count and locks for it;
    /// `lockout_after` wrong ones in a row lock that address's logins as `identity` (see
    /// [`LoginLimits`]).
    pub async fn record(
        &self,
        db: &Db,
        identity: &str,
        address: Option<IpAddr>,
        good: bool,
    ) -> Result<(), ApiError> {
        guesses::record(db, &self.limits, identity, address, good).await
    }

    /// Counts one login attempt, in this order: `TooManyRequests` when the address is over
    /// its limit (per replica: it bounds this process's hashing); `LockedOut` while the
    /// address's logins as `identity` are locked (so a locked guesser spends nothing of the
    /// identity's budget); `TooManyRequests` when the address has given a wrong secret for
    /// `identity` since its last good login and the identity's shared budget is spent.
    pub async fn admit(
        &self,
        db: &Db,
        identity: &str,
        address: Option<IpAddr>,
    ) -> Result<(), ApiError> {
        if let Some(address) = address {
            self.by_address
                .check_key(&address)
                .map_err(|e| ApiError::TooManyRequests {
                    retry_after: retry_after(&e),
                    what: "login attempts from this address",
                })?;
            if self.by_address.len() > PRUNE_ABOVE {
                self.by_address.retain_recent();
            }
        }
        let guessed = guesses::check_lock(db, identity, address).await?;
        match guesses::spend_budget(db, &self.limits, identity).await? {
            Err(retry_after) if guessed => Err(ApiError::TooManyRequests {
                retry_after,
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

    #[tokio::test]
    async fn each_lock_without_a_good_login_between_is_twice_the_one_before_up_to_the_max() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), None).await.unwrap();
        let guard = LoginGuard::new(LoginLimits {
            lockout_after: 1,
            lockout: Duration::from_secs(10),
            lockout_max: Duration::from_secs(25),
            ..LoginLimits::default()
        });
        let at = Some(IpAddr::from([192, 0, 2, 1]));
        let lock = |identity, at| guesses::check_lock(&db, identity, at);
        let retry = |result: Result<bool, ApiError>| match result {
            Err(ApiError::LockedOut { retry_after, .. }) => retry_after,
            other => panic!("not locked: {other:?}"),
        };
        assert!(!lock("eve", at).await.unwrap());
        guard.record(&db, "eve", at, false).await.unwrap();
        assert_eq!(retry(lock("eve", at).await), 10);
        guard.record(&db, "eve", at, false).await.unwrap();
        assert_eq!(retry(lock("eve", at).await), 20);
        guard.record(&db, "eve", at, false).await.unwrap();
        assert_eq!(retry(lock("eve", at).await), 25);
        // Only the guessing address is locked.
        assert!(!lock("eve", Some(IpAddr::from([192, 0, 2, 2])))
            .await
            .unwrap());
        assert!(!lock("eve", None).await.unwrap());
        guard.record(&db, "eve", at, true).await.unwrap();
        assert!(!lock("eve", at).await.unwrap());
        assert!(!lock("someone else", at).await.unwrap());
    }

    #[tokio::test]
    async fn an_identitys_budget_is_spent_by_addresses_that_guessed_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), None).await.unwrap();
        let guard = LoginGuard::new(LoginLimits {
            identity_burst: 3,
            identity_period: Duration::from_secs(60),
            lockout_after: 100,
            ..LoginLimits::default()
        });
        for i in 1..=3u8 {
            let at = Some(IpAddr::from([192, 0, 2, i]));
            guard.admit(&db, "eve", at).await.unwrap();
            guard.record(&db, "eve", at, false).await.unwrap();
        }
        // The budget is spent: an address that guessed wrong waits; a fresh one is checked.
        let guessed = Some(IpAddr::from([192, 0, 2, 1]));
        match guard.admit(&db, "eve", guessed).await {
            Err(ApiError::TooManyRequests { retry_after, .. }) => {
                assert!((1..=60).contains(&retry_after), "{retry_after}")
            }
            other => panic!("not refused: {other:?}"),
        }
        guard
            .admit(&db, "eve", Some(IpAddr::from([192, 0, 2, 9])))
            .await
            .unwrap();
        guard.admit(&db, "bob", guessed).await.unwrap();
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
