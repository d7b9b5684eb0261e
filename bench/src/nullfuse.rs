//! `bench-child null-fuse`: a FUSE filesystem that does nothing, the floor of a write through
//! FUSE on this machine. Every name in its root is one empty file that accepts every write
//! and keeps nothing. It is mounted the way `triggerfs fs` mounts (fuser, the same number of
//! threads with a cloned fd each, files opened `FOPEN_DIRECT_IO`, the same largest write), so
//! that what `bench fs` measures through it is the kernel's round trip and fuser's, without
//! the spool, the network or the plugin behind them.

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite,
    Request, WriteFlags,
};
use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, SystemTime};

const ROOT: u64 = 1;
/// The one file every name in the root is.
const FILE: u64 = 2;
const TTL: Duration = Duration::from_secs(1);
/// As `triggerfs fs` (`fs::fuse::MAX_WRITE`).
const MAX_WRITE: u32 = 4 * 1024 * 1024;

struct NullFs {
    uid: u32,
    gid: u32,
    started: SystemTime,
}

impl NullFs {
    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, perm, nlink) = match ino {
            ROOT => (FileType::Directory, 0o755, 2),
            FILE => (FileType::RegularFile, 0o644, 1),
            _ => return None,
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            crtime: self.started,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
}

impl Filesystem for NullFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(max) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(max);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, _name: &OsStr, reply: ReplyEntry) {
        match (parent.0, self.attr(FILE)) {
            (ROOT, Some(attr)) => reply.entry(&TTL, &attr, Generation(0)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match ino.0 {
            FILE => reply.opened(FileHandle(1), FopenFlags::FOPEN_DIRECT_IO),
            ROOT => reply.error(Errno::EISDIR),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }
}

/// Mounts the null filesystem on `mount` with `threads` FUSE threads, prints `ready`, and
/// serves until stdin closes; then unmounts.
pub(crate) fn main(mount: &Path, threads: usize) -> anyhow::Result<i32> {
    use fuser::MountOption;
    let fs = NullFs {
        // SAFETY: getuid and getgid cannot fail.
        uid: unsafe { libc::getuid() },
        gid: unsafe { libc::getgid() },
        started: SystemTime::now(),
    };
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName("nullfuse".into()),
        MountOption::DefaultPermissions,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoExec,
        MountOption::NoAtime,
    ];
    config.n_threads = Some(threads.max(1));
    config.clone_fd = true;
    let session = fuser::spawn_mount(fs, mount, &config)
        .map_err(|e| anyhow::anyhow!("cannot mount on {}: {e}", mount.display()))?;
    println!("ready");
    crate::proc::wait_stdin_closed();
    session
        .umount_and_join()
        .map_err(|e| anyhow::anyhow!("cannot unmount {}: {e}", mount.display()))?;
    Ok(0)
}
