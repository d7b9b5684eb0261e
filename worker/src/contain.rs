//! Containment of a plugin's whole process tree, also the processes that leave its process
//! group (`setsid -f`, a double fork): they are killed when the plugin's run ends (done,
//! cancel, timeout, disconnect) and when the worker stops.
//!
//! Two modes, chosen once at start ([`Containment::init`]) and logged:
//! - `cgroup`: where the worker can write to its own cgroup v2 (found from the `0::/path`
//!   line of `/proc/self/cgroup` and the `cgroup2` mount), it makes
//!   `triggerfs-worker-<hash of its instance>/` under it, and each plugin process is moved
//!   into a child cgroup of its own (`<worker pid>.<n>`) by the forked child before it
//!   executes (it writes `0` to the cgroup's `cgroup.procs`, opened by the worker), so
//!   every descendant is born inside. At the run's end `1` is written to `cgroup.kill`
//!   and the directory removed once empty. Only the core files are used (no controller is
//!   enabled), so the "no internal processes" rule does not apply. At start, the
//!   directories a previous run of the same instance left (it was killed) are killed and
//!   removed, and so are other workers' empty directories (a busy one cannot be removed;
//!   a live worker makes its own again when it needs it); at shutdown everything under the
//!   worker's directory is.
//! - `subreaper` (no writable cgroup v2, or no `cgroup.kill`): the worker becomes a child
//!   subreaper (`PR_SET_CHILD_SUBREAPER`), so an escaped descendant is reparented to it
//!   instead of init, and each plugin process carries `TRIGGERFS_PLUGIN_RUN=<pid>.<n>`. At
//!   the run's end the worker's children carrying that marker are killed and reaped, and
//!   escaped children seen with a marker of this process are reaped once they exit (only
//!   those: the process's other children are their spawner's to wait for). What it cannot attribute: a
//!   descendant that cleared its environment is not killed, and one that escaped through
//!   another subreaper, or was started by something else (`at`, a service manager), is out
//!   of reach. Run markers and the set of leaders are the process's, not one worker's:
//!   several workers may share a process (the library's tests and the bench), and one that
//!   reaped another's leader took its exit from tokio (`ECHILD`, seen in CI's fleet test).

use crate::lock;
use std::collections::BTreeSet;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// The environment variable that names a plugin's run in `subreaper` mode.
pub const RUN_ENV: &str = "TRIGGERFS_PLUGIN_RUN";

/// How many times a plugin cgroup is made again when the worker's directory was swept from
/// under it (see [`Containment::confine`]).
const SWEPT_RETRIES: u32 = 8;

/// How long a killed cgroup may take to empty before its directory is given up on (it is
/// removed at the worker's shutdown or next start).
const EMPTY_WAIT: Duration = Duration::from_secs(5);

/// How the worker contains its plugins' process trees.
#[derive(Debug, Default)]
pub struct Containment {
    mode: Mode,
}

/// Plugin places made by this process, all its workers together: several workers may run in
/// one process (the library's users: tests, the bench), and their places must not share a
/// name (a run marker of one would match another's plugins).
static NEXT: AtomicU64 = AtomicU64::new(0);

/// In `subreaper` mode: the pids of plugin leaders not yet waited for, of every worker of
/// this process (tokio waits for those; every other zombie child is an orphan to reap; a
/// leader of another worker of the process reaped here was lost to tokio: `ECHILD`).
static LEADERS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

#[derive(Debug, Default)]
enum Mode {
    /// Each plugin in a cgroup of its own under this directory.
    Cgroup { base: PathBuf },
    /// The worker is a child subreaper.
    Subreaper,
    /// Nothing beyond process groups (unit tests).
    #[default]
    Off,
}

/// The mode's name, for the log and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeName {
    /// Per-plugin cgroups.
    Cgroup,
    /// A child subreaper with run markers.
    Subreaper,
    /// Process groups only.
    Off,
}

impl Containment {
    /// Chooses the mode for a worker whose plugins carry `instance`, cleans up what a
    /// previous run of it left, and logs which mode is used. Blocking (a few sysfs calls).
    pub fn init(instance: &str) -> Containment {
        let mode = match cgroup_base(instance) {
            Ok(base) => {
                let stale = clear_children(&base);
                if stale > 0 {
                    warn!(
                        n = stale,
                        "killed the plugin cgroups an earlier run of this worker left"
                    );
                }
                info!(base = %base.display(), "plugins are contained in cgroups of their own");
                Mode::Cgroup { base }
            }
            Err(why) => {
                // SAFETY: prctl(2) with integer arguments only.
                let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
                if rc == 0 {
                    info!(%why, "no cgroup for plugins; the worker is their subreaper and kills their escaped processes by run marker");
                    Mode::Subreaper
                } else {
                    let e = std::io::Error::last_os_error();
                    warn!(%why, error = %e, "no cgroup and no subreaper: a plugin's processes that leave its process group may outlive it");
                    Mode::Off
                }
            }
        };
        Containment { mode }
    }

    /// The mode in use.
    pub fn mode(&self) -> ModeName {
        match self.mode {
            Mode::Cgroup { .. } => ModeName::Cgroup,
            Mode::Subreaper => ModeName::Subreaper,
            Mode::Off => ModeName::Off,
        }
    }

    /// A place for one plugin process; [`Confinement::prepare`] puts the process there.
    pub(crate) fn confine(&self) -> std::io::Result<Confinement> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}.{n}", std::process::id());
        let place = match &self.mode {
            Mode::Cgroup { base } => {
                let dir = base.join(&name);
                let mut tries = 0;
                while let Err(e) = std::fs::create_dir(&dir) {
                    // Another worker starting (in any process of this cgroup) swept our
                    // directory while it was empty, and may do so again between making it
                    // and making `dir` in it: make both again, a few times.
                    tries += 1;
                    if e.kind() != std::io::ErrorKind::NotFound || tries > SWEPT_RETRIES {
                        return Err(e);
                    }
                    let _ = std::fs::create_dir(base);
                }
                let procs = std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join("cgroup.procs"))
                    .inspect_err(|_| {
                        let _ = std::fs::remove_dir(&dir);
                    })?;
                Place::Cgroup {
                    dir,
                    procs: OwnedFd::from(procs),
                }
            }
            Mode::Subreaper => Place::Marker(name),
            Mode::Off => Place::None,
        };
        Ok(Confinement { place })
    }

    /// A plugin leader was spawned (its pid): in `subreaper` mode it is not an orphan to reap.
    pub(crate) fn spawned(&self, pid: i32) {
        if matches!(self.mode, Mode::Subreaper) {
            lock(&LEADERS).insert(pid);
        }
    }

    /// Kills what `confinement` holds; `leader` (its process-group leader's pid, tokio's to
    /// wait for) is no longer counted as a leader.
    pub(crate) fn release(&self, confinement: &mut Confinement, leader: i32) {
        match &confinement.place {
            Place::Cgroup { dir, .. } => {
                kill_cgroup(dir);
                remove_when_empty(dir.clone());
            }
            Place::Marker(marker) => {
                lock(&LEADERS).remove(&leader);
                let needle = format!("{RUN_ENV}={marker}");
                let leaders = lock(&LEADERS).clone();
                note_escaped(&leaders);
                kill_children(|pid, env| {
                    pid != leader && !leaders.contains(&pid) && env_has(env, &needle)
                });
                self.reap_orphans();
            }
            Place::None => {}
        }
        confinement.place = Place::None;
    }

    /// Reaps the escaped plugin processes seen earlier that have exited since. Only those:
    /// the process may have other children (the library's users spawn brokers and control
    /// planes), whose exit is their parent's to collect, and a zombie's environment cannot
    /// be read to tell them apart.
    fn reap_orphans(&self) {
        let mut escaped = lock(&ESCAPED);
        escaped.retain(|&pid| {
            if is_zombie(pid) {
                // SAFETY: waitpid(2) on a zombie child of ours that tokio does not track.
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
                false
            } else {
                parent_and_state(pid).is_some()
            }
        });
    }

    /// At the worker's end: every plugin process still contained is killed (in `subreaper`
    /// mode every child of the process that carries this process's run marker and is no
    /// leader tokio still waits for), and the worker's cgroup directory removed. Blocking.
    pub fn shutdown(&self) {
        match &self.mode {
            Mode::Cgroup { base } => {
                clear_children(base);
                let _ = std::fs::remove_dir(base);
            }
            Mode::Subreaper => {
                let leaders = lock(&LEADERS).clone();
                let ours = format!("{RUN_ENV}={}.", std::process::id());
                kill_children(|pid, env| !leaders.contains(&pid) && env_has_prefix(env, &ours));
                self.reap_orphans();
            }
            Mode::Off => {}
        }
    }
}

/// Children of this process that escaped a plugin of it (its run marker, no leader): kept so
/// that they are reaped once they exit ([`Containment::reap_orphans`]).
static ESCAPED: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

fn note_escaped(leaders: &BTreeSet<i32>) {
    let ours = format!("{RUN_ENV}={}.", std::process::id());
    let mut escaped = lock(&ESCAPED);
    for pid in children() {
        if leaders.contains(&pid) || escaped.contains(&pid) {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if env_has_prefix(&env, &ours) {
            escaped.insert(pid);
        }
    }
}

fn env_has_prefix(env: &[u8], prefix: &str) -> bool {
    env.split(|&b| b == 0)
        .any(|v| v.starts_with(prefix.as_bytes()))
}

/// Where one plugin process goes.
#[derive(Debug)]
pub(crate) struct Confinement {
    place: Place,
}

#[derive(Debug)]
enum Place {
    Cgroup {
        dir: PathBuf,
        /// Its `cgroup.procs`, written by the forked child (close-on-exec).
        procs: OwnedFd,
    },
    Marker(String),
    None,
}

impl Confinement {
    /// Makes `cmd`'s process start in this place: moved into the cgroup before it executes,
    /// or marked.
    pub(crate) fn prepare(&self, cmd: &mut tokio::process::Command) {
        match &self.place {
            Place::Cgroup { procs, .. } => {
                let fd = procs.as_raw_fd();
                // SAFETY: the closure runs in the forked child before exec and calls only
                // write(2) on a descriptor the parent keeps open until the spawn returned;
                // it allocates nothing.
                unsafe {
                    cmd.pre_exec(move || {
                        let rc = libc::write(fd, b"0".as_ptr().cast(), 1);
                        if rc != 1 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
            }
            Place::Marker(marker) => {
                cmd.env(RUN_ENV, marker);
            }
            Place::None => {}
        }
    }
}

impl Drop for Confinement {
    fn drop(&mut self) {
        // Released already, or its process never started: an empty cgroup goes at once.
        if let Place::Cgroup { dir, .. } = &self.place {
            kill_cgroup(dir);
            remove_when_empty(dir.clone());
        }
    }
}

/// `<the worker's cgroup>/triggerfs-worker-<hash>`, made if need be, when it is writable
/// and has `cgroup.kill`; else why not.
fn cgroup_base(instance: &str) -> Result<PathBuf, String> {
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let path = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("no cgroup v2 hierarchy")?
        .to_string();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let (root, mount) = mountinfo
        .lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            if after.split(' ').next()? != "cgroup2" {
                return None;
            }
            let mut fields = before.split(' ');
            let root = fields.nth(3)?;
            let mount = fields.next()?;
            Some((root.to_string(), mount.to_string()))
        })
        .ok_or("cgroup v2 is not mounted")?;
    let relative = path
        .strip_prefix(root.trim_end_matches('/'))
        .ok_or_else(|| format!("the worker's cgroup {path} is outside the mount"))?;
    let own_dir = Path::new(&mount).join(relative.trim_start_matches('/'));
    let base = own_dir.join(format!(
        "triggerfs-worker-{:016x}",
        fnv1a(instance.as_bytes())
    ));
    sweep_empty(&own_dir, &base);
    // An empty `base` may be swept by another worker starting at the same time (it is made
    // again when needed: `confine`); a `base` gone before it was looked at is made again
    // here, rather than taken for a kernel without `cgroup.kill` (the root cgroup has none,
    // so it is asked of `base`).
    for _ in 0..SWEPT_RETRIES {
        match std::fs::create_dir(&base) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create {}: {e}", base.display())),
        }
        if base.join("cgroup.kill").exists() {
            return Ok(base);
        }
        if base.exists() {
            let _ = std::fs::remove_dir(&base);
            return Err("the kernel has no cgroup.kill".into());
        }
    }
    Err(format!("{} keeps being removed", base.display()))
}

/// Removes the empty `triggerfs-worker-*` directories of workers that are gone (killed
/// before their shutdown). One that holds a plugin cgroup is busy and stays; one a live worker
/// has while no plugin runs is made again by that worker when it needs it.
fn sweep_empty(own_dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(own_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("triggerfs-worker-"));
        if ours && path != keep && entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::remove_dir(&path);
        }
    }
}

/// FNV-1a, 64 bits: a name that stays the same from one build to the next.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Kills and removes every cgroup under `base`; returns how many there were.
fn clear_children(base: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(base) else {
        return 0;
    };
    let dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    for dir in &dirs {
        kill_cgroup(dir);
    }
    for dir in &dirs {
        let deadline = Instant::now() + EMPTY_WAIT;
        while std::fs::remove_dir(dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    dirs.len()
}

/// Writes `1` to the cgroup's `cgroup.kill`: SIGKILL to every process in it, including
/// those forking at that moment.
fn kill_cgroup(dir: &Path) {
    let done = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.kill"))
        .and_then(|mut f| f.write_all(b"1"));
    if let Err(e) = done {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(cgroup = %dir.display(), error = %e, "cannot kill a plugin cgroup");
        }
    }
}

/// Removes the killed cgroup `dir` once its processes are gone (at once, usually; else
/// retried on the runtime, or on this thread when there is none, for [`EMPTY_WAIT`]).
fn remove_when_empty(dir: PathBuf) {
    if try_remove(&dir) {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(async move {
                let deadline = tokio::time::Instant::now() + EMPTY_WAIT;
                while tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    if try_remove(&dir) {
                        return;
                    }
                }
                warn!(cgroup = %dir.display(), "a killed plugin cgroup does not empty");
            });
        }
        Err(_) => {
            let deadline = Instant::now() + EMPTY_WAIT;
            while !try_remove(&dir) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Removes `dir`; true once it is gone.
fn try_remove(dir: &Path) -> bool {
    match std::fs::remove_dir(dir) {
        Ok(()) => true,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// The pids whose parent is this process.
fn children() -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| parent_and_state(pid).is_some_and(|(ppid, _)| ppid == me))
        .collect()
}

/// Parent pid and state letter from `/proc/<pid>/stat`.
fn parent_and_state(pid: i32) -> Option<(i32, u8)> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields follow the last `)`.
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.bytes().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((ppid, state))
}

fn is_zombie(pid: i32) -> bool {
    parent_and_state(pid).is_some_and(|(_, s)| s == b'Z')
}

fn env_has(env: &[u8], needle: &str) -> bool {
    env.split(|&b| b == 0).any(|v| v == needle.as_bytes())
}

/// SIGKILLs and reaps the children of this process `chosen(pid, environ)` picks.
fn kill_children(chosen: impl Fn(i32, &[u8]) -> bool) {
    for pid in children() {
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if chosen(pid, &env) {
            // SAFETY: kill(2) and waitpid(2) on a child of ours tokio does not track.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: i32) -> bool {
        parent_and_state(pid).is_some_and(|(_, state)| state != b'Z')
    }

    /// Subreaper mode in a process with children that are no plugins (the library's users:
    /// the tests and the bench start brokers and control planes beside their workers): a
    /// plugin's escaped process ends with its run, and the process's other children live on
    /// through the run's end and the worker's shutdown. Before, the shutdown SIGKILLed every
    /// child that was no plugin leader (the bench's control plane died with its workers).
    #[test]
    fn subreaper_mode_ends_escapees_and_spares_the_process_other_children() {
        // A subreaper adopts every orphan of the process: run in a test process of its own,
        // so that the other tests' orphans are not made this one's zombies.
        const ALONE: &str = "TRIGGERFS_SUBREAPER_TEST";
        if std::env::var_os(ALONE).is_none() {
            let name = "contain::tests::subreaper_mode_ends_escapees_and_spares_the_process_other_children";
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", name, "--test-threads=1", "--nocapture"])
                .env(ALONE, "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success() && text.contains("1 passed"), "{text}");
            return;
        }
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(subreaper_mode_alone());
    }

    async fn subreaper_mode_alone() {
        // SAFETY: prctl(2) with integer arguments only.
        assert_eq!(
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
            0
        );
        let contain = Containment {
            mode: Mode::Subreaper,
        };
        let mut bystander = std::process::Command::new("sleep")
            .arg("1000.4242")
            .spawn()
            .unwrap();
        let bystander_pid = bystander.id() as i32;
        let mut confinement = contain.confine().unwrap();
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c").arg("setsid -f sleep 1001.4242");
        confinement.prepare(&mut cmd);
        let mut plugin = cmd.spawn().unwrap();
        let leader = plugin.id().unwrap() as i32;
        contain.spawned(leader);
        assert!(plugin.wait().await.unwrap().success());
        // `setsid -f` returned after its fork: the escaped `sleep` is ours now.
        let marker = format!("{RUN_ENV}=");
        let escaped: Vec<i32> = children()
            .into_iter()
            .filter(|&pid| {
                let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                env_has_prefix(&env, &marker)
            })
            .collect();
        assert_eq!(escaped.len(), 1, "one escaped process: {escaped:?}");
        contain.release(&mut confinement, leader);
        assert!(!alive(escaped[0]), "the escaped process ended with its run");
        contain.shutdown();
        assert!(
            alive(bystander_pid),
            "a child of the process that is no plugin survives the worker"
        );
        bystander.kill().unwrap();
        bystander.wait().unwrap();
    }
}
