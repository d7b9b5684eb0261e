//! Short runs of the real `triggerfs bench` (every system in processes of its own), so the
//! harness cannot rot: counts, the JSON shape and the processes' lifetimes only, never
//! timings. NATS is measured only when `nats-server` is on the PATH (the bench starts its
//! own) or a server answers on 127.0.0.1:4222.

use serde_json::Value;
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SYSTEM_FIELDS: [&str; 11] = [
    "name", "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "mean_us", "rps", "sent",
    "received", "errors",
];

/// Whether the bench can measure NATS: `nats-server` on the PATH, or a server answering on
/// 127.0.0.1:4222.
fn nats_here() -> bool {
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("nats-server").is_file())
    });
    let addr = SocketAddr::from(([127, 0, 0, 1], 4222));
    on_path || TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// `triggerfs bench <line> --json --out <tmp>`: its JSON document and the out dir.
fn bench(line: &str) -> (Value, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(tests::bin())
        .arg("bench")
        .args(line.split_whitespace())
        .arg("--json")
        .arg("--out")
        .arg(out.path())
        .env_remove("TRIGGERFS_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("triggerfs runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{line}: {stderr}");
    let doc: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{line}: stdout is not one JSON document ({e}): {stderr}"));
    assert!(
        stderr.contains("machine:") && stderr.contains("params:"),
        "{stderr}"
    );
    (doc, out)
}

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
        "server_cpu_vs_nats",
        "server_cpu_vs_relay",
        "total_cpu_vs_nats",
        "p50_spin0_vs_nats",
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

#[test]
fn latency_runs_every_system_in_its_own_processes() {
    let nats = nats_here();
    let systems = if nats {
        "triggerfs,relay,nats"
    } else {
        "triggerfs,relay"
    };
    let (doc, out) = bench(&format!(
        "latency --warmup 0s --count 300 --systems {systems}"
    ));
    // The broker spins by default: the same broker without the spin is a row too.
    let expect: &[&str] = if nats {
        &["triggerfs", "triggerfs-spin0", "relay", "nats"]
    } else {
        &["triggerfs", "triggerfs-spin0", "relay"]
    };
    for s in check_document(&doc, expect) {
        assert_eq!(s["sent"].as_u64(), Some(300), "{s}");
        // CPU per request of every process of the system, and the server side's sum.
        let cpu = s["cpu_us_per_req"].as_object().expect("cpu_us_per_req");
        assert!(cpu.contains_key("load"), "{s}");
        let servers: &[&str] = match s["name"].as_str().unwrap() {
            "relay" => &["relay", "echo"],
            "nats" => &["nats-server", "responder0"],
            _ => &["broker", "worker0"],
        };
        for name in servers {
            assert!(cpu.contains_key(*name), "{name}: {s}");
        }
        assert!(s["server_cpu_us_per_req"].as_f64().is_some(), "{s}");
        assert!(s["total_cpu_us_per_req"].as_f64().is_some(), "{s}");
        assert_eq!(s["cpu_unreadable"], serde_json::json!([]), "{s}");
    }
    assert!(
        doc["ratios"]["p50_spin0_vs_relay"].as_f64().is_some(),
        "{doc}"
    );
    let params = &doc["params"];
    assert_eq!(params["process_per_system"], true, "{doc}");
    assert_eq!(params["mode"], "latency");
    assert_eq!(params["in_flight"], 1);
    assert_eq!(params["shards"], 1);
    assert_eq!(params["spin_us"], 30, "the default spin is printed");
    assert_eq!(
        params["rounds"], 3,
        "systems take turns in 3 rounds by default"
    );
    assert!(doc["ratios"]["p50_vs_relay"].as_f64().is_some(), "{doc}");
    assert_eq!(
        doc["ratios"]["p50_vs_nats"].as_f64().is_some(),
        nats,
        "{doc}"
    );
    for file in [
        "latency-triggerfs.hgrm",
        "latency-relay.hgrm",
        "latency-percentiles.svg",
    ] {
        let text = std::fs::read_to_string(out.path().join(file)).unwrap();
        assert!(!text.is_empty(), "{file}");
    }
    // The histogram crossed from the load process whole.
    let hgrm = std::fs::read_to_string(out.path().join("latency-relay.hgrm")).unwrap();
    assert!(hgrm.contains("Total count    =          300"), "{hgrm}");
}

#[test]
fn throughput_open_loop_counts_every_answer() {
    let (doc, _out) = bench(
        "throughput --warmup 0s --count 400 --rate 4000 --in-flight 64 --shards 2 --workers 2 \
         --systems triggerfs,relay",
    );
    for s in check_document(&doc, &["triggerfs", "relay"]) {
        assert_eq!(s["sent"].as_u64(), Some(400), "{s}");
    }
    assert_eq!(doc["params"]["load"], "open");
    assert_eq!(doc["params"]["shards"], 2);
    assert_eq!(doc["params"]["process_per_system"], true);
}

/// `--baseline-bin` adds `triggerfs-baseline`, a broker and workers from another binary
/// (here the same one), driven like `triggerfs`.
#[test]
fn throughput_closed_loop_with_a_baseline_build() {
    let bin = tests::bin();
    let (doc, _out) = bench(&format!(
        "throughput --warmup 0s --count 500 --in-flight 32 --connections 2 --rounds 2 \
         --systems relay,triggerfs --baseline-bin {}",
        bin.display()
    ));
    // triggerfs is always listed first, whatever the order of --systems.
    for s in check_document(&doc, &["triggerfs", "triggerfs-baseline", "relay"]) {
        assert_eq!(s["sent"].as_u64(), Some(500), "{s}");
    }
    assert_eq!(doc["params"]["rounds"], 2);
    assert_eq!(doc["params"]["connections"], 2);
}

/// `--plugin` measures each plugin kind as a row of its own in the same run; `append`'s file
/// holds every line once afterwards.
#[test]
fn every_plugin_kind_is_a_row_and_appended_lines_are_checked() {
    let (doc, _out) = bench(
        "throughput --warmup 0s --count 300 --in-flight 16 --rounds 1 --systems triggerfs \
         --plugin append,process,persistent,in-worker",
    );
    for s in check_document(
        &doc,
        &[
            "triggerfs",
            "triggerfs-persistent",
            "triggerfs-process",
            "triggerfs-append",
        ],
    ) {
        assert_eq!(s["sent"].as_u64(), Some(300), "{s}");
    }
    assert_eq!(
        doc["params"]["plugins"],
        serde_json::json!(["in-worker", "persistent", "process", "append"])
    );
    // The measured 300, and the line each ready check sent first.
    let checked = doc["params"]["append_lines_checked"].as_u64().unwrap();
    assert!(checked >= 300, "{doc}");
}

#[test]
fn fanout_reaches_every_worker() {
    let (doc, _out) =
        bench("fanout --workers 50 --count 5 --warmup-rounds 1 --shards 2 --systems triggerfs");
    let systems = check_document(&doc, &["triggerfs"]);
    let fan = &systems[0];
    assert_eq!(fan["sent"].as_u64(), Some(5), "{fan}");
    assert_eq!(fan["workers"].as_u64(), Some(50), "{fan}");
    assert_eq!(fan["ok"].as_u64(), Some(50), "{fan}");
    assert!(
        fan["first_done_ms"].as_f64() <= fan["last_done_ms"].as_f64(),
        "{fan}"
    );
}

#[test]
fn fanout_through_a_control_plane_with_and_without_job_records() {
    let (doc, _out) = bench(
        "fanout --control --workers 20 --count 6 --warmup-rounds 1 --shards 2 --systems triggerfs",
    );
    let systems = check_document(&doc, &["triggerfs-jobs", "triggerfs-nojobs"]);
    for fan in &systems {
        assert_eq!(fan["sent"].as_u64(), Some(6), "{fan}");
        assert_eq!(fan["ok"].as_u64(), Some(20), "{fan}");
    }
    assert_eq!(doc["params"]["control"], true, "{doc}");
}

#[test]
fn idle_workers_report_the_broker_process_memory() {
    let (doc, _out) = bench("fanout --idle --idle-workers 50 --systems triggerfs");
    assert_eq!(doc["idle"]["workers"].as_u64(), Some(50), "{doc}");
    assert!(
        doc["idle"]["rss_kib"].as_u64().is_some_and(|k| k > 0),
        "{doc}"
    );
    assert!(doc["systems"].as_array().unwrap().is_empty(), "{doc}");
}

/// A cell of 3 nodes, briefly: each node's RSS with idle workers, CPU per request through
/// one node and through all (every process of the cell counted), and two kills under their
/// clients, each client answered through another node and no request lost.
#[test]
fn a_cell_of_nodes_measures_memory_cpu_and_failover() {
    let (doc, _out) = bench(
        "cell --nodes 3 --workers 1 --connections 3 --in-flight 4 --warmup 0s --duration 1s \
         --rounds 1 --idle-workers 20 --idle-procs 2 --clients 3 --kills 2",
    );
    for row in check_document(&doc, &["cell-1node", "cell-3nodes"]) {
        let cpu = row["cpu_us_per_req"].as_object().expect("cpu_us_per_req");
        for name in ["node1", "node2", "node3", "worker0", "control", "load"] {
            assert!(cpu.contains_key(name), "{name}: {row}");
        }
        let figures = &doc["cpu"][row["name"].as_str().unwrap()];
        assert!(figures["nodes_sum_us_per_req"].as_f64().is_some(), "{doc}");
    }
    let idle = &doc["idle_nodes"];
    assert_eq!(idle["workers"].as_u64(), Some(20), "{doc}");
    let rss = idle["rss_kib"].as_array().expect("one RSS per node");
    assert_eq!(rss.len(), 3, "{doc}");
    assert!(
        rss.iter().all(|k| k.as_u64().is_some_and(|k| k > 0)),
        "{doc}"
    );
    let failover = &doc["failover"];
    assert_eq!(failover["kills"].as_array().map(Vec::len), Some(2), "{doc}");
    assert_eq!(failover["recovery_ms"]["n"].as_u64(), Some(6), "{doc}");
    assert_eq!(failover["never_recovered"].as_u64(), Some(0), "{doc}");
    assert_eq!(failover["lost"].as_u64(), Some(0), "{doc}");
    assert_eq!(
        failover["rejoin_ms"].as_array().map(Vec::len),
        Some(2),
        "{doc}"
    );
}

/// The pids whose parent is `pid`, from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid …: comm may hold spaces, so read after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            found.push(child);
        }
    }
    found
}

/// Alive and not a zombie.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

/// A bench killed with SIGKILL (no destructor runs) leaves no process behind.
#[test]
fn children_die_with_a_killed_bench() {
    let mut bench = Command::new(tests::bin())
        .args([
            "bench",
            "latency",
            "--warmup",
            "0s",
            "--duration",
            "60s",
            "--systems",
            "triggerfs,relay",
            "--json",
        ])
        .env_remove("TRIGGERFS_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // broker, worker, load; echo server, relay, load.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut children = Vec::new();
    while children.len() < 6 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        children = children_of(bench.id());
    }
    assert_eq!(children.len(), 6, "the bench's children: {children:?}");
    bench.kill().unwrap();
    bench.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while children.iter().any(|&pid| running(pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left: Vec<u32> = children.into_iter().filter(|&pid| running(pid)).collect();
    assert!(
        left.is_empty(),
        "still running after the bench died: {left:?}"
    );
}

#[test]
fn flags_have_the_documented_shape() {
    use clap::Parser;
    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: bench::BenchArgs,
    }
    let parsed = Cli::try_parse_from([
        "bench",
        "latency",
        "--rate",
        "1000",
        "--payload",
        "128",
        "--systems",
        "nats",
        "--json",
        "--baseline-bin",
        "/old/triggerfs",
    ])
    .expect("valid flags")
    .args;
    match parsed.mode {
        bench::Mode::Latency(load) => {
            assert_eq!(load.rate, Some(1000.0));
            assert_eq!(load.common.payload, 128);
            assert_eq!(load.common.systems, vec![bench::System::Nats]);
            assert!(load.common.json);
            assert_eq!(load.warmup, Duration::from_secs(2));
            assert_eq!(
                load.baseline_bin.as_deref(),
                Some(std::path::Path::new("/old/triggerfs"))
            );
        }
        other => panic!("parsed as {other:?}"),
    }
    assert!(Cli::try_parse_from(["bench", "latency", "--systems", "zeromq"]).is_err());
    assert!(Cli::try_parse_from(["bench", "sideways"]).is_err());
}
