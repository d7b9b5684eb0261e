//! The mounted tree: the team's directories (nested to any depth) and triggers as the
//! control plane lists them, with stable inode numbers.
//!
//! Inodes: the root is 1; a directory is [`DIR_BASE`] + its id and a trigger
//! [`TRIGGER_BASE`] + its id, so a renamed or moved directory or trigger (`mv`) keeps its
//! inode, and open file handles keep writing to it.

use api::directories::DirectoryView;
use api::triggers::{Split, TriggerView};
use api::Visibility;
use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

/// The root directory's inode.
pub const ROOT: u64 = 1;
/// Directory inodes are this plus the directory's id (ids start at 1).
pub const DIR_BASE: u64 = 1;
/// Trigger inodes are this plus the trigger's id.
pub const TRIGGER_BASE: u64 = 1 << 40;

/// A trigger, ready for the fs.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    /// Id in the control plane.
    pub id: i64,
    /// Its directory's path without the leading `/` (`weatherstation/rpi`).
    pub dir: String,
    /// File name.
    pub name: String,
    /// Plugin.
    pub plugin: String,
    /// Service.
    pub service: String,
    /// Arguments.
    pub args: Vec<(String, String)>,
    /// 0: the service's timeout.
    pub timeout_ms: u64,
    /// Permission bits.
    pub mode: u32,
    /// `split = "lines"`.
    pub split_lines: bool,
    /// Most lines per request.
    pub batch_lines: usize,
    /// When it was created.
    pub created: SystemTime,
}

impl Trigger {
    /// `/directory/name`.
    pub fn path(&self) -> String {
        format!("/{}/{}", self.dir, self.name)
    }

    /// The trigger's inode.
    pub fn ino(&self) -> u64 {
        TRIGGER_BASE + self.id as u64
    }
}

/// A directory, ready for the fs.
#[derive(Debug, Clone, PartialEq)]
pub struct Dir {
    /// Inode.
    pub ino: u64,
    /// Its path without the leading `/` (`weatherstation/rpi`).
    pub path: String,
    /// The inode of the directory it is in.
    pub parent: u64,
    /// When it was created.
    pub created: SystemTime,
}

/// What the kernel may have cached that is no longer true: `(parent inode, name)` pairs.
pub type Stale = Vec<(u64, String)>;

/// The whole tree.
#[derive(Debug, Default)]
pub struct Tree {
    dirs: HashMap<u64, Dir>,
    triggers: HashMap<i64, Trigger>,
    /// `(parent inode, name)` → inode: every name of every directory, in order.
    entries: BTreeMap<(u64, String), u64>,
}

fn time(rfc3339: &str) -> SystemTime {
    rfc3339
        .parse::<jiff::Timestamp>()
        .map(SystemTime::from)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The inode of directory `path` (`a/b`; `""` is the root) among `inos`.
fn ino_of(inos: &HashMap<String, u64>, path: &str) -> Option<u64> {
    if path.is_empty() {
        Some(ROOT)
    } else {
        inos.get(path).copied()
    }
}

fn trigger(t: TriggerView) -> Trigger {
    Trigger {
        id: t.id,
        args: t.args.into_iter().collect(),
        timeout_ms: u64::try_from(t.timeout_ms).unwrap_or(0),
        mode: u32::try_from(t.mode).unwrap_or(0o600) & 0o7777,
        split_lines: t.split == Split::Lines,
        batch_lines: usize::try_from(t.batch_lines).unwrap_or(1000).max(1),
        created: time(&t.created),
        dir: t.directory,
        name: t.name,
        plugin: t.plugin,
        service: t.service,
    }
}

impl Tree {
    /// Replaces the tree with the control plane's lists, as user `me` sees them (another
    /// member's `local` triggers are not shown); returns the entries the kernel may still
    /// have cached that are gone or now name something else.
    pub fn replace(
        &mut self,
        me: &str,
        dirs: Vec<DirectoryView>,
        triggers: Vec<TriggerView>,
    ) -> Stale {
        let inos: HashMap<String, u64> = dirs
            .iter()
            .map(|d| {
                (
                    d.path.trim_start_matches('/').to_string(),
                    DIR_BASE + d.id as u64,
                )
            })
            .collect();
        let mut entries = BTreeMap::new();
        let mut new_dirs = HashMap::new();
        for d in dirs {
            let path = d.path.trim_start_matches('/').to_string();
            let (parent, name) = path.rsplit_once('/').unwrap_or(("", &path));
            // A directory listed without its parent (a change between the two lists) waits
            // for the next refresh.
            let Some(parent) = ino_of(&inos, parent) else {
                continue;
            };
            let ino = DIR_BASE + d.id as u64;
            entries.insert((parent, name.to_string()), ino);
            let created = time(&d.created);
            new_dirs.insert(
                ino,
                Dir {
                    ino,
                    path,
                    parent,
                    created,
                },
            );
        }
        let mut new_triggers = HashMap::new();
        for t in triggers {
            if t.visibility == Visibility::Local && t.owner != me {
                continue;
            }
            let t = trigger(t);
            let Some(parent) = ino_of(&inos, &t.dir).filter(|p| *p != ROOT) else {
                continue;
            };
            entries.insert((parent, t.name.clone()), t.ino());
            new_triggers.insert(t.id, t);
        }
        let stale = self
            .entries
            .iter()
            .filter(|(key, ino)| entries.get(*key) != Some(*ino))
            .map(|(key, _)| key.clone())
            .collect();
        self.dirs = new_dirs;
        self.triggers = new_triggers;
        self.entries = entries;
        stale
    }

    /// Whether `ino` is a directory (the root included).
    pub fn is_dir(&self, ino: u64) -> bool {
        ino == ROOT || self.dirs.contains_key(&ino)
    }

    /// The directory of inode `ino` (not the root).
    pub fn dir_by_ino(&self, ino: u64) -> Option<&Dir> {
        self.dirs.get(&ino)
    }

    /// The path of directory `ino` without the leading `/`: `""` for the root.
    pub fn dir_path(&self, ino: u64) -> Option<&str> {
        if ino == ROOT {
            return Some("");
        }
        self.dirs.get(&ino).map(|d| d.path.as_str())
    }

    /// The inode of `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &str) -> Option<u64> {
        self.entries.get(&(parent, name.to_string())).copied()
    }

    /// The names in directory `ino` with their inodes, by name.
    pub fn children(&self, ino: u64) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.entries
            .range((ino, String::new())..)
            .take_while(move |((parent, _), _)| *parent == ino)
            .map(|((_, name), child)| (name.as_str(), *child))
    }

    /// The trigger of inode `ino`.
    pub fn trigger_by_ino(&self, ino: u64) -> Option<&Trigger> {
        let id = ino.checked_sub(TRIGGER_BASE)?;
        self.trigger_by_id(i64::try_from(id).ok()?)
    }

    /// The trigger of id `id`.
    pub fn trigger_by_id(&self, id: i64) -> Option<&Trigger> {
        self.triggers.get(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(id: i64, path: &str) -> DirectoryView {
        DirectoryView {
            id,
            name: path.rsplit('/').next().unwrap_or(path).into(),
            path: format!("/{path}"),
            n_triggers: 0,
            n_directories: 0,
            owner: "hp".into(),
            created: "2026-11-29T10:00:00Z".into(),
        }
    }

    fn trigger(id: i64, dir: &str, name: &str) -> TriggerView {
        TriggerView {
            id,
            path: format!("/{dir}/{name}"),
            name: name.into(),
            directory: dir.into(),
            description: String::new(),
            plugin: "append".into(),
            service: "ship".into(),
            args: BTreeMap::new(),
            timeout_ms: 0,
            timeout: None,
            mode: 0o600,
            split: Split::Lines,
            batch_lines: 1000,
            visibility: Visibility::Team,
            hits: 0,
            owner: "hp".into(),
            created: "2026-11-29T10:00:00Z".into(),
            updated: "2026-11-29T10:00:00Z".into(),
        }
    }

    fn names(tree: &Tree, ino: u64) -> Vec<&str> {
        tree.children(ino).map(|(name, _)| name).collect()
    }

    #[test]
    fn inodes_are_stable_and_renames_are_stale() {
        let mut tree = Tree::default();
        let stale = tree.replace(
            "hp",
            vec![dir(1, "a"), dir(2, "b")],
            vec![trigger(1, "a", "t")],
        );
        assert!(stale.is_empty());
        let (a, b) = (
            tree.lookup(ROOT, "a").unwrap(),
            tree.lookup(ROOT, "b").unwrap(),
        );
        assert_eq!((a, b), (DIR_BASE + 1, DIR_BASE + 2));
        assert_eq!(tree.lookup(a, "t"), Some(TRIGGER_BASE + 1));
        assert_eq!(names(&tree, a), ["t"]);
        assert!(names(&tree, b).is_empty());
        // `mv a/t b/u`: same inode, the old name is stale; `rmdir`-ed `a` too.
        let stale = tree.replace("hp", vec![dir(2, "b")], vec![trigger(1, "b", "u")]);
        assert_eq!(stale, vec![(ROOT, "a".to_string()), (a, "t".to_string())]);
        assert_eq!(
            tree.trigger_by_ino(TRIGGER_BASE + 1).unwrap().path(),
            "/b/u"
        );
        assert_eq!(tree.lookup(ROOT, "b"), Some(b));
        assert_eq!(tree.lookup(b, "u"), Some(TRIGGER_BASE + 1));
    }

    #[test]
    fn nested_directories_move_with_their_inodes() {
        let mut tree = Tree::default();
        let dirs = vec![dir(1, "weatherstation"), dir(2, "weatherstation/rpi")];
        tree.replace(
            "hp",
            dirs,
            vec![trigger(7, "weatherstation/rpi", "station1")],
        );
        let ws = tree.lookup(ROOT, "weatherstation").unwrap();
        let rpi = tree.lookup(ws, "rpi").unwrap();
        assert_eq!(tree.dir_path(rpi), Some("weatherstation/rpi"));
        assert_eq!(tree.dir_by_ino(rpi).unwrap().parent, ws);
        assert_eq!(tree.lookup(rpi, "station1"), Some(TRIGGER_BASE + 7));
        assert!(tree.is_dir(ROOT) && tree.is_dir(rpi) && !tree.is_dir(TRIGGER_BASE + 7));
        // `mv weatherstation ws`: every inode stays, only the root's name is stale.
        let dirs = vec![dir(1, "ws"), dir(2, "ws/rpi")];
        let stale = tree.replace("hp", dirs, vec![trigger(7, "ws/rpi", "station1")]);
        assert_eq!(stale, vec![(ROOT, "weatherstation".to_string())]);
        assert_eq!(tree.lookup(ROOT, "ws"), Some(ws));
        assert_eq!(tree.lookup(ws, "rpi"), Some(rpi));
        assert_eq!(
            tree.trigger_by_ino(TRIGGER_BASE + 7).unwrap().path(),
            "/ws/rpi/station1"
        );
        // A directory listed without its parent waits for the next refresh.
        tree.replace("hp", vec![dir(2, "gone/rpi")], vec![]);
        assert!(tree.dir_by_ino(rpi).is_none());
    }

    #[test]
    fn another_members_local_triggers_are_not_shown() {
        let mut tree = Tree::default();
        let mut mine = trigger(1, "a", "mine");
        mine.visibility = Visibility::Local;
        let mut theirs = trigger(2, "a", "theirs");
        theirs.visibility = Visibility::Local;
        theirs.owner = "carol".into();
        let shared = trigger(3, "a", "shared");
        tree.replace("hp", vec![dir(1, "a")], vec![mine, theirs, shared]);
        assert_eq!(names(&tree, DIR_BASE + 1), ["mine", "shared"]);
        assert!(tree.trigger_by_id(2).is_none());
    }
}
