//! Plugin processes left running by an earlier run of this worker.
//!
//! A plugin's process-group leader dies with its worker (`PR_SET_PDEATHSIG`), but a child it
//! started in the background lives on when the worker is SIGKILLed: nothing is left to stop
//! its group. Every plugin process carries `TRIGGERFS_WORKER_INSTANCE=<instance>` in its
//! environment, which its children inherit; a worker that starts with the same instance (team,
//! identity and plugins path) kills the process group of every process that carries it.
//! A plugin that clears its environment escapes this; its group is still stopped while its
//! worker lives.

use std::path::Path;

/// The environment variable that marks a worker's plugin processes.
pub const INSTANCE_ENV: &str = "TRIGGERFS_WORKER_INSTANCE";

/// What marks the plugins of a worker: `team/identity@<canonical plugins path>`. Two workers
/// of one host differ in identity or plugins path (one identity online twice is superseded).
pub fn instance(team: &str, identity: &str, pluginspath: &Path) -> String {
    let path = pluginspath
        .canonicalize()
        .unwrap_or_else(|_| pluginspath.to_path_buf());
    format!("{team}/{identity}@{}", path.display())
}

/// Kills the process groups of every process marked with `instance` (never this process's
/// own group). Returns how many marked processes were found. Reads `/proc`: blocking.
pub fn reap(instance: &str) -> usize {
    let needle = format!("{INSTANCE_ENV}={instance}");
    let me = std::process::id() as i32;
    // SAFETY: getpgrp(2) has no preconditions.
    let my_group = unsafe { libc::getpgrp() };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    // Every marked process first, then the kills: a group killed early would hide its
    // other members from the scan.
    let marked: Vec<i32> = entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
            // Unreadable (another user's, or gone): not ours.
            let env = std::fs::read(entry.path().join("environ")).ok()?;
            (pid != me && env.split(|&b| b == 0).any(|v| v == needle.as_bytes())).then_some(pid)
        })
        .collect();
    for &pid in &marked {
        // SAFETY: getpgid(2) and kill(2) on a pid read from /proc; no memory is involved.
        unsafe {
            let group = libc::getpgid(pid);
            if group > 0 && group != my_group {
                libc::kill(-group, libc::SIGKILL);
            }
            libc::kill(pid, libc::SIGKILL);
        }
    }
    marked.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    #[test]
    fn kills_marked_process_groups_and_nothing_else() {
        let instance = format!("t/w@/nowhere/{}", std::process::id());
        // A marked leader with a background child in its group, and an unmarked process.
        let mut marked = Command::new("sh")
            .args(["-c", "sleep 300 & echo started; wait"])
            .env(INSTANCE_ENV, &instance)
            .process_group(0)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // The background child exists once the leader says so.
        let mut line = String::new();
        std::io::BufReader::new(marked.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let mut other = Command::new("sleep")
            .arg("300")
            .env(INSTANCE_ENV, format!("{instance}x"))
            .spawn()
            .unwrap();
        let group = marked.id() as i32;
        // The leader at least (its background child may be caught between fork and exec,
        // when /proc does not show its environment yet; the group kill takes it anyway,
        // which the check below sees).
        assert!(reap(&instance) >= 1, "the marked leader is found");
        marked.wait().unwrap();
        // The whole group is gone: kill(2) with signal 0 finds no member.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        // SAFETY: kill(2) with signal 0 only checks for existence.
        while unsafe { libc::kill(-group, 0) } == 0 {
            assert!(std::time::Instant::now() < deadline, "the group lives on");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            other.try_wait().unwrap().is_none(),
            "an unmarked process was killed"
        );
        other.kill().unwrap();
        other.wait().unwrap();
    }

    #[test]
    fn instances_name_team_identity_and_path() {
        let i = instance("t", "w", Path::new("/definitely/not/here"));
        assert_eq!(i, "t/w@/definitely/not/here");
    }
}
