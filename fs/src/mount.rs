//! Mounting: clearing a stale mount a crash left behind, and fuser's multi-threaded session.

use crate::FsError;
use std::path::Path;

/// The mount points in `/proc/self/mountinfo` and their filesystem types.
fn mounts() -> Vec<(String, String)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let point = unescape(fields.get(4)?);
            let dash = fields.iter().position(|f| *f == "-")?;
            Some((point, fields.get(dash + 1)?.to_string()))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        {
            let code = u8::from_str_radix(&field[i + 1..i + 4], 8).unwrap_or(b'?');
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount point as mountinfo names it: absolute, its parent's symlinks resolved (the
/// point itself may be a dead mount that cannot be resolved).
fn absolute(mount: &Path) -> Result<std::path::PathBuf, FsError> {
    let err = |message: String| FsError::Mount {
        path: mount.to_path_buf(),
        message,
    };
    let abs = if mount.is_absolute() {
        mount.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| err(e.to_string()))?
            .join(mount)
    };
    let name = abs
        .file_name()
        .ok_or_else(|| err("not a directory path".into()))?;
    let parent = abs.parent().unwrap_or(Path::new("/"));
    let parent = parent
        .canonicalize()
        .map_err(|e| err(format!("its parent: {e}")))?;
    Ok(parent.join(name))
}

/// A FUSE mount left at `mount` by a process that died (its requests fail with `ENOTCONN`)
/// is unmounted; a live one is an error (another fs serves there).
pub fn clear_stale(mount: &Path) -> Result<(), FsError> {
    let abs = absolute(mount)?;
    let err = |message: String| FsError::Mount {
        path: mount.to_path_buf(),
        message,
    };
    let point = abs.to_string_lossy().into_owned();
    let mounted = mounts()
        .into_iter()
        .any(|(p, fstype)| p == point && fstype.starts_with("fuse"));
    if mounted {
        // `opendir` always reaches the daemon (a `stat` may be answered from the kernel's
        // attribute cache for a while after the daemon died).
        match std::fs::read_dir(&abs).and_then(|mut d| d.next().transpose()) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
                tracing::warn!(mount = %abs.display(), "clearing a stale mount a crashed fs left");
                let status = std::process::Command::new("fusermount3")
                    .args(["-u", "-z"])
                    .arg(&abs)
                    .status();
                if !matches!(status, Ok(s) if s.success()) {
                    let c =
                        std::ffi::CString::new(point.clone()).map_err(|e| err(e.to_string()))?;
                    // SAFETY: a valid C string; MNT_DETACH only detaches.
                    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                        return Err(err(format!(
                            "a stale mount is there and cannot be cleared: {}",
                            std::io::Error::last_os_error()
                        )));
                    }
                }
            }
            _ => return Err(err("already mounted: another fs serves there".into())),
        }
    }
    if !abs.is_dir() {
        std::fs::create_dir_all(&abs).map_err(|e| err(format!("cannot create it: {e}")))?;
    }
    Ok(())
}

/// Mounts `fs` at `mount` with `threads` FUSE threads, each with its own cloned fd.
pub fn mount(
    fs: crate::fuse::TriggerFs,
    mount: &Path,
    threads: usize,
    allow_other: bool,
) -> Result<fuser::BackgroundSession, FsError> {
    use fuser::MountOption;
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName("triggerfs".into()),
        MountOption::Subtype("triggerfs".into()),
        // The kernel checks the mode bits `chmod` stored.
        MountOption::DefaultPermissions,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoExec,
        MountOption::NoAtime,
    ];
    if allow_other {
        // Other users (nginx's workers as www-data) may open trigger files; the mode bits
        // `chmod` stored still decide who may write (DefaultPermissions).
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(threads.max(1));
    config.clone_fd = true;
    fuser::spawn_mount(fs, mount, &config).map_err(|e| FsError::Mount {
        path: mount.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_fields() {
        assert_eq!(unescape(r"/tmp/with\040space"), "/tmp/with space");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/odd\0"), r"/odd\0");
    }
}
