//! The console's commands as one table: [`ENTRIES`] drives parsing, `help`, `?`, TAB
//! completion and the one-shot mode (`-c`). Adding a command is one entry.
//!
//! A pattern is a line of elements:
//! - `word`: a keyword, typed as is;
//! - `<kind>`: one value of a [`Kind`] (a worker's identity, a duration, ...);
//! - `<kind...>`: every word left on the line (free text, a shell command);
//! - `[word <kind>]`: an option, in any order with the options beside it; `[...]...` may be
//!   given more than once.

use super::commands::{self as cmd, Handler};
use super::operator as op;

/// The console's two modes, as in the seed (and Juniper): operational and `configure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `(team) identity@host$ `: look, request, browse the trigger files.
    Operational,
    /// `(team) identity@host# `: change the configuration.
    Configure,
}

/// Where a command is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modes {
    /// Operational mode only.
    Oper,
    /// Configure mode only.
    Conf,
    /// Both.
    Both,
}

impl Modes {
    fn has(self, mode: Mode) -> bool {
        matches!(
            (self, mode),
            (Modes::Both, _) | (Modes::Oper, Mode::Operational) | (Modes::Conf, Mode::Configure)
        )
    }
}

/// What a value stands for: how `?` describes it and where TAB finds candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// An existing worker of the team.
    Worker,
    /// An existing service of the team.
    Service,
    /// An existing trigger (name, or /directory/name).
    Trigger,
    /// An existing directory (its path).
    Directory,
    /// A directory's path, new or not: `/name` or `/name/sub/...`.
    DirPath,
    /// An existing schedule.
    Schedule,
    /// `forbid`, `allow`, `replace`.
    Concurrency,
    /// A member of the team.
    Member,
    /// A team the user belongs to.
    Team,
    /// A team that invited the user.
    Invitation,
    /// An identity with a pending invitation to this team.
    Invited,
    /// A user identity (any user).
    Identity,
    /// A new object's name.
    Name,
    /// A trigger path `/directory/name`.
    Path,
    /// One word of text (quote it to keep spaces).
    Text,
    /// The rest of the line.
    Rest,
    /// `roundrobin`, `mirror`, `serial`.
    Algorithm,
    /// `local`, `team`, `public`.
    Visibility,
    /// `sender`, `team`: who reads a service's jobs.
    History,
    /// `10s`, `1m30s`, `1h`.
    Duration,
    /// A whole number.
    Number,
    /// A number or `unlimited`.
    Limit,
    /// A count, or a percentage (`10%`).
    Share,
    /// `key=value`.
    KeyValue,
    /// A trigger argument's key.
    Key,
    /// A plugin name.
    Plugin,
    /// `admin`, `member`.
    Role,
    /// `none`, `lines`.
    Split,
    /// A unix mode in octal.
    FileMode,
    /// `true`, `false`.
    Bool,
    /// `free`, `basic`, `advanced`, `unlimited`.
    Preset,
    /// A quota field.
    QuotaField,
    /// Any team of the installation (operators).
    AnyTeam,
    /// Any user of the installation (operators).
    Account,
    /// A number of teams a user may create, or `tier`.
    Allowance,
}

impl Kind {
    /// The placeholder as patterns and `?` write it.
    pub fn label(self) -> &'static str {
        KINDS.iter().find(|k| k.0 == self).map_or("?", |k| k.1)
    }

    /// One line for `?`.
    pub fn describe(self) -> &'static str {
        KINDS.iter().find(|k| k.0 == self).map_or("", |k| k.2)
    }

    /// The fixed values of an enumerated kind (empty for the others).
    pub fn choices(self) -> &'static [&'static str] {
        match self {
            Kind::Algorithm => &["roundrobin", "mirror", "serial"],
            Kind::Visibility => &["local", "team", "public"],
            Kind::History => &["sender", "team"],
            Kind::Role => &["admin", "member"],
            Kind::Split => &["none", "lines"],
            Kind::Bool => &["true", "false"],
            Kind::Preset => &["free", "basic", "advanced", "unlimited"],
            Kind::QuotaField => &[
                "max_workers",
                "max_services",
                "max_triggers",
                "max_users",
                "max_teams",
            ],
            Kind::Plugin => &["command", "echo", "file", "append"],
            Kind::Concurrency => &["forbid", "allow", "replace"],
            _ => &[],
        }
    }

    fn from_label(label: &str) -> Option<Kind> {
        KINDS.iter().find(|k| k.1 == label).map(|k| k.0)
    }
}

/// Each kind's placeholder and description.
const KINDS: &[(Kind, &str, &str)] = &[
    (
        Kind::Worker,
        "worker",
        "a worker of the team (its identity)",
    ),
    (Kind::Service, "service", "a service of the team"),
    (
        Kind::Trigger,
        "trigger",
        "a trigger: its name, or /directory/name",
    ),
    (
        Kind::Directory,
        "directory",
        "a directory of trigger files: its path, /name or /name/sub",
    ),
    (
        Kind::DirPath,
        "dirpath",
        "a directory's path: /name or /name/sub/... (up to 16 levels)",
    ),
    (Kind::Schedule, "schedule", "a schedule of the team"),
    (
        Kind::Concurrency,
        "concurrency",
        "forbid (skip while the last run runs) | allow | replace (cancel it)",
    ),
    (Kind::Member, "user", "a member of the team"),
    (Kind::Team, "team", "a team you belong to"),
    (Kind::Invitation, "invitation", "a team that invited you"),
    (Kind::Invited, "invited", "a user invited to this team"),
    (Kind::Identity, "identity", "a user's identity"),
    (
        Kind::Name,
        "name",
        "the new object's name (letters, digits, . _ -)",
    ),
    (
        Kind::Path,
        "path",
        "the trigger file's path: /directory/name (the directory may be nested)",
    ),
    (Kind::Text, "text", "a word, or \"quoted text\""),
    (Kind::Rest, "text...", "the rest of the line"),
    (Kind::Algorithm, "algorithm", "roundrobin | mirror | serial"),
    (
        Kind::Visibility,
        "visibility",
        "local (you) | team | public (everyone)",
    ),
    (
        Kind::History,
        "history",
        "sender (the sender and admins) | team (every member)",
    ),
    (Kind::Duration, "duration", "e.g. 10s, 1m30s, 1h (0s: none)"),
    (Kind::Number, "number", "a whole number"),
    (Kind::Limit, "limit", "a whole number, or unlimited"),
    (
        Kind::Share,
        "share",
        "a number of workers, or a percentage such as 10%",
    ),
    (Kind::KeyValue, "key=value", "an argument the plugin gets"),
    (Kind::Key, "key", "an argument's key"),
    (
        Kind::Plugin,
        "plugin",
        "a plugin: a directory under the worker's pluginspath",
    ),
    (Kind::Role, "role", "admin | member"),
    (
        Kind::Split,
        "split",
        "none (a write is a request) | lines (each line)",
    ),
    (Kind::FileMode, "mode", "a unix mode in octal, e.g. 644"),
    (Kind::Bool, "bool", "true | false"),
    (
        Kind::Preset,
        "preset",
        "free | basic | advanced | unlimited",
    ),
    (
        Kind::QuotaField,
        "field",
        "max_workers | max_services | max_triggers | max_users | max_teams (per admin)",
    ),
    (Kind::AnyTeam, "any-team", "any team of the installation"),
    (Kind::Account, "account", "any user of the installation"),
    (
        Kind::Allowance,
        "allowance",
        "a number of teams, or tier (their teams' tiers decide)",
    ),
];

/// One line for `?` about a keyword where it begins several commands.
const WORDS: &[(&str, &str)] = &[
    ("show", "show objects as a table"),
    ("set", "create an object or change one of its properties"),
    ("delete", "delete an object, or one of its properties"),
    (
        "workers",
        "workers: servers that connect out and run plugins",
    ),
    ("services", "services: names that route requests to workers"),
    (
        "trigger",
        "triggers: files in the fs whose writes are requests",
    ),
    (
        "triggers",
        "triggers: files in the fs whose writes are requests",
    ),
    ("directory", "directories: hold the trigger files"),
    ("directories", "directories: hold the trigger files"),
    ("users", "users: the members of this team"),
    ("teams", "teams you belong to"),
    ("quota", "the team's limits and what it uses"),
    ("invitations", "invitations to join teams"),
    ("password", "change your secret"),
    ("identity", "create a worker with this identity"),
    ("name", "create one with this name"),
    ("description", "a free-text description"),
    ("visibility", "who may use it: local, team or public"),
    (
        "algorithm",
        "how requests are spread: roundrobin, mirror or serial",
    ),
    ("timeout", "how long a request may run"),
    ("batch", "mirror: at most this many workers at once"),
    (
        "max-failures",
        "stop starting workers once this many failed",
    ),
    ("deadline", "end the request at this time with what it has"),
    (
        "stop-on-failure",
        "serial: stop at the first failing worker",
    ),
    (
        "retry",
        "roundrobin: run again elsewhere when a worker is lost",
    ),
    ("workers", "the workers bound to it"),
    ("add", "bind a worker"),
    ("remove", "unbind a worker"),
    ("plugin", "the plugin a write runs"),
    ("service", "the service a write goes to"),
    ("attach", "route the trigger's writes to this service"),
    ("args", "arguments the plugin gets (key=value)"),
    ("split", "none: a write is a request; lines: each line is"),
    ("batch-lines", "lines: at most this many lines per request"),
    ("mode", "the file's unix mode"),
    ("rename", "move the trigger to another path"),
    ("token", "the worker's token"),
    (
        "regenerate",
        "issue a new token (the old one stops working at once)",
    ),
    ("role", "the member's role: admin or member"),
    ("secret", "the new user's secret"),
    ("preset", "a tier's limits"),
    ("all", "operators: every one in the installation"),
    ("max-teams", "operators: how many teams the user may create"),
    ("schedule", "schedules: requests run on a timetable"),
    ("schedules", "schedules: requests run on a timetable"),
    ("every", "run every so long (10m)"),
    ("cron", "a cron expression, quoted: \"0 3 * * *\""),
    (
        "time-zone",
        "the cron expression's IANA time zone (Europe/Berlin)",
    ),
    ("jitter", "every: start each run up to this much later"),
    (
        "concurrency",
        "while the last run runs: forbid, allow or replace",
    ),
    (
        "starting-deadline",
        "missed runs: the latest runs once if at most this late",
    ),
    ("pause", "stop starting its runs"),
    ("resume", "start its runs again"),
    ("run", "run it once now"),
    ("command", "the command text, to the end of the line"),
];

/// One command.
pub struct Entry {
    /// Where it is offered.
    pub modes: Modes,
    /// Its words (see the module's documentation).
    pub pattern: &'static str,
    /// One line for `help`.
    pub help: &'static str,
    /// What runs it.
    pub run: Handler,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.pattern)
    }
}

/// Every command of the console.
pub static ENTRIES: &[Entry] = &[
    // Operational mode.
    Entry { modes: Modes::Oper, pattern: "configure", help: "enter configure mode (set, delete)", run: cmd::configure },
    Entry { modes: Modes::Oper, pattern: "request <service> <plugin> [timeout <duration>] [args <key=value>]... [batch <share>] [max-failures <share>] [deadline <duration>] command <text...>",
        help: "send a request and show its output live (Ctrl-C cancels it)", run: cmd::request },
    Entry { modes: Modes::Oper, pattern: "file", help: "start a shell in a temporary mount of the trigger files", run: cmd::file },
    Entry { modes: Modes::Oper, pattern: "accept <invitation>", help: "join a team that invited you", run: cmd::accept },
    Entry { modes: Modes::Oper, pattern: "decline <invitation>", help: "decline a team's invitation", run: cmd::decline },
    Entry { modes: Modes::Both, pattern: "show workers", help: "the team's workers and whether they are online", run: cmd::show_workers },
    Entry { modes: Modes::Both, pattern: "show services", help: "the team's services and the workers behind them", run: cmd::show_services },
    Entry { modes: Modes::Both, pattern: "show triggers", help: "the team's triggers", run: cmd::show_triggers },
    Entry { modes: Modes::Both, pattern: "show directories", help: "the team's directories", run: cmd::show_directories },
    Entry { modes: Modes::Both, pattern: "show users", help: "the team's members and their roles", run: cmd::show_users },
    Entry { modes: Modes::Both, pattern: "show teams", help: "the teams you belong to", run: cmd::show_teams },
    Entry { modes: Modes::Both, pattern: "show quota", help: "the team's limits and what it uses", run: cmd::show_quota },
    Entry { modes: Modes::Both, pattern: "show brokers", help: "the cell's live broker nodes: last seen, connections, the team's workers on each", run: cmd::show_brokers },
    Entry { modes: Modes::Both, pattern: "show schedules", help: "the team's schedules: timetable, next and last run", run: cmd::show_schedules },
    Entry { modes: Modes::Oper, pattern: "run schedule <schedule>", help: "run a schedule once now, as its owner", run: cmd::run_schedule },
    Entry { modes: Modes::Both, pattern: "show invitations", help: "invitations to you, and (admins) the team's pending ones", run: cmd::show_invitations },
    Entry { modes: Modes::Both, pattern: "help", help: "list the commands of this mode", run: cmd::help },
    Entry { modes: Modes::Both, pattern: "exit", help: "leave configure mode, or the console", run: cmd::exit },
    Entry { modes: Modes::Both, pattern: "quit", help: "leave the console", run: cmd::quit },
    // Configure mode: workers.
    Entry { modes: Modes::Conf, pattern: "set workers identity <name>", help: "create a worker; its token is shown once", run: cmd::create_worker },
    Entry { modes: Modes::Conf, pattern: "set workers <worker> description <text...>", help: "describe a worker", run: cmd::worker_description },
    Entry { modes: Modes::Conf, pattern: "set workers <worker> visibility <visibility>", help: "who may use the worker and its own services", run: cmd::worker_visibility },
    Entry { modes: Modes::Conf, pattern: "set workers <worker> token regenerate", help: "issue a new token; the old one is refused at once", run: cmd::worker_regenerate },
    Entry { modes: Modes::Conf, pattern: "delete workers <worker>", help: "delete a worker (its connection is closed)", run: cmd::delete_worker },
    // Services.
    Entry { modes: Modes::Conf, pattern: "set services name <name>", help: "create a service (roundrobin, local)", run: cmd::create_service },
    Entry { modes: Modes::Conf, pattern: "set services <service> description <text...>", help: "describe a service", run: cmd::service_description },
    Entry { modes: Modes::Conf, pattern: "set services <service> algorithm <algorithm>", help: "roundrobin, mirror (every worker) or serial", run: cmd::service_algorithm },
    Entry { modes: Modes::Conf, pattern: "set services <service> timeout <duration>", help: "a request's default limit", run: cmd::service_timeout },
    Entry { modes: Modes::Conf, pattern: "set services <service> visibility <visibility>", help: "who may call it: local, team or public", run: cmd::service_visibility },
    Entry { modes: Modes::Conf, pattern: "set services <service> history <history>", help: "who reads its jobs: sender (and admins) or team", run: cmd::service_history },
    Entry { modes: Modes::Conf, pattern: "set services <service> batch <number>", help: "mirror: at most this many workers at once", run: cmd::service_batch },
    Entry { modes: Modes::Conf, pattern: "set services <service> stop-on-failure <bool>", help: "serial: stop at the first failing worker", run: cmd::service_stop_on_failure },
    Entry { modes: Modes::Conf, pattern: "set services <service> retry <bool>", help: "roundrobin: run again elsewhere when a worker is lost", run: cmd::service_retry },
    Entry { modes: Modes::Conf, pattern: "set services <service> workers add <worker>", help: "bind a worker to the service", run: cmd::service_add_worker },
    Entry { modes: Modes::Conf, pattern: "set services <service> workers remove <worker>", help: "unbind a worker from the service", run: cmd::service_remove_worker },
    Entry { modes: Modes::Conf, pattern: "delete services <service>", help: "delete a service", run: cmd::delete_service },
    // Directories and triggers.
    Entry { modes: Modes::Conf, pattern: "set directory <dirpath>", help: "create a directory for trigger files (and those above it)", run: cmd::create_directory },
    Entry { modes: Modes::Conf, pattern: "set directory <directory> rename <dirpath>", help: "move a directory with everything in it", run: cmd::rename_directory },
    Entry { modes: Modes::Conf, pattern: "delete directory <directory>", help: "delete an empty directory (no triggers, no directories)", run: cmd::delete_directory },
    Entry { modes: Modes::Conf, pattern: "set trigger name <path>", help: "create a trigger file /directory/name (in any directory)", run: cmd::create_trigger },
    Entry { modes: Modes::Conf, pattern: "set trigger <trigger> plugin <plugin>", help: "the plugin a write runs", run: cmd::trigger_plugin },
    Entry { modes: Modes::Conf, pattern: "set trigger <trigger> service attach <service>", help: "route the trigger's writes to a service", run: cmd::trigger_service },
    Entry { modes: Modes::Conf, pattern: "set trigger <trigger> args <key=value>", help: "set an argument the plugin gets", run: cmd::trigger_arg },
    Entry { modes: Modes::Conf, pattern: "set trigger <trigger> split <split>", help: "lines: each complete line is a request (log shipping)", run: cmd::trigger_split },
    Entry { modes: Modes::Conf, pattern: "set trigger <trigger> batch-lines <number>", help: "split lines: at most this many lines per request", run: cmd::trigger_batch_lines },
    Entry { modes: Modes::Conf, pattern: "set trigger <trigger> timeout <duration>", help: "a write's request limit", run: cmd::trigger_timeout },
    Entry { modes: Modes::Conf, pattern: "set trigger <trigger> mode <mode>", help: "the file's unix mode (octal)", run: cmd::trigger_mode },
    Entry { modes: Modes::Conf, pattern: "set trigger <trigger> description <text...>", help: "describe a trigger", run: cmd::trigger_description },
    Entry { modes: Modes::Conf, pattern: "set trigger <trigger> visibility <visibility>", help: "local: only you see the file; team: every member", run: cmd::trigger_visibility },
    Entry { modes: Modes::Conf, pattern: "set trigger <trigger> rename <path>", help: "move the trigger to /directory/name", run: cmd::trigger_rename },
    Entry { modes: Modes::Conf, pattern: "delete trigger <trigger> args <key>", help: "remove an argument", run: cmd::trigger_delete_arg },
    Entry { modes: Modes::Conf, pattern: "delete trigger <trigger>", help: "delete a trigger", run: cmd::delete_trigger },
    // Schedules.
    Entry { modes: Modes::Conf, pattern: "set schedule name <name> <service> <plugin> [every <duration>] [cron <text>] [time-zone <text>] [jitter <duration>] [timeout <duration>] [args <key=value>]... [batch <share>] [max-failures <share>] [deadline <duration>] [concurrency <concurrency>] [starting-deadline <duration>] [visibility <visibility>] command <text...>",
        help: "create a schedule: a request run every so long or by cron, as you", run: cmd::create_schedule },
    Entry { modes: Modes::Conf, pattern: "set schedule <schedule> pause", help: "stop starting its runs", run: cmd::schedule_pause },
    Entry { modes: Modes::Conf, pattern: "set schedule <schedule> resume", help: "start its runs again, from its next due time", run: cmd::schedule_resume },
    Entry { modes: Modes::Conf, pattern: "delete schedule <schedule>", help: "delete a schedule", run: cmd::delete_schedule },
    // Users, teams, invitations.
    Entry { modes: Modes::Conf, pattern: "set users identity <name> secret <text>", help: "create a user in this team with a secret", run: cmd::create_user },
    Entry { modes: Modes::Conf, pattern: "set users <user> role <role>", help: "make a member an admin, or a member", run: cmd::user_role },
    Entry { modes: Modes::Conf, pattern: "delete users <user>", help: "remove a member from the team (at once, everywhere)", run: cmd::delete_user },
    Entry { modes: Modes::Conf, pattern: "invite <identity> [role <role>]", help: "invite an existing user into the team", run: cmd::invite },
    Entry { modes: Modes::Conf, pattern: "delete invitations <invited>", help: "withdraw an invitation", run: cmd::withdraw },
    Entry { modes: Modes::Conf, pattern: "set teams name <name>", help: "create a team (you are its admin)", run: cmd::create_team },
    Entry { modes: Modes::Conf, pattern: "delete teams <team>", help: "delete a team and everything in it", run: cmd::delete_team },
    Entry { modes: Modes::Conf, pattern: "set quota preset <preset>", help: "operators: a tier's limits for the team", run: cmd::quota_preset },
    Entry { modes: Modes::Conf, pattern: "set quota <field> <limit>", help: "operators: one limit of the team", run: cmd::quota_field },
    // The operator's: any team's tier and limits, any user's team allowance.
    Entry { modes: Modes::Both, pattern: "show teams all", help: "operators: every team, its tier, limits and use", run: op::show_all_teams },
    Entry { modes: Modes::Both, pattern: "show users all", help: "operators: every user and how many teams they may create", run: op::show_all_users },
    Entry { modes: Modes::Conf, pattern: "set teams <any-team> quota preset <preset>", help: "operators: give any team a tier's limits", run: op::team_preset },
    Entry { modes: Modes::Conf, pattern: "set teams <any-team> quota <field> <limit>", help: "operators: one limit of any team", run: op::team_limit },
    Entry { modes: Modes::Conf, pattern: "set users <account> max-teams <allowance>", help: "operators: how many teams a user may create (tier: as their teams' tiers)", run: op::user_max_teams },
    Entry { modes: Modes::Both, pattern: "set password", help: "change your secret (asks for the current one)", run: cmd::password },
];

/// A pattern's element.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Element {
    Word(&'static str),
    Value(Kind),
    Rest(Kind),
    /// Options in any order: (keyword, value kind, repeatable).
    Options(Vec<(&'static str, Kind, bool)>),
}

fn elements(pattern: &'static str) -> Vec<Element> {
    let mut out: Vec<Element> = Vec::new();
    let mut words = pattern.split(' ').peekable();
    while let Some(word) = words.next() {
        if let Some(keyword) = word.strip_prefix('[') {
            let value = words.next().unwrap_or_default();
            let (value, repeat) = match value.strip_suffix("]...") {
                Some(v) => (v, true),
                None => (value.strip_suffix(']').unwrap_or(value), false),
            };
            let kind = kind_of(value);
            match out.last_mut() {
                Some(Element::Options(opts)) => opts.push((keyword, kind, repeat)),
                _ => out.push(Element::Options(vec![(keyword, kind, repeat)])),
            }
        } else if word.starts_with('<') && word.ends_with("...>") {
            out.push(Element::Rest(Kind::Rest));
        } else if word.starts_with('<') {
            out.push(Element::Value(kind_of(word)));
        } else {
            out.push(Element::Word(word));
        }
    }
    out
}

fn kind_of(placeholder: &str) -> Kind {
    let label = placeholder.trim_start_matches('<').trim_end_matches('>');
    // A pattern naming no kind is a bug in the table; the table's test catches it.
    Kind::from_label(label).unwrap_or(Kind::Text)
}

/// What the words of a command line came to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Args {
    values: Vec<(Kind, String)>,
    options: Vec<(&'static str, String)>,
}

impl Args {
    /// The value of `kind` (the table guarantees one where the pattern has it).
    pub fn get(&self, kind: Kind) -> &str {
        self.values
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or("", |(_, v)| v.as_str())
    }

    /// Every value of option `keyword`, in order.
    pub fn option(&self, keyword: &str) -> Vec<&str> {
        self.options
            .iter()
            .filter(|(k, _)| *k == keyword)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// What may come next on a line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Next {
    /// A keyword, with one line about it.
    Word(&'static str, &'static str),
    /// A value.
    Value(Kind),
    /// The line is a whole command: Enter runs it.
    End,
}

/// How far a pattern got with some words.
enum Progress {
    /// Every word was taken and the pattern is satisfied; more may still follow.
    Done(Args, Vec<Next>),
    /// Every word was taken; the pattern wants more.
    Wants(Vec<Next>),
    /// The word at this index did not fit; `literal` keywords had matched before it.
    Failed { at: usize, expected: Vec<Next> },
}

fn walk(entry: &'static Entry, words: &[String]) -> Progress {
    let elems = elements(entry.pattern);
    let mut args = Args::default();
    let mut i = 0;
    for (e, elem) in elems.iter().enumerate() {
        match elem {
            Element::Word(w) => match words.get(i) {
                None => return Progress::Wants(vec![Next::Word(w, word_help(w, entry))]),
                Some(word) if word == w => i += 1,
                Some(_) => {
                    return Progress::Failed {
                        at: i,
                        expected: vec![Next::Word(w, word_help(w, entry))],
                    }
                }
            },
            Element::Value(kind) => match words.get(i) {
                None => return Progress::Wants(vec![Next::Value(*kind)]),
                Some(word) => {
                    args.values.push((*kind, word.clone()));
                    i += 1;
                }
            },
            Element::Rest(kind) => {
                if i >= words.len() {
                    return Progress::Wants(vec![Next::Value(*kind)]);
                }
                args.values.push((*kind, words[i..].join(" ")));
                return Progress::Done(args, vec![Next::Value(*kind), Next::End]);
            }
            Element::Options(opts) => {
                let rest_after = elems.len() > e + 1;
                loop {
                    let unused: Vec<Next> = opts
                        .iter()
                        .filter(|(k, _, repeat)| *repeat || args.option(k).is_empty())
                        .map(|(k, _, _)| Next::Word(k, word_help(k, entry)))
                        .collect();
                    let Some(word) = words.get(i) else {
                        let mut next = unused;
                        match elems.get(e + 1) {
                            Some(Element::Word(w)) => next.push(Next::Word(w, word_help(w, entry))),
                            Some(_) => {}
                            None => next.push(Next::End),
                        }
                        return if rest_after {
                            Progress::Wants(next)
                        } else {
                            Progress::Done(args, next)
                        };
                    };
                    let Some((keyword, kind, _)) = opts
                        .iter()
                        .find(|(k, _, repeat)| k == word && (*repeat || args.option(k).is_empty()))
                    else {
                        break;
                    };
                    match words.get(i + 1) {
                        None => return Progress::Wants(vec![Next::Value(*kind)]),
                        Some(value) => {
                            args.options.push((keyword, value.clone()));
                            i += 2;
                        }
                    }
                }
            }
        }
    }
    if i < words.len() {
        Progress::Failed {
            at: i,
            expected: vec![Next::End],
        }
    } else {
        Progress::Done(args, vec![Next::End])
    }
}

fn word_help(word: &str, entry: &'static Entry) -> &'static str {
    WORDS
        .iter()
        .find(|(w, _)| *w == word)
        .map_or(entry.help, |(_, h)| h)
}

/// A command line that is not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Nothing in this mode begins with the first word.
    #[error("unknown command `{word}`: type help, or ? for what may come next")]
    Unknown {
        /// The word.
        word: String,
    },
    /// A word that does not fit where it stands.
    #[error("`{word}` does not fit after `{before}`: expected {expected}")]
    Unexpected {
        /// The word.
        word: String,
        /// The words before it.
        before: String,
        /// What would have fit.
        expected: String,
    },
    /// The line stops short of a command.
    #[error("`{line}` is incomplete: expected {expected}")]
    Incomplete {
        /// The line.
        line: String,
        /// What may come next.
        expected: String,
    },
    /// A quote that is never closed.
    #[error("a quote is not closed")]
    Quote,
    /// This command exists, in the other mode.
    #[error("`{line}` is a configure-mode command: type configure first")]
    OtherMode {
        /// The line.
        line: String,
    },
}

fn describe_next(next: &[Next]) -> String {
    let mut names: Vec<String> = next
        .iter()
        .map(|n| match n {
            Next::Word(w, _) => (*w).to_string(),
            Next::Value(k) => format!("<{}>", k.label()),
            Next::End => "the end of the line".to_string(),
        })
        .collect();
    names.sort();
    names.dedup();
    match names.len() {
        0 => "nothing".to_string(),
        1 => names.remove(0),
        _ => {
            let last = names.pop().unwrap_or_default();
            format!("{} or {last}", names.join(", "))
        }
    }
}

/// The entries offered in `mode` (`None`: every entry, for `-c`).
pub fn offered(mode: Option<Mode>) -> impl Iterator<Item = &'static Entry> {
    ENTRIES
        .iter()
        .filter(move |e| mode.is_none_or(|m| e.modes.has(m)))
}

/// The command `words` are, in `mode` (`None`: any mode).
pub fn parse(mode: Option<Mode>, words: &[String]) -> Result<(&'static Entry, Args), ParseError> {
    let mut best: Option<(&'static Entry, Args, usize)> = None;
    let mut furthest: (usize, Vec<Next>) = (0, Vec::new());
    let mut wants: Vec<Next> = Vec::new();
    for entry in offered(mode) {
        match walk(entry, words) {
            Progress::Done(args, _) => {
                // The pattern with the most keywords wins: `set workers identity x` is
                // a creation, not a property of a worker named `identity`.
                let literal = elements(entry.pattern)
                    .iter()
                    .filter(|e| matches!(e, Element::Word(_)))
                    .count();
                if best.as_ref().is_none_or(|(_, _, l)| literal > *l) {
                    best = Some((entry, args, literal));
                }
            }
            Progress::Wants(next) => wants.extend(next),
            Progress::Failed { at, expected } => {
                if at > furthest.0 {
                    furthest = (at, expected);
                } else if at == furthest.0 {
                    furthest.1.extend(expected);
                }
            }
        }
    }
    if let Some((entry, args, _)) = best {
        return Ok((entry, args));
    }
    let line = words.join(" ");
    if !wants.is_empty() {
        return Err(ParseError::Incomplete {
            line,
            expected: describe_next(&wants),
        });
    }
    if mode == Some(Mode::Operational) && parse(Some(Mode::Configure), words).is_ok() {
        return Err(ParseError::OtherMode { line });
    }
    let (at, expected) = furthest;
    if at == 0 {
        return Err(ParseError::Unknown {
            word: words.first().cloned().unwrap_or_default(),
        });
    }
    Err(ParseError::Unexpected {
        word: words[at].clone(),
        before: words[..at].join(" "),
        expected: describe_next(&expected),
    })
}

/// What may follow `words` in `mode`: keywords, values, or the end of the line.
pub fn next(mode: Option<Mode>, words: &[String]) -> Vec<Next> {
    let mut out = Vec::new();
    for entry in offered(mode) {
        match walk(entry, words) {
            Progress::Done(_, next) | Progress::Wants(next) => out.extend(next),
            Progress::Failed { .. } => {}
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A word of a line and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    /// The word, quotes removed.
    pub text: String,
    /// Its byte offset in the line.
    pub start: usize,
}

/// Splits a line into words: blanks separate, `"..."` and `'...'` keep blanks, `\` escapes
/// the next character. `Err` when a quote is not closed, with the words so far and the open
/// word (for completion).
pub fn split(line: &str) -> Result<Vec<Word>, (Vec<Word>, Word)> {
    let mut words = Vec::new();
    let mut current: Option<Word> = None;
    let mut quote: Option<char> = None;
    let mut chars = line.char_indices();
    while let Some((at, c)) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => current
                .get_or_insert(Word {
                    text: String::new(),
                    start: at,
                })
                .text
                .push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                current.get_or_insert(Word {
                    text: String::new(),
                    start: at,
                });
            }
            (None, '\\') => {
                let word = current.get_or_insert(Word {
                    text: String::new(),
                    start: at,
                });
                if let Some((_, next)) = chars.next() {
                    word.text.push(next);
                }
            }
            (None, c) if c.is_whitespace() => {
                if let Some(word) = current.take() {
                    words.push(word);
                }
            }
            (None, c) => current
                .get_or_insert(Word {
                    text: String::new(),
                    start: at,
                })
                .text
                .push(c),
        }
    }
    if quote.is_some() {
        let open = current.unwrap_or(Word {
            text: String::new(),
            start: line.len(),
        });
        return Err((words, open));
    }
    if let Some(word) = current {
        words.push(word);
    }
    Ok(words)
}

/// The words of a whole line, for running it.
pub fn words_of(line: &str) -> Result<Vec<String>, ParseError> {
    split(line)
        .map(|w| w.into_iter().map(|w| w.text).collect())
        .map_err(|_| ParseError::Quote)
}

/// The lines of `help` in `mode`: each command's pattern and its one line, aligned.
pub fn help_lines(mode: Mode) -> Vec<String> {
    let entries: Vec<&Entry> = offered(Some(mode)).collect();
    let width = entries.iter().map(|e| e.pattern.len()).max().unwrap_or(0);
    entries
        .iter()
        .map(|e| format!("  {:width$}  {}", e.pattern, e.help))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(line: &str) -> Vec<String> {
        words_of(line).unwrap()
    }

    #[test]
    fn every_placeholder_names_a_kind() {
        for entry in ENTRIES {
            for word in entry.pattern.split(' ') {
                let label = word
                    .trim_start_matches('[')
                    .trim_end_matches("]...")
                    .trim_end_matches(']');
                if let Some(label) = label.strip_prefix('<') {
                    let label = label.trim_end_matches('>').trim_end_matches("...");
                    assert!(
                        Kind::from_label(label).is_some(),
                        "{}: <{label}>",
                        entry.pattern
                    );
                }
            }
        }
    }

    #[test]
    fn creation_wins_over_a_property_of_an_object_named_like_the_keyword() {
        let (entry, args) =
            parse(Some(Mode::Configure), &w("set workers identity demo01")).unwrap();
        assert_eq!(entry.pattern, "set workers identity <name>");
        assert_eq!(args.get(Kind::Name), "demo01");
        let (entry, args) = parse(
            Some(Mode::Configure),
            &w("set workers demo01 description web \"front end\""),
        )
        .unwrap();
        assert_eq!(entry.pattern, "set workers <worker> description <text...>");
        assert_eq!(args.get(Kind::Rest), "web front end");
        assert_eq!(args.get(Kind::Worker), "demo01");
    }

    #[test]
    fn options_come_in_any_order_and_repeat() {
        let line = "request demo command args a=1 timeout 5s args b=2 command uptime -p";
        let (entry, args) = parse(Some(Mode::Operational), &w(line)).unwrap();
        assert!(entry.pattern.starts_with("request"));
        assert_eq!(args.get(Kind::Service), "demo");
        assert_eq!(args.get(Kind::Plugin), "command");
        assert_eq!(args.option("args"), vec!["a=1", "b=2"]);
        assert_eq!(args.option("timeout"), vec!["5s"]);
        assert_eq!(args.get(Kind::Rest), "uptime -p");
        // `timeout` once only.
        let err = parse(
            Some(Mode::Operational),
            &w("request demo command timeout 1s timeout 2s command x"),
        );
        assert!(err.is_err());
    }

    #[test]
    fn errors_say_what_would_fit() {
        let err = parse(Some(Mode::Configure), &w("sett workers")).unwrap_err();
        assert!(matches!(err, ParseError::Unknown { .. }), "{err}");
        let err = parse(Some(Mode::Configure), &w("set services demo colour red")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("`colour` does not fit after `set services demo`"),
            "{text}"
        );
        assert!(
            text.contains("algorithm") && text.contains("workers"),
            "{text}"
        );
        let err = parse(Some(Mode::Configure), &w("set services demo")).unwrap_err();
        assert!(matches!(err, ParseError::Incomplete { .. }), "{err}");
        let err = parse(Some(Mode::Operational), &w("set services name x")).unwrap_err();
        assert!(matches!(err, ParseError::OtherMode { .. }), "{err}");
        assert_eq!(words_of("set \"x").unwrap_err(), ParseError::Quote);
    }

    #[test]
    fn next_lists_keywords_values_and_the_end() {
        let next = next(Some(Mode::Configure), &w("set services demo"));
        let words: Vec<&str> = next
            .iter()
            .filter_map(|n| match n {
                Next::Word(w, _) => Some(*w),
                _ => None,
            })
            .collect();
        for want in [
            "algorithm",
            "timeout",
            "visibility",
            "batch",
            "workers",
            "description",
        ] {
            assert!(words.contains(&want), "{want} missing from {words:?}");
        }
        let after_show = super::next(Some(Mode::Operational), &w("show workers"));
        assert_eq!(after_show, vec![Next::End]);
        let request = super::next(Some(Mode::Operational), &w("request demo command"));
        assert!(request.contains(&Next::Word("timeout", word_help("timeout", &ENTRIES[1]))));
        assert!(request
            .iter()
            .any(|n| matches!(n, Next::Word("command", _))));
    }

    #[test]
    fn split_keeps_quoted_blanks_and_offsets() {
        let words = split("set  x \"a b\" c\\ d").unwrap();
        let texts: Vec<&str> = words.iter().map(|w| w.text.as_str()).collect();
        assert_eq!(texts, ["set", "x", "a b", "c d"]);
        assert_eq!(words[1].start, 5);
        let (done, open) = split("set 'ab").unwrap_err();
        assert_eq!(done.len(), 1);
        assert_eq!(open.text, "ab");
    }
}
