//! The management console, `triggerfs cli` (issue 13): the seed's Get Started flow typed in
//! a terminal (TAB, `?`, `file`, `request`), every `set` and `delete` through `-c` with the
//! API's state checked after each, and errors that are one line and never end the console.

use anyhow::{ensure, Context, Result};
use regex::Regex;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tests::*;

/// `up` in a temporary directory, its config, and the admin logged in.
struct Rig {
    dir: tempfile::TempDir,
    up: Up,
    config: PathBuf,
    api: Api,
}

impl Rig {
    async fn start() -> Result<Rig> {
        let dir = tempfile::tempdir()?;
        let up = Up::start(&dir.path().join("data"))?;
        let config = dir.path().join("data/triggerfs.toml");
        let api = Api::login(&up.url, &up.team, &up.identity, &up.secret).await?;
        Ok(Rig {
            dir,
            up,
            config,
            api,
        })
    }

    /// `triggerfs --config <config> cli <args>` with HOME and XDG_DATA_HOME in the rig.
    fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(program);
        c.arg("--config")
            .arg(&self.config)
            .arg("cli")
            .args(args)
            .env("HOME", self.dir.path())
            .env("XDG_DATA_HOME", self.dir.path().join("xdg"))
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .current_dir(self.dir.path());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("TRIGGERFS_") {
                c.env_remove(k);
            }
        }
        c
    }

    /// Runs `command` with `stdin`; (exit status, stdout, stderr).
    fn run(&self, mut command: Command, stdin: &str) -> Result<(i32, String, String)> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn triggerfs cli")?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(stdin.as_bytes())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                anyhow::bail!("triggerfs cli did not finish within 30 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let out = child.wait_with_output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8(out.stdout)?,
            String::from_utf8(out.stderr)?,
        ))
    }

    /// `cli -c LINE` as the admin, which must succeed; its stdout.
    fn ok(&self, line: &str) -> Result<String> {
        let (code, out, err) = self.run(self.command(&bin(), &["-c", line]), "")?;
        ensure!(code == 0, "`{line}` exited {code}:\n{out}{err}");
        Ok(out)
    }

    /// `cli -c LINE`, which must fail; its one line of stderr.
    fn fails(&self, args: &[&str], line: &str) -> Result<String> {
        let mut all = args.to_vec();
        all.extend(["-c", line]);
        let (code, out, err) = self.run(self.command(&bin(), &all), "")?;
        ensure!(code != 0, "`{line}` succeeded:\n{out}{err}");
        let lines: Vec<&str> = err.lines().collect();
        ensure!(
            lines.len() == 1 && lines[0].starts_with("error: "),
            "`{line}`: not one error line:\n{err}"
        );
        Ok(lines[0].to_string())
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.api
            .ok("GET", &format!("/api/v1{path}"), Value::Null)
            .await
    }
}

/// A `set`/`delete` pattern of `help` as a regex over a command line (a group of options
/// `[keyword <kind>]` is any number of `keyword value`, in any order).
fn pattern_regex(pattern: &str) -> Result<Regex> {
    let mut re = String::from("^");
    let words: Vec<&str> = pattern.split(' ').collect();
    let mut options: Vec<String> = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let word = words[i];
        if let Some(keyword) = word.strip_prefix('[') {
            options.push(regex::escape(keyword));
            i += 2;
            if !words.get(i).is_some_and(|w| w.starts_with('[')) {
                re.push_str(&format!(r"(?: (?:{}) \S+)*", options.join("|")));
                options.clear();
            }
            continue;
        }
        if i > 0 {
            re.push(' ');
        }
        i += 1;
        if word.ends_with("...>") {
            re.push_str(".+");
        } else if word.starts_with('<') {
            re.push_str(r"\S+");
        } else {
            re.push_str(&regex::escape(word));
        }
    }
    re.push('$');
    Ok(Regex::new(&re)?)
}

/// `rig.ok(LINE)?`, the line noted in `ran` (every pattern of `help` must be among them).
macro_rules! ok {
    ($rig:ident, $ran:ident, $line:expr) => {{
        let line: String = $line.to_string();
        $ran.push(line.clone());
        $rig.ok(&line)?
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_set_and_delete_runs_through_c_and_changes_the_api() -> Result<()> {
    let rig = Rig::start().await?;
    let team = rig.up.team.clone();
    let mut ran: Vec<String> = Vec::new();

    workers_through_c(&rig, &mut ran, &team).await?;

    services_through_c(&rig, &mut ran).await?;

    directories_and_triggers_through_c(&rig, &mut ran).await?;

    users_teams_and_quotas_through_c(&rig, &mut ran, &team).await?;

    invitations_through_c(&rig, &mut ran, &team).await?;

    schedules_through_c(&rig, &mut ran).await?;

    // Deletions last: the service and the worker.
    ok!(rig, ran, "delete services s1");
    let (status, _) = rig
        .api
        .call("GET", "/api/v1/services/s1", Value::Null)
        .await?;
    assert_eq!(status.as_u16(), 404);
    ok!(rig, ran, "delete workers w1");
    let (status, _) = rig
        .api
        .call("GET", "/api/v1/workers/w1", Value::Null)
        .await?;
    assert_eq!(status.as_u16(), 404);

    // The secret, changed from a script: current and new on stdin.
    ran.push("set password".into());
    let (code, out, err) = rig.run(
        rig.command(&bin(), &["-c", "set password"]),
        &format!("{}\nnew-admin-secret\n", rig.up.secret),
    )?;
    ensure!(code == 0, "set password: {out}{err}");
    Api::login(&rig.up.url, &team, &rig.up.identity, "new-admin-secret").await?;
    let old = Api::login(&rig.up.url, &team, &rig.up.identity, &rig.up.secret).await;
    ensure!(old.is_err(), "the old secret still logs in");

    // Every set and delete of `help` ran above.
    let (code, help, err) = rig.run(
        rig.command(&bin(), &["--secret", "new-admin-secret", "-c", "help"]),
        "",
    )?;
    ensure!(code == 0, "{help}{err}");
    let patterns: Vec<&str> = help
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("set ") || l.starts_with("delete "))
        .filter_map(|l| l.split("  ").next())
        .collect();
    ensure!(patterns.len() > 30, "help lists too few:\n{help}");
    for pattern in patterns {
        let re = pattern_regex(pattern)?;
        ensure!(
            ran.iter().any(|line| re.is_match(line)),
            "no one-shot test runs `{pattern}`"
        );
    }
    Ok(())
}

/// Schedules: made, paused, resumed, shown, deleted.
async fn schedules_through_c(rig: &Rig, ran: &mut Vec<String>) -> Result<()> {
    ok!(
        rig,
        ran,
        "set schedule name nightly s1 command every 1h batch 10% max-failures 5 \
         concurrency replace command apt-get -y upgrade"
    );
    let s = rig.get("/schedules/nightly").await?;
    assert_eq!(s["timetable"]["every"], "1h");
    assert_eq!(s["request"]["batch"], "10%");
    assert_eq!(s["request"]["max_failures"], "5");
    assert_eq!(s["request"]["command"], "apt-get -y upgrade");
    assert_eq!(s["concurrency"], "replace");
    assert_eq!(s["state"], "active");
    ok!(rig, ran, "set schedule nightly pause");
    assert_eq!(rig.get("/schedules/nightly").await?["state"], "paused");
    ok!(rig, ran, "set schedule nightly resume");
    assert_eq!(rig.get("/schedules/nightly").await?["state"], "active");
    let out = rig.ok("show schedules")?;
    ensure!(out.contains("nightly") && out.contains("every 1h"), "{out}");
    ok!(rig, ran, "delete schedule nightly");
    let (status, _) = rig
        .api
        .call("GET", "/api/v1/schedules/nightly", Value::Null)
        .await?;
    assert_eq!(status.as_u16(), 404);
    Ok(())
}

/// Workers.
async fn workers_through_c(rig: &Rig, ran: &mut Vec<String>, team: &str) -> Result<()> {
    // Workers.
    let out = ok!(rig, ran, "set workers identity w1");
    let token = Regex::new(r#"token = "([0-9a-f-]{36})""#)?
        .captures(&out)
        .with_context(|| format!("no token in:\n{out}"))?[1]
        .to_string();
    ensure!(out.contains(&format!("[workers.{team}.w1]")), "{out}");
    ok!(rig, ran, "set workers w1 description web front end");
    ok!(rig, ran, "set workers w1 visibility local");
    let w = rig.get("/workers/w1").await?;
    assert_eq!(w["description"], "web front end");
    assert_eq!(w["visibility"], "local");
    let out = ok!(rig, ran, "set workers w1 token regenerate");
    ensure!(out.contains("token = \"") && !out.contains(&token), "{out}");
    Ok(())
}

/// Services.
async fn services_through_c(rig: &Rig, ran: &mut Vec<String>) -> Result<()> {
    // Services.
    ok!(rig, ran, "set services name s1");
    ok!(rig, ran, "set services s1 description \"the demo\"");
    ok!(rig, ran, "set services s1 algorithm mirror");
    ok!(rig, ran, "set services s1 timeout 1m30s");
    ok!(rig, ran, "set services s1 visibility team");
    ok!(rig, ran, "set services s1 batch 2");
    ok!(rig, ran, "set services s1 stop-on-failure true");
    ok!(rig, ran, "set services s1 retry true");
    ok!(rig, ran, "set services s1 history team");
    let s = rig.get("/services/s1").await?;
    assert_eq!(s["description"], "the demo");
    assert_eq!(s["algorithm"], "mirror");
    assert_eq!(s["timeout_ms"], 90_000);
    assert_eq!(s["visibility"], "team");
    assert_eq!(s["batch"], 2);
    assert_eq!(s["stop_on_failure"], true);
    assert_eq!(s["retry"], true);
    assert_eq!(s["history"], "team");
    let out = ok!(rig, ran, "set services s1 workers add w1");
    ensure!(
        out.contains("Notice: service s1 (mirror) is now served by w1"),
        "{out}"
    );
    assert_eq!(rig.get("/services/s1").await?["workers"], json!(["w1"]));
    ok!(rig, ran, "set services s1 workers remove w1");
    assert_eq!(rig.get("/services/s1").await?["workers"], json!([]));
    Ok(())
}

/// Directories and triggers, in the seed's order: the trigger first, then its settings.
async fn directories_and_triggers_through_c(rig: &Rig, ran: &mut Vec<String>) -> Result<()> {
    // Directories and triggers, in the seed's order: the trigger first, then its settings.
    ok!(rig, ran, "set directory logs");
    ok!(rig, ran, "set trigger name /logs/access");
    ok!(rig, ran, "set trigger access plugin append");
    ok!(rig, ran, "set trigger access service attach s1");
    ok!(rig, ran, "set trigger access args path=/var/log/x.log");
    ok!(rig, ran, "set trigger /logs/access args sync=1");
    ok!(rig, ran, "set trigger access split lines");
    ok!(rig, ran, "set trigger access batch-lines 50");
    ok!(rig, ran, "set trigger access timeout 5s");
    ok!(rig, ran, "set trigger access mode 600");
    ok!(rig, ran, "set trigger access description nginx access log");
    ok!(rig, ran, "set trigger access visibility local");
    let triggers = rig.get("/triggers").await?;
    let t = &triggers[0];
    assert_eq!(t["path"], "/logs/access");
    assert_eq!(t["plugin"], "append");
    assert_eq!(t["service"], "s1");
    assert_eq!(t["args"], json!({"path": "/var/log/x.log", "sync": "1"}));
    assert_eq!(t["split"], "lines");
    assert_eq!(t["batch_lines"], 50);
    assert_eq!(t["timeout_ms"], 5000);
    assert_eq!(t["mode"], 0o600);
    assert_eq!(t["description"], "nginx access log");
    assert_eq!(t["visibility"], "local");
    ok!(rig, ran, "set trigger access rename /logs/access2");
    ok!(rig, ran, "delete trigger access2 args sync");
    let t = &rig.get("/triggers").await?[0];
    assert_eq!(t["path"], "/logs/access2");
    assert_eq!(t["args"], json!({"path": "/var/log/x.log"}));
    let shown = ok!(rig, ran, "show triggers");
    ensure!(
        shown.contains("access2") && shown.contains("(1 rows)"),
        "{shown}"
    );
    ok!(rig, ran, "delete trigger /logs/access2");
    assert_eq!(rig.get("/triggers").await?, json!([]));
    nested_directories_through_c(rig, ran).await?;
    ok!(rig, ran, "delete directory logs");
    assert_eq!(rig.get("/directories").await?, json!([]));
    Ok(())
}

/// Issue 28: `set directory` makes a nested directory with the ones above it, `show
/// directories` lists them, a directory moves with its trigger, and goes when empty.
async fn nested_directories_through_c(rig: &Rig, ran: &mut Vec<String>) -> Result<()> {
    let paths = || async {
        let dirs = rig.get("/directories").await?;
        let list = dirs.as_array().context("a list")?.iter();
        let path = |d: &Value| d["path"].as_str().unwrap_or_default().to_string();
        Ok::<Vec<String>, anyhow::Error>(list.map(path).collect())
    };
    ok!(rig, ran, "set directory /weatherstation/rpi");
    assert_eq!(
        paths().await?,
        ["/logs", "/weatherstation", "/weatherstation/rpi"]
    );
    ok!(rig, ran, "set trigger name /weatherstation/rpi/station1");
    let shown = ok!(rig, ran, "show directories");
    ensure!(
        shown.contains("/weatherstation/rpi") && shown.contains("(3 rows)"),
        "{shown}"
    );
    ok!(rig, ran, "set directory /weatherstation rename /stations");
    assert_eq!(paths().await?, ["/logs", "/stations", "/stations/rpi"]);
    assert_eq!(
        rig.get("/triggers").await?[0]["path"],
        "/stations/rpi/station1"
    );
    let refused = rig.fails(&[], "delete directory /stations")?;
    ensure!(
        refused.contains("holds 0 triggers and 1 directories"),
        "{refused}"
    );
    ok!(rig, ran, "delete trigger /stations/rpi/station1");
    ok!(rig, ran, "delete directory /stations/rpi");
    ok!(rig, ran, "delete directory stations");
    Ok(())
}

/// Users, teams, quotas.
async fn users_teams_and_quotas_through_c(
    rig: &Rig,
    ran: &mut Vec<String>,
    team: &str,
) -> Result<()> {
    // Users, teams, quotas.
    ok!(rig, ran, "set users identity bob secret b0b-secret");
    ok!(rig, ran, "set users bob role admin");
    let members = rig.get(&format!("/teams/{team}/members")).await?;
    ensure!(
        members
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["identity"] == "bob" && m["role"] == "admin"),
        "{members}"
    );
    ok!(rig, ran, "delete users bob");
    let members = rig.get(&format!("/teams/{team}/members")).await?;
    ensure!(!members.to_string().contains("\"bob\""), "{members}");
    ok!(rig, ran, "set teams name second");
    ensure!(rig.get("/teams").await?.to_string().contains("\"second\""));
    // The operator's: another team's tier and limits, a user's allowance.
    ok!(rig, ran, "set teams second quota preset advanced");
    ok!(rig, ran, "set teams second quota max_teams 3");
    let q = rig.get("/teams/second/quota").await?;
    ensure!(q["max_teams"] == 3 && q["max_workers"] == 100, "{q}");
    ok!(rig, ran, "set users bob max-teams 2");
    ensure!(rig.get("/users/bob").await?["max_teams"] == 2);
    ok!(rig, ran, "delete teams second");
    ensure!(!rig.get("/teams").await?.to_string().contains("\"second\""));
    ok!(rig, ran, "set quota preset basic");
    ok!(rig, ran, "set quota max_workers 7");
    let q = rig.get(&format!("/teams/{team}/quota")).await?;
    assert_eq!(q["max_workers"], 7);
    assert_eq!(q["max_services"], 5, "the other limits stay: {q}");
    ok!(rig, ran, "set quota max_workers unlimited");
    assert_eq!(
        rig.get(&format!("/teams/{team}/quota")).await?["max_workers"],
        Value::Null
    );
    ok!(rig, ran, "set quota preset unlimited");
    Ok(())
}

/// Invitations: carol, of another team, is invited, declines, is invited again, accepts.
async fn invitations_through_c(rig: &Rig, ran: &mut Vec<String>, team: &str) -> Result<()> {
    // Invitations: carol, of another team, is invited, declines, is invited again, accepts.
    rig.api
        .ok("POST", "/api/v1/teams", json!({"name": "other"}))
        .await?;
    rig.api.new_member("other", "carol", "carol-secret").await?;
    let carol = [
        "--team",
        "other",
        "--identity",
        "carol",
        "--secret",
        "carol-secret",
    ];
    ok!(rig, ran, "invite carol");
    let pending = rig.get(&format!("/teams/{team}/invitations")).await?;
    ensure!(pending.to_string().contains("\"carol\""), "{pending}");
    ok!(rig, ran, "delete invitations carol");
    assert_eq!(
        rig.get(&format!("/teams/{team}/invitations")).await?,
        json!([])
    );
    ok!(rig, ran, "invite carol role member");
    let (code, out, err) = rig.run(
        rig.command(&bin(), &[&carol[..], &["-c", "show invitations"]].concat()),
        "",
    )?;
    ensure!(
        code == 0 && out.contains(team) && out.contains("(1 rows)"),
        "{out}{err}"
    );
    let (code, out, err) = rig.run(
        rig.command(
            &bin(),
            &[&carol[..], &["-c", &format!("accept {team}")]].concat(),
        ),
        "",
    )?;
    ensure!(
        code == 0 && out.contains(&format!("You joined team {team}")),
        "{out}{err}"
    );
    let members = rig.get(&format!("/teams/{team}/members")).await?;
    ensure!(members.to_string().contains("\"carol\""), "{members}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_one_line_and_the_console_keeps_running() -> Result<()> {
    let rig = Rig::start().await?;
    rig.api
        .ok(
            "POST",
            &format!("/api/v1/teams/{}/members", rig.up.team),
            json!({"identity": "mia", "secret": "mia-secret"}),
        )
        .await?;
    let mia = ["--identity", "mia", "--secret", "mia-secret"];
    let cases: [(&[&str], &str, &str); 5] = [
        (&[], "sett workers", "error: unknown command `sett`"),
        (
            &[],
            "set services nosuch algorithm mirror",
            "error: no service nosuch",
        ),
        (
            &[],
            "set services demo algorithm sideways",
            "error: `sideways` is not a valid algorithm",
        ),
        (
            &[],
            "set trigger nosuch plugin echo",
            "error: no trigger nosuch",
        ),
        (&mia, "delete users admin", "(Forbidden)"),
    ];
    for (args, line, want) in cases {
        // `-c`: non-zero, one line.
        let one = rig.fails(args, line)?;
        ensure!(one.contains(want), "`{line}`: {one}");
        // Interactive (lines on stdin): the same line, and the console goes on.
        let mut all = args.to_vec();
        all.push("--json");
        let input = format!("configure\n{line}\nshow quota\nexit\nexit\n");
        let (code, out, err) = rig.run(rig.command(&bin(), &all), &input)?;
        ensure!(code == 0, "console exited {code}: {out}{err}");
        ensure!(err.trim_end() == one, "`{line}`: {err:?} is not {one:?}");
        ensure!(
            out.contains("\"max_workers\""),
            "the console stopped after `{line}`:\n{out}"
        );
    }
    // A request's fleet options are checked before anything is sent.
    let one = rig.fails(&[], "request demo command batch ten command uptime")?;
    ensure!(
        one.contains("`ten` is not a number of workers or a percentage"),
        "{one}"
    );
    // A configure-mode command in operational mode says so.
    let (_, _, err) = rig.run(rig.command(&bin(), &[]), "set services name x\n")?;
    ensure!(
        err.contains("is a configure-mode command: type configure first"),
        "{err}"
    );
    // `?` on a line lists what may come next, without running anything.
    let (_, out, _) = rig.run(rig.command(&bin(), &[]), "configure\nset services demo ?\n")?;
    for word in ["algorithm", "timeout", "visibility", "workers", "batch"] {
        ensure!(
            out.contains(&format!("  {word} ")),
            "`?` lacks {word}:\n{out}"
        );
    }
    Ok(())
}

/// A pty running `triggerfs cli`, read as a person sees it.
struct Screen {
    pty: rexpect::session::PtySession,
}

impl Screen {
    fn expect(&mut self, text: &str) -> Result<String> {
        self.pty
            .exp_string(text)
            .with_context(|| format!("the screen never showed {text:?}"))
    }

    fn expect_re(&mut self, re: &str) -> Result<(String, String)> {
        self.pty
            .exp_regex(re)
            .with_context(|| format!("the screen never matched {re:?}"))
    }

    fn send(&mut self, text: &str) -> Result<()> {
        self.pty.send(text)?;
        self.pty.flush()?;
        Ok(())
    }

    fn line(&mut self, text: &str) -> Result<()> {
        self.send(&format!("{text}\r"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_get_started_flow_typed_in_the_console() -> Result<()> {
    let rig = Rig::start().await?;
    let host = "(main) admin@127.0.0.1";
    let mut screen = console_on_a_pty(&rig)?;
    screen.expect(&format!("{host}$ "))?;
    screen.line("configure")?;
    screen.expect(&format!("{host}# "))?;

    let token = worker_and_service_typed(&mut screen, host)?;

    // Start the worker, as the seed does on its server; the console sees it online.
    let plugins = rig.dir.path().join("data/plugins");
    let (mut worker, _stdout) = Proc::spawn(
        "demo01",
        &[
            "worker",
            "--identity",
            "demo01",
            "--team",
            "main",
            "--token",
            &token,
            "--broker",
            &rig.up.broker,
            "--pluginspath",
            plugins.to_str().unwrap(),
        ],
    )?;
    rig.api
        .wait_worker_state("demo01", "ONLINE", Duration::from_secs(15))
        .await?;
    screen.line("show workers")?;
    screen.expect_re(r"demo01\s+\|[^|]*\|\s+ONLINE")?;

    trigger_made_and_written_through_file(&rig, &mut screen, host).await?;

    // A request from the console, live; Ctrl-C cancels a long one, not the console.
    screen.line("request demoservice command/command timeout 10s command uptime")?;
    screen.expect("[command/command@demo01]")?;
    screen.expect("Exit code: 0")?;
    screen.expect(&format!("{host}$ "))?;
    screen.line("request demoservice command command sleep 30")?;
    screen.expect("Sending message to service demoservice")?;
    std::thread::sleep(Duration::from_millis(500));
    let cancelled = Instant::now();
    screen.send("\x03")?;
    screen.expect("Exit code")?;
    screen.expect(&format!("{host}$ "))?;
    ensure!(
        cancelled.elapsed() < Duration::from_secs(10),
        "Ctrl-C did not cancel the request"
    );
    // Ctrl-C on a line drops the line.
    screen.send("show wor\x03")?;
    screen.expect(&format!("{host}$ "))?;
    screen.line("show teams")?;
    screen.expect("(1 rows)")?;

    // History survives the console.
    screen.line("exit")?;
    screen.pty.exp_eof()?;
    worker.kill();
    let history = std::fs::read_to_string(rig.dir.path().join("xdg/triggerfs/cli_history"))?;
    ensure!(
        history.contains("set services name demoservice"),
        "{history}"
    );
    Ok(())
}

/// The console on a pty of a person's size.
fn console_on_a_pty(rig: &Rig) -> Result<Screen> {
    // A terminal of a person's size (a new pty has 0 columns): through `stty`, before the
    // console starts, so its first prompt already knows it.
    let console = rig.command(&bin(), &[]);
    let mut script = format!("stty cols 300 rows 50 && exec '{}'", bin().display());
    for arg in console.get_args() {
        script.push_str(&format!(" '{}'", arg.to_string_lossy()));
    }
    let mut command = Command::new("sh");
    command.arg("-c").arg(script).current_dir(rig.dir.path());
    for (k, v) in console.get_envs() {
        match v {
            Some(v) => command.env(k, v),
            None => command.env_remove(k),
        };
    }
    command
        .env("TERM", "xterm")
        .env("SHELL", "/bin/sh")
        .env("PS1", "shell> ");
    let screen = Screen {
        pty: rexpect::session::spawn_command(command, Some(20_000))?,
    };
    Ok(screen)
}

/// Workers and services typed with TAB and `?`; returns the new worker's token.
fn worker_and_service_typed(screen: &mut Screen, host: &str) -> Result<String> {
    // Workers: create one; its token is shown once, as a config section.
    screen.line("set workers identity demo01")?;
    screen.expect("[workers.main.demo01]")?;
    let (_, token) = screen.expect_re(r"[0-9a-f]{8}-[0-9a-f-]{27}")?;

    // Services: create, then attach with TAB completing the service and the worker.
    screen.line("set services name demoservice")?;
    screen.line("show services")?;
    screen.expect("demoservice")?;
    screen.expect("(2 rows)")?;
    screen.expect("Time: ")?;
    screen.send("set services demos\t")?;
    screen.expect("set services demoservice ")?;
    screen.send("workers add d\t")?;
    screen.expect("workers add demo01 ")?;
    screen.line("")?;
    screen.expect("Notice: service demoservice (roundrobin) is now served by demo01")?;
    // `?` lists the properties, and gives the line back.
    screen.send("set services demoservice ?")?;
    screen.expect("Possible completions:")?;
    for word in [
        "algorithm",
        "batch",
        "description",
        "timeout",
        "visibility",
        "workers",
    ] {
        screen.expect(&format!("  {word} "))?;
    }
    screen.expect(&format!("{host}# set services demoservice "))?;
    screen.send("\x15")?; // Ctrl-U: the line goes
                          // A schedule, its name and what may follow it completed with TAB.
    screen.line("set schedule name nightly-demo demoservice command every 1h command uptime")?;
    screen.expect(&format!("{host}# "))?;
    screen.send("set schedule nig\t")?;
    screen.expect("set schedule nightly-demo ")?;
    screen.send("pa\t")?;
    screen.expect("set schedule nightly-demo pause ")?;
    screen.line("")?;
    screen.line("show schedules")?;
    screen.expect_re(r"nightly-demo\s+\|\s+every 1h\s+\|\s+demoservice\s+\|\s+paused")?;
    Ok(token)
}

/// Trigger: a directory made in `file`'s shell, then the trigger; a write to its file is a hit.
async fn trigger_made_and_written_through_file(
    rig: &Rig,
    screen: &mut Screen,
    host: &str,
) -> Result<()> {
    // Trigger: a directory made in `file`'s shell, then the trigger and its settings.
    screen.send("\x04")?; // ^D leaves configure mode
    screen.expect(&format!("{host}$ "))?;
    screen.line("file")?;
    screen.expect(">> Starting a new interactive shell")?;
    screen.expect("shell> ")?;
    screen.line("mkdir newtrigger")?;
    screen.expect("shell> ")?;
    screen.line("exit")?;
    screen.expect(&format!("{host}$ "))?;
    screen.line("configure")?;
    screen.line("set trigger name /newtrigger/demotrigger")?;
    screen.line("set trigger demotrigger plugin command/command")?;
    screen.line("set trigger demotrigger service attach demoservice")?;
    screen.line("show triggers")?;
    screen.expect_re(r"demotrigger\s+\|\s+/newtrigger/demotrigger\s+\|[^|]*\|\s+command/command\s+\|\s+demoservice")?;
    screen.expect("(1 rows)")?;
    screen.send("\x04")?;
    screen.expect(&format!("{host}$ "))?;

    // The file is there in `file`'s mount; a write to it is a request to demo01.
    screen.line("file")?;
    screen.expect("shell> ")?;
    screen.line("ls newtrigger")?;
    screen.expect("demotrigger")?;
    screen.line("echo uptime > newtrigger/demotrigger && echo written")?;
    screen.expect("written")?;
    screen.expect("shell> ")?;
    screen.line("exit")?;
    screen.expect(&format!("{host}$ "))?;
    let api = &rig.api;
    wait_until(Duration::from_secs(15), "the trigger's hit", || async {
        api.ok("GET", "/api/v1/triggers", Value::Null)
            .await
            .is_ok_and(|t| t[0]["hits"] == 1)
    })
    .await?;
    Ok(())
}

/// Issue 28: TAB completes nested directory paths: a new trigger's path goes on after its
/// directory's `/`, and an existing directory completes to its whole path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tab_completes_nested_directories() -> Result<()> {
    let rig = Rig::start().await?;
    rig.ok("set directory /weatherstation/rpi")?;
    let host = "(main) admin@127.0.0.1";
    let mut screen = console_on_a_pty(&rig)?;
    screen.expect(&format!("{host}$ "))?;
    screen.line("configure")?;
    screen.expect(&format!("{host}# "))?;
    screen.send("set trigger name /weatherstation/r\t")?;
    screen.expect("set trigger name /weatherstation/rpi/")?;
    screen.line("station1")?;
    screen.expect(&format!("{host}# "))?;
    let triggers = rig.get("/triggers").await?;
    assert_eq!(triggers[0]["path"], "/weatherstation/rpi/station1");
    screen.send("set directory /weatherstation/rpi/station1\r")?;
    // A name in a directory is a trigger or a directory, not both.
    screen.expect("trigger /weatherstation/rpi/station1 already exists")?;
    screen.send("delete directory /weatherstation/r\t")?;
    screen.expect("delete directory /weatherstation/rpi ")?;
    screen.send("\x15")?;
    screen.line("exit")?;
    screen.line("exit")?;
    screen.pty.exp_eof()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggerfs_cli_link_takes_the_seeds_flags() -> Result<()> {
    let rig = Rig::start().await?;
    let links = rig.dir.path().join("bin");
    let (code, out, err) = run_cli(
        &["install-links", links.to_str().unwrap()],
        Duration::from_secs(30),
    )?;
    ensure!(code == 0, "{out}{err}");
    let mut command = Command::new(links.join("triggerfs-cli"));
    command
        .arg("-config")
        .arg(&rig.config)
        .args(["-c", "show services"])
        .env("XDG_DATA_HOME", rig.dir.path().join("xdg"))
        .env_remove("TRIGGERFS_CONFIG");
    let (code, out, err) = rig.run(command, "")?;
    ensure!(
        code == 0 && out.contains("demo") && out.contains("(1 rows)"),
        "{out}{err}"
    );
    Ok(())
}

/// The operator's commands on a terminal: TAB completes any team and any user of the
/// installation, though the operator is in neither's team (issue 28).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_completes_any_team_and_user_with_tab() -> Result<()> {
    let rig = Rig::start().await?;
    let alice = rig
        .api
        .new_member(&rig.up.team, "alice", "alice-secret-tab")
        .await?;
    alice
        .ok("POST", "/api/v1/teams", json!({"name": "twilio"}))
        .await?;
    alice.new_member("twilio", "zed", "zed-secret-tab").await?;
    let host = "(main) admin@127.0.0.1";
    let mut screen = console_on_a_pty(&rig)?;
    screen.expect(&format!("{host}$ "))?;
    screen.line("configure")?;
    screen.expect(&format!("{host}# "))?;
    screen.send("set teams tw\t")?;
    screen.expect("set teams twilio ")?;
    screen.send("quota preset adv\t")?;
    screen.expect("quota preset advanced ")?;
    screen.line("")?;
    screen.expect(&format!("{host}# "))?;
    screen.send("set users z\t")?;
    screen.expect("set users zed ")?;
    screen.send("max-t\t")?;
    screen.expect("max-teams ")?;
    screen.line("4")?;
    screen.expect("zed may create 4 teams")?;
    let q = rig.get("/teams/twilio/quota").await?;
    ensure!(q["tier"] == "advanced", "{q}");
    ensure!(rig.get("/users/zed").await?["max_teams"] == 4);
    Ok(())
}
