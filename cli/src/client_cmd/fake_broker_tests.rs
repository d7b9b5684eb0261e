//! `triggerfs client` against the fake broker of `client/tests/fake/mod.rs`: the command's
//! exit status and its bytes on stdout and stderr.

#[path = "../../../client/tests/fake/mod.rs"]
mod fake;

use super::render::Console;
use super::{run_with, ClientArgs};
use client::ClientError;
use fake::{fake_broker, mirror_script, no_such_service_script, roundrobin_script, Peer};
use fake::{DEADLINE, QUIET_HEARTBEAT_MS};
use proto::{Frame, Stream};
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// 2018/04/30 21:14:06 UTC, the seed's example time.
fn seed_clock() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_525_122_846)
}

fn args(addr: &str, extra: &[&str]) -> ClientArgs {
    let argv = [
        "--broker",
        addr,
        "--service",
        "demo",
        "--plugin",
        "command/command",
    ];
    let argv: Vec<&str> = argv.into_iter().chain(extra.iter().copied()).collect();
    super::tests::parse(&argv).unwrap()
}

struct Ran {
    status: Result<i32, ClientError>,
    out: String,
    err: String,
}

async fn run_command(args: ClientArgs, stdin: &str, interrupt: impl Future<Output = ()>) -> Ran {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let console = Console {
        out: &mut out,
        err: &mut err,
        err_is_terminal: false,
        clock: seed_clock,
        time_zone: jiff::tz::TimeZone::UTC,
    };
    let status = tokio::time::timeout(
        DEADLINE,
        run_with(args, stdin.as_bytes(), console, interrupt),
    )
    .await
    .unwrap();
    Ran {
        status,
        out: String::from_utf8(out).unwrap(),
        err: String::from_utf8(err).unwrap(),
    }
}

/// Splits off the last lines, `Time ran: <Go duration>` and the seed's empty line, and
/// checks their shape.
fn without_time_ran(out: &str) -> &str {
    let body = out
        .strip_suffix("\n\n")
        .unwrap_or_else(|| panic!("no empty last line: {out:?}"));
    let (head, last) = body.rsplit_once('\n').unwrap();
    let time = last
        .strip_prefix("Time ran: ")
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        ["ns", "µs", "ms", "s"]
            .iter()
            .any(|unit| time.ends_with(unit)),
        "{time}"
    );
    head
}

#[tokio::test]
async fn command_renders_a_roundrobin_run_like_the_seed() {
    let (addr, _broker) = fake_broker(roundrobin_script).await;
    // No --command: it comes from stdin.
    let ran = run_command(args(&addr, &[]), "uptime\n", std::future::pending()).await;
    assert_eq!(ran.status.unwrap(), 0);
    assert_eq!(
        without_time_ran(&ran.out),
        "[command/command@demo01]  21:14:07 up  8:26\n\nExit code: 0\nTotal messages: 2"
    );
    assert_eq!(
        ran.err,
        "2018/04/30 21:14:06 Sending message to service demo (roundrobin)\n\
         [command/command@demo01] warning: x\n"
    );
}

#[tokio::test]
async fn command_renders_a_mirror_run_per_worker() {
    let (addr, _broker) = fake_broker(mirror_script).await;
    let ran = run_command(args(&addr, &["--command", "x"]), "", std::future::pending()).await;
    assert_eq!(ran.status.unwrap(), 1);
    assert_eq!(
        without_time_ran(&ran.out),
        "[command/command@w1] one\n\
         [command/command@w2] two\n\
         \n\
         Exit code [w2]: 0\n\
         Exit code [w3]: lost (WorkerLost: worker went away)\n\
         Exit code [w1]: 3\n\
         Summary: 3 workers, 1 ok, 1 failed, 0 timed out, 1 lost\n\
         Total messages: 2"
    );
    assert_eq!(
        ran.err,
        "2018/04/30 21:14:06 Sending message to service demo (mirror, 3 workers)\n"
    );
}

#[tokio::test]
async fn command_reports_a_request_level_error_with_status_2() {
    let (addr, _broker) = fake_broker(no_such_service_script).await;
    let ran = run_command(args(&addr, &["--command", "x"]), "", std::future::pending()).await;
    assert_eq!(ran.status.unwrap(), 2);
    assert_eq!(ran.out, "");
    assert_eq!(
        ran.err,
        "Error: NoSuchService: no service `nope` in team t\n"
    );
}

#[tokio::test]
async fn command_json_prints_one_document_and_nothing_else() {
    let (addr, _broker) = fake_broker(mirror_script).await;
    let ran = run_command(
        args(&addr, &["--command", "x", "--json"]),
        "",
        std::future::pending(),
    )
    .await;
    assert_eq!(ran.status.unwrap(), 1);
    assert_eq!(ran.err, "");
    let doc: serde_json::Value = serde_json::from_str(&ran.out).unwrap();
    assert_eq!(doc["service"], "demo");
    assert_eq!(doc["plugin"], "command/command");
    assert_eq!(doc["algorithm"], "mirror");
    assert_eq!(doc["total_messages"], 2);
    assert!(doc["time_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(doc["error"], serde_json::Value::Null);
    assert_eq!(
        doc["summary"],
        serde_json::json!({"workers": 3, "ok": 1, "failed": 1, "timed_out": 0, "lost": 1,
            "offline": 0, "skipped": 0, "no_response": 0, "detached": 0,
            "stopped": false, "quorum_met": false})
    );
    let workers = doc["workers"].as_array().unwrap();
    let mut first = workers[0].clone();
    // A duration as the client measured it: a number of milliseconds.
    assert!(first["duration_ms"].as_f64().is_some(), "{first}");
    first.as_object_mut().unwrap().remove("duration_ms");
    assert_eq!(
        first,
        serde_json::json!({"worker": "w2", "exit_code": 0, "status": "ok", "error": null,
            "output": [{"stream": "stdout", "line": "two"}], "last_line": "two"})
    );
    assert_eq!(workers[1]["status"], "lost");
    assert_eq!(
        workers[1]["error"],
        serde_json::json!({"kind": "WorkerLost", "message": "worker went away"})
    );
    assert_eq!(workers[2]["exit_code"], 3);
    assert_eq!(workers[2]["status"], "failed");
}

#[tokio::test]
async fn command_no_wait_reports_queued() {
    let (addr, _broker) = fake_broker(|mut peer: Peer| async move {
        peer.welcome(QUIET_HEARTBEAT_MS).await;
        let request = peer.request().await;
        assert!(!request.wait);
        peer.send(Frame::Queued {
            id: request.id,
            n_workers: 3,
        })
        .await;
        while peer.reader.read_frame().await.is_ok() {}
    })
    .await;
    let ran = run_command(
        args(&addr, &["--command", "x", "--no-wait"]),
        "",
        std::future::pending(),
    )
    .await;
    assert_eq!(ran.status.unwrap(), 0);
    assert_eq!(ran.out, "Queued for 3 worker(s)\n");
    assert_eq!(ran.err, "");
}

#[tokio::test]
async fn command_interrupt_cancels_and_exits_130() {
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let (addr, _broker) = fake_broker(|mut peer: Peer| async move {
        let id = peer.accept_roundrobin("w").await;
        peer.output(id, "w", 0, Stream::Stdout, "working").await;
        started_tx.send(()).unwrap();
        peer.answer_cancel(id, "w").await;
        while peer.reader.read_frame().await.is_ok() {}
    })
    .await;
    // "Ctrl-C" once the plugin is running.
    let interrupt = async {
        started_rx.await.unwrap();
    };
    let ran = run_command(args(&addr, &["--command", "sleep 100"]), "", interrupt).await;
    assert_eq!(ran.status.unwrap(), 130);
    assert_eq!(
        without_time_ran(&ran.out),
        "[command/command@w] working\n\nExit code: cancelled (Cancelled: cancelled by client)\nTotal messages: 1"
    );
}

#[tokio::test]
async fn command_disconnect_mid_request_exits_3() {
    let (addr, _broker) = fake_broker(|mut peer: Peer| async move {
        // Then return: the socket closes mid-request.
        peer.accept_roundrobin("w").await;
    })
    .await;
    let ran = run_command(args(&addr, &["--command", "x"]), "", std::future::pending()).await;
    assert_eq!(ran.status.unwrap(), 3);
    assert_eq!(
        without_time_ran(&ran.out),
        "\nExit code: unfinished\nTotal messages: 0"
    );
    assert!(
        ran.err
            .ends_with("Error: the connection to the broker dropped before the request ended\n"),
        "{}",
        ran.err
    );
}

#[tokio::test]
async fn command_cannot_reach_the_broker_exits_3() {
    // A port that was just free: nothing listens there.
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let ran = run_command(args(&addr, &["--command", "x"]), "", std::future::pending()).await;
    let err = ran.status.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    assert_eq!(err.exit_status(), 3);
    assert_eq!((ran.out.as_str(), ran.err.as_str()), ("", ""));
}

/// `--broker DEAD,GOOD` (in either order): the run through the one that answers, rendered as
/// with that address alone; with none answering, exit 3 and an error naming both.
#[tokio::test]
async fn command_fails_over_to_the_broker_that_answers() {
    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    };
    for _ in 0..3 {
        let (good, _broker) = fake_broker(roundrobin_script).await;
        let list = format!("{dead},{good}");
        let ran = run_command(args(&list, &[]), "uptime\n", std::future::pending()).await;
        assert_eq!(ran.status.unwrap(), 0);
        assert_eq!(
            without_time_ran(&ran.out),
            "[command/command@demo01]  21:14:07 up  8:26\n\nExit code: 0\nTotal messages: 2"
        );
    }
    let other_dead = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let list = format!("{dead},{other_dead}");
    let ran = run_command(args(&list, &["--command", "x"]), "", std::future::pending()).await;
    let err = ran.status.unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
    assert_eq!(err.exit_status(), 3);
    let text = err.to_string();
    assert!(text.contains(&dead) && text.contains(&other_dead), "{text}");
}
