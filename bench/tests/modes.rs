//! A short run of every mode, so the harness cannot rot: counts and the JSON shape only,
//! never timings. `--systems triggerfs,relay` keeps it independent of a NATS server.

use clap::Parser;
use serde_json::Value;

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    args: bench::BenchArgs,
}

fn args(line: &str, out: &std::path::Path) -> bench::BenchArgs {
    let mut words: Vec<String> = std::iter::once("bench".to_string())
        .chain(line.split_whitespace().map(str::to_string))
        .collect();
    words.push("--out".into());
    words.push(out.display().to_string());
    Cli::try_parse_from(words).expect("valid flags").args
}

const SYSTEM_FIELDS: [&str; 11] = [
    "name", "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "mean_us", "rps", "sent",
    "received", "errors",
];

/// Checks the stable shape, every system's counts, and returns the systems by name.
fn check_document(doc: &Value, expect: &[&str]) -> Vec<Value> {
    assert!(doc["params"].is_object(), "{doc}");
    assert!(doc["machine"]["cpu"].is_string(), "{doc}");
    assert!(doc["machine"]["commit"].is_string(), "{doc}");
    for ratio in [
        "p50_vs_relay",
        "p999_vs_relay",
        "p50_vs_nats",
        "rps_vs_nats",
        "rps_vs_relay",
    ] {
        assert!(
            doc["ratios"].get(ratio).is_some(),
            "missing ratio {ratio}: {doc}"
        );
    }
    let systems = doc["systems"].as_array().expect("systems array").clone();
    let names: Vec<&str> = systems
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, expect, "{doc}");
    for s in &systems {
        for field in SYSTEM_FIELDS {
            assert!(s.get(field).is_some(), "missing {field}: {s}");
        }
        let sent = s["sent"].as_u64().unwrap();
        assert!(sent > 0, "{s}");
        assert_eq!(s["received"].as_u64(), Some(sent), "{s}");
        assert_eq!(s["errors"].as_u64(), Some(0), "{s}");
        for field in ["p50_us", "p999_us", "max_us", "rps"] {
            assert!(s[field].as_f64().is_some_and(|v| v > 0.0), "{field}: {s}");
        }
    }
    systems
}

/// One benchmark at a time in this process. `fanout --idle` forks its broker; under plain
/// `cargo test` the other tests run on threads of the same process, and a fork taken while
/// one of them holds a lock (the metrics registry, the log writer) leaves the child waiting
/// on it forever. (nextest runs each test in a process of its own.)
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run_mode(line: &str) -> (Value, tempfile::TempDir) {
    let _alone = ONE_AT_A_TIME.lock().await;
    let out = tempfile::tempdir().unwrap();
    let mut report = bench::measure(&args(line, out.path()), &mut bench::Notes::quiet())
        .await
        .expect("the benchmark runs");
    report.write_files().expect("files are written");
    assert!(report.all_ok());
    let mut text = Vec::new();
    report.print_text(&mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("machine:") && text.contains("commit:") && text.contains("params:"));
    (report.json(), out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_closed_loop_counts_every_answer() {
    let (doc, out) = run_mode("latency --warmup 0s --count 300 --systems triggerfs,relay").await;
    let systems = check_document(&doc, &["triggerfs", "relay"]);
    for s in &systems {
        assert_eq!(s["sent"].as_u64(), Some(300), "{s}");
    }
    assert_eq!(doc["params"]["mode"], "latency");
    assert_eq!(doc["params"]["in_flight"], 1);
    assert_eq!(doc["params"]["shards"], 1);
    assert_eq!(doc["params"]["spin_us"], 30, "the default spin is printed");
    assert_eq!(
        doc["params"]["rounds"], 3,
        "systems take turns in 3 rounds by default"
    );
    assert!(doc["ratios"]["p50_vs_relay"].as_f64().is_some(), "{doc}");
    assert!(doc["ratios"]["p50_vs_nats"].is_null(), "{doc}");
    for file in [
        "latency-triggerfs.hgrm",
        "latency-relay.hgrm",
        "latency-percentiles.svg",
    ] {
        let text = std::fs::read_to_string(out.path().join(file)).unwrap();
        assert!(!text.is_empty(), "{file}");
    }
    let hgrm = std::fs::read_to_string(out.path().join("latency-relay.hgrm")).unwrap();
    assert!(hgrm.contains("Total count    =          300"), "{hgrm}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_open_loop_counts_every_answer() {
    let (doc, _out) = run_mode(
        "throughput --warmup 0s --count 400 --rate 4000 --in-flight 64 --shards 2 --workers 2 \
         --systems triggerfs,relay",
    )
    .await;
    let systems = check_document(&doc, &["triggerfs", "relay"]);
    for s in &systems {
        assert_eq!(s["sent"].as_u64(), Some(400), "{s}");
    }
    assert_eq!(doc["params"]["load"], "open");
    assert_eq!(doc["params"]["shards"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_closed_loop_with_many_in_flight() {
    let (doc, _out) = run_mode(
        "throughput --warmup 0s --count 500 --in-flight 32 --connections 2 --systems relay,triggerfs",
    )
    .await;
    // triggerfs is always listed first, whatever the order of --systems.
    let systems = check_document(&doc, &["triggerfs", "relay"]);
    for s in &systems {
        assert_eq!(s["sent"].as_u64(), Some(500), "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_reaches_every_worker() {
    let (doc, _out) = run_mode(
        "fanout --workers 50 --count 5 --warmup-rounds 1 --shards 2 --systems triggerfs,relay",
    )
    .await;
    let systems = check_document(&doc, &["triggerfs"]);
    let fan = &systems[0];
    assert_eq!(fan["sent"].as_u64(), Some(5), "{fan}");
    assert_eq!(fan["workers"].as_u64(), Some(50), "{fan}");
    assert_eq!(fan["ok"].as_u64(), Some(50), "{fan}");
    assert!(fan["first_done_ms"].as_f64().is_some(), "{fan}");
    assert!(fan["last_done_ms"].as_f64().is_some(), "{fan}");
    assert!(
        fan["first_done_ms"].as_f64() <= fan["last_done_ms"].as_f64(),
        "{fan}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_workers_report_memory() {
    let (doc, _out) = run_mode("fanout --idle --idle-workers 50 --systems triggerfs").await;
    assert_eq!(doc["idle"]["workers"].as_u64(), Some(50), "{doc}");
    assert!(
        doc["idle"]["rss_kib"].as_u64().is_some_and(|k| k > 0),
        "{doc}"
    );
    assert!(doc["systems"].as_array().unwrap().is_empty(), "{doc}");
}

#[test]
fn flags_have_the_documented_shape() {
    let out = std::path::Path::new("unused");
    let parsed = args(
        "latency --rate 1000 --payload 128 --systems nats --json",
        out,
    );
    match parsed.mode {
        bench::Mode::Latency(load) => {
            assert_eq!(load.rate, Some(1000.0));
            assert_eq!(load.common.payload, 128);
            assert_eq!(load.common.systems, vec![bench::System::Nats]);
            assert!(load.common.json);
            assert_eq!(load.warmup, std::time::Duration::from_secs(2));
        }
        other => panic!("parsed as {other:?}"),
    }
    assert!(Cli::try_parse_from(["bench", "latency", "--systems", "zeromq"]).is_err());
    assert!(Cli::try_parse_from(["bench", "sideways"]).is_err());
}
