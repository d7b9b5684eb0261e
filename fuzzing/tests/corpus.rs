//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/*`) through the targets on
//! stable: every input there once drove a target somewhere, and none may panic now.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("a corpus entry").path();
        let data = std::fs::read(&path).expect("a corpus file");
        run(&data);
        n += 1;
    }
    assert!(n > 0, "no corpus for {target} in {}", dir.display());
}

#[test]
fn frame() {
    replay("frame", fuzzing::frame);
}

#[test]
fn handshake() {
    replay("handshake", fuzzing::handshake);
}

#[test]
fn plugin_line() {
    replay("plugin_line", fuzzing::plugin_line);
}

#[test]
fn spool() {
    replay("spool", fuzzing::spool);
}

#[test]
fn api_body() {
    replay("api_body", fuzzing::api_body);
}
