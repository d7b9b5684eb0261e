//! The mounted tree: the team's directories and triggers as the control plane lists them,
//! with stable inode numbers.
//!
//! Inodes: the root is 1; a directory gets the next free number the first time its name is
//! seen and keeps it for the life of the mount (a directory removed and made again is the
//! same inode); a trigger is [`TRIGGER_BASE`] + its id, so a renamed trigger (`mv`) keeps its
//! inode and open file handles keep writing to it.

use api::directories::DirectoryView;
use api::triggers::{Split, TriggerView};
use api::Visibility;
use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

/// The root directory's inode.
pub const ROOT: u64 = 1;
/// Trigger inodes are this plus the trigger's id.
pub const TRIGGER_BASE: u64 = 1 << 40;

/// A trigger, ready for the fs.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    /// Id in the control plane.
    pub id: i64,
    /// Directory name.
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
    /// Name.
    pub name: String,
    /// When it was created.
    pub created: SystemTime,
}

/// What the kernel may have cached that is no longer true: `(parent inode, name)` pairs.
pub type Stale = Vec<(u64, String)>;

/// The whole tree.
#[derive(Debug, Default)]
pub struct Tree {
    dirs: BTreeMap<String, Dir>,
    triggers: HashMap<i64, Trigger>,
    /// `(directory, name)` → trigger id.
    by_path: BTreeMap<(String, String), i64>,
    /// Every directory name ever seen → its inode (never reused).
    dir_inos: HashMap<String, u64>,
    next_dir_ino: u64,
}

fn time(rfc3339: &str) -> SystemTime {
    rfc3339
        .parse::<jiff::Timestamp>()
        .map(SystemTime::from)
        .unwrap_or(SystemTime::UNIX_EPOCH)
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
        if self.next_dir_ino == 0 {
            self.next_dir_ino = ROOT + 1;
        }
        let mut stale = Stale::new();
        let mut new_dirs = BTreeMap::new();
        for d in dirs {
            let ino = match self.dir_inos.get(&d.name) {
                Some(ino) => *ino,
                None => {
                    let ino = self.next_dir_ino;
                    self.next_dir_ino += 1;
                    self.dir_inos.insert(d.name.clone(), ino);
                    ino
                }
            };
            let created = time(&d.created);
            new_dirs.insert(
                d.name.clone(),
                Dir {
                    ino,
                    name: d.name,
                    created,
                },
            );
        }
        for name in self.dirs.keys() {
            if !new_dirs.contains_key(name) {
                stale.push((ROOT, name.clone()));
            }
        }
        let mut new_triggers = HashMap::new();
        let mut new_paths = BTreeMap::new();
        for t in triggers {
            if t.visibility == Visibility::Local && t.owner != me {
                continue;
            }
            let trigger = Trigger {
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
            };
            new_paths.insert((trigger.dir.clone(), trigger.name.clone()), trigger.id);
            new_triggers.insert(trigger.id, trigger);
        }
        for ((dir, name), id) in &self.by_path {
            if new_paths.get(&(dir.clone(), name.clone())) != Some(id) {
                if let Some(d) = self.dirs.get(dir) {
                    stale.push((d.ino, name.clone()));
                }
            }
        }
        self.dirs = new_dirs;
        self.triggers = new_triggers;
        self.by_path = new_paths;
        stale
    }

    /// The directory of inode `ino`.
    pub fn dir_by_ino(&self, ino: u64) -> Option<&Dir> {
        self.dirs.values().find(|d| d.ino == ino)
    }

    /// The directory named `name`.
    pub fn dir(&self, name: &str) -> Option<&Dir> {
        self.dirs.get(name)
    }

    /// Every directory, by name.
    pub fn dirs(&self) -> impl Iterator<Item = &Dir> {
        self.dirs.values()
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

    /// The trigger `name` in directory `dir`.
    pub fn trigger(&self, dir: &str, name: &str) -> Option<&Trigger> {
        let id = self.by_path.get(&(dir.to_string(), name.to_string()))?;
        self.triggers.get(id)
    }

    /// The triggers in directory `dir`, by name.
    pub fn triggers_in<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = &'a Trigger> + 'a {
        self.by_path
            .range((dir.to_string(), String::new())..)
            .take_while(move |((d, _), _)| d == dir)
            .filter_map(|(_, id)| self.triggers.get(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> DirectoryView {
        DirectoryView {
            name: name.into(),
            path: format!("/{name}"),
            n_triggers: 0,
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

    #[test]
    fn inodes_are_stable_and_renames_are_stale() {
        let mut tree = Tree::default();
        let stale = tree.replace("hp", vec![dir("a"), dir("b")], vec![trigger(1, "a", "t")]);
        assert!(stale.is_empty());
        let a = tree.dir("a").unwrap().ino;
        let b = tree.dir("b").unwrap().ino;
        assert_ne!(a, b);
        assert_eq!(tree.trigger("a", "t").unwrap().ino(), TRIGGER_BASE + 1);
        assert_eq!(tree.triggers_in("a").count(), 1);
        assert_eq!(tree.triggers_in("b").count(), 0);
        // `mv a/t b/u`: same inode, the old name is stale; `rmdir`-ed `a` too.
        let stale = tree.replace("hp", vec![dir("b")], vec![trigger(1, "b", "u")]);
        assert_eq!(stale, vec![(ROOT, "a".to_string()), (a, "t".to_string())]);
        assert_eq!(
            tree.trigger_by_ino(TRIGGER_BASE + 1).unwrap().path(),
            "/b/u"
        );
        assert_eq!(tree.dir("b").unwrap().ino, b);
        // `a` made again gets its old inode.
        tree.replace("hp", vec![dir("b"), dir("a")], vec![]);
        assert_eq!(tree.dir("a").unwrap().ino, a);
        assert!(tree.trigger_by_id(1).is_none());
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
        tree.replace("hp", vec![dir("a")], vec![mine, theirs, shared]);
        let names: Vec<&str> = tree.triggers_in("a").map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["mine", "shared"]);
        assert!(tree.trigger_by_id(2).is_none());
    }
}
