//! The FUSE side: the tree as directories and files, writes into the spool, reads of the
//! recent responses, and `mkdir`/`rmdir`/`mv`/`chmod` through the control plane.
//!
//! Runs on fuser's multi-threaded session (`Config { n_threads, clone_fd }`), so every
//! method takes `&self` and state is behind locks held only for map lookups. Trigger files
//! are opened with `FOPEN_DIRECT_IO`: one `write(2)` reaches us as one write (through the page
//! cache writes would arrive split at page boundaries, and some only on close), and there is
//! no writeback cache. `getxattr` is left unimplemented: the kernel learns that from the
//! first `ENOSYS` and stops asking on every write.

use crate::control;
use crate::lines::LineBuffer;
use crate::record::SpooledRequest;
use crate::spool::SpoolError;
use crate::tree::{Tree, Trigger, ROOT};
use crate::{FsError, Shared};
use api::directories::{DirPath, PathError};
use api::triggers::UpdateTrigger;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use proto::names::NameError;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// How long the kernel may cache names and attributes: changes made through the API show
/// within this (the follower also invalidates renamed and removed names at once).
const TTL: Duration = Duration::from_secs(1);

/// The largest write the kernel hands over in one piece; a bigger `write(2)` arrives as
/// several writes (each a request), which keeps a request under the broker's frame limit.
pub const MAX_WRITE: u32 = 4 * 1024 * 1024;

/// One open trigger file.
#[derive(Debug)]
struct OpenFile {
    trigger_id: i64,
    /// The partial line of a `split = "lines"` trigger.
    lines: Mutex<LineBuffer>,
}

/// What a rename moves: a trigger (its id, its new path) or a directory (from, to).
enum Move {
    Trigger(i64, String),
    Dir(DirPath, DirPath),
}

/// The filesystem fuser serves.
pub struct TriggerFs {
    shared: Arc<Shared>,
    open: Mutex<HashMap<u64, Arc<OpenFile>>>,
    next_fh: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The errno an API answer means.
fn errno(e: &FsError) -> Errno {
    let status = match e {
        FsError::Control(e) => e.status(),
        _ => None,
    };
    match status {
        Some(404) => Errno::ENOENT,
        Some(409) => Errno::EEXIST,
        Some(403) => Errno::EACCES,
        Some(400 | 422) => Errno::EINVAL,
        _ => Errno::EIO,
    }
}

/// The errno a refused path means: too deep or too long is `ENAMETOOLONG`.
fn path_errno(e: &PathError) -> Errno {
    match e {
        PathError::TooDeep { .. } | PathError::Name(NameError::TooLong { .. }) => {
            Errno::ENAMETOOLONG
        }
        _ => Errno::EINVAL,
    }
}

/// Directory `name` in the directory of path `parent` (`""`: the root), checked.
fn dir_in(parent: &str, name: &str) -> Result<DirPath, Errno> {
    let path = if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    };
    DirPath::parse(&path).map_err(|e| path_errno(&e))
}

impl TriggerFs {
    /// The filesystem over `shared`.
    pub fn new(shared: Arc<Shared>) -> TriggerFs {
        TriggerFs {
            shared,
            open: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }

    fn dir_attr(&self, ino: u64, created: SystemTime) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: created,
            mtime: created,
            ctime: created,
            crtime: created,
            kind: FileType::Directory,
            perm: 0o755,
            nlink: 2,
            uid: self.shared.uid,
            gid: self.shared.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn trigger_attr(&self, t: &Trigger) -> FileAttr {
        let mtime = self.shared.mtime(t.id).unwrap_or(t.created);
        FileAttr {
            ino: INodeNo(t.ino()),
            size: self.shared.responses.text_len(t.id) as u64,
            blocks: 0,
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: t.created,
            kind: FileType::RegularFile,
            perm: (t.mode & 0o7777) as u16,
            nlink: 1,
            uid: self.shared.uid,
            gid: self.shared.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn attr_of(&self, ino: u64) -> Option<FileAttr> {
        self.attr_in(&self.shared.tree(), ino)
    }

    /// The attributes of `ino` in `tree` (held by the caller: a second read lock could wait
    /// behind a writer for ever).
    fn attr_in(&self, tree: &Tree, ino: u64) -> Option<FileAttr> {
        if ino == ROOT {
            return Some(self.dir_attr(ROOT, self.shared.started));
        }
        if let Some(d) = tree.dir_by_ino(ino) {
            return Some(self.dir_attr(d.ino, d.created));
        }
        tree.trigger_by_ino(ino).map(|t| self.trigger_attr(t))
    }

    fn reply_attr(&self, ino: u64, reply: ReplyAttr) {
        match self.attr_of(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn name(name: &OsStr) -> Result<&str, Errno> {
        name.to_str().ok_or(Errno::ENOENT)
    }

    /// Runs an API change, then refreshes the tree so the caller's next lookup sees it.
    fn change(
        &self,
        call: impl std::future::Future<Output = Result<(), FsError>>,
    ) -> Result<(), Errno> {
        let shared = &self.shared;
        shared.rt.block_on(async {
            call.await.map_err(|e| {
                tracing::info!(error = %e, "the control plane refused a change");
                errno(&e)
            })?;
            shared.refresh().await.map(drop).map_err(|e| errno(&e))
        })
    }

    /// `EDESTADDRREQ` for a trigger created without its service or plugin yet: a write to it
    /// has nowhere to go, so nothing is spooled. Logged when the trigger or what it lacks
    /// differs from the last one logged, and every 1,000th refusal, so a busy writer does not
    /// flood the log.
    fn configured(&self, t: &Trigger) -> Result<(), Errno> {
        let (what, set) = match (t.service.is_empty(), t.plugin.is_empty()) {
            (false, false) => return Ok(()),
            (true, _) => ("service", "service attach SERVICE"),
            (false, true) => ("plugin", "plugin PLUGIN"),
        };
        let n = self
            .shared
            .refused_unconfigured
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        let new =
            lock(&self.shared.unconfigured_logged).replace((t.id, what)) != Some((t.id, what));
        if new || n.is_multiple_of(1000) {
            self.shared.log.line(&format!(
                "trigger {} has no {what}: set trigger {} {set} \
                 (a write to it failed with EDESTADDRREQ, {n} refused so far)",
                t.path(),
                t.name
            ));
        }
        Err(Errno::EDESTADDRREQ)
    }

    /// Spools one request per payload for trigger `t`; `Ok` once they are in the spool file.
    fn spool(&self, t: &Trigger, payloads: Vec<Vec<u8>>) -> Result<(), Errno> {
        if payloads.is_empty() {
            return Ok(());
        }
        self.configured(t)?;
        let path = t.path();
        let records = payloads
            .into_iter()
            .map(|payload| {
                SpooledRequest {
                    trigger_id: t.id,
                    path: path.clone(),
                    service: t.service.clone(),
                    plugin: t.plugin.clone(),
                    args: t.args.clone(),
                    timeout_ms: t.timeout_ms,
                    payload,
                }
                .encode()
            })
            .collect();
        match self.shared.spool.append(records) {
            Ok(_) => {
                self.shared.touch(t.id, SystemTime::now());
                Ok(())
            }
            Err(SpoolError::Full { max_bytes }) => {
                let n = self.shared.refused_full.fetch_add(1, Ordering::Relaxed) + 1;
                // Logged on the first refusal and then every 1,000th, so a full spool under a
                // busy writer does not flood the log.
                if n == 1 || n.is_multiple_of(1000) {
                    self.shared.log.line(&format!(
                        "spool full ({max_bytes} bytes): a write to {path} failed with ENOSPC \
                         ({n} refused so far)"
                    ));
                }
                Err(Errno::ENOSPC)
            }
            Err(SpoolError::TooLarge { .. }) => Err(Errno::EFBIG),
            Err(e) => {
                tracing::error!(error = %e, %path, "the spool failed a write");
                Err(Errno::EIO)
            }
        }
    }

    /// What `mv parent/name newparent/newname` asks of the control plane. Nothing is
    /// replaced: a new name that is taken is `EEXIST`. A trigger stays in a directory (the
    /// root holds none).
    fn rename_change(
        &self,
        parent: u64,
        name: &str,
        newparent: u64,
        newname: &str,
    ) -> Result<Move, Errno> {
        let tree = self.shared.tree();
        let ino = tree.lookup(parent, name).ok_or(Errno::ENOENT)?;
        let new_dir = tree.dir_path(newparent).ok_or(Errno::ENOENT)?;
        if tree.lookup(newparent, newname).is_some() {
            return Err(Errno::EEXIST);
        }
        if let Some(trigger) = tree.trigger_by_ino(ino) {
            if newparent == ROOT {
                return Err(Errno::EPERM);
            }
            return Ok(Move::Trigger(trigger.id, format!("/{new_dir}/{newname}")));
        }
        let from = tree.dir_path(ino).ok_or(Errno::ENOENT)?;
        let from = DirPath::parse(from).map_err(|e| path_errno(&e))?;
        Ok(Move::Dir(from, dir_in(new_dir, newname)?))
    }

    fn open_file(&self, fh: FileHandle) -> Option<Arc<OpenFile>> {
        lock(&self.open).get(&fh.0).cloned()
    }

    /// Sends the partial line an open file holds (at `close`).
    fn finish_lines(&self, file: &OpenFile) -> Result<(), Errno> {
        let mut lines = lock(&file.lines);
        let Some(partial) = lines.finish() else {
            return Ok(());
        };
        let trigger = self.shared.tree().trigger_by_id(file.trigger_id).cloned();
        let Some(trigger) = trigger else {
            return Err(Errno::ENOENT);
        };
        self.spool(&trigger, vec![partial])
    }
}

impl Filesystem for TriggerFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(max) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(max);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Ok(name) = Self::name(name) else {
            return reply.error(Errno::ENOENT);
        };
        let tree = self.shared.tree();
        let attr = tree
            .lookup(parent.0, name)
            .and_then(|ino| self.attr_in(&tree, ino));
        match attr {
            Some(attr) => reply.entry(&TTL, &attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.reply_attr(ino.0, reply);
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Some(trigger) = self.shared.tree().trigger_by_ino(ino.0).cloned() else {
            // Directories and the root: nothing of theirs can be set.
            return match self.attr_of(ino.0) {
                Some(_) => reply.error(Errno::EPERM),
                None => reply.error(Errno::ENOENT),
            };
        };
        // chown: only to what it already is.
        if uid.is_some_and(|u| u != self.shared.uid) || gid.is_some_and(|g| g != self.shared.gid) {
            return reply.error(Errno::EPERM);
        }
        // `> file` truncates to 0 (a trigger has nothing to truncate); any other size is not
        // something a trigger can have.
        if size.is_some_and(|s| s != 0) {
            return reply.error(Errno::EPERM);
        }
        if let Some(mode) = mode {
            let mode = mode & 0o7777;
            if mode != trigger.mode {
                let change = UpdateTrigger {
                    mode: Some(mode),
                    ..UpdateTrigger::default()
                };
                let patch = control::patch_trigger(&self.shared.api, trigger.id, &change);
                if let Err(e) = self.change(patch) {
                    return reply.error(e);
                }
            }
        }
        // `touch`: the times are the fs's own.
        if let Some(t) = mtime {
            let t = match t {
                TimeOrNow::SpecificTime(t) => t,
                TimeOrNow::Now => SystemTime::now(),
            };
            self.shared.touch(trigger.id, t);
        }
        self.reply_attr(ino.0, reply);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let tree = self.shared.tree();
        if !tree.is_dir(ino.0) {
            return reply.error(Errno::ENOTDIR);
        }
        let parent = tree.dir_by_ino(ino.0).map_or(ROOT, |d| d.parent);
        let mut entries: Vec<(u64, FileType, String)> = vec![
            (ino.0, FileType::Directory, ".".into()),
            (parent, FileType::Directory, "..".into()),
        ];
        entries.extend(tree.children(ino.0).map(|(name, child)| {
            let kind = if tree.is_dir(child) {
                FileType::Directory
            } else {
                FileType::RegularFile
            };
            (child, kind, name.to_string())
        }));
        drop(tree);
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let Ok(name) = Self::name(name) else {
            return reply.error(Errno::EINVAL);
        };
        let path = match self.shared.tree().dir_path(parent.0) {
            Some(parent) => dir_in(parent, name),
            None => Err(Errno::ENOENT),
        };
        let path = match path {
            Ok(path) => path,
            Err(e) => return reply.error(e),
        };
        if let Err(e) = self.change(control::mkdir(&self.shared.api, &path)) {
            return reply.error(e);
        }
        let tree = self.shared.tree();
        match tree
            .lookup(parent.0, name)
            .and_then(|ino| self.attr_in(&tree, ino))
        {
            Some(attr) => reply.entry(&TTL, &attr, Generation(0)),
            None => reply.error(Errno::EIO),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Ok(name) = Self::name(name) else {
            return reply.error(Errno::ENOENT);
        };
        let path = {
            let tree = self.shared.tree();
            let Some(ino) = tree.lookup(parent.0, name) else {
                return reply.error(Errno::ENOENT);
            };
            let Some(dir) = tree.dir_by_ino(ino) else {
                return reply.error(Errno::ENOTDIR);
            };
            DirPath::parse(&dir.path)
        };
        let Ok(path) = path else {
            return reply.error(Errno::EINVAL);
        };
        match self.change(control::rmdir(&self.shared.api, &path)) {
            Ok(()) => reply.ok(),
            // The API's 409: the directory holds triggers (maybe another member's local
            // ones, which this mount does not show) or directories.
            Err(e) if e == Errno::EEXIST => reply.error(Errno::ENOTEMPTY),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return reply.error(Errno::EINVAL);
        }
        let (Ok(name), Ok(newname)) = (Self::name(name), Self::name(newname)) else {
            return reply.error(Errno::ENOENT);
        };
        let change = match self.rename_change(parent.0, name, newparent.0, newname) {
            Ok(change) => change,
            Err(e) => return reply.error(e),
        };
        let api = &self.shared.api;
        let done = match change {
            Move::Trigger(id, path) => {
                let change = UpdateTrigger {
                    path: Some(path),
                    ..UpdateTrigger::default()
                };
                self.change(control::patch_trigger(api, id, &change))
            }
            Move::Dir(from, to) => self.change(control::move_dir(api, &from, &to)),
        };
        match done {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let tree = self.shared.tree();
        let Some(trigger) = tree.trigger_by_ino(ino.0).map(|t| t.id) else {
            return reply.error(if tree.is_dir(ino.0) {
                Errno::EISDIR
            } else {
                Errno::ENOENT
            });
        };
        drop(tree);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let file = Arc::new(OpenFile {
            trigger_id: trigger,
            lines: Mutex::new(LineBuffer::default()),
        });
        lock(&self.open).insert(fh, file);
        reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(trigger) = self.shared.tree().trigger_by_ino(ino.0).map(|t| t.id) else {
            return reply.error(Errno::ENOENT);
        };
        let text = self.shared.responses.text(trigger);
        let bytes = text.as_bytes();
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let end = start.saturating_add(size as usize).min(bytes.len());
        reply.data(&bytes[start..end]);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(trigger) = self.shared.tree().trigger_by_ino(ino.0).cloned() else {
            return reply.error(Errno::ENOENT);
        };
        self.shared.writes.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.configured(&trigger) {
            return reply.error(e);
        }
        let result = if trigger.split_lines {
            let Some(file) = self.open_file(fh) else {
                return reply.error(Errno::EBADF);
            };
            let mut lines = lock(&file.lines);
            let before = lines.clone();
            let payloads = lines.push(data, trigger.batch_lines);
            let result = self.spool(&trigger, payloads);
            if result.is_err() {
                // The write failed as a whole: its bytes are not held back either.
                *lines = before;
            }
            result
        } else {
            self.spool(&trigger, vec![data.to_vec()])
        };
        match result {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Every `close(2)`: a partial line goes out now (its newline is not coming).
        match self.open_file(fh).map(|f| self.finish_lines(&f)) {
            Some(Err(e)) => reply.error(e),
            _ => reply.ok(),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let file = lock(&self.open).remove(&fh.0);
        if let Some(file) = file {
            let _ = self.finish_lines(&file);
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.shared.spool.sync() {
            Ok(()) => reply.ok(),
            Err(e) => {
                tracing::error!(error = %e, "the spool could not be synced");
                reply.error(Errno::EIO)
            }
        }
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        // Trigger files are made through the control plane, not here.
        reply.error(Errno::EPERM);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EPERM);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }
}
