//! The interactive console on rustyline: the prompt, TAB completion from the grammar and
//! the API, `?` at any point, history across sessions, Ctrl-C and ^D.

use super::grammar::{self, Kind, Mode, Next};
use super::{help_query, path_part, possible, print_lines, Session};
use api::directories::DirectoryView;
use api::invitations::InvitationView;
use api::schedules::ScheduleView;
use api::services::ServiceView;
use api::teams::{MemberView, QuotaView, TeamView};
use api::triggers::TriggerView;
use api::users::UserView;
use api::workers::WorkerView;
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{
    Cmd, CompletionType, ConditionalEventHandler, Config, Context, Editor, Event, EventContext,
    EventHandler, Helper, KeyEvent, RepeatCount,
};
use std::path::Path;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

/// TAB's knowledge: the grammar, the mode, and the API for names.
struct ConsoleHelper {
    api: Rc<super::control::Control>,
    mode: Arc<Mutex<Mode>>,
}

impl ConsoleHelper {
    fn names(&self, kind: Kind, partial: &str) -> Vec<String> {
        let team = path_part(&self.api.login.borrow().team);
        let api = &self.api;
        match kind {
            Kind::Worker => api.names("/workers", "identity", |w: WorkerView| w.identity),
            Kind::Service => api.names("/services", "name", |v: ServiceView| v.name),
            Kind::Trigger if partial.starts_with('/') => {
                api.names("/triggers", "path", |t: TriggerView| t.path)
            }
            Kind::Trigger => api.names("/triggers", "name", |t: TriggerView| t.name),
            Kind::Directory if partial.starts_with('/') => {
                api.names("/directories", "path", |d: DirectoryView| d.path)
            }
            Kind::Directory => api.names("/directories", "path-", |d: DirectoryView| {
                d.path.trim_start_matches('/').to_string()
            }),
            // A new path: in an existing directory (TAB goes on after its `/`).
            Kind::DirPath | Kind::Path => {
                api.names("/directories", "path/", |d: DirectoryView| d.path + "/")
            }
            Kind::Schedule => api.names("/schedules", "name", |v: ScheduleView| v.name),
            Kind::Member => api.names(&format!("/teams/{team}/members"), "identity", {
                |m: MemberView| m.identity
            }),
            Kind::Team => api.names("/teams", "name", |t: TeamView| t.name),
            Kind::Invitation => api.names("/invitations", "team", |i: InvitationView| i.team),
            Kind::AnyTeam => api.names("/quotas", "team", |q: QuotaView| q.team),
            Kind::Account => api.names("/users", "identity", |u: UserView| u.identity),
            Kind::Invited => api.names(&format!("/teams/{team}/invitations"), "identity", {
                |i: InvitationView| i.identity
            }),
            _ => kind.choices().iter().map(|c| (*c).to_string()).collect(),
        }
    }
}

impl Completer for ConsoleHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        let (words, partial, start) = match grammar::split(before) {
            Err((words, open)) => (words, open.text, open.start),
            Ok(mut words) => {
                if before.is_empty() || before.ends_with(char::is_whitespace) {
                    (words, String::new(), pos)
                } else {
                    let last = words.pop().unwrap_or(grammar::Word {
                        text: String::new(),
                        start: pos,
                    });
                    (words, last.text, last.start)
                }
            }
        };
        let words: Vec<String> = words.into_iter().map(|w| w.text).collect();
        let mut candidates: Vec<String> = Vec::new();
        let mode = self.mode.lock().map_or(Mode::Operational, |m| *m);
        for next in grammar::next(Some(mode), &words) {
            match next {
                Next::Word(w, _) => candidates.push(w.to_string()),
                Next::Value(kind) => candidates.extend(self.names(kind, &partial)),
                Next::End => {}
            }
        }
        candidates.retain(|c| c.starts_with(&partial));
        candidates.sort();
        candidates.dedup();
        let pairs = candidates
            .into_iter()
            .map(|c| Pair {
                // A directory's path ends in `/`: what goes in it comes next, not a space.
                replacement: if c.ends_with('/') {
                    c.clone()
                } else {
                    format!("{c} ")
                },
                display: c,
            })
            .collect();
        Ok((start, pairs))
    }
}

impl Hinter for ConsoleHelper {
    type Hint = String;
}
impl Highlighter for ConsoleHelper {}
impl Validator for ConsoleHelper {}
impl Helper for ConsoleHelper {}

/// `?`: ends the line's editing with the line kept aside, so that the loop can answer and
/// give the line back; typed into quotes or free text it is just a `?`.
struct QuestionMark {
    asked: Arc<Mutex<Option<String>>>,
    mode: Arc<Mutex<Mode>>,
}

impl ConditionalEventHandler for QuestionMark {
    fn handle(&self, _: &Event, _: RepeatCount, _: bool, ctx: &EventContext<'_>) -> Option<Cmd> {
        let before = &ctx.line()[..ctx.pos()];
        let mode = *self.mode.lock().ok()?;
        help_query(Some(mode), &format!("{before}?"))?;
        if let Ok(mut asked) = self.asked.lock() {
            *asked = Some(before.to_string());
        }
        Some(Cmd::Interrupt)
    }
}

/// Reads and runs lines until `exit`, `quit` or ^D in operational mode.
pub fn run(session: &mut Session, history: Option<&Path>) -> anyhow::Result<()> {
    let config = Config::builder()
        .completion_type(CompletionType::List)
        .auto_add_history(false)
        .max_history_size(5000)?
        .build();
    let mut editor: Editor<ConsoleHelper, DefaultHistory> = Editor::with_config(config)?;
    // The mode the line is read in, for TAB (the helper) and `?` (a key handler, which
    // must be Send): one cell for both.
    let mode = Arc::new(Mutex::new(session.mode));
    editor.set_helper(Some(ConsoleHelper {
        api: session.api.clone(),
        mode: mode.clone(),
    }));
    let asked = Arc::new(Mutex::new(None::<String>));
    editor.bind_sequence(
        KeyEvent::from('?'),
        EventHandler::Conditional(Box::new(QuestionMark {
            asked: asked.clone(),
            mode: mode.clone(),
        })),
    );
    if let Some(path) = history {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        // A first start has no history yet.
        let _ = editor.load_history(path);
    }
    let mut initial = String::new();
    while !session.leave {
        if let Ok(mut m) = mode.lock() {
            *m = session.mode;
        }
        let prompt = session.prompt();
        let read = editor.readline_with_initial(&prompt, (&initial, ""));
        initial.clear();
        match read {
            Ok(line) => {
                // A secret typed on the line stays out of the history file.
                if !line.trim().is_empty() && !line.contains("secret") {
                    let _ = editor.add_history_entry(line.as_str());
                    if let Some(path) = history {
                        let _ = editor.append_history(path);
                    }
                }
                if let Err(e) = session.execute(Some(session.mode), &line) {
                    eprintln!("error: {e}");
                }
            }
            Err(ReadlineError::Interrupted) => {
                let question = asked.lock().ok().and_then(|mut a| a.take());
                match question {
                    Some(line) => {
                        // The editor left the cursor after the line.
                        println!("?");
                        if let Some((words, partial)) =
                            help_query(Some(session.mode), &format!("{line}?"))
                        {
                            print_lines(&possible(Some(session.mode), &words, &partial));
                        }
                        initial = line;
                    }
                    // Ctrl-C drops the line, never the console.
                    None => println!("^C"),
                }
            }
            Err(ReadlineError::Eof) => match session.mode {
                Mode::Configure => session.mode = Mode::Operational,
                Mode::Operational => break,
            },
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
