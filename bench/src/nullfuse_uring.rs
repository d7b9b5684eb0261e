//! `bench-child null-fuse-uring`: the null filesystem of [`crate::nullfuse`] served over
//! FUSE-over-io_uring (Linux ≥ 6.14, `/sys/module/fuse/parameters/enable_uring` = `Y` when
//! it mounts), a prototype to measure the transport against `/dev/fuse` reads and writes.
//!
//! fuser has no such transport, so this speaks the protocol itself, for the few requests a
//! writer of one file makes (`LOOKUP`, `GETATTR`, `SETATTR`, `OPEN`, `WRITE`, `FLUSH`,
//! `RELEASE`; everything else is `ENOSYS`):
//! - mounts with `mount(2)` on an fd of `/dev/fuse` (as root, as fuser does without
//!   `fusermount3`);
//! - answers `FUSE_INIT` with `read(2)`/`write(2)` on the device, asking for
//!   `FUSE_OVER_IO_URING` (bit 41 of the flags, in `flags2`);
//! - then one thread per possible CPU (the kernel's queues: a request made on CPU n goes to
//!   queue n, and the ring is used only once every queue has an entry), pinned to it, with
//!   its own ring of 128-byte SQEs: `QUEUE_DEPTH` entries, each a header buffer and a
//!   payload buffer, registered with `FUSE_IO_URING_CMD_REGISTER`; a completion is a request
//!   in an entry's buffers, and the reply goes back in the same buffers with
//!   `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`, which also hands the entry back for the next
//!   request: no `read(2)`/`write(2)` of the device per request.
//! - `FORGET` and `INTERRUPT` still arrive over the device: a thread reads and drops them.
//!
//! Layouts are the kernel's `include/uapi/linux/fuse.h` (protocol 7.45).

use anyhow::{bail, Context};
use io_uring::{opcode, squeue, types, IoUring};
use std::alloc::Layout;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

/// Where the module parameter lives.
pub(crate) const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// Entries per queue (libfuse's default).
const QUEUE_DEPTH: usize = 8;
/// The largest write, and so each entry's payload buffer (`max_pages` × 4 KiB: the kernel
/// wants a buffer of at least `max(max_write, max_pages × page)`).
const MAX_WRITE: u32 = 1 << 20;
const MAX_PAGES: u16 = (MAX_WRITE / 4096) as u16;
/// `struct fuse_uring_req_header`: the in/out header (128), the op header (128) and
/// `struct fuse_uring_ent_in_out` (32).
const HEADER_BYTES: usize = 288;
const OP_IN: usize = 128;
const ENT_IN_OUT: usize = 256;

const FUSE_LOOKUP: u32 = 1;
const FUSE_FORGET: u32 = 2;
const FUSE_GETATTR: u32 = 3;
const FUSE_SETATTR: u32 = 4;
const FUSE_OPEN: u32 = 14;
const FUSE_WRITE: u32 = 16;
const FUSE_RELEASE: u32 = 18;
const FUSE_FLUSH: u32 = 25;
const FUSE_INIT: u32 = 26;
const FUSE_INTERRUPT: u32 = 36;
const FUSE_DESTROY: u32 = 38;
const FUSE_BATCH_FORGET: u32 = 42;

const FUSE_BIG_WRITES: u32 = 1 << 5;
const FUSE_MAX_PAGES: u32 = 1 << 22;
const FUSE_INIT_EXT: u32 = 1 << 30;
/// `FUSE_OVER_IO_URING` is bit 41: bit 9 of `flags2`.
const FUSE_OVER_IO_URING_FLAGS2: u32 = 1 << 9;
const FOPEN_DIRECT_IO: u32 = 1;

const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;

const ROOT: u64 = 1;
const FILE: u64 = 2;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

fn put(b: &mut [u8], at: usize, v: &[u8]) {
    b[at..at + v.len()].copy_from_slice(v);
}

/// `struct fuse_attr` (88 bytes) of the root or the file.
fn attr(ino: u64, uid: u32, gid: u32) -> [u8; 88] {
    let mut a = [0u8; 88];
    let mode: u32 = if ino == ROOT {
        libc::S_IFDIR | 0o755
    } else {
        libc::S_IFREG | 0o644
    };
    put(&mut a, 0, &ino.to_le_bytes());
    put(&mut a, 60, &mode.to_le_bytes());
    put(
        &mut a,
        64,
        &(if ino == ROOT { 2u32 } else { 1 }).to_le_bytes(),
    );
    put(&mut a, 68, &uid.to_le_bytes());
    put(&mut a, 72, &gid.to_le_bytes());
    put(&mut a, 80, &4096u32.to_le_bytes());
    a
}

/// The reply to one request: an error (negative errno) or the reply's bytes.
fn answer(
    opcode: u32,
    nodeid: u64,
    op_in: &[u8],
    uid: u32,
    gid: u32,
    out: &mut [u8],
) -> Result<usize, i32> {
    match opcode {
        FUSE_LOOKUP if nodeid == ROOT => {
            // `struct fuse_entry_out`: nodeid, generation, entry and attr validity (1 s).
            put(out, 0, &FILE.to_le_bytes());
            put(out, 16, &1u64.to_le_bytes());
            put(out, 24, &1u64.to_le_bytes());
            put(out, 32, &[0u8; 8]);
            put(out, 40, &attr(FILE, uid, gid));
            Ok(128)
        }
        FUSE_LOOKUP => Err(-libc::ENOENT),
        FUSE_GETATTR | FUSE_SETATTR if nodeid == ROOT || nodeid == FILE => {
            // `struct fuse_attr_out`.
            put(out, 0, &1u64.to_le_bytes());
            put(out, 8, &[0u8; 8]);
            put(out, 16, &attr(nodeid, uid, gid));
            Ok(104)
        }
        FUSE_GETATTR | FUSE_SETATTR => Err(-libc::ENOENT),
        FUSE_OPEN if nodeid == FILE => {
            // `struct fuse_open_out`: fh, open_flags, backing_id.
            put(out, 0, &1u64.to_le_bytes());
            put(out, 8, &FOPEN_DIRECT_IO.to_le_bytes());
            put(out, 12, &0u32.to_le_bytes());
            Ok(16)
        }
        FUSE_OPEN => Err(-libc::EISDIR),
        FUSE_WRITE => {
            // `struct fuse_write_out`: all of `fuse_write_in.size` written.
            put(out, 0, &u32_at(op_in, 16).to_le_bytes());
            put(out, 4, &0u32.to_le_bytes());
            Ok(8)
        }
        FUSE_FLUSH | FUSE_RELEASE | FUSE_DESTROY => Ok(0),
        _ => Err(-libc::ENOSYS),
    }
}

/// A page-aligned buffer the kernel reads and writes for as long as the ring lives.
struct Buf {
    ptr: *mut u8,
    layout: Layout,
}

impl Buf {
    fn new(len: usize) -> anyhow::Result<Buf> {
        let layout = Layout::from_size_align(len, 4096)?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            bail!("cannot allocate {len} bytes for a ring entry");
        }
        Ok(Buf { ptr, layout })
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` holds `layout.size()` bytes, owned by this `Buf`; the kernel writes
        // them only while the entry is with it, not while we read them.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// One ring entry: its two buffers and the iovecs that name them to the kernel.
struct Entry {
    header: Buf,
    payload: Buf,
    iov: Box<[libc::iovec; 2]>,
}

/// The 80 bytes of `struct fuse_uring_cmd_req`: flags, commit_id, qid.
fn cmd_req(commit_id: u64, qid: u16) -> [u8; 80] {
    let mut c = [0u8; 80];
    put(&mut c, 8, &commit_id.to_le_bytes());
    put(&mut c, 16, &qid.to_le_bytes());
    c
}

/// `FUSE_IO_URING_CMD_REGISTER` of entry `idx`: `addr` points at its two iovecs, and `len`
/// must be 2, which `UringCmd80` has no setter for: set in the SQE's bytes (offset 24 of
/// `struct io_uring_sqe`, a stable ABI).
fn register_sqe(idx: usize, e: &Entry, qid: u16) -> squeue::Entry128 {
    let sqe = opcode::UringCmd80::new(types::Fixed(0), CMD_REGISTER)
        .cmd(cmd_req(0, qid))
        .addr(Some(e.iov.as_ptr() as u64))
        .build()
        .user_data(idx as u64);
    const _: () = assert!(std::mem::size_of::<squeue::Entry128>() == 128);
    // SAFETY: `Entry128` is `#[repr(C)]`, 128 bytes: the kernel's 128-byte SQE.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    put(&mut raw, 24, &2u32.to_le_bytes());
    // SAFETY: the same bytes back, with `len` set.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

fn commit_sqe(idx: usize, commit_id: u64, qid: u16) -> squeue::Entry128 {
    opcode::UringCmd80::new(types::Fixed(0), CMD_COMMIT_AND_FETCH)
        .cmd(cmd_req(commit_id, qid))
        .build()
        .user_data(idx as u64)
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity only read and
    // write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Serves queue `qid` until the connection goes (`ENOTCONN`, `ENODEV`, `ECANCELED`).
fn serve_queue(
    fd: RawFd,
    qid: u16,
    uid: u32,
    gid: u32,
    registered: std::sync::mpsc::Sender<anyhow::Result<()>>,
) {
    pin(qid as usize);
    let setup = || -> anyhow::Result<(IoUring<squeue::Entry128>, Vec<Entry>)> {
        let ring: IoUring<squeue::Entry128> = IoUring::builder()
            .build(QUEUE_DEPTH as u32 + 1)
            .context("io_uring_setup with 128-byte SQEs")?;
        ring.submitter()
            .register_files(&[fd])
            .context("registering /dev/fuse with the ring")?;
        let mut entries = Vec::with_capacity(QUEUE_DEPTH);
        for _ in 0..QUEUE_DEPTH {
            let mut header = Buf::new(4096)?;
            let mut payload = Buf::new(MAX_WRITE as usize)?;
            let iov = Box::new([
                libc::iovec {
                    iov_base: header.bytes().as_mut_ptr().cast(),
                    iov_len: HEADER_BYTES,
                },
                libc::iovec {
                    iov_base: payload.bytes().as_mut_ptr().cast(),
                    iov_len: MAX_WRITE as usize,
                },
            ]);
            entries.push(Entry {
                header,
                payload,
                iov,
            });
        }
        Ok((ring, entries))
    };
    let (mut ring, mut entries) = match setup() {
        Ok(r) => r,
        Err(e) => {
            let _ = registered.send(Err(e));
            return;
        }
    };
    for (idx, e) in entries.iter().enumerate() {
        let sqe = register_sqe(idx, e, qid);
        // SAFETY: the entry's buffers and iovecs live in `entries` as long as the ring.
        if unsafe { ring.submission().push(&sqe) }.is_err() {
            let _ = registered.send(Err(anyhow::anyhow!("the submission queue is full")));
            return;
        }
    }
    if let Err(e) = ring.submit() {
        let _ = registered.send(Err(anyhow::anyhow!("submitting the registrations: {e}")));
        return;
    }
    // A registration the kernel refuses completes at once with the error; an accepted one
    // completes only when a request arrives (none does before every queue has registered).
    std::thread::sleep(Duration::from_millis(50));
    let mut done: Vec<(usize, i32)> = ring
        .completion()
        .map(|c| (c.user_data() as usize, c.result()))
        .collect();
    if let Some(&(_, res)) = done.iter().find(|(_, res)| *res < 0) {
        let err = std::io::Error::from_raw_os_error(-res);
        let _ = registered.send(Err(anyhow::anyhow!(
            "FUSE_IO_URING_CMD_REGISTER on queue {qid}: {err}"
        )));
        return;
    }
    let _ = registered.send(Ok(()));
    loop {
        for &(idx, res) in &done {
            if res < 0 {
                match -res {
                    libc::ENOTCONN | libc::ENODEV | libc::ECANCELED => return,
                    errno => {
                        eprintln!(
                            "null-fuse-uring: queue {qid}: entry {idx}: {}",
                            std::io::Error::from_raw_os_error(errno)
                        );
                        return;
                    }
                }
            }
            let Some(e) = entries.get_mut(idx) else {
                continue;
            };
            let header = e.header.bytes();
            let (opcode, unique, nodeid) =
                (u32_at(header, 4), u64_at(header, 8), u64_at(header, 16));
            let commit_id = u64_at(header, ENT_IN_OUT + 8);
            let mut op_in = [0u8; 128];
            op_in.copy_from_slice(&header[OP_IN..OP_IN + 128]);
            let reply = answer(opcode, nodeid, &op_in, uid, gid, e.payload.bytes());
            let (error, len) = match reply {
                Ok(len) => (0i32, len),
                Err(errno) => (errno, 0),
            };
            let header = e.header.bytes();
            // `struct fuse_out_header` in the in/out area, then the payload's size.
            put(header, 0, &(16 + len as u32).to_le_bytes());
            put(header, 4, &error.to_le_bytes());
            put(header, 8, &unique.to_le_bytes());
            put(header, ENT_IN_OUT + 16, &(len as u32).to_le_bytes());
            let sqe = commit_sqe(idx, commit_id, qid);
            // SAFETY: as for the registrations; one SQE per entry is in flight at most, and
            // the ring has room for all of them.
            if unsafe { ring.submission().push(&sqe) }.is_err() {
                eprintln!("null-fuse-uring: queue {qid}: the submission queue is full");
                return;
            }
        }
        loop {
            match ring.submit_and_wait(1) {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => {
                    eprintln!("null-fuse-uring: queue {qid}: io_uring_enter: {e}");
                    return;
                }
            }
        }
        done.clear();
        done.extend(
            ring.completion()
                .map(|c| (c.user_data() as usize, c.result())),
        );
    }
}

/// Reads the device after the ring took over: `FORGET`s and `INTERRUPT`s come this way (no
/// reply). Anything else means the kernel is not using the ring: answered `EIO`.
fn drain_device(mut dev: std::fs::File) {
    let mut buf = vec![0u8; MAX_WRITE as usize + 4096];
    loop {
        let n = match dev.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(_) => return,
        };
        if n < 40 {
            continue;
        }
        let (opcode, unique) = (u32_at(&buf, 4), u64_at(&buf, 8));
        if matches!(opcode, FUSE_FORGET | FUSE_BATCH_FORGET | FUSE_INTERRUPT) {
            continue;
        }
        eprintln!("null-fuse-uring: request {opcode} over /dev/fuse: the ring is not in use");
        let mut out = [0u8; 16];
        put(&mut out, 0, &16u32.to_le_bytes());
        put(&mut out, 4, &(-libc::EIO).to_le_bytes());
        put(&mut out, 8, &unique.to_le_bytes());
        let _ = dev.write(&out);
    }
}

/// Mounts the null filesystem on `mount` over io_uring, prints `ready` once a lookup went
/// through the ring, and serves until stdin closes; then unmounts.
pub(crate) fn main(mount: &Path) -> anyhow::Result<i32> {
    let mut dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .context("cannot open /dev/fuse")?;
    // SAFETY: getuid and getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let target = CString::new(mount.as_os_str().as_bytes())?;
    let data = CString::new(format!(
        "fd={},rootmode=40000,user_id={uid},group_id={gid},default_permissions",
        dev.as_raw_fd()
    ))?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_NOATIME;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            c"nullfuse".as_ptr(),
            target.as_ptr(),
            c"fuse.nullfuse".as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        bail!(
            "mount on {}: {}",
            mount.display(),
            std::io::Error::last_os_error()
        );
    }
    let served = serve(&mut dev, mount, uid, gid);
    // SAFETY: as above.
    unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    served?;
    // The queue threads end when the connection goes; the process does not wait for them.
    std::process::exit(0)
}

fn serve(dev: &mut std::fs::File, mount: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    // FUSE_INIT, over the device.
    let mut buf = vec![0u8; 64 * 1024];
    let n = dev.read(&mut buf).context("reading FUSE_INIT")?;
    if n < 40 + 20 || u32_at(&buf, 4) != FUSE_INIT {
        bail!("the first request is not FUSE_INIT");
    }
    let unique = u64_at(&buf, 8);
    let (major, minor, readahead) = (u32_at(&buf, 40), u32_at(&buf, 44), u32_at(&buf, 48));
    let (kflags, kflags2) = (u32_at(&buf, 52), u32_at(&buf, 56));
    if major != 7 {
        bail!("FUSE protocol {major}.{minor}: 7.x expected");
    }
    if kflags & FUSE_INIT_EXT == 0 || kflags2 & FUSE_OVER_IO_URING_FLAGS2 == 0 {
        bail!(
            "the kernel does not offer FUSE_OVER_IO_URING (protocol 7.{minor}; {ENABLE_URING} \
             must be Y when mounting)"
        );
    }
    let mut out = [0u8; 16 + 64];
    put(&mut out, 0, &(80u32).to_le_bytes());
    put(&mut out, 8, &unique.to_le_bytes());
    let init = &mut out[16..];
    put(init, 0, &7u32.to_le_bytes());
    put(init, 4, &minor.to_le_bytes());
    put(init, 8, &readahead.to_le_bytes());
    let flags = (FUSE_BIG_WRITES | FUSE_MAX_PAGES | FUSE_INIT_EXT) & kflags;
    put(init, 12, &flags.to_le_bytes());
    put(init, 16, &16u16.to_le_bytes());
    put(init, 18, &12u16.to_le_bytes());
    put(init, 20, &MAX_WRITE.to_le_bytes());
    put(init, 24, &1u32.to_le_bytes());
    put(init, 28, &MAX_PAGES.to_le_bytes());
    put(init, 32, &FUSE_OVER_IO_URING_FLAGS2.to_le_bytes());
    dev.write_all(&out).context("answering FUSE_INIT")?;

    // A queue per possible CPU, each registering its entries.
    let queues = possible_cpus()?;
    let (tx, rx) = std::sync::mpsc::channel();
    for qid in 0..queues {
        let tx = tx.clone();
        let fd = dev.as_raw_fd();
        std::thread::Builder::new()
            .name(format!("fuse-ring-{qid}"))
            .spawn(move || serve_queue(fd, qid as u16, uid, gid, tx))?;
    }
    for _ in 0..queues {
        rx.recv_timeout(Duration::from_secs(10))
            .context("a queue did not register")??;
    }
    let drain = dev.try_clone()?;
    std::thread::spawn(move || drain_device(drain));
    // A lookup through the ring before `ready` (it waits until every queue has an entry).
    std::fs::metadata(mount.join("probe")).context("a lookup through the ring")?;
    println!("ready");
    crate::proc::wait_stdin_closed();
    Ok(())
}

/// The kernel makes one queue per possible CPU (`num_possible_cpus()`).
fn possible_cpus() -> anyhow::Result<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let mut n = 0;
    for part in text.trim().split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        n += b.parse::<usize>()? - a.parse::<usize>()? + 1;
    }
    Ok(n)
}

/// Sets the module parameter to `Y` and gives its previous value back on drop: the ring is
/// asked for at `FUSE_INIT`, and a connection that has it keeps it after the parameter goes
/// back, so the bench restores it as soon as the mount serves.
pub(crate) struct EnableUring {
    previous: String,
}

impl EnableUring {
    pub(crate) fn set() -> anyhow::Result<EnableUring> {
        let previous = std::fs::read_to_string(ENABLE_URING).with_context(|| {
            format!("cannot read {ENABLE_URING} (FUSE over io_uring needs Linux 6.14 or later)")
        })?;
        std::fs::write(ENABLE_URING, "Y")
            .with_context(|| format!("cannot write Y to {ENABLE_URING}"))?;
        Ok(EnableUring {
            previous: previous.trim().to_string(),
        })
    }
}

impl Drop for EnableUring {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(ENABLE_URING, &self.previous) {
            eprintln!("cannot restore {ENABLE_URING} to {}: {e}", self.previous);
        }
    }
}
