//! Lays the core plugins out under a plugins path.
//!
//! Each core plugin becomes `<dir>/<name>/<name>`, a copy of the `triggerfs` binary that
//! dispatches on its `argv[0]`. A copy, not a symlink: the worker refuses symlinks that leave
//! its plugins path, and the binary usually lives outside it.

use crate::core::CORE_PLUGINS;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Why the core plugins could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Creating a plugin directory failed.
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Copying the binary failed.
    #[error("cannot copy {from} to {to}: {source}")]
    Copy {
        /// The binary.
        from: PathBuf,
        /// The destination.
        to: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Installs every core plugin under `dir` as a copy of `exe` (mode 0755); returns the paths.
///
/// Each copy is written beside its destination and renamed over it, so re-installing while a
/// plugin runs neither fails with "text file busy" nor leaves a half-written binary.
pub fn install(dir: &Path, exe: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut installed = Vec::with_capacity(CORE_PLUGINS.len());
    for name in CORE_PLUGINS {
        let plugin_dir = dir.join(name);
        fs::create_dir_all(&plugin_dir).map_err(|source| InstallError::CreateDir {
            path: plugin_dir.clone(),
            source,
        })?;
        let target = plugin_dir.join(name);
        let staging = plugin_dir.join(format!(".{name}.installing"));
        let copy_err = |source| InstallError::Copy {
            from: exe.to_path_buf(),
            to: target.clone(),
            source,
        };
        let result = fs::copy(exe, &staging)
            .and_then(|_| fs::set_permissions(&staging, fs::Permissions::from_mode(0o755)))
            .and_then(|()| fs::rename(&staging, &target));
        if let Err(source) = result {
            let _ = fs::remove_file(&staging);
            return Err(copy_err(source));
        }
        installed.push(target);
    }
    Ok(installed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tests::TempDir;

    #[test]
    fn copies_every_core_plugin_executable() {
        let tmp = TempDir::new("install");
        let exe = tmp.path().join("triggerfs");
        fs::write(&exe, b"#!/bin/sh\necho fake\n").unwrap();
        let dir = tmp.path().join("plugins");
        let paths = install(&dir, &exe).unwrap();
        assert_eq!(paths.len(), CORE_PLUGINS.len());
        for name in CORE_PLUGINS {
            let path = dir.join(name).join(name);
            assert!(paths.contains(&path));
            let meta = fs::symlink_metadata(&path).unwrap();
            assert!(meta.file_type().is_file(), "{path:?} is not a regular file");
            assert_eq!(meta.permissions().mode() & 0o777, 0o755);
            assert_eq!(fs::read(&path).unwrap(), b"#!/bin/sh\necho fake\n");
        }
        // Installing again replaces the copies.
        fs::write(&exe, b"v2").unwrap();
        install(&dir, &exe).unwrap();
        assert_eq!(fs::read(dir.join("echo/echo")).unwrap(), b"v2");
    }

    #[test]
    fn missing_exe_is_an_error() {
        let tmp = TempDir::new("install-missing");
        let err = install(tmp.path(), &tmp.path().join("nope")).unwrap_err();
        assert!(matches!(err, InstallError::Copy { .. }), "{err}");
    }
}
