//! What a plugins path offers, as a worker serving it resolves a plugin's name `x`: an
//! executable file `<dir>/x` (the seed's layout, the plain contract), or a directory `<dir>/x`
//! holding a `plugin.toml` that names a core plugin, or an executable `<dir>/x/x` (plain, or
//! persistent when its manifest says so). Anything that resolves outside `dir` is refused.

use crate::manifest::{CorePlugin, Manifest};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// How a listed plugin is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A core plugin the worker serves itself (`core = "..."` in its `plugin.toml`).
    Core(CorePlugin),
    /// An executable started per request (the plain contract); its path in the directory.
    Plain(PathBuf),
    /// An executable started once that serves many requests (`persistent = true`); its path
    /// in the directory.
    Persistent(PathBuf),
    /// Found but not served: why (a bad manifest, not executable, outside the path).
    Refused(String),
}

/// One entry of a plugins path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The name a request gives as its plugin.
    pub name: String,
    /// How it is served.
    pub kind: Kind,
}

/// The plugins under `dir`, by name. Hidden entries (`.x`) and directories with neither a
/// manifest nor an executable of their name are left out.
pub fn list(dir: &Path) -> std::io::Result<Vec<Listed>> {
    let root = dir.canonicalize()?;
    let mut listed = Vec::new();
    for entry in fs::read_dir(&root)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = root.join(&name);
        let kind = if path.is_dir() {
            match in_directory(&root, &path, &name) {
                Some(kind) => kind,
                None => continue,
            }
        } else {
            executable(&root, &path, Kind::Plain)
        };
        listed.push(Listed { name, kind });
    }
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(listed)
}

/// A plugin directory `path` of `root`: its manifest's core plugin, else its executable
/// `path/name`; `None` when it holds neither.
fn in_directory(root: &Path, path: &Path, name: &str) -> Option<Kind> {
    if !inside(root, path) {
        return Some(Kind::Refused("it resolves outside the plugins path".into()));
    }
    let manifest = match Manifest::load(path) {
        Ok(manifest) => manifest,
        Err(e) => return Some(Kind::Refused(e.to_string())),
    };
    if let Some(core) = manifest.as_ref().and_then(|m| m.core) {
        return Some(Kind::Core(core));
    }
    let program = path.join(name);
    if fs::symlink_metadata(&program).is_err() {
        return None;
    }
    match manifest.is_some_and(|m| m.persistent) {
        true => Some(executable(root, &program, Kind::Persistent)),
        false => Some(executable(root, &program, Kind::Plain)),
    }
}

/// `kind(path)` when `path` is an executable regular file inside `root`, else why not.
fn executable(root: &Path, path: &Path, kind: fn(PathBuf) -> Kind) -> Kind {
    if !inside(root, path) {
        return Kind::Refused("it resolves outside the plugins path".into());
    }
    match fs::metadata(path) {
        Ok(meta) if !meta.is_file() => Kind::Refused("it is not a regular file".into()),
        Ok(meta) if meta.permissions().mode() & 0o111 == 0 => {
            Kind::Refused("it is not executable".into())
        }
        Ok(_) => kind(path.strip_prefix(root).unwrap_or(path).to_path_buf()),
        Err(e) => Kind::Refused(format!("cannot open it: {}", e.kind())),
    }
}

/// Whether `path` resolves inside `root` (a canonical path).
fn inside(root: &Path, path: &Path) -> bool {
    path.canonicalize().is_ok_and(|p| p.starts_with(root))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tests::TempDir;

    #[test]
    fn lists_both_layouts_and_refuses_escapes() {
        let tmp = TempDir::new("listing");
        let dir = tmp.path().join("plugins");
        crate::install(&dir).unwrap();
        let script = |path: &Path, mode: u32| {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, "#!/bin/sh\necho hi\n").unwrap();
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        };
        script(&dir.join("myplugin"), 0o755);
        script(&dir.join("nested/nested"), 0o755);
        script(&dir.join("kept/kept"), 0o755);
        fs::write(dir.join("kept/plugin.toml"), "persistent = true\n").unwrap();
        script(&dir.join("notes.txt"), 0o644);
        std::os::unix::fs::symlink("/bin/sh", dir.join("evil")).unwrap();
        fs::create_dir_all(dir.join("empty")).unwrap();
        let got: Vec<(String, Kind)> = list(&dir)
            .unwrap()
            .into_iter()
            .map(|l| (l.name, l.kind))
            .collect();
        let outside = Kind::Refused("it resolves outside the plugins path".into());
        let want = [
            ("append", Kind::Core(CorePlugin::Append)),
            ("command", Kind::Core(CorePlugin::Command)),
            ("echo", Kind::Core(CorePlugin::Echo)),
            ("evil", outside),
            ("file", Kind::Core(CorePlugin::File)),
            ("kept", Kind::Persistent("kept/kept".into())),
            ("myplugin", Kind::Plain("myplugin".into())),
            ("nested", Kind::Plain("nested/nested".into())),
            ("notes.txt", Kind::Refused("it is not executable".into())),
        ];
        let want: Vec<(String, Kind)> = want.into_iter().map(|(n, k)| (n.into(), k)).collect();
        assert_eq!(got, want);
    }
}
