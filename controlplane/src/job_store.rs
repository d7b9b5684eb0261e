//! The job history's preparer: a thread of its own (`job-store`), scheduled `SCHED_IDLE`. The
//! broker's route ([`crate::routes::jobs::ingest`]) hands it each batch as the broker sent it
//! and waits: the parse, the checks and the JSON of each job's workers are made here, and the
//! route then runs the short transaction itself, at its own priority (an idle-priority thread
//! must never hold the database's write lock).
//!
//! Why: preparing a fan-out to 1,000 workers is about a millisecond of CPU, and a control
//! plane often shares its machine with a broker (`triggerfs up`): at the same priority, that
//! millisecond is taken from the shards in the middle of the next request. Scheduled idle, it
//! runs when a core would otherwise idle. The broker's side of the same work (`feed::jobs`)
//! runs the same way. Under a load that leaves no core idle, batches wait here; the broker's
//! post times out and is tried again, and past its bounds its records are counted lost.

use crate::error::ApiError;
use crate::routes::jobs::{prepare, Prepared};
use axum::body::Bytes;
use proto::job::JobBatch;
use tokio::sync::{mpsc, oneshot};

/// Batches waiting for the thread at most; a broker's feed posts one at a time.
const QUEUE: usize = 64;

struct Work {
    body: Bytes,
    limit: usize,
    done: oneshot::Sender<Result<Vec<Prepared>, ApiError>>,
}

/// The handle request handlers use.
pub(crate) struct JobStore {
    tx: mpsc::Sender<Work>,
}

impl JobStore {
    /// Starts the thread; it ends when the handle is dropped.
    pub(crate) fn start() -> std::io::Result<JobStore> {
        let (tx, mut rx) = mpsc::channel::<Work>(QUEUE);
        std::thread::Builder::new()
            .name("job-store".into())
            .spawn(move || {
                if let Err(e) = idle_priority() {
                    tracing::warn!(error = %e, "job store: cannot lower the thread's priority");
                }
                while let Some(work) = rx.blocking_recv() {
                    let prepared = crate::extract::parse_json::<JobBatch>(&work.body, work.limit)
                        .and_then(prepare);
                    let _ = work.done.send(prepared);
                }
            })?;
        Ok(JobStore { tx })
    }

    /// Parses, checks and prepares one batch (`limit`: the route's body limit, for the error).
    pub(crate) async fn prepare(
        &self,
        body: Bytes,
        limit: usize,
    ) -> Result<Vec<Prepared>, ApiError> {
        let (done, answer) = oneshot::channel();
        let gone = || ApiError::Internal("the job-store thread has stopped".into());
        self.tx
            .send(Work { body, limit, done })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// Schedules the calling thread `SCHED_IDLE` (Linux: per thread): it runs only on a core no
/// other thread wants.
fn idle_priority() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a syscall on the calling thread (0) with a parameter that outlives it.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
