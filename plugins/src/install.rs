//! Lays the core plugins out under a plugins path.
//!
//! Each core plugin becomes a directory `<dir>/<name>/` holding a `plugin.toml` that names it
//! (`core = "<name>"`): the worker serves it itself, so nothing is copied (the binary used to
//! be copied once per plugin, 600 MB for a debug build). An operator offers a subset by
//! deleting the directories of the others. An existing manifest is replaced; anything else in
//! the directory is left alone (an executable beside a `core` manifest is not used).

use crate::manifest::{CorePlugin, Manifest, MANIFEST_FILE as MANIFEST};
use std::fs;
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
    /// Writing a manifest failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The manifest.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Installs every core plugin under `dir` as a manifest; returns the manifests' paths.
///
/// Each manifest is written beside its destination and renamed over it, so a worker never
/// reads a half-written one.
pub fn install(dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut installed = Vec::with_capacity(CorePlugin::ALL.len());
    for plugin in CorePlugin::ALL {
        let plugin_dir = dir.join(plugin.name());
        fs::create_dir_all(&plugin_dir).map_err(|source| InstallError::CreateDir {
            path: plugin_dir.clone(),
            source,
        })?;
        let target = plugin_dir.join(MANIFEST);
        let staging = plugin_dir.join(format!(".{MANIFEST}.installing"));
        let result = fs::write(&staging, Manifest::text_for(plugin))
            .and_then(|()| fs::rename(&staging, &target));
        if let Err(source) = result {
            let _ = fs::remove_file(&staging);
            return Err(InstallError::Write {
                path: target,
                source,
            });
        }
        installed.push(target);
    }
    Ok(installed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tests::TempDir;
    use crate::core::CORE_PLUGINS;

    #[test]
    fn writes_a_manifest_per_core_plugin_and_no_binary() {
        let tmp = TempDir::new("install");
        let dir = tmp.path().join("plugins");
        let paths = install(&dir).unwrap();
        assert_eq!(paths.len(), CORE_PLUGINS.len());
        let mut total = 0;
        for name in CORE_PLUGINS {
            let path = dir.join(name).join(MANIFEST);
            assert!(paths.contains(&path));
            let manifest = Manifest::load(&dir.join(name)).unwrap().unwrap();
            assert_eq!(manifest.core.map(CorePlugin::name), Some(*name));
            for entry in fs::read_dir(dir.join(name)).unwrap() {
                total += entry.unwrap().metadata().unwrap().len();
            }
        }
        assert!(total < 4096, "{total} bytes installed");
        // Installing again replaces the manifests.
        fs::write(dir.join("echo").join(MANIFEST), "core = \"file\"").unwrap();
        install(&dir).unwrap();
        let echo = Manifest::load(&dir.join("echo")).unwrap().unwrap();
        assert_eq!(echo.core, Some(CorePlugin::Echo));
    }

    #[test]
    fn an_unwritable_dir_is_an_error() {
        let tmp = TempDir::new("install-file");
        let file = tmp.path().join("not-a-dir");
        fs::write(&file, b"x").unwrap();
        let err = install(&file).unwrap_err();
        assert!(matches!(err, InstallError::CreateDir { .. }), "{err}");
    }
}
