//! The web view in a real browser: headless Chromium driven through chromedriver (WebDriver,
//! `fantoccini`) against the real control plane, broker and 50 workers. It logs in, runs a
//! mirror request from a service page and watches it complete live with 3 failures in red,
//! opens a failed worker's output (live and in the history), measures a 1,000-worker job's
//! grid, checks that a member does not see another member's private job and that another
//! team's objects are 404, and keeps a screenshot of the grid.
//!
//! `scripts/test` installs `chromium` and `chromium-driver` when they are missing.

use anyhow::{bail, ensure, Context, Result};
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tests::*;

/// Workers of the mirror service; these three fail.
const N_WORKERS: usize = 50;
const FAILING: [&str; 3] = ["w07", "w23", "w42"];
/// Fails on the three, after a pause that leaves time to watch.
const COMMAND: &str = "sleep 2; case $TRIGGERFS_WORKER in w07|w23|w42) \
    echo broken on $TRIGGERFS_WORKER >&2; exit 3;; esac; echo fine on $TRIGGERFS_WORKER";
/// Red, as the style sheet colours a failure (`--failed`).
const RED: &str = "rgb(217, 48, 37)";
/// The budget of acceptance 2: a 1,000-worker grid loads and paints within it.
const GRID_BUDGET_MS: f64 = 1000.0;

/// chromedriver on a free port, in a process group of its own (Chromium with it), killed
/// whole when dropped, whether the test passed or not.
struct Chromedriver {
    child: Child,
    url: String,
}

impl Chromedriver {
    fn start() -> Result<Chromedriver> {
        use std::os::unix::process::CommandExt;
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context(
                "cannot start chromedriver (scripts/test installs it: \
                 apt-get install chromium chromium-driver)",
            )?;
        let driver = Chromedriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            if status {
                return Ok(driver);
            }
            ensure!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    async fn browser(&self) -> Result<Browser> {
        let mut chrome = json!({"args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1400,1000", "--no-first-run", "--disable-extensions",
        ]});
        // Debian's launcher script is not needed: chromedriver starts the binary itself.
        let binary = "/usr/lib/chromium/chromium";
        if std::path::Path::new(binary).exists() {
            chrome["binary"] = binary.into();
        }
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), chrome);
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match ClientBuilder::new(connector.clone())
                .capabilities(caps.clone())
                .connect(&self.url)
                .await
            {
                Ok(browser) => return Ok(browser),
                Err(e) if Instant::now() < deadline => {
                    eprintln!("web: no browser session yet: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => bail!("cannot start a Chromium session: {e}"),
            }
        }
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // The whole group: chromedriver and the browser it started.
        unsafe {
            libc::killpg(self.child.id() as i32, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// Where the test keeps its screenshot: the workspace's `target/web-test/`.
fn artefact_dir() -> Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("web-test");
    std::fs::create_dir_all(&dir)?;
    Ok(dir.canonicalize()?)
}

/// Keeps a screenshot of the page as `name`.png beside the grid's, and says where.
async fn keep_screenshot(b: &Browser, name: &str) -> Result<()> {
    let path = artefact_dir()?.join(format!("{name}.png"));
    std::fs::write(&path, b.screenshot().await?)?;
    println!("web: screenshot of {name}: {}", path.display());
    Ok(())
}

/// Polls `script` (returning a boolean) in the page until it is true.
async fn wait_js(b: &Browser, what: &str, within: Duration, script: &str) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if b.execute(script, vec![]).await?.as_bool() == Some(true) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let source = b.source().await.unwrap_or_default();
            let tail = &source[source.len().saturating_sub(3000)..];
            bail!("timed out waiting for {what}; page ends with: {tail}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn js_i64(b: &Browser, script: &str) -> Result<i64> {
    b.execute(script, vec![])
        .await?
        .as_i64()
        .with_context(|| format!("a number from {script}"))
}

async fn text_of(b: &Browser, css: &str) -> Result<String> {
    Ok(b.find(Locator::Css(css)).await?.text().await?)
}

/// Logs in through the form (starting from `/`, which sends a stranger to it).
async fn log_in(b: &Browser, base: &str, team: &str, identity: &str, secret: &str) -> Result<()> {
    b.goto(&format!("{base}/")).await?;
    let form = b.wait().for_element(Locator::Css("form.login")).await?;
    let team_field = form.find(Locator::Css("input[name=team]")).await?;
    team_field.clear().await?;
    team_field.send_keys(team).await?;
    form.find(Locator::Css("input[name=identity]"))
        .await?
        .send_keys(identity)
        .await?;
    form.find(Locator::Css("input[name=secret]"))
        .await?
        .send_keys(secret)
        .await?;
    form.find(Locator::Css("button")).await?.click().await?;
    b.wait().for_element(Locator::Css("table#fleet")).await?;
    Ok(())
}

/// The status a page answers with this browser's session cookie (read through WebDriver:
/// the page's script cannot read it).
async fn status_with_session(b: &Browser, base: &str, path: &str) -> Result<u16> {
    let cookie = b.get_named_cookie("triggerfs_session").await?;
    remember_secret(cookie.value());
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let answer = http
        .get(format!("{base}{path}"))
        .header("cookie", format!("triggerfs_session={}", cookie.value()))
        .send()
        .await?;
    Ok(answer.status().as_u16())
}

/// A job record as the broker delivers it, for team `team`, with `n` workers (every 97th
/// failed).
fn big_record(key: &str, team: &str, service: &str, n: usize) -> Value {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let workers: Vec<Value> = (1..=n)
        .map(|i| {
            let failed = i % 97 == 0;
            json!({"worker": format!("node{i:04}"), "outcome": if failed { "failed" } else { "ok" },
                   "exit_code": if failed { 100 } else { 0 }, "duration_ms": 900,
                   "output": format!("Reading package lists...\nnode{i:04} upgraded\n"),
                   "truncated": false})
        })
        .collect();
    json!({"key": key, "team": team, "identity": "admin", "service": service,
           "algorithm": "mirror", "plugin": "command", "command": ["apt-get upgrade -y"],
           "started_unix_ms": started, "duration_ms": 5000, "readers": "team",
           "workers": workers})
}

async fn deliver(control: &Control, record: Value) -> Result<()> {
    let token = std::fs::read_to_string(control.broker_token_file())?;
    let answer = reqwest::Client::new()
        .post(format!("{}/api/v1/broker/jobs", control.url))
        .bearer_auth(token.trim())
        .json(&json!({"jobs": [record]}))
        .send()
        .await?;
    ensure!(
        answer.status().is_success(),
        "delivering a record: {}",
        answer.status()
    );
    Ok(())
}

/// The id of the newest job of `service` the caller reads, waiting for it to be recorded.
async fn job_of(api: &Api, service: &str) -> Result<i64> {
    let path = format!("/api/v1/jobs?service={service}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = api.ok("GET", &path, Value::Null).await?;
        if let Some(id) = page["jobs"][0]["id"].as_i64() {
            return Ok(id);
        }
        ensure!(Instant::now() < deadline, "no job of {service} recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_web_view_in_a_real_browser() -> Result<()> {
    // The system: a control plane, a broker following it, 50 workers (the worker library,
    // as `triggerfs worker` runs it) bound to mirror service `fleet`.
    let port = free_port();
    let broker_addr = format!("127.0.0.1:{port}");
    let control = Control::start(&broker_addr)?;
    let base = control.url.clone();
    let (team, admin, secret) = control.admin.clone();
    let api = Api::login(&base, &team, &admin, &secret).await?;
    let ids: Vec<String> = (1..=N_WORKERS).map(|i| format!("w{i:02}")).collect();
    let mut tokens = Vec::new();
    for id in &ids {
        tokens.push(api.new_worker(id).await?);
    }
    api.ok(
        "POST",
        "/api/v1/services",
        json!({"name": "fleet", "algorithm": "mirror", "visibility": "team", "workers": ids,
               "history": "team", "description": "every server"}),
    )
    .await?;
    api.ok(
        "POST",
        "/api/v1/services",
        json!({"name": "private", "visibility": "team", "workers": ["w01"]}),
    )
    .await?;
    let (_broker, _) = start_controlled_broker(&control, port, &[])?;
    let plugins = Plugins::core()?;
    let workers: Vec<(String, String)> = ids.iter().cloned().zip(tokens).collect();
    let stop_workers = team_library_workers(&broker_addr, &plugins, &team, &workers, &[]);
    wait_until(Duration::from_secs(30), "50 workers serving", || async {
        api.ok("GET", "/api/v1/services/fleet", Value::Null)
            .await
            .is_ok_and(|s| s["serving"].as_array().map_or(0, Vec::len) == N_WORKERS)
    })
    .await?;

    let driver = Chromedriver::start()?;
    let b = driver.browser().await?;
    let outcome = drive(&b, &control, &api, &broker_addr).await;
    let _ = b.close().await;
    let _ = stop_workers.send(true);
    outcome
}

async fn drive(b: &Browser, control: &Control, api: &Api, broker_addr: &str) -> Result<()> {
    let base = control.url.as_str();
    let (team, admin, secret) = control.admin.clone();

    // Log in; the fleet shows every worker online.
    log_in(b, base, &team, &admin, &secret).await?;
    let session = b.get_named_cookie("triggerfs_session").await?;
    remember_secret(session.value());
    ensure!(
        session.http_only() == Some(true),
        "the session cookie is HttpOnly"
    );
    let same_site = format!("{:?}", session.same_site());
    ensure!(
        same_site == "Some(Strict)",
        "the session cookie is SameSite={same_site}"
    );
    let counts = text_of(b, "p.counts").await?;
    ensure!(counts.contains("50 online"), "fleet counts: {counts}");
    let n_rows = js_i64(
        b,
        "return document.querySelectorAll('#fleet tbody tr').length",
    )
    .await?;
    ensure!(n_rows == N_WORKERS as i64, "{n_rows} rows in the fleet");
    keep_screenshot(b, "fleet").await?;
    // Filtered and searched: w40 to w49.
    b.goto(&format!("{base}/fleet?q=w4&state=online")).await?;
    let found: Vec<String> = serde_json::from_value(
        b.execute(
            "return [...document.querySelectorAll('#fleet tbody tr td:first-child')]\
             .map(td => td.textContent)",
            vec![],
        )
        .await?,
    )?;
    ensure!(
        found.len() == 10 && found.iter().all(|w| w.starts_with("w4")),
        "fleet search w4: {found:?}"
    );
    // Schedules: the next run, and the last once it ran.
    let schedule = json!({"name": "nightly", "service": "fleet", "visibility": "team",
        "request": {"plugin": "command", "command": "true"},
        "timetable": {"cron": "0 3 * * *", "time_zone": "Europe/Berlin"}});
    api.ok("POST", "/api/v1/schedules", schedule).await?;
    let view = api
        .ok("GET", "/api/v1/schedules/nightly", Value::Null)
        .await?;
    let next = view["next_run"].as_str().context("a next run")?.to_string();
    b.goto(&format!("{base}/schedules")).await?;
    keep_screenshot(b, "schedules").await?;
    let row = text_of(b, "#schedules tbody tr").await?;
    ensure!(
        row.contains("nightly") && row.contains(&next) && row.contains("never"),
        "schedule row: {row}"
    );

    // Run the mirror request from the service page, and watch it complete live.
    b.goto(&format!("{base}/services/fleet")).await?;
    let form = b.wait().for_element(Locator::Css("form.run")).await?;
    keep_screenshot(b, "service").await?;
    form.find(Locator::Css("input[name=command]"))
        .await?
        .send_keys(COMMAND)
        .await?;
    form.find(Locator::Css("input[name=timeout]"))
        .await?
        .send_keys("60s")
        .await?;
    form.find(Locator::Css("button")).await?.click().await?;
    b.wait().for_element(Locator::Css("#run")).await?;
    // Marks this document: the end must arrive through the stream, not a reload.
    b.execute("window.__sameDocument = true; return true;", vec![])
        .await?;
    let ok_at_first = js_i64(
        b,
        "return document.querySelectorAll('#grid .cell.ok').length",
    )
    .await?;
    ensure!(
        ok_at_first < N_WORKERS as i64 - FAILING.len() as i64,
        "the run had already ended when its page loaded ({ok_at_first} ok)"
    );
    wait_js(
        b,
        "some workers running",
        Duration::from_secs(20),
        "return document.querySelectorAll('#grid .cell.running').length > 0 \
         || document.getElementById('run').dataset.state === 'ended'",
    )
    .await?;
    wait_js(
        b,
        "the run's end",
        Duration::from_secs(60),
        "return document.getElementById('run').dataset.state === 'ended'",
    )
    .await?;
    ensure!(
        b.execute("return window.__sameDocument === true", vec![])
            .await?
            .as_bool()
            == Some(true),
        "the page was reloaded"
    );
    let n_ok = text_of(b, "#n-ok").await?;
    let n_bad = text_of(b, "#n-bad").await?;
    let n_total = text_of(b, "#n-total").await?;
    ensure!(
        (n_ok.as_str(), n_bad.as_str(), n_total.as_str()) == ("47", "3", "50"),
        "progress counts {n_ok} ok, {n_bad} failed of {n_total}"
    );
    let red: Vec<String> = serde_json::from_value(
        b.execute(
            "return [...document.querySelectorAll('#grid .cell')]\
             .filter(c => getComputedStyle(c).backgroundColor === arguments[0])\
             .map(c => c.dataset.worker).sort()",
            vec![json!(RED)],
        )
        .await?,
    )?;
    ensure!(red == FAILING, "red cells: {red:?}");
    let ended = text_of(b, "#ended").await?;
    ensure!(ended.starts_with("ended: 47 of 50 ok"), "{ended}");
    keep_screenshot(b, "job-grid").await?;
    let run_url = b.current_url().await?;

    // A failed worker's output, from its cell.
    b.find(Locator::Css("#grid .cell.failed"))
        .await?
        .click()
        .await?;
    let output = b.wait().for_element(Locator::Css("#output")).await?;
    let text = output.text().await?;
    ensure!(text.contains("broken on w"), "live output: {text}");
    ensure!(text_of(b, "#outcome").await? == "failed");

    // The same job in the history: its grid, and a failed worker's output.
    let job_id = job_of(api, "fleet").await?;
    b.goto(&format!("{base}/jobs")).await?;
    keep_screenshot(b, "jobs").await?;
    b.find(Locator::Css(&format!("a[href='/jobs/{job_id}']")))
        .await?
        .click()
        .await?;
    b.wait().for_element(Locator::Css("#grid")).await?;
    let failed: Vec<String> = serde_json::from_value(
        b.execute(
            "return [...document.querySelectorAll('#grid .cell.failed')]\
             .filter(c => getComputedStyle(c).backgroundColor === arguments[0])\
             .map(c => c.textContent).sort()",
            vec![json!(RED)],
        )
        .await?,
    )?;
    ensure!(failed == FAILING, "red cells in the history: {failed:?}");
    let n_cells = js_i64(b, "return document.querySelectorAll('#grid .cell').length").await?;
    ensure!(n_cells == N_WORKERS as i64, "{n_cells} cells");
    b.find(Locator::Css("#grid .cell.failed"))
        .await?
        .click()
        .await?;
    let text = b
        .wait()
        .for_element(Locator::Css("#output"))
        .await?
        .text()
        .await?;
    ensure!(text.contains("broken on w"), "history output: {text}");

    grid_of_a_thousand(b, control, api).await?;
    privacy(b, control, api, broker_addr, run_url.as_str()).await
}

/// Acceptance 2: a job of 1,000 workers; its page loads and paints within the budget,
/// measured in the browser: Navigation Timing (`load`), and the paint as Paint Timing's first
/// contentful paint, or where headless Chromium reports none, the second animation frame
/// after the script ran (an upper bound: it includes WebDriver's round trip). Three loads;
/// their median is held to the budget (one stalled by a busy machine does not decide).
async fn grid_of_a_thousand(b: &Browser, control: &Control, api: &Api) -> Result<()> {
    deliver(control, big_record("big-1", "main", "big", 1000)).await?;
    let id = job_of(api, "big").await?;
    let mut took = Vec::new();
    for round in 1..=3 {
        b.goto(&format!("{}/jobs/{id}", control.url)).await?;
        let t = b
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 const seen = [];
                 for (const type of ['paint', 'largest-contentful-paint']) {
                   new PerformanceObserver(l => seen.push(...l.getEntries()))
                     .observe({type, buffered: true});
                 }
                 const find = name => seen.find(e => (e.name || e.entryType) === name);
                 requestAnimationFrame(() => requestAnimationFrame(() => {
                   const frame = performance.now();
                   const started = frame;
                   const finish = () => {
                     const fcp = find('first-contentful-paint');
                     if (!fcp && performance.now() - started < 1000) {
                       return setTimeout(finish, 50);
                     }
                     const lcp = seen.filter(e => e.entryType === 'largest-contentful-paint').pop();
                     const n = performance.getEntriesByType('navigation')[0];
                     done({response: n.responseEnd - n.startTime,
                           dom: n.domContentLoadedEventEnd - n.startTime,
                           load: n.loadEventEnd - n.startTime,
                           fcp: fcp ? fcp.startTime : null,
                           lcp: lcp ? lcp.startTime : null,
                           frame,
                           cells: document.querySelectorAll('#grid .cell').length,
                           bytes: n.transferSize});
                   };
                   finish();
                 }));",
                vec![],
            )
            .await?;
        let get = |k: &str| t[k].as_f64();
        ensure!(t["cells"] == 1000, "cells: {t}");
        let shown = |k: &str| get(k).map_or("not reported".to_string(), |ms| format!("{ms:.0} ms"));
        let load = get("load").context("load timing")?;
        let paint = get("lcp")
            .or(get("fcp"))
            .or(get("frame"))
            .context("a paint time")?;
        println!(
            "web: 1000-worker job grid, load {round}: response {}, DOMContentLoaded {}, \
             load {}, first contentful paint {}, largest contentful paint {}, second frame \
             after the script {}; {} bytes",
            shown("response"),
            shown("dom"),
            shown("load"),
            shown("fcp"),
            shown("lcp"),
            shown("frame"),
            t["bytes"]
        );
        took.push(load.max(paint));
    }
    took.sort_by(f64::total_cmp);
    let median = took[1];
    println!(
        "web: 1000-worker job grid loaded and painted in {median:.0} ms (median of 3; \
         budget {GRID_BUDGET_MS:.0} ms; each: {took:.0?})"
    );
    ensure!(
        median < GRID_BUDGET_MS,
        "the 1,000-worker grid took {median:.0} ms (median of {took:?})"
    );
    keep_screenshot(b, "job-grid-1000").await?;
    Ok(())
}

/// A member does not see another member's private job, nor their run; another team's
/// objects answer 404.
async fn privacy(
    b: &Browser,
    control: &Control,
    api: &Api,
    broker_addr: &str,
    admin_run: &str,
) -> Result<()> {
    let base = control.url.as_str();
    let team = control.admin.0.clone();
    let bob = api.new_member(&team, "bob", "bob-secret-0123").await?;
    let _carol = api.new_member(&team, "carol", "carol-secret-0123").await?;
    // Bob's request through `private` (history: its sender and the admins).
    let c = connect_jwt(broker_addr, bob.token().as_deref().context("bob's token")?).await?;
    let spec = request_spec(
        "private",
        "command",
        "echo bobs-private-marker",
        Duration::from_secs(10),
    );
    let summary = c.request(spec).await?.collect().await.summary;
    ensure!(summary.is_some_and(|s| s.ok == 1), "bob's request ran");
    let bobs_job = job_of(&bob, "private").await?;

    // Another team's service and job.
    api.ok("POST", "/api/v1/teams", json!({"name": "blue"}))
        .await?;
    let (_, admin, secret) = control.admin.clone();
    let blue = Api::login(base, "blue", &admin, &secret).await?;
    blue.ok(
        "POST",
        "/api/v1/services",
        json!({"name": "bluesvc", "visibility": "team"}),
    )
    .await?;
    deliver(control, big_record("blue-1", "blue", "bluesvc", 3)).await?;
    let blue_job = job_of(&blue, "bluesvc").await?;

    // Carol logs in instead of the admin.
    b.goto(&format!("{base}/fleet")).await?;
    b.find(Locator::Css("form.who button"))
        .await?
        .click()
        .await?;
    b.wait().for_element(Locator::Css("form.login")).await?;
    log_in(b, base, &team, "carol", "carol-secret-0123").await?;
    b.goto(&format!("{base}/jobs")).await?;
    b.wait().for_element(Locator::Css("table#jobs")).await?;
    let source = b.source().await?;
    ensure!(
        !source.contains("bobs-private-marker") && !source.contains(&format!("/jobs/{bobs_job}\"")),
        "carol's job list shows bob's private job"
    );
    for (path, what) in [
        (format!("/jobs/{bobs_job}"), "bob's private job"),
        (format!("/jobs/{bobs_job}/workers/w01"), "its output"),
        (
            admin_run.trim_start_matches(base).to_string(),
            "the admin's run",
        ),
        ("/services/bluesvc".to_string(), "another team's service"),
        (format!("/jobs/{blue_job}"), "another team's job"),
    ] {
        b.goto(&format!("{base}{path}")).await?;
        let heading = text_of(b, "h1").await?;
        ensure!(heading.starts_with("404"), "{what} ({path}): {heading}");
        let status = status_with_session(b, base, &path).await?;
        ensure!(status == 404, "{what} ({path}) answers {status}");
    }
    // The history's shared job is hers to see, as in the API.
    b.goto(&format!("{base}/jobs?service=fleet")).await?;
    ensure!(
        b.find_all(Locator::Css("table#jobs tbody tr")).await?.len() == 1,
        "carol sees the team's job of fleet"
    );
    Ok(())
}
