//! A broker in a forked child process, for `fanout --idle`: its RSS is then the broker's own
//! (not mixed with the in-process workers'), and each process needs only one end of every
//! worker connection, so 10,000 workers fit under a 20,000 open-file limit.
//!
//! Why `fork` and not `exec`: this crate is a library called by the `triggerfs` binary, so it
//! has no executable of its own to start. The fork happens while this process is quiet (no
//! workers, no load), and the child only starts the broker on fresh threads, writes its
//! address to a pipe and waits for the parent to close the other pipe; it never returns into
//! the parent's code. The child inherits the parent's resident pages, so its RSS is read once
//! before the workers connect as well, and both figures are printed.

use anyhow::{bail, Context};
use dataplane::config::DEFAULT_TEAM;
use dataplane::{BrokerSettings, FileConfig, ServiceConfig};
use proto::Algorithm;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::fd::FromRawFd;
use std::sync::Arc;
use std::time::Duration;

/// How long the child may take to listen: starting glommio executors takes milliseconds.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A broker running in a child process.
pub(crate) struct ChildBroker {
    pub pid: libc::pid_t,
    pub addr: String,
    /// Closing it (drop) tells the child to exit.
    stop: File,
}

fn pipe() -> anyhow::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// The child's whole life: start the broker, report, wait for the parent, exit.
fn child_main(mut ready: File, mut stop: File, shards: usize, spin: Duration, service: &str) -> ! {
    // SAFETY: prctl with PR_SET_PDEATHSIG only sets a flag of this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let mut config = ServiceConfig::implicit(DEFAULT_TEAM, service);
    config.algorithm = Algorithm::Mirror;
    let settings = BrokerSettings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        shards,
        spin,
        ..BrokerSettings::default()
    };
    let line = match dataplane::start(settings, Arc::new(FileConfig::from_services([config]))) {
        // The handle is kept (leaked) until the process exits below.
        Ok(handle) => {
            let line = format!("{}\n", handle.local_addr());
            std::mem::forget(handle);
            line
        }
        Err(e) => format!("error: {e}\n"),
    };
    let _ = ready.write_all(line.as_bytes());
    drop(ready);
    // Returns at EOF: the parent closed its end, or exited.
    let mut byte = [0u8; 1];
    while matches!(stop.read(&mut byte), Ok(n) if n > 0) {}
    // SAFETY: _exit ends the process without running the parent's atexit handlers or
    // destructors, which belong to the parent.
    unsafe { libc::_exit(0) }
}

impl ChildBroker {
    /// Forks a child that runs a broker with a mirror `service`.
    pub(crate) async fn spawn(
        shards: usize,
        spin: Duration,
        service: &str,
    ) -> anyhow::Result<ChildBroker> {
        let (ready_rx, ready_tx) = pipe()?;
        let (stop_rx, stop_tx) = pipe()?;
        // SAFETY: see the module comment: the child only runs `child_main`, which never
        // returns, and the parent is quiet while it forks.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error()).context("fork");
        }
        if pid == 0 {
            drop(ready_rx);
            drop(stop_tx);
            child_main(ready_tx, stop_rx, shards, spin, service);
        }
        drop(ready_tx);
        drop(stop_rx);
        let child = ChildBroker {
            pid,
            addr: String::new(),
            stop: stop_tx,
        };
        let read = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(ready_rx).read_line(&mut line).map(|_| line)
        });
        let line = match tokio::time::timeout(START_TIMEOUT, read).await {
            Ok(Ok(Ok(line))) => line,
            Ok(Ok(Err(e))) => {
                child.stop().await;
                return Err(e).context("reading the broker child's address");
            }
            Ok(Err(e)) => {
                child.stop().await;
                return Err(e).context("reading the broker child's address");
            }
            Err(_) => {
                child.stop().await;
                bail!("the broker child did not start within {START_TIMEOUT:?}");
            }
        };
        let line = line.trim();
        if line.is_empty() || line.starts_with("error") {
            child.stop().await;
            bail!(
                "the broker child could not start: {} (io_uring needs locked memory: try `ulimit -l unlimited`)",
                if line.is_empty() { "it exited" } else { line }
            );
        }
        Ok(ChildBroker {
            addr: line.to_string(),
            ..child
        })
    }

    /// Tells the child to exit and reaps it.
    pub(crate) async fn stop(self) {
        let pid = self.pid;
        drop(self.stop);
        let reaped = tokio::task::spawn_blocking(move || {
            let mut status = 0;
            // SAFETY: waits for our own child; `status` is a valid out-pointer.
            unsafe { libc::waitpid(pid, &mut status, 0) }
        });
        if tokio::time::timeout(Duration::from_secs(10), reaped)
            .await
            .is_err()
        {
            // SAFETY: signals our own child, by its pid.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}
