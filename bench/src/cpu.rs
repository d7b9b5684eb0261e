//! CPU time per request, process by process: what each process of a system (its load
//! process, its broker or server, its workers or responders) spent in user and kernel mode
//! (`utime + stime` of `/proc/PID/stat`, all its threads) while it was measured. On a
//! machine whose cores are shared by every process of a run, req/s moves with whatever else
//! runs; the CPU a request costs moves far less, and it says where the cost is.

use std::collections::BTreeMap;

/// One process of a system, watched while its system is measured.
#[derive(Debug, Clone)]
pub(crate) struct Watched {
    /// Its name in the results: `load`, `broker`, `worker0`, `nats-server`, `responder1`…
    pub name: String,
    pub pid: u32,
    /// Part of the system under test (not the load process that drives it).
    pub server: bool,
}

impl Watched {
    pub(crate) fn server(name: impl Into<String>, pid: Option<u32>) -> Option<Watched> {
        Some(Watched {
            name: name.into(),
            pid: pid?,
            server: true,
        })
    }
}

/// CPU nanoseconds each process spent over one or more measuring windows.
#[derive(Debug, Clone, Default)]
pub struct CpuFigures {
    /// By process name: (server side, nanoseconds).
    pub by_process: BTreeMap<String, (bool, u64)>,
    /// A process whose figures could not be read (gone, or not ours to read).
    pub unreadable: Vec<String>,
}

impl CpuFigures {
    /// Adds another window's figures.
    pub(crate) fn merge(&mut self, other: CpuFigures) {
        for (name, (server, ns)) in other.by_process {
            let entry = self.by_process.entry(name).or_insert((server, 0));
            entry.1 += ns;
        }
        for name in other.unreadable {
            if !self.unreadable.contains(&name) {
                self.unreadable.push(name);
            }
        }
    }

    /// The server side's nanoseconds (every process but the load).
    pub fn server_ns(&self) -> u64 {
        self.by_process
            .values()
            .filter(|(server, _)| *server)
            .map(|(_, ns)| ns)
            .sum()
    }

    /// Every process's nanoseconds, the load's included.
    pub fn total_ns(&self) -> u64 {
        self.by_process.values().map(|(_, ns)| ns).sum()
    }
}

/// A reading of every watched process at one moment.
pub(crate) struct Sample(Vec<(Watched, Option<u64>)>);

impl Sample {
    pub(crate) fn take(procs: &[Watched]) -> Sample {
        Sample(procs.iter().map(|p| (p.clone(), cpu_ns(p.pid))).collect())
    }

    /// What each process spent from `self` to `later`.
    pub(crate) fn until(&self, later: &Sample) -> CpuFigures {
        let mut figures = CpuFigures::default();
        for ((watched, before), (_, after)) in self.0.iter().zip(&later.0) {
            match (before, after) {
                (Some(b), Some(a)) => {
                    let entry = figures
                        .by_process
                        .entry(watched.name.clone())
                        .or_insert((watched.server, 0));
                    entry.1 += a.saturating_sub(*b);
                }
                _ => figures.unreadable.push(watched.name.clone()),
            }
        }
        figures
    }
}

/// `utime + stime` of a process (all its threads, the ones that ended included), in
/// nanoseconds.
pub(crate) fn cpu_ns(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|ticks| ticks * (1_000_000_000 / clock_ticks()))
}

/// `utime + stime` in clock ticks, from the text of `/proc/PID/stat`. The command name
/// (field 2) is in parentheses and may hold spaces and parentheses: fields are counted from
/// the last `)`.
fn parse_stat(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // After `)`: state is field 3, utime field 14, stime field 15.
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// The process listening on `addr` (`127.0.0.1:PORT`, IPv4), from `/proc/net/tcp` and the
/// descriptors in `/proc/*/fd`: a server the bench did not start, e.g. a running NATS server.
pub(crate) fn listener_pid(addr: &str) -> Option<u32> {
    let addr: std::net::SocketAddrV4 = addr.parse().ok()?;
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(addr.ip().octets()),
        addr.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // local address, remote, state (0A: listening), …, inode (field 10).
        (f.len() > 9 && f[1] == local && f[3] == "0A").then(|| f[9].to_string())
    })?;
    let socket = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == socket.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_count_from_the_last_parenthesis() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 3 0 1 2 3";
        assert_eq!(parse_stat(stat), Some(22));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_spends_cpu() {
        let me = [Watched {
            name: "me".into(),
            pid: std::process::id(),
            server: false,
        }];
        let before = Sample::take(&me);
        // Spin until the kernel has charged a tick (10 ms at most on an idle machine).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut x = 0u64;
        let figures = loop {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            let figures = before.until(&Sample::take(&me));
            if figures.total_ns() > 0 || std::time::Instant::now() > deadline {
                break figures;
            }
        };
        assert!(figures.total_ns() > 0, "{figures:?}");
        assert_eq!(figures.server_ns(), 0);
        assert!(figures.unreadable.is_empty());
    }

    #[test]
    fn a_listener_is_found_by_its_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        assert_eq!(listener_pid(&addr), Some(std::process::id()));
    }
}
