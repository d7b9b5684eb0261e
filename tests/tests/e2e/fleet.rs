//! Fleet jobs: a mirror request over many workers with per-request batch, max failures,
//! quorum, deadline and worker subset; no worker left out (offline, skipped, no response);
//! the exit status says how the run went.

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tests::*;

/// A mirror service `name` bound to `ids`, in that order, for a file-configured broker.
fn mirror_config(name: &str, ids: &[String]) -> String {
    let list: Vec<String> = ids.iter().map(|id| format!("\"{id}\"")).collect();
    format!(
        "[broker.services.{name}]\nalgorithm = \"mirror\"\nworkers = [{}]\n",
        list.join(", ")
    )
}

/// `triggerfs client` flags for `command` on `service` at `addr`, then `extra`.
fn client_args<'a>(
    addr: &'a str,
    service: &'a str,
    command: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "client",
        "--broker",
        addr,
        "--service",
        service,
        "--plugin",
        "command",
        "--timeout",
        "60s",
        "--command",
        command,
    ];
    args.extend_from_slice(extra);
    args
}

/// The `Exit code [worker]: ...` lines of a plain report: worker → what follows.
fn exit_lines(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("Exit code ["))
        .filter_map(|l| l.split_once("]: "))
        .map(|(w, rest)| (w.to_string(), rest.to_string()))
        .collect()
}

/// The same workers as the plain report: worker → exit code, or the status for a worker
/// that has none.
fn json_outcomes(doc: &Value) -> BTreeMap<String, String> {
    doc["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let shown = match w["exit_code"].as_i64() {
                Some(code) => code.to_string(),
                None => w["status"].as_str().unwrap().to_string(),
            };
            (w["worker"].as_str().unwrap().to_string(), shown)
        })
        .collect()
}

/// The plain report's view reduced like [`json_outcomes`]: `3`, `skipped (Skipped: ..)` →
/// `skipped`.
fn plain_outcomes(out: &str) -> BTreeMap<String, String> {
    exit_lines(out)
        .into_iter()
        .map(|(w, rest)| {
            let head = rest.split(" (").next().unwrap().to_string();
            (w, head)
        })
        .collect()
}

/// 200 in-test workers `w000`..`w199` bound to mirror service `fleet`; dropping the sender
/// stops them.
async fn fleet_of_200() -> Result<(
    Broker,
    Plugins,
    tokio::sync::watch::Sender<bool>,
    Vec<String>,
)> {
    const N: usize = 200;
    let ids: Vec<String> = (0..N).map(|i| format!("w{i:03}")).collect();
    let broker = Broker::start(&mirror_config("fleet", &ids), 2)?;
    let plugins = Plugins::core()?;
    let stop_tx = library_workers(broker.addr, &plugins, &ids, &[]);
    let c = connect(broker.addr).await?;
    wait_until(Duration::from_secs(60), "200 workers online", || async {
        matches!(
            request(&c, "fleet", "echo", "count", Duration::from_secs(10)).await,
            Ok(o) if o.summary.is_some_and(|s| s.ok as usize == N)
        )
    })
    .await?;
    Ok((broker, plugins, stop_tx, ids))
}

/// The workers that fail (all in the first batch of 20, so that `--max-failures 3` is
/// passed while the first batch runs).
const FAILING: [&str; 5] = ["w003", "w007", "w011", "w015", "w019"];

/// Runs the test plugin on `fleet` with `flags`: it counts itself in and out of a shared
/// counter under `flock`, records the count it saw, sleeps a random 0–200 ms, and fails on
/// [`FAILING`]. Returns the exit status, stdout, stderr and the most workers it ever saw
/// running at once.
fn counted_run(addr: &str, flags: &[&str]) -> Result<(i32, String, String, u32)> {
    counted_run_on(addr, flags, false)
}

/// [`counted_run`], on a terminal when `pty` (a pty of 200 columns): stdout is then the
/// whole transcript, stderr empty.
fn counted_run_on(addr: &str, flags: &[&str], pty: bool) -> Result<(i32, String, String, u32)> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("count"), "0\n")?;
    std::fs::write(dir.path().join("seen"), "")?;
    let d = dir.path().display();
    let failing = FAILING.join("|");
    let script = format!(
        "exec 9>>{d}/lock; \
         flock 9; n=$(( $(cat {d}/count) + 1 )); echo $n > {d}/count; echo $n >> {d}/seen; flock -u 9; \
         sleep $(awk -v s=$$ 'BEGIN {{ srand(s); printf \"%.3f\", rand() * 0.2 }}'); \
         flock 9; n=$(( $(cat {d}/count) - 1 )); echo $n > {d}/count; flock -u 9; \
         case $TRIGGERFS_WORKER in {failing}) echo \"upgrade failed on $TRIGGERFS_WORKER\"; exit 3;; esac; \
         echo \"upgraded $TRIGGERFS_WORKER\""
    );
    let args = client_args(addr, "fleet", &script, flags);
    let (code, out, err) = if pty {
        let (code, screen) = on_terminal(&args, 120)?;
        (code, screen, String::new())
    } else {
        run_cli(&args, Duration::from_secs(120))?
    };
    let seen = std::fs::read_to_string(dir.path().join("seen"))?;
    let most = seen
        .lines()
        .map(|l| l.trim().parse::<u32>().context("a count"))
        .try_fold(0, |most, n| anyhow::Ok(most.max(n?)))?;
    Ok((code, out, err, most))
}

/// Runs the binary with `args` in a pty of 200 columns, as on a terminal; its exit status
/// and the whole transcript.
fn on_terminal(args: &[&str], timeout_secs: u64) -> Result<(i32, String)> {
    let mut script = "stty cols 200 rows 50;".to_string();
    script.push_str(&format!(" '{}'", bin().display()));
    for arg in args {
        script.push_str(&format!(" '{}'", arg.replace('\'', "'\\''")));
    }
    script.push_str("; echo EXIT=$?");
    let mut command = std::process::Command::new("sh");
    command.arg("-c").arg(script).env("TERM", "xterm");
    let mut pty = rexpect::session::spawn_command(command, Some(timeout_secs * 1000))?;
    let screen = pty.exp_eof()?;
    let code = screen
        .lines()
        .filter_map(|l| l.trim().strip_prefix("EXIT="))
        .next_back()
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no exit status in:\n{screen}"))?;
    Ok((code, screen))
}

/// The final table of a terminal transcript: worker → (outcome, exit code), from the rows
/// under the `WORKER OUTCOME EXIT ...` header up to the blank line after them.
fn table_rows(screen: &str) -> Result<BTreeMap<String, (String, String)>> {
    let header = screen
        .lines()
        .position(|l| l.contains("WORKER") && l.contains("OUTCOME"))
        .with_context(|| format!("no table in:\n{screen}"))?;
    Ok(screen
        .lines()
        .skip(header + 1)
        .map(str::trim)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            // `no response` and `timed out` are two words.
            let (outcome, exit) = match cells.get(1..4)? {
                [a, b, exit] if matches!((*a, *b), ("no", "response") | ("timed", "out")) => {
                    (format!("{a} {b}"), *exit)
                }
                [a, exit, _] => (a.to_string(), *exit),
                _ => return None,
            };
            Some((cells[0].to_string(), (outcome, exit.to_string())))
        })
        .collect())
}

/// `--json`'s workers as [`table_rows`] shows them.
fn json_rows(doc: &Value) -> BTreeMap<String, (String, String)> {
    doc["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let outcome = match w["status"].as_str().unwrap() {
                "timeout" => "timed out".to_string(),
                other => other.replace('_', " "),
            };
            let exit = w["exit_code"]
                .as_i64()
                .map_or("-".to_string(), |c| c.to_string());
            (w["worker"].as_str().unwrap().to_string(), (outcome, exit))
        })
        .collect()
}

/// Acceptance 1 and 2: 200 workers, 5 failing. `--batch 20 --max-failures 10`: at most 20
/// at once (as the plugin counted), the 5 failures in the report, exit 1, and `--json`
/// agrees. `--max-failures 3`: the run stops starting workers, the rest are `skipped`, exit 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_and_max_failures_over_200_workers() -> Result<()> {
    let (broker, _plugins, stop, ids) = fleet_of_200().await?;
    let addr = broker.addr.to_string();

    let (code, out, err, most) = counted_run(&addr, &["--batch", "20", "--max-failures", "10"])?;
    ensure!(code == 1, "exit {code}\n{out}\n{err}");
    ensure!((2..=20).contains(&most), "{most} ran at once");
    let table = plain_outcomes(&out);
    ensure!(
        table.len() == ids.len(),
        "{} workers in the report:\n{out}",
        table.len()
    );
    for id in &ids {
        let want = if FAILING.contains(&id.as_str()) {
            "3"
        } else {
            "0"
        };
        ensure!(table[id] == want, "{id}: {}\n{out}", table[id]);
    }
    ensure!(
        out.contains("Summary: 200 workers, 195 ok, 5 failed, 0 timed out, 0 lost\n"),
        "{out}"
    );

    // The same run on a terminal: a bar, each failure named as it happens, and the table
    // of every worker with the five failures first.
    let (code, screen, _, most) =
        counted_run_on(&addr, &["--batch", "20", "--max-failures", "10"], true)?;
    ensure!(code == 1, "exit {code}\n{screen}");
    ensure!((2..=20).contains(&most), "{most} ran at once");
    ensure!(screen.contains("/200"), "no progress bar:\n{screen}");
    for id in FAILING {
        ensure!(
            screen.contains(&format!("[command@{id}] failed (exit code 3)")),
            "{id} not named as it failed:\n{screen}"
        );
    }
    let rows = table_rows(&screen)?;
    ensure!(rows.len() == ids.len(), "{} rows:\n{screen}", rows.len());
    let first: Vec<&str> = screen
        .lines()
        .skip_while(|l| !(l.contains("WORKER") && l.contains("OUTCOME")))
        .skip(1)
        .take(FAILING.len())
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    ensure!(first == ["failed"; 5], "failures first:\n{screen}");

    // The same run as one JSON document agrees with that table.
    let (code, out, err, most) =
        counted_run(&addr, &["--batch", "20", "--max-failures", "10", "--json"])?;
    ensure!(code == 1, "exit {code}\n{err}");
    ensure!(most <= 20, "{most} ran at once");
    let doc: Value = serde_json::from_str(&out)?;
    ensure!(json_rows(&doc) == rows, "{out}\n{screen}");
    ensure!(json_outcomes(&doc) == table, "{out}");

    // `--batch 10%` of 200 is 20 at once.
    let (code, _, err, most) = counted_run(&addr, &["--batch", "10%", "--max-failures", "10"])?;
    ensure!(code == 1, "exit {code}\n{err}");
    ensure!(most <= 20, "--batch 10% of 200 is 20, {most} ran at once");
    ensure!(doc["summary"]["failed"] == 5 && doc["summary"]["stopped"] == false);
    for w in doc["workers"].as_array().unwrap() {
        let failing = FAILING.contains(&w["worker"].as_str().unwrap());
        let want = if failing {
            "upgrade failed on "
        } else {
            "upgraded "
        };
        ensure!(w["last_line"].as_str().unwrap().starts_with(want), "{w}");
    }

    // --max-failures 3: the fourth failure stops the run.
    let (code, out, err, _) = counted_run(&addr, &["--batch", "20", "--max-failures", "3"])?;
    ensure!(code == 4, "exit {code}\n{out}\n{err}");
    let table = plain_outcomes(&out);
    ensure!(
        table.len() == ids.len(),
        "every worker is in the report:\n{out}"
    );
    let skipped = table.values().filter(|s| *s == "skipped").count();
    let ran = table.values().filter(|s| *s == "0" || *s == "3").count();
    ensure!(
        skipped >= 150 && skipped + ran == ids.len(),
        "{skipped} skipped, {ran} ran\n{out}"
    );
    for id in FAILING {
        ensure!(table[id] == "3", "{id}: {}", table[id]);
    }
    ensure!(out.contains("; stopped by --max-failures"), "{out}");
    let _ = stop.send(true);
    Ok(())
}

/// Ten worker processes `p0`..`p9` bound to mirror service `ten`.
async fn ten_workers() -> Result<(Broker, Plugins, Vec<Proc>, Vec<String>)> {
    let ids: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
    let broker = Broker::start(&mirror_config("ten", &ids), 2)?;
    let plugins = Plugins::core()?;
    let procs = ids
        .iter()
        .map(|id| start_worker(broker.addr, id, &plugins, &[]))
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    wait_for_workers(broker.addr, &refs).await?;
    Ok((broker, plugins, procs, ids))
}

/// Acceptance 3: three of ten workers stopped (SIGSTOP) mid-run, `--deadline 2s`: the
/// request ends at the deadline, the three are reported (`timed out` or `no response`),
/// the others ok; exit 3. Acceptance 4: `--quorum 5` returns once five exited 0.
/// `--only-workers` runs on exactly the named workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_quorum_and_only_over_ten_workers() -> Result<()> {
    let (broker, _plugins, procs, ids) = ten_workers().await?;
    let addr = broker.addr.to_string();

    a_deadline_reports_the_stopped_workers(&broker, &procs, &ids).await?;

    a_quorum_returns_with_five(&addr, &ids)?;

    a_staged_run_times_each_worker_from_its_start(&addr, &ids)?;

    // Only: exactly the named workers; a name that is not the service's is refused.
    let (code, out, err) = run_cli(
        &client_args(
            &addr,
            "ten",
            "echo hi",
            &["--only-workers", "p2,p6", "--json"],
        ),
        Duration::from_secs(30),
    )?;
    ensure!(code == 0, "exit {code}\n{out}\n{err}");
    let doc: Value = serde_json::from_str(&out)?;
    let names: Vec<String> = json_outcomes(&doc).into_keys().collect();
    ensure!(names == ["p2", "p6"], "{out}");
    let (code, _, err) = run_cli(
        &client_args(&addr, "ten", "echo hi", &["--only-workers", "p2,nosuch"]),
        Duration::from_secs(30),
    )?;
    ensure!(
        code == 2 && err.contains("nosuch is not a worker of service ten"),
        "exit {code}: {err}"
    );
    Ok(())
}

/// Deadline: p7, p8, p9 are stopped while their plugin sleeps; the stopped workers come back.
async fn a_deadline_reports_the_stopped_workers(
    broker: &Broker,
    procs: &[Proc],
    ids: &[String],
) -> Result<()> {
    let addr = broker.addr.to_string();
    // Deadline: p7, p8, p9 are stopped while their plugin sleeps.
    let stopped = &procs[7..];
    let started = Instant::now();
    let args = client_args(
        &addr,
        "ten",
        "echo started; sleep 1; echo finished",
        &["--deadline", "2s", "--json"],
    );
    let cli = std::thread::spawn({
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_cli(&args, Duration::from_secs(30))
        }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    for p in stopped {
        unsafe { libc::kill(p.pid() as i32, libc::SIGSTOP) };
    }
    let (code, out, err) = cli.join().unwrap()?;
    let took = started.elapsed();
    for p in stopped {
        unsafe { libc::kill(p.pid() as i32, libc::SIGCONT) };
    }
    ensure!(code == 3, "exit {code}\n{out}\n{err}");
    ensure!(
        took < Duration::from_secs(6),
        "the deadline of 2s took {took:?}"
    );
    let doc: Value = serde_json::from_str(&out)?;
    let outcomes = json_outcomes(&doc);
    ensure!(outcomes.len() == 10, "{out}");
    for id in &ids[..7] {
        ensure!(outcomes[id] == "0", "{id}: {}", outcomes[id]);
    }
    for id in &ids[7..] {
        ensure!(
            outcomes[id] == "timeout" || outcomes[id] == "no_response",
            "{id}: {}",
            outcomes[id]
        );
    }
    let s = &doc["summary"];
    ensure!(
        s["timed_out"].as_u64().unwrap() + s["no_response"].as_u64().unwrap() == 3,
        "{s}"
    );
    // The stopped workers are back: wait until every one answers again.
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    wait_for_workers(broker.addr, &refs).await?;
    Ok(())
}

/// Quorum: five answer at once, five take 20 s; the request returns with the five.
fn a_quorum_returns_with_five(addr: &str, ids: &[String]) -> Result<()> {
    // Quorum: five answer at once, five take 20 s; the request returns with the five.
    let script = "case $TRIGGERFS_WORKER in p[0-4]) echo quick;; *) sleep 20; echo slow;; esac";
    for (extra, left) in [(None, "detached"), (Some("--quorum-cancel"), "cancelled")] {
        let started = Instant::now();
        let mut flags = vec!["--quorum", "5", "--json"];
        flags.extend(extra);
        let (code, out, err) = run_cli(
            &client_args(addr, "ten", script, &flags),
            Duration::from_secs(30),
        )?;
        let took = started.elapsed();
        ensure!(code == 0, "exit {code}\n{out}\n{err}");
        // As soon as five succeeded: well before the 20 s the others take.
        ensure!(
            took < Duration::from_secs(5),
            "the quorum of 5 took {took:?}"
        );
        let doc: Value = serde_json::from_str(&out)?;
        ensure!(
            doc["summary"]["quorum_met"] == true && doc["summary"]["ok"] == 5,
            "{out}"
        );
        let outcomes = json_outcomes(&doc);
        for id in &ids[5..] {
            ensure!(outcomes[id] == left, "{id}: {} ({extra:?})", outcomes[id]);
        }
    }
    Ok(())
}

/// A staged run (waves of 4) times each worker from its own start.
fn a_staged_run_times_each_worker_from_its_start(addr: &str, ids: &[String]) -> Result<()> {
    // A staged run (waves of 4) times each worker from its own start: three waves of 1.2 s
    // under `--timeout 2.5s` succeed (the request's timeout would cut the last waves), and
    // p9, in the last wave, times out 2.5 s after its own start while nothing else does.
    // (A worker stopped outright is another case: past three missed heartbeats it is
    // `lost`; the broker's own timer for a connected but silent worker is unit-tested.)
    let started = Instant::now();
    let staged = [
        "client",
        "--broker",
        addr,
        "--service",
        "ten",
        "--plugin",
        "command",
        "--timeout",
        "2.5s",
        "--command",
        "case $TRIGGERFS_WORKER in p9) sleep 10;; *) sleep 1.2;; esac; echo done",
        "--batch",
        "4",
        "--json",
    ];
    let (code, out, err) = run_cli(&staged, Duration::from_secs(60))?;
    let took = started.elapsed();
    ensure!(code == 3, "exit {code}\n{out}\n{err}");
    let outcomes = json_outcomes(&serde_json::from_str(&out)?);
    for id in &ids[..9] {
        ensure!(
            outcomes[id] == "0",
            "{id}: {} ({took:?})\n{out}",
            outcomes[id]
        );
    }
    ensure!(outcomes["p9"] == "timeout", "{out}");
    ensure!(
        (Duration::from_millis(4_800)..Duration::from_secs(9)).contains(&took),
        "{took:?}\n{out}"
    );
    Ok(())
}

/// Runs the client with `args` on dc1 (web01, web02), plain and then `--json`: exit 3
/// both times, each worker as `want` says (an exit code, or `offline` in the plain report's
/// `Exit code [w]: offline (Offline: ...)` and in the JSON), and the plain `summary` line.
/// Returns the JSON document.
fn offline_report(args: &[&str], want: &[(&str, &str)], summary: &str) -> Result<Value> {
    let (code, out, err) = run_cli(args, Duration::from_secs(30))?;
    ensure!(code == 3, "exit {code}\n{out}\n{err}");
    ensure!(err.contains("(mirror, 2 workers)"), "{err}");
    let lines = exit_lines(&out);
    for (id, shown) in want {
        let plain = match *shown {
            "offline" => lines[*id].starts_with("offline (Offline: "),
            code => lines[*id] == code,
        };
        ensure!(plain, "{id}: {out}");
    }
    ensure!(out.contains(summary), "{out}");
    let mut json = args.to_vec();
    json.push("--json");
    let (code, out, _) = run_cli(&json, Duration::from_secs(30))?;
    ensure!(code == 3, "exit {code}\n{out}");
    let doc: Value = serde_json::from_str(&out)?;
    let want: BTreeMap<String, String> = want
        .iter()
        .map(|(id, shown)| (id.to_string(), shown.to_string()))
        .collect();
    ensure!(json_outcomes(&doc) == want, "{out}");
    Ok(doc)
}

/// Acceptance (issue): a worker bound to the service but not running is `offline` in the
/// plain report, the table on a terminal, `--json` and the gateway's stream; exit 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_but_offline_worker_is_reported() -> Result<()> {
    let port = free_port();
    let broker_addr = format!("127.0.0.1:{port}");
    let control = Control::start(&broker_addr)?;
    let (team, admin, secret) = control.admin.clone();
    let api = Api::login(&control.url, &team, &admin, &secret).await?;
    let token = api.new_worker("web01").await?;
    api.new_worker("web02").await?;
    api.ok(
        "POST",
        "/api/v1/services",
        json!({"name": "dc1", "algorithm": "mirror", "visibility": "team", "workers": ["web01", "web02"]}),
    )
    .await?;
    let (_broker, _) = start_controlled_broker(&control, port, &[])?;
    let plugins = Plugins::core()?;
    let web01 = start_worker(
        broker_addr.parse()?,
        "web01",
        &plugins,
        &["--team", &team, "--token", &token],
    )?;
    api.wait_worker_state("web01", "ONLINE", Duration::from_secs(20))
        .await?;
    let jwt = api.token().unwrap();
    let c = connect_jwt(&broker_addr, &jwt).await?;
    wait_until(Duration::from_secs(20), "web01 serves dc1", || async {
        matches!(request(&c, "dc1", "echo", "x", Duration::from_secs(5)).await,
            Ok(o) if o.summary.is_some_and(|s| s.ok == 1))
    })
    .await?;

    let base = ["--token", jwt.as_str()];
    let args = client_args(&broker_addr, "dc1", "uptime", &base);
    let doc = offline_report(
        &args,
        &[("web01", "0"), ("web02", "offline")],
        "Summary: 2 workers, 1 ok, 0 failed, 0 timed out, 0 lost, 1 offline\n",
    )?;
    ensure!(doc["summary"]["offline"] == 1, "{doc}");

    offline_on_a_terminal(&args)?;

    // The gateway's stream names it too.
    let body = json!({"plugin": "command", "command": "uptime", "timeout": "10s"});
    offline_in_the_gateway_stream(&control, &jwt, &body)?;

    // With every bound worker offline the request is not refused naming no one: both are
    // reported offline, exit 3, in the plain report, `--json` and the gateway's stream.
    drop(web01);
    wait_until(Duration::from_secs(20), "web01 offline", || async {
        matches!(request(&c, "dc1", "echo", "x", Duration::from_secs(5)).await,
            Ok(o) if o.summary.is_some_and(|s| s.offline == 2))
    })
    .await?;
    offline_report(
        &args,
        &[("web01", "offline"), ("web02", "offline")],
        "Summary: 2 workers, 0 ok, 0 failed, 0 timed out, 0 lost, 2 offline\n",
    )?;
    let events = gateway_events(&control.url, &jwt, "dc1", &body)?;
    let offline: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "failed" && e["kind"] == "Offline")
        .filter_map(|e| e["worker"].as_str())
        .collect();
    ensure!(offline == ["web01", "web02"], "{events:?}");
    Ok(())
}

/// On a terminal: web02 named offline as the run starts, and the table, sorted by outcome
/// (the offline worker first).
fn offline_on_a_terminal(args: &[&str]) -> Result<()> {
    // On a terminal: web02 named offline as the run starts, and the table, sorted by
    // outcome (the offline worker first).
    let (code, screen) = on_terminal(args, 30)?;
    ensure!(code == 3, "{screen}");
    ensure!(
        screen
            .contains("[command@web02] offline: worker web02 is bound to the service but offline"),
        "{screen}"
    );
    let header = screen
        .lines()
        .position(|l| l.contains("WORKER") && l.contains("OUTCOME"))
        .context(screen.clone())?;
    let rows: Vec<&str> = screen.lines().skip(header + 1).take(2).collect();
    ensure!(
        rows[0].split_whitespace().take(2).collect::<Vec<_>>() == ["web02", "offline"],
        "{screen}"
    );
    ensure!(
        rows[1].split_whitespace().take(3).collect::<Vec<_>>() == ["web01", "ok", "0"],
        "{screen}"
    );
    ensure!(
        table_rows(&screen)?
            == BTreeMap::from([
                ("web01".into(), ("ok".into(), "0".into())),
                ("web02".into(), ("offline".into(), "-".into()))
            ]),
        "{screen}"
    );
    Ok(())
}

/// The gateway's stream names the offline worker too, and it takes the fleet options.
fn offline_in_the_gateway_stream(control: &Control, jwt: &str, body: &Value) -> Result<()> {
    let events = gateway_events(&control.url, jwt, "dc1", body)?;
    let text = format!("{events:?}");
    ensure!(
        events
            .iter()
            .any(|e| e["event"] == "failed" && e["worker"] == "web02" && e["kind"] == "Offline"),
        "{text}"
    );
    ensure!(
        events
            .iter()
            .any(|e| e["event"] == "summary" && e["offline"] == 1 && e["ok"] == 1),
        "{text}"
    );

    // The gateway takes the fleet options too: `only` web01, `quorum` 1, `batch` 50%.
    let fleet = json!({"plugin": "command", "command": "uptime", "timeout": "10s",
        "only": ["web01"], "quorum": 1, "batch": "50%", "max_failures": 0, "deadline": "20s"});
    let events = gateway_events(&control.url, jwt, "dc1", &fleet)?;
    ensure!(
        events.iter().all(|e| e["worker"] != "web02")
            && events.iter().any(|e| e["event"] == "summary"
                && e["workers"] == 1
                && e["ok"] == 1
                && e["quorum_met"] == true),
        "{events:?}"
    );
    Ok(())
}

/// The `apt-upgrade` example (with a stand-in apt-get from the worker's environment): apt is
/// asked not to prompt, to keep configuration files and to wait for the dpkg lock; its lines
/// stream; the last line is apt's summary, or what failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apt_upgrade_example_ends_with_apts_summary() -> Result<()> {
    let ids = vec!["apt1".to_string(), "apt2".to_string()];
    let broker = Broker::start(&mirror_config("servers", &ids), 2)?;
    let plugins = Plugins::core()?;
    plugins.add_example("apt-upgrade")?;
    let (_fake, apt_get) = fake_apt_get()?;
    let addr = broker.addr.to_string();
    let _workers = apt_workers(&ids, &addr, &plugins, &apt_get)?;
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    wait_for_workers(broker.addr, &refs).await?;

    let args = [
        "client",
        "--broker",
        &addr,
        "--service",
        "servers",
        "--plugin",
        "apt-upgrade",
        "--batch",
        "10%",
        "--max-failures",
        "5%",
        "--json",
    ];
    let (code, out, err) = run_cli(&args, Duration::from_secs(30))?;
    // One at a time (10% of 2, rounded up); apt2, the last, fails past 5% (0 of 2): nothing
    // is left to stop, so it is a failure (1), not a stop (4).
    ensure!(code == 1, "exit {code}\n{out}\n{err}");
    let doc: Value = serde_json::from_str(&out)?;
    apts_summary_or_what_failed(&doc)?;
    Ok(())
}

/// A stand-in apt-get, in the returned directory: apt1's first update finds the lists' lock
/// held; apt2's upgrade fails in dpkg.
fn fake_apt_get() -> Result<(tempfile::TempDir, std::path::PathBuf)> {
    let fake = tempfile::tempdir()?;
    let apt_get = fake.path().join("apt-get");
    std::fs::write(
        &apt_get,
        "#!/bin/sh\n\
         echo \"apt-get $* (frontend $DEBIAN_FRONTEND)\"\n\
         held=\"$(dirname \"$0\")/$TRIGGERFS_WORKER.lists-lock-seen\"\n\
         case \"$*\" in *update*) \
           if [ \"$TRIGGERFS_WORKER\" = apt1 ] && [ ! -e \"$held\" ]; then : > \"$held\"; \
             echo 'E: Could not get lock /var/lib/apt/lists/lock. It is held by process 4242 (apt-get)'; \
             echo 'E: Unable to lock directory /var/lib/apt/lists/'; exit 100; fi; \
           echo 'Hit:1 http://deb.debian.org/debian bookworm InRelease'; exit 0;; esac\n\
         echo 'The following packages will be upgraded:'\n\
         echo '  libc6 openssl'\n\
         echo '2 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.'\n\
         echo 'Setting up openssl (3.0.15-1) ...'\n\
         if [ \"$TRIGGERFS_WORKER\" = apt2 ]; then echo 'E: Sub-process /usr/bin/dpkg returned an error code (1)'; exit 100; fi\n",
    )?;
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&apt_get)?.permissions(),
        0o755,
    );
    std::fs::set_permissions(
        &apt_get,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    Ok((fake, apt_get))
}

/// Workers `ids`, with the stand-in apt-get in their environment.
fn apt_workers(
    ids: &[String],
    addr: &str,
    plugins: &Plugins,
    apt_get: &std::path::Path,
) -> Result<Vec<Proc>> {
    let mut workers = Vec::new();
    for id in ids {
        let mut command = std::process::Command::new(bin());
        command
            .args([
                "worker",
                "--identity",
                id,
                "--broker",
                addr,
                "--pluginspath",
            ])
            .arg(plugins.path())
            .env("TRIGGERFS_APT_GET", apt_get)
            .env("TRIGGERFS_APT_RETRY_SECONDS", "1")
            .env_remove("TRIGGERFS_CONFIG");
        workers.push(Proc::start(&format!("worker {id}"), command)?.0);
    }
    Ok(workers)
}

/// apt1's run: apt asked not to prompt, to keep configuration files, to wait for the lock, its
/// lines streamed, its summary last; apt2's: what failed.
fn apts_summary_or_what_failed(doc: &Value) -> Result<()> {
    let worker = |id: &str| -> Value {
        doc["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["worker"] == id)
            .cloned()
            .unwrap()
    };
    let ok = worker("apt1");
    ensure!(ok["exit_code"] == 0, "{ok}");
    ensure!(
        ok["last_line"] == "2 upgraded, 0 newly installed, 0 to remove and 0 not upgraded.",
        "{ok}"
    );
    let lines: Vec<&str> = ok["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap())
        .collect();
    ensure!(lines.contains(&"Setting up openssl (3.0.15-1) ..."), "{ok}");
    let upgrade = lines
        .iter()
        .find(|l| l.contains(" upgrade "))
        .context("the upgrade call")?;
    for wanted in [
        "-y",
        "DPkg::Lock::Timeout=600",
        "Dpkg::Options::=--force-confdef",
        "Dpkg::Options::=--force-confold",
        "(frontend noninteractive)",
    ] {
        ensure!(upgrade.contains(wanted), "{wanted} missing: {upgrade}");
    }
    ensure!(
        lines.iter().any(|l| l.contains(" update ")),
        "apt-get update first: {ok}"
    );
    // apt1's first update found the lists' lock held: the plugin waited and tried again.
    let updates = lines.iter().filter(|l| l.contains(" update ")).count();
    ensure!(updates == 2, "{updates} updates: {ok}");
    ensure!(
        lines.iter().any(|l| l.starts_with(
            "apt-upgrade: another apt holds the package lists' lock; trying again in 1s"
        )),
        "{ok}"
    );
    let failed = worker("apt2");
    ensure!(failed["exit_code"] == 100, "{failed}");
    ensure!(
        failed["last_line"] == "apt-upgrade: apt-get upgrade failed (exit 100)",
        "{failed}"
    );
    Ok(())
}
