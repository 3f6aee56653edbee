//! The fuzz targets' corpora (`fuzz/corpus/TARGET/`, minimised by `cargo
//! fuzz cmin`) and every input that once crashed a target
//! (`fuzz/regressions/TARGET/`), replayed through the same harness as the
//! fuzzers (`fuzz/harness.rs`), so CI keeps every decoder of untrusted bytes
//! free of the panics fuzzing found, on stable and without libFuzzer.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        let mut files: Vec<_> = entries.map(|e| e.expect("corpus entry").path()).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).expect("read corpus file");
            let caught = std::panic::catch_unwind(|| run(&data));
            assert!(caught.is_ok(), "{target}: {} panics the harness", f.display());
            n += 1;
        }
    }
    assert!(n > 0, "{target}: no corpus under {}", root.display());
}

#[test]
fn v2_request_corpus() {
    replay("v2_request", harness::v2_request);
}

#[test]
fn v2_response_corpus() {
    replay("v2_response", harness::v2_response);
}

#[test]
fn grpc_request_corpus() {
    replay("grpc_request", harness::grpc_request);
}

#[test]
fn grpc_response_corpus() {
    replay("grpc_response", harness::grpc_response);
}

#[test]
fn config_corpus() {
    replay("config", harness::config);
}

#[test]
fn load_metrics_corpus() {
    replay("load_metrics", harness::load_metrics);
}

#[test]
fn jwt_corpus() {
    replay("jwt", harness::jwt);
}

#[test]
fn tfserving_request_corpus() {
    replay("tfserving_request", harness::tfserving_request);
}

#[test]
fn tfserving_response_corpus() {
    replay("tfserving_response", harness::tfserving_response);
}
