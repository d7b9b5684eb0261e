//! Event streams (`/api/v1/events`) open now, in all and per user, so that neither grows
//! without bound.

use crate::error::ApiError;
use crate::settings::ControlSettings;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Streams open per user id.
type Open = Arc<Mutex<HashMap<i64, usize>>>;

/// Event streams open now, by user.
#[derive(Default)]
pub(crate) struct Streams {
    by_user: Open,
}

/// One open stream; dropping it (the stream ends, or its client goes away) frees it.
pub(crate) struct StreamSlot {
    by_user: Open,
    user_id: i64,
}

fn lock(by_user: &Open) -> MutexGuard<'_, HashMap<i64, usize>> {
    by_user.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Streams {
    /// A slot for one more stream of `user_id`, or 503 (too many in all) / 429 (too many
    /// for this user).
    pub(crate) fn open(
        &self,
        settings: &ControlSettings,
        user_id: i64,
    ) -> Result<StreamSlot, ApiError> {
        let mut by_user = lock(&self.by_user);
        let total: usize = by_user.values().sum();
        if total >= settings.max_event_streams {
            tracing::warn!(
                total,
                "event stream refused: the control plane's limit is reached"
            );
            return Err(ApiError::Busy {
                retry_after: 5,
                what: "too many event streams are open",
            });
        }
        let mine = by_user.entry(user_id).or_insert(0);
        if *mine >= settings.max_event_streams_per_user {
            tracing::warn!(
                user_id,
                open = *mine,
                "event stream refused: the user's limit is reached"
            );
            return Err(ApiError::TooManyRequests {
                retry_after: 5,
                what: "event streams open for this user",
            });
        }
        *mine += 1;
        Ok(StreamSlot {
            by_user: self.by_user.clone(),
            user_id,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut by_user = lock(&self.by_user);
        if let Some(n) = by_user.get_mut(&self.user_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                by_user.remove(&self.user_id);
            }
        }
    }
}
