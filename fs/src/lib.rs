//! The fs module: a team's directories and triggers as files over FUSE (`triggerfs fs`).
//!
//! Each `write(2)` to a trigger file becomes one request (or, with `split = "lines"`, one
//! request per batch of complete lines), put in the on-disk [`spool`] before the write
//! returns, and sent from there to the broker in order by the [`sender`]; a request leaves
//! the spool only once it came to an end. The tree follows the control plane (its SSE
//! stream) in [`follow`]; [`fuse`] is what the kernel calls.

pub mod control;
mod fuse;
pub mod lines;
pub mod log;
mod mount;
pub mod record;
pub mod responses;
mod sender;
pub mod spool;
pub mod tree;

use api::client::ApiError;
use api::Api;
use control::Login;
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// One API call's limit: a FUSE thread waits on `mkdir`, `mv` and `chmod`.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What can go wrong in the fs module.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The control plane could not be reached, refused a call or answered nonsense.
    #[error("control plane: {0}")]
    Control(#[from] ApiError),
    /// Logging in failed.
    #[error("login failed: {0}")]
    Login(#[source] ApiError),
    /// The spool could not be opened.
    #[error("spool: {0}")]
    Spool(#[from] spool::SpoolError),
    /// Mounting (or clearing a stale mount) failed.
    #[error("mount {path}: {message}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The log file could not be opened.
    #[error("log file {path}: {source}")]
    LogFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// How `triggerfs fs` runs.
#[derive(Debug, Clone)]
pub struct FsOptions {
    /// Where to mount.
    pub mount: PathBuf,
    /// Who to log in as, where.
    pub login: Login,
    /// The brokers' addresses: requests go through one, and another when it is lost.
    pub broker: client::BrokerList,
    /// Also log to this file.
    pub logfile: Option<PathBuf>,
    /// The spool's directory.
    pub spool_dir: PathBuf,
    /// The most bytes the spool holds before writes fail with `ENOSPC`.
    pub spool_max: u64,
    /// How often the spool is made durable.
    pub spool_sync: Duration,
    /// FUSE threads.
    pub threads: usize,
    /// Do not print responses on the terminal (the log file still has them).
    pub quiet: bool,
    /// Let other users than the one mounting use the files (`allow_other`; for a user
    /// other than root, `/etc/fuse.conf` must say `user_allow_other`).
    pub allow_other: bool,
}

/// What the FUSE threads, the sender and the follower share.
pub struct Shared {
    tree: RwLock<tree::Tree>,
    api: Api,
    /// Who the fs is logged in as.
    identity: String,
    rt: tokio::runtime::Handle,
    spool: spool::Spool,
    responses: responses::Responses,
    log: log::Log,
    uid: u32,
    gid: u32,
    started: SystemTime,
    /// Last write per trigger (a trigger file's mtime).
    mtimes: Mutex<HashMap<i64, SystemTime>>,
    /// Runs per trigger not yet added to the control plane's hit counts.
    hits: Mutex<HashMap<i64, u32>>,
    writes: AtomicU64,
    refused_full: AtomicU64,
    refused_unconfigured: AtomicU64,
    /// The trigger and the missing part of the last such refusal that was logged.
    unconfigured_logged: Mutex<Option<(i64, &'static str)>>,
    delivered: AtomicU64,
    rejected: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn tree(&self) -> RwLockReadGuard<'_, tree::Tree> {
        self.tree.read().unwrap_or_else(|e| e.into_inner())
    }

    fn mtime(&self, id: i64) -> Option<SystemTime> {
        lock(&self.mtimes).get(&id).copied()
    }

    fn touch(&self, id: i64, t: SystemTime) {
        lock(&self.mtimes).insert(id, t);
    }

    fn hit(&self, id: i64) {
        *lock(&self.hits).entry(id).or_default() += 1;
    }

    /// Reads the tree again from the control plane; returns what the kernel may still
    /// have cached that is gone.
    async fn refresh(&self) -> Result<tree::Stale, FsError> {
        let (dirs, triggers) = control::lists(&self.api).await?;
        let mut tree = self.tree.write().unwrap_or_else(|e| e.into_inner());
        let stale = tree.replace(&self.identity, dirs, triggers);
        self.responses.retain(|id| tree.trigger_by_id(id).is_some());
        Ok(stale)
    }

    /// Adds the runs counted since the last call to the control plane's hits.
    async fn flush_hits(&self) {
        let hits: Vec<(i64, u32)> = lock(&self.hits).drain().collect();
        for (id, count) in hits {
            match control::add_hits(&self.api, id, count).await {
                // Deleted meanwhile: its count goes with it.
                Ok(()) | Err(FsError::Control(ApiError::Refused { status: 404, .. })) => {}
                Err(e) => {
                    tracing::warn!(error = %e, trigger = id, "hits not counted yet");
                    *lock(&self.hits).entry(id).or_default() += count;
                }
            }
        }
    }
}

/// Mounts, serves until `shutdown` completes, then unmounts. Logs as the original did.
pub async fn run(opts: FsOptions, shutdown: impl Future<Output = ()>) -> Result<(), FsError> {
    // Polled once now: a signal future installs its handlers when first polled, and a
    // SIGTERM that comes right after "Ready" must unmount, not kill the process.
    let mut shutdown = std::pin::pin!(shutdown);
    if futures_lite::future::poll_once(&mut shutdown)
        .await
        .is_some()
    {
        return Ok(());
    }
    let (shared, reader) = start(&opts).await?;
    mount::clear_stale(&opts.mount)?;
    let session = mount::mount(
        fuse::TriggerFs::new(shared.clone()),
        &opts.mount,
        opts.threads,
        opts.allow_other,
    )?;
    let notifier = session.notifier();
    shared.log.line("Started triggerfs.");
    shared
        .log
        .line(&format!("Serving filesystem in {}", opts.mount.display()));
    if let Some(file) = &opts.logfile {
        shared.log.line(&format!("Log file is {}", file.display()));
    }

    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(sender::run(
        shared.clone(),
        reader,
        opts.broker.clone(),
        stop.clone(),
    ));
    let (following, followed) = tokio::sync::oneshot::channel();
    tasks.spawn(follow(shared.clone(), notifier, stop.clone(), following));
    tasks.spawn(housekeeping(shared.clone(), stop.clone()));
    // Ready once the tree follows the control plane (or its first attempt failed: then it
    // retries in the background and the tree read at the start serves meanwhile).
    let _ = followed.await;
    shared.log.line("Ready and running in foreground...");
    shared.log.flush();

    shutdown.await;
    shared.log.line("Stopping: unmounting.");
    let _ = stop_tx.send(true);
    // Unmount first: no write can come in after the spool's last sync.
    let unmounted = tokio::task::spawn_blocking(move || session.umount_and_join()).await;
    if let Err(e) | Ok(Err(e)) = unmounted.map_err(std::io::Error::other) {
        shared
            .log
            .line(&format!("Unmounting {} failed: {e}", opts.mount.display()));
    }
    while tasks.join_next().await.is_some() {}
    finish(&shared).await;
    Ok(())
}

/// Opens the log, logs in, opens the spool and reads the tree: what the fs serves.
async fn start(opts: &FsOptions) -> Result<(Arc<Shared>, spool::SpoolReader), FsError> {
    let log =
        log::Log::open(opts.logfile.as_deref(), opts.quiet).map_err(|source| FsError::LogFile {
            path: opts.logfile.clone().unwrap_or_default(),
            source,
        })?;
    log.line("=== triggerfs module started ===");
    log.line("Authenticating with login credentials in config.");
    log.flush();
    let api = Api::sign_in(&opts.login)
        .await
        .map_err(FsError::Login)?
        .with_timeout(CALL_TIMEOUT);
    log.line("Successful login.");
    let mut cfg = spool::SpoolConfig::new(&opts.spool_dir);
    cfg.max_bytes = opts.spool_max;
    cfg.sync_every = opts.spool_sync;
    let (spool, reader) = spool::Spool::open(cfg)?;
    let pending = spool.stats().pending_records;
    if pending > 0 {
        log.line(&format!(
            "The spool holds {pending} requests from before; they are sent first."
        ));
    }
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let shared = Arc::new(Shared {
        tree: RwLock::new(tree::Tree::default()),
        api,
        identity: opts.login.identity.clone(),
        rt: tokio::runtime::Handle::current(),
        spool,
        responses: responses::Responses::default(),
        log,
        uid,
        gid,
        started: SystemTime::now(),
        mtimes: Mutex::new(HashMap::new()),
        hits: Mutex::new(HashMap::new()),
        writes: AtomicU64::new(0),
        refused_full: AtomicU64::new(0),
        refused_unconfigured: AtomicU64::new(0),
        unconfigured_logged: Mutex::new(None),
        delivered: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
    });
    shared.refresh().await?;
    shared.log.line("Started triggerfs.");
    Ok((shared, reader))
}

/// After the unmount: the spool synced, the last hits counted, the totals logged.
async fn finish(shared: &Shared) {
    if let Err(e) = shared.spool.sync() {
        shared
            .log
            .line(&format!("The spool could not be synced: {e}"));
    }
    shared.flush_hits().await;
    let left = shared.spool.stats().pending_records;
    shared.log.line(&format!(
        "Stopped. {} writes, {} requests ended ({} rejected), {} writes refused with ENOSPC, \
         {left} requests left in the spool.",
        shared.writes.load(Ordering::Relaxed),
        shared.delivered.load(Ordering::Relaxed),
        shared.rejected.load(Ordering::Relaxed),
        shared.refused_full.load(Ordering::Relaxed),
    ));
    shared.log.flush();
}

/// Once a second: hit counts to the control plane; every 200 ms: the log out.
async fn housekeeping(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        shared.log.flush();
        n += 1;
        if n.is_multiple_of(5) {
            shared.flush_hits().await;
        }
    }
}

/// Follows the control plane's changes: the SSE stream, a refetch after each event (and
/// after each reconnect, and every 30 s in case an event was missed), and the kernel told
/// at once about names that are gone.
async fn follow(
    shared: Arc<Shared>,
    notifier: fuser::Notifier,
    mut stop: watch::Receiver<bool>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    use futures_lite::StreamExt;
    let mut backoff = Duration::from_millis(100);
    let mut ready = Some(ready);
    loop {
        // Subscribed first, then read: a change made in between is in the stream, so none
        // is missed (the server subscribes before it answers with the stream's headers).
        let stream = match shared.api.events("/events").await {
            Ok(events) => apply(&shared, &notifier).await.map(|()| events),
            Err(e) => Err(FsError::from(e)),
        };
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        match stream {
            Ok(mut events) => {
                backoff = Duration::from_millis(100);
                loop {
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = tokio::time::sleep(Duration::from_secs(30)) => {
                            let _ = apply(&shared, &notifier).await;
                        }
                        event = events.next() => match event {
                            Some(Ok(_)) => {
                                if let Err(e) = apply(&shared, &notifier).await {
                                    tracing::warn!(error = %e, "the tree could not be refreshed");
                                }
                            }
                            _ => break,
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "the control plane's events are not reachable"),
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Refreshes the tree and invalidates the kernel's cached names that went away.
async fn apply(shared: &Shared, notifier: &fuser::Notifier) -> Result<(), FsError> {
    let stale = shared.refresh().await?;
    if !stale.is_empty() {
        // The kernel takes the directory's lock to drop a name: on a blocking thread, so a
        // FUSE request in that directory that waits on the runtime cannot wait on us.
        let notifier = notifier.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for (parent, name) in stale {
                // ENOENT: the kernel had not cached it; nothing to do.
                let _ = notifier.inval_entry(fuser::INodeNo(parent), std::ffi::OsStr::new(&name));
            }
        })
        .await;
    }
    Ok(())
}
