//! The built `switchyard` binary serving ONNX files with its embedded ONNX
//! Runtime (`kind: onnx`), over sockets: model metadata from the session,
//! every datatype over V2 JSON and the binary extension, version policy,
//! versions added, removed and broken while running, request validation,
//! and the startup error when the library is missing.
//!
//! The committed models: `examples/models` (mlp v1/v2 `input` FP32 [N,16] →
//! `probabilities` [N,4]; mlp_heavy `input` [N,256] → `logits` [N,10]) and
//! `tests/models` (`dtypes`: Identity of every datatype; `fixed`: `x` FP32
//! [2,3] → `y` = 2x). Tests that change a repository work on a temp copy.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::{free_port, repo_root, Resp, Switchyard, TempDir, PATIENCE, POLL};
use serde_json::{json, Value};

const IHCL: &str = "inference-header-content-length";

/// An `onnx` backend block (indented under `backends:`).
fn onnx_backend(name: &str, repository: &Path, policy: &str, extra: &str) -> String {
    format!(
        "  {name}:\n    kind: onnx\n    repository: {}\n    version_policy: {policy}\n    warmup: 1\n{extra}",
        repository.display()
    )
}

/// Both committed repositories: `ex` (examples, every version) and `t` (test models).
fn committed_models_config() -> String {
    let root = repo_root();
    format!(
        "backends:\n{}{}models:\n  mlp:\n    variants:\n      - {{name: main, backend: ex}}\n  mlp_heavy:\n    variants:\n      - {{name: main, backend: ex}}\n  dtypes:\n    variants:\n      - {{name: main, backend: t}}\n  fixed:\n    variants:\n      - {{name: main, backend: t}}\n",
        onnx_backend("ex", &root.join("examples/models"), "{all: true}", ""),
        onnx_backend("t", &root.join("tests/models"), "{latest: 1}", ""),
    )
}

/// Deterministic, distinct `mlp` input rows (FP32 [rows,16]).
fn mlp_input(rows: usize, seed: usize) -> Vec<f32> {
    (0..rows * 16).map(|i| (((i + 13 * seed) as f32) * 0.29).cos() * 1.7).collect()
}

fn mlp_body(rows: usize, seed: usize) -> String {
    json!({"inputs": [{"name": "input", "shape": [rows, 16], "datatype": "FP32", "data": mlp_input(rows, seed)}]})
        .to_string()
}

/// The f32 values of output `name` of a JSON V2 response.
fn f32_output(v: &Value, name: &str) -> Vec<f32> {
    let out = v["outputs"]
        .as_array()
        .and_then(|o| o.iter().find(|t| t["name"] == name))
        .unwrap_or_else(|| panic!("no output {name} in {v}"));
    out["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data in {out}"))
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// POSTs an mlp infer to `path` and returns (model_version, probabilities); panics unless 200.
async fn mlp_infer(sy: &Switchyard, path: &str, seed: usize) -> (String, Vec<f32>) {
    let r = sy.post(path, &[], mlp_body(2, seed)).await;
    assert_eq!(r.status, 200, "POST {path}: {}", r.text());
    let v = r.json();
    (
        v["model_version"].as_str().unwrap_or_else(|| panic!("no model_version in {v}")).to_string(),
        f32_output(&v, "probabilities"),
    )
}

/// `versions` of `GET /v2/models/{model}`.
async fn listed_versions(sy: &Switchyard, model: &str) -> Vec<String> {
    let r = sy.get(&format!("/v2/models/{model}")).await;
    assert_eq!(r.status, 200, "metadata of {model}: {}", r.text());
    let v = r.json();
    v["versions"]
        .as_array()
        .unwrap_or_else(|| panic!("no versions in {v}"))
        .iter()
        .map(|x| x.as_str().expect("version string").to_string())
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("mkdir {}: {e}", to.display()));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display())) {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap_or_else(|e| panic!("copy to {}: {e}", dest.display()));
        }
    }
}

/// Puts `model.onnx` with `contents` at `model_dir/version/` atomically: written
/// under a hidden name (which the repository ignores), then renamed into place.
fn publish_version(model_dir: &Path, version: u64, contents: &[u8]) {
    let staging = model_dir.join(format!(".{version}.staging"));
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("model.onnx"), contents).unwrap();
    std::fs::rename(&staging, model_dir.join(version.to_string())).unwrap();
}

/// Replaces an existing version's `model.onnx` atomically (write aside, rename over).
fn replace_model_file(version_dir: &Path, contents: &[u8]) {
    let aside = version_dir.join(".model.onnx.new");
    std::fs::write(&aside, contents).unwrap();
    std::fs::rename(&aside, version_dir.join("model.onnx")).unwrap();
}

fn mlp_file(version: u64) -> Vec<u8> {
    std::fs::read(repo_root().join(format!("examples/models/mlp/{version}/model.onnx"))).expect("committed mlp model")
}

/// Model metadata is the session's signature: names, datatypes, -1 for
/// dynamic dims, the loaded versions and the platform.
#[tokio::test]
async fn model_metadata_comes_from_the_session() {
    let sy = Switchyard::config(&committed_models_config()).start().await;
    let io = |name: &str, dt: &str, shape: Value| json!({"name": name, "datatype": dt, "shape": shape});

    let want_mlp = |name: &str| {
        json!({
            "name": name, "versions": ["1", "2"], "platform": "onnxruntime_onnx",
            "inputs": [io("input", "FP32", json!([-1, 16]))],
            "outputs": [io("probabilities", "FP32", json!([-1, 4]))],
        })
    };
    for path in ["/v2/models/mlp", "/v2/models/mlp/versions/1", "/v2/models/mlp/versions/2"] {
        let r = sy.get(path).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        assert_eq!(r.json(), want_mlp("mlp"), "GET {path}");
    }
    let r = sy.get("/v2/models/mlp_heavy").await;
    assert_eq!(
        r.json(),
        json!({
            "name": "mlp_heavy", "versions": ["1"], "platform": "onnxruntime_onnx",
            "inputs": [io("input", "FP32", json!([-1, 256]))],
            "outputs": [io("logits", "FP32", json!([-1, 10]))],
        })
    );
    let r = sy.get("/v2/models/fixed").await;
    assert_eq!(
        r.json(),
        json!({
            "name": "fixed", "versions": ["1"], "platform": "onnxruntime_onnx",
            "inputs": [io("x", "FP32", json!([2, 3]))],
            "outputs": [io("y", "FP32", json!([2, 3]))],
        })
    );
    let dtypes = sy.get("/v2/models/dtypes").await.json();
    let want_in: Vec<Value> =
        DTYPES.iter().map(|(n, dt)| io(n, dt, json!([-1, if *n == "s" { 1 } else { 2 }]))).collect();
    let want_out: Vec<Value> =
        DTYPES.iter().map(|(n, dt)| io(&format!("{n}_out"), dt, json!([-1, if *n == "s" { 1 } else { 2 }]))).collect();
    assert_eq!(dtypes["inputs"], Value::from(want_in), "{dtypes}");
    assert_eq!(dtypes["outputs"], Value::from(want_out), "{dtypes}");
    assert_eq!(dtypes["versions"], json!(["1"]));

    // Readiness per version, and an unknown version is a 404 that lists the loaded ones.
    for path in ["/v2/models/mlp/ready", "/v2/models/mlp/versions/1/ready", "/v2/models/mlp/versions/2/ready"] {
        assert_eq!(sy.get(path).await.status, 200, "GET {path}");
    }
    assert_ne!(sy.get("/v2/models/mlp/versions/7/ready").await.status, 200);
    let r = sy.get("/v2/models/mlp/versions/7").await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.error().contains("loaded: 1, 2"), "{}", r.text());
    let r = sy.post("/v2/models/mlp/versions/7/infer", &[], mlp_body(1, 0)).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.error().contains("version 7 is not found") && r.error().contains("loaded: 1, 2"), "{}", r.text());

    // A request without a version gets the highest loaded one; the two versions differ.
    let (latest, p_latest) = mlp_infer(&sy, "/v2/models/mlp/infer", 1).await;
    let (v1, p1) = mlp_infer(&sy, "/v2/models/mlp/versions/1/infer", 1).await;
    let (v2, p2) = mlp_infer(&sy, "/v2/models/mlp/versions/2/infer", 1).await;
    assert_eq!((latest.as_str(), v1.as_str(), v2.as_str()), ("2", "1", "2"));
    assert_eq!(p_latest, p2);
    assert_ne!(p1, p2, "versions 1 and 2 should be different models");
    // `fixed` doubles its input.
    let r = sy
        .post(
            "/v2/models/fixed/infer",
            &[],
            json!({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, -4, 5.5, 0]}]})
                .to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(f32_output(&r.json(), "y"), vec![2.0, 4.0, 6.0, -8.0, 11.0, 0.0]);
}

/// Inputs of the `dtypes` model, in model order, with their V2 datatype.
const DTYPES: [(&str, &str); 10] = [
    ("f32", "FP32"),
    ("f64", "FP64"),
    ("f16", "FP16"),
    ("i8", "INT8"),
    ("i16", "INT16"),
    ("i32", "INT32"),
    ("i64", "INT64"),
    ("u8", "UINT8"),
    ("b", "BOOL"),
    ("s", "BYTES"),
];

/// Three rows of each datatype, with the edge values of its range.
fn dtype_values(name: &str) -> Value {
    match name {
        // Exactly representable in f32, and written as the shortest decimal either way.
        "f32" => json!([1.5, -2.25, 3.4028234663852886e38, -1.1754943508222875e-38, 0.0, 1e-45f32 as f64]),
        // 0.9179999999999999 is one ULP below 0.918: a parser that is not correctly rounded reads 0.918.
        "f64" => json!([0.1, -1e300, f64::MAX, f64::MIN_POSITIVE, 5e-324, 0.9179999999999999]),
        // Exactly representable in f16 (65504 is its max).
        "f16" => json!([0.5, -1.25, 2.0, 1024.0, 65504.0, -6.097_555_160_522_461e-5]),
        "i8" => json!([-128, 127, 0, -1, 1, 42]),
        "i16" => json!([-32768, 32767, 0, -1, 1, 4242]),
        "i32" => json!([i32::MIN, i32::MAX, 0, -1, 1, 424242]),
        "i64" => json!([i64::MIN, i64::MAX, 0, -1, 9007199254740993i64, -9007199254740993i64]),
        "u8" => json!([0, 255, 1, 128, 7, 254]),
        "b" => json!([true, false, false, true, true, true]),
        "s" => json!(["hello", "", "h\u{e9}llo \u{2713} \u{1F600}"]),
        other => panic!("no values for {other}"),
    }
}

fn dtype_shape(name: &str) -> Value {
    json!([3, if name == "s" { 1 } else { 2 }])
}

/// Little-endian bytes of `dtype_values(name)` as the binary extension carries them.
fn dtype_raw(name: &str) -> Vec<u8> {
    let v = dtype_values(name);
    let items = v.as_array().unwrap();
    let mut out = Vec::new();
    for x in items {
        match name {
            "f32" => out.extend_from_slice(&(x.as_f64().unwrap() as f32).to_le_bytes()),
            "f64" => out.extend_from_slice(&x.as_f64().unwrap().to_le_bytes()),
            "f16" => out.extend_from_slice(&f16_bits(x.as_f64().unwrap()).to_le_bytes()),
            "i8" => out.extend_from_slice(&(x.as_i64().unwrap() as i8).to_le_bytes()),
            "i16" => out.extend_from_slice(&(x.as_i64().unwrap() as i16).to_le_bytes()),
            "i32" => out.extend_from_slice(&(x.as_i64().unwrap() as i32).to_le_bytes()),
            "i64" => out.extend_from_slice(&x.as_i64().unwrap().to_le_bytes()),
            "u8" => out.push(x.as_u64().unwrap() as u8),
            "b" => out.push(u8::from(x.as_bool().unwrap())),
            "s" => {
                let s = x.as_str().unwrap().as_bytes();
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s);
            }
            other => panic!("{other}"),
        }
    }
    out
}

/// IEEE half bits of a value that is exactly representable as a normal or subnormal f16.
fn f16_bits(v: f64) -> u16 {
    let sign = if v.is_sign_negative() { 0x8000u16 } else { 0 };
    let a = v.abs();
    if a == 0.0 {
        return sign;
    }
    let e = a.log2().floor() as i32;
    if e < -14 {
        // Subnormal: a = m × 2^-24.
        return sign | (a / 2f64.powi(-24)) as u16;
    }
    let m = ((a / 2f64.powi(e) - 1.0) * 1024.0) as u16;
    sign | (((e + 15) as u16) << 10) | m
}

/// `(header, raw bytes per output name)` of a binary-extension response.
fn binary_outputs(r: &Resp) -> (Value, Vec<(String, Vec<u8>)>) {
    let n: usize = r.header(IHCL).unwrap_or_else(|| panic!("no {IHCL}: {:?}", r.headers)).parse().unwrap();
    let header: Value = serde_json::from_slice(&r.body[..n]).expect("JSON header");
    let mut off = n;
    let mut out = Vec::new();
    for o in header["outputs"].as_array().expect("outputs") {
        let size =
            o["parameters"]["binary_data_size"].as_u64().unwrap_or_else(|| panic!("no binary_data_size: {o}")) as usize;
        out.push((o["name"].as_str().unwrap().to_string(), r.body[off..off + size].to_vec()));
        off += size;
    }
    assert_eq!(off, r.body.len(), "binary section length");
    (header, out)
}

/// JSON values compared with the precision of their datatype (a float is read back as that float).
fn assert_same_values(name: &str, got: &Value, want: &Value) {
    let (g, w) = (got.as_array().unwrap_or_else(|| panic!("{name}: {got}")), want.as_array().unwrap());
    assert_eq!(g.len(), w.len(), "{name}: {got} vs {want}");
    for (a, b) in g.iter().zip(w) {
        let same = match name {
            // FP16 values travel as f32 in JSON.
            "f32" | "f16" => a.as_f64().map(|x| x as f32) == b.as_f64().map(|x| x as f32),
            // This test's own serde_json parses without `float_roundtrip` and may be one ULP off;
            // the exact FP64 check is the JSON-in, binary-out case.
            "f64" => match (a.as_f64(), b.as_f64()) {
                (Some(x), Some(y)) => x == y || x.to_bits().abs_diff(y.to_bits()) <= 1,
                _ => false,
            },
            _ => a == b,
        };
        assert!(same, "{name}: got {got}, sent {want}");
    }
}

/// Every datatype of the Identity model comes back unchanged: JSON in and out,
/// binary in and out, and binary in with JSON out.
#[tokio::test]
async fn every_datatype_round_trips_over_json_and_binary() {
    let sy = Switchyard::config(&committed_models_config()).start().await;

    // --- JSON in, JSON out.
    let inputs: Vec<Value> = DTYPES
        .iter()
        .map(|(n, dt)| json!({"name": n, "datatype": dt, "shape": dtype_shape(n), "data": dtype_values(n)}))
        .collect();
    let r = sy.post("/v2/models/dtypes/infer", &[], json!({"id": "dt-json", "inputs": inputs}).to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["id"], "dt-json");
    assert_eq!(v["model_name"], "dtypes");
    assert_eq!(v["model_version"], "1");
    let outs = v["outputs"].as_array().expect("outputs");
    assert_eq!(outs.len(), DTYPES.len(), "every output in model order when none is requested: {v}");
    for ((n, dt), o) in DTYPES.iter().zip(outs) {
        assert_eq!(o["name"], format!("{n}_out"), "{v}");
        assert_eq!(o["datatype"], *dt, "{o}");
        assert_eq!(o["shape"], dtype_shape(n), "{o}");
        assert_same_values(n, &o["data"], &dtype_values(n));
    }

    // --- JSON in, binary out: the server's reading of each JSON number is exact
    // (binary bytes need no parsing on this side).
    let r = sy
        .post(
            "/v2/models/dtypes/infer",
            &[],
            json!({"inputs": inputs, "parameters": {"binary_data_output": true}}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    for ((n, _), (name, bytes)) in DTYPES.iter().zip(binary_outputs(&r).1) {
        assert_eq!(name, format!("{n}_out"));
        let want = dtype_raw(n);
        if n == &"f64" {
            let as_f64 = |b: &[u8]| -> Vec<f64> {
                b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
            };
            assert_eq!(as_f64(&bytes), as_f64(&want), "FP64 JSON values were not read exactly");
        }
        assert_eq!(bytes, want, "{n}: JSON input read differently from its binary encoding");
    }

    // --- Binary in, binary out: the bytes come back exactly.
    let mut header_inputs = Vec::new();
    let mut blobs = Vec::new();
    for (n, dt) in DTYPES {
        let raw = dtype_raw(n);
        header_inputs.push(json!({"name": n, "datatype": dt, "shape": dtype_shape(n),
                                  "parameters": {"binary_data_size": raw.len()}}));
        blobs.extend(raw);
    }
    let header =
        json!({"id": "dt-bin", "inputs": header_inputs, "parameters": {"binary_data_output": true}}).to_string();
    let body = [header.as_bytes(), &blobs].concat();
    let ihcl = header.len().to_string();
    let r =
        sy.post("/v2/models/dtypes/infer", &[("content-type", "application/octet-stream"), (IHCL, &ihcl)], body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (h, raw_outs) = binary_outputs(&r);
    assert_eq!(h["id"], "dt-bin");
    assert_eq!(raw_outs.len(), DTYPES.len(), "{h}");
    for ((n, dt), ((name, bytes), o)) in DTYPES.iter().zip(raw_outs.iter().zip(h["outputs"].as_array().unwrap())) {
        assert_eq!(name, &format!("{n}_out"));
        assert_eq!(o["datatype"], *dt, "{o}");
        assert_eq!(o["shape"], dtype_shape(n), "{o}");
        assert!(o.get("data").is_none(), "binary output also has JSON data: {o}");
        assert_eq!(bytes, &dtype_raw(n), "{n}: binary output bytes differ from the input's");
    }

    // --- Binary in, JSON out, asking for a subset in a chosen order.
    let header = json!({
        "inputs": header_inputs,
        "outputs": [{"name": "s_out"}, {"name": "i64_out"}, {"name": "f16_out"}, {"name": "b_out"}],
    })
    .to_string();
    let body = [header.as_bytes(), &blobs].concat();
    let ihcl = header.len().to_string();
    let r = sy.post("/v2/models/dtypes/infer", &[(IHCL, &ihcl)], body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header(IHCL).is_none(), "JSON answer carries {IHCL}");
    let v = r.json();
    let names: Vec<&str> = v["outputs"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["s_out", "i64_out", "f16_out", "b_out"], "requested outputs in the requested order");
    for o in v["outputs"].as_array().unwrap() {
        let n = o["name"].as_str().unwrap().trim_end_matches("_out");
        assert_same_values(n, &o["data"], &dtype_values(n));
    }
}

/// Every class of bad input is a 400 whose message names the tensor and the problem;
/// nothing panics, and the model keeps serving.
#[tokio::test]
async fn bad_inputs_are_400s_naming_the_tensor() {
    let sy = Switchyard::config(&committed_models_config()).start().await;
    let mlp = |inputs: Value| json!({"inputs": inputs}).to_string();
    let good_input = json!({"name": "input", "shape": [1, 16], "datatype": "FP32", "data": mlp_input(1, 0)});
    let all_dtypes_but = |skip: &str, replace: Option<Value>| {
        let mut inputs: Vec<Value> = DTYPES
            .iter()
            .filter(|(n, _)| *n != skip)
            .map(|(n, dt)| json!({"name": n, "datatype": dt, "shape": dtype_shape(n), "data": dtype_values(n)}))
            .collect();
        inputs.extend(replace);
        json!({"inputs": inputs}).to_string()
    };
    // A binary-extension body with one BYTES element for input `s` of the dtypes model.
    let binary_s = |element: &[u8]| -> (Vec<u8>, String) {
        let mut header_inputs = Vec::new();
        let mut blobs = Vec::new();
        for (n, dt) in DTYPES {
            let raw = if n == "s" {
                let mut raw = dtype_raw("s");
                // Swap the third string for `element`.
                let mut off = 0;
                for _ in 0..2 {
                    let len = u32::from_le_bytes(raw[off..off + 4].try_into().unwrap()) as usize;
                    off += 4 + len;
                }
                raw.truncate(off);
                raw.extend_from_slice(&(element.len() as u32).to_le_bytes());
                raw.extend_from_slice(element);
                raw
            } else {
                dtype_raw(n)
            };
            header_inputs.push(json!({"name": n, "datatype": dt, "shape": dtype_shape(n),
                                      "parameters": {"binary_data_size": raw.len()}}));
            blobs.extend(raw);
        }
        let header = json!({"inputs": header_inputs}).to_string();
        let n = header.len().to_string();
        ([header.as_bytes(), &blobs].concat(), n)
    };
    let uint16_i16 = json!({"name": "i16", "shape": [3, 2], "datatype": "UINT16", "data": [1, 2, 3, 4, 5, 6]});
    let (bad_utf8, bad_utf8_n) = binary_s(&[0xff, 0xfe, 0x41]);
    let (nul, nul_n) = binary_s(b"a\0b");

    // (what, model, body, Inference-Header-Content-Length, words the error must contain)
    type Case = (&'static str, &'static str, Vec<u8>, Option<String>, Vec<&'static str>);
    let cases: Vec<Case> = vec![
        ("missing input", "dtypes", all_dtypes_but("i16", None).into(), None, vec!["missing input", "'i16'"]),
        ("no inputs at all", "mlp", mlp(json!([])).into(), None, vec!["no inputs"]),
        (
            "extra input",
            "mlp",
            mlp(json!([good_input, {"name": "extra", "shape": [1], "datatype": "FP32", "data": [1]}])).into(),
            None,
            vec!["expected 1 inputs but got 2 inputs for model 'mlp'", "unexpected input 'extra'"],
        ),
        (
            "datatype mismatch",
            "mlp",
            mlp(json!([{"name": "input", "shape": [1, 16], "datatype": "FP64", "data": mlp_input(1, 0)}])).into(),
            None,
            vec!["'input'", "FP32", "FP64"],
        ),
        (
            "a datatype the model cannot take",
            "dtypes",
            all_dtypes_but("i16", Some(uint16_i16)).into(),
            None,
            vec!["'i16'", "INT16", "UINT16"],
        ),
        (
            "wrong rank",
            "mlp",
            mlp(json!([{"name": "input", "shape": [16], "datatype": "FP32", "data": mlp_input(1, 0)}])).into(),
            None,
            vec!["'input'", "rank 2", "[16]"],
        ),
        (
            "wrong rank, too many dims",
            "mlp",
            mlp(json!([{"name": "input", "shape": [1, 1, 16], "datatype": "FP32", "data": mlp_input(1, 0)}])).into(),
            None,
            vec!["'input'", "rank 2"],
        ),
        (
            "wrong fixed inner dim",
            "mlp",
            mlp(json!([{"name": "input", "shape": [1, 15], "datatype": "FP32", "data": &mlp_input(1, 0)[..15]}]))
                .into(),
            None,
            vec!["'input'", "dimension 1", "16"],
        ),
        (
            "wrong fixed first dim",
            "fixed",
            json!({"inputs": [{"name": "x", "shape": [3, 3], "datatype": "FP32", "data": [0, 1, 2, 3, 4, 5, 6, 7, 8]}]})
                .to_string()
                .into(),
            None,
            vec!["'x'", "dimension 0", "must be 2"],
        ),
        (
            "BYTES to a numeric input",
            "mlp",
            mlp(json!([{"name": "input", "shape": [1, 16], "datatype": "BYTES", "data": vec!["1.0"; 16]}])).into(),
            None,
            vec!["'input'", "FP32", "BYTES"],
        ),
        (
            "numbers to a BYTES input",
            "dtypes",
            all_dtypes_but("s", Some(json!({"name": "s", "shape": [3, 1], "datatype": "INT32", "data": [1, 2, 3]})))
                .into(),
            None,
            vec!["'s'", "BYTES", "INT32"],
        ),
        (
            "unknown requested output",
            "mlp",
            json!({"inputs": [good_input], "outputs": [{"name": "logits"}]}).to_string().into(),
            None,
            vec!["unknown output", "'logits'"],
        ),
        ("non-UTF-8 BYTES element", "dtypes", bad_utf8, Some(bad_utf8_n), vec!["'s'", "UTF-8"]),
        ("NUL in a BYTES element", "dtypes", nul, Some(nul_n), vec!["'s'", "NUL"]),
    ];
    let n_cases = cases.len();
    for (what, model, body, ihcl, words) in cases {
        let headers: Vec<(&str, &str)> = match &ihcl {
            Some(n) => vec![("content-type", "application/octet-stream"), (IHCL, n.as_str())],
            None => vec![("content-type", "application/json")],
        };
        let r = sy.post(&format!("/v2/models/{model}/infer"), &headers, body).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        let msg = r.error();
        for w in words {
            assert!(msg.contains(w), "{what}: error {msg:?} should mention {w:?}");
        }
    }
    let m = sy.metrics().await;
    let bad = m.value("switchyard_requests_total", &[("code", "400")]);
    assert_eq!(bad, n_cases as f64, "{}", m.0);
    // Still serving, and nothing panicked on the way.
    let (_, p) = mlp_infer(&sy, "/v2/models/mlp/infer", 3).await;
    assert_eq!(p.len(), 8);
    assert!(!sy.log().contains("panicked"), "{}", sy.log());
}

/// `latest: N`, `specific: [..]` and `all` choose what is served out of a repository
/// holding versions 1, 2 and 3 (3 is a copy of 1's file).
#[tokio::test]
async fn version_policy_latest_specific_and_all() {
    let dir = TempDir::new("policy");
    let repo = dir.path().join("models");
    copy_dir(&repo_root().join("examples/models/mlp"), &repo.join("mlp"));
    publish_version(&repo.join("mlp"), 3, &mlp_file(1));
    let config = |policy: &str| {
        format!(
            "backends:\n{}models:\n  mlp:\n    variants:\n      - {{name: main, backend: local}}\n",
            onnx_backend("local", &repo, policy, "    models: [mlp]\n")
        )
    };
    // (policy, versions served, version a request without one gets, versions that must be 404)
    let cases: [(&str, &[&str], &str, &[&str]); 5] = [
        ("{latest: 1}", &["3"], "3", &["1", "2"]),
        ("{latest: 2}", &["2", "3"], "3", &["1"]),
        ("{specific: [1]}", &["1"], "1", &["2", "3"]),
        ("{specific: [1, 2, 9]}", &["1", "2"], "2", &["3", "9"]),
        ("{all: true}", &["1", "2", "3"], "3", &["4"]),
    ];
    let mut outputs: std::collections::BTreeMap<String, Vec<f32>> = Default::default();
    for (policy, served, default, absent) in cases {
        let sy = Switchyard::config(&config(policy)).start().await;
        assert_eq!(listed_versions(&sy, "mlp").await, served, "{policy}");
        let (v, _) = mlp_infer(&sy, "/v2/models/mlp/infer", 4).await;
        assert_eq!(v, default, "{policy}: a request without a version");
        for version in served {
            let (v, p) = mlp_infer(&sy, &format!("/v2/models/mlp/versions/{version}/infer"), 4).await;
            assert_eq!(&v, version, "{policy}");
            let first = outputs.entry(v).or_insert_with(|| p.clone());
            assert_eq!(first, &p, "{policy}: version {version} answers differently under another policy");
        }
        let loaded = served.join(", ");
        for version in absent {
            let r = sy.post(&format!("/v2/models/mlp/versions/{version}/infer"), &[], mlp_body(1, 0)).await;
            assert_eq!(r.status, 404, "{policy}: version {version}: {}", r.text());
            assert!(r.error().contains(&format!("loaded: {loaded}")), "{policy}: {}", r.text());
            assert_eq!(sy.get(&format!("/v2/models/mlp/versions/{version}")).await.status, 404, "{policy}");
        }
    }
    assert_eq!(outputs["1"], outputs["3"], "version 3 is a copy of version 1");
    assert_ne!(outputs["1"], outputs["2"]);
}

/// Versions appear and disappear while the server runs; a broken file is reported
/// and never replaces what serves. The poll interval is longer than the patience,
/// so every change here is picked up by the directory watch.
#[tokio::test]
async fn versions_added_removed_and_broken_while_running() {
    let dir = TempDir::new("hot");
    let repo = dir.path().join("models");
    let mlp_dir = repo.join("mlp");
    copy_dir(&repo_root().join("examples/models/mlp/1"), &mlp_dir.join("1"));
    let sy = Switchyard::config(&format!(
        "backends:\n{}models:\n  mlp:\n    variants:\n      - {{name: main, backend: local}}\n",
        onnx_backend("local", &repo, "{all: true}", "    models: [mlp]\n    poll_interval: 10m\n")
    ))
    .start()
    .await;
    assert_eq!(listed_versions(&sy, "mlp").await, ["1"]);
    let (_, p1) = mlp_infer(&sy, "/v2/models/mlp/infer", 5).await;
    let served = |path: &'static str| {
        let sy = &sy;
        async move { sy.post(path, &[], mlp_body(2, 5)).await.status == 200 }
    };

    // --- Hot add: version 2's file as version 3 (written aside, renamed into place), then version 2 itself.
    publish_version(&mlp_dir, 3, &mlp_file(2));
    assert_eventually!(
        served("/v2/models/mlp/versions/3/infer").await,
        "version 3 never became servable; log:\n{}",
        sy.log()
    );
    assert_eq!(listed_versions(&sy, "mlp").await, ["1", "3"]);
    let (v, p3) = mlp_infer(&sy, "/v2/models/mlp/infer", 5).await;
    assert_eq!(v, "3", "the newest version serves requests without a version");
    assert_ne!(p3, p1);
    publish_version(&mlp_dir, 2, &mlp_file(2));
    assert_eventually!(served("/v2/models/mlp/versions/2/infer").await, "version 2 never became servable");
    assert_eq!(listed_versions(&sy, "mlp").await, ["1", "2", "3"]);
    assert_eq!(mlp_infer(&sy, "/v2/models/mlp/versions/2/infer", 5).await.1, p3, "2 and 3 are the same file");

    // --- Hot remove: version 3 goes away; asking for it is a 404 naming what is loaded.
    std::fs::remove_dir_all(mlp_dir.join("3")).unwrap();
    assert_eventually!(
        sy.post("/v2/models/mlp/versions/3/infer", &[], mlp_body(1, 0)).await.status == 404,
        "version 3 still served after its directory was removed"
    );
    let r = sy.post("/v2/models/mlp/versions/3/infer", &[], mlp_body(1, 0)).await;
    assert!(r.error().contains("loaded: 1, 2"), "{}", r.text());
    assert_eq!(listed_versions(&sy, "mlp").await, ["1", "2"]);
    assert_eq!(mlp_infer(&sy, "/v2/models/mlp/infer", 5).await.0, "2");

    // --- A corrupt model.onnx as a new version: reported in the log, never served; 2 keeps serving.
    let failures = |log: &str, needle: &str| {
        log.lines().filter(|l| l.contains("cannot load model version") && l.contains(needle)).count()
    };
    let v4_path = format!("{}", mlp_dir.join("4").join("model.onnx").display());
    publish_version(&mlp_dir, 4, b"this is not an ONNX model");
    assert_eventually!(failures(&sy.log(), &v4_path) >= 1, "the broken version 4 was not reported; log:\n{}", sy.log());
    let r = sy.post("/v2/models/mlp/versions/4/infer", &[], mlp_body(1, 0)).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(listed_versions(&sy, "mlp").await, ["1", "2"]);
    let (v, p) = mlp_infer(&sy, "/v2/models/mlp/infer", 5).await;
    assert_eq!((v.as_str(), &p), ("2", &p3));

    // --- A serving version's file replaced by a broken one: reported, and the previous load keeps serving.
    let v2_path = format!("{}", mlp_dir.join("2").join("model.onnx").display());
    replace_model_file(&mlp_dir.join("2"), b"\x08\x07garbage");
    assert_eventually!(failures(&sy.log(), &v2_path) >= 1, "the broken file of version 2 was not reported");
    assert_eq!(mlp_infer(&sy, "/v2/models/mlp/versions/2/infer", 5).await.1, p3);
    assert_eq!(listed_versions(&sy, "mlp").await, ["1", "2"]);

    // --- Fixing version 4's file makes it load.
    replace_model_file(&mlp_dir.join("4"), &mlp_file(1));
    assert_eventually!(served("/v2/models/mlp/versions/4/infer").await, "version 4 never loaded once fixed");
    assert_eq!(mlp_infer(&sy, "/v2/models/mlp/versions/4/infer", 5).await.1, p1);
    assert_eq!(listed_versions(&sy, "mlp").await, ["1", "2", "4"]);
    assert!(!sy.log().contains("panicked"), "{}", sy.log());
}

/// Runs `switchyard serve` that is expected to exit, and returns (exit code, output).
fn run_to_exit(exe: &Path, config: &Path, cwd: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let log = cwd.join("serve.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .current_dir(cwd)
        .env("SWITCHYARD_LOG_FORMAT", "text")
        .env_remove("ORT_DYLIB_PATH")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn switchyard");
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "switchyard kept running without an ONNX Runtime library; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(POLL);
    };
    (status.code(), std::fs::read_to_string(&log).unwrap_or_default())
}

/// A config with an onnx backend on free loopback ports.
fn onnx_serve_config(dir: &Path, runtime: &str) -> PathBuf {
    let config = dir.join("switchyard.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners:\n  http:\n    address: 127.0.0.1:{}\n  metrics:\n    address: 127.0.0.1:{}\n{runtime}backends:\n{}models:\n  mlp:\n    variants:\n      - {{name: main, backend: local}}\n",
            free_port(),
            free_port(),
            onnx_backend("local", &repo_root().join("examples/models"), "{latest: 1}", "    models: [mlp]\n"),
        ),
    )
    .unwrap();
    config
}

/// Without the library anywhere it is looked for, `serve` exits non-zero and
/// says where it looked and how to install it.
///
/// The binary also searches `.switchyard/lib` above its own executable, which
/// finds the repository's copy from `target/debug`; so this runs a link of the
/// binary placed in a temp directory, from that directory, with
/// `ORT_DYLIB_PATH` and `runtime.onnx.library_path` pointing at nothing.
#[test]
fn missing_library_is_a_clear_startup_error() {
    let dir = TempDir::new("nolib");
    let bin_dir = dir.path().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let exe = bin_dir.join("switchyard");
    if std::fs::hard_link(env!("CARGO_BIN_EXE_switchyard"), &exe).is_err() {
        std::fs::copy(env!("CARGO_BIN_EXE_switchyard"), &exe).expect("copy the binary");
    }
    for ancestor in dir.path().ancestors() {
        assert!(
            !ancestor.join(".switchyard/lib/libonnxruntime.so").exists(),
            "{} has a library: this test cannot hide it",
            ancestor.display()
        );
    }
    let configured = "/nonexistent/configured/libonnxruntime.so";
    let from_env = "/nonexistent/env/libonnxruntime.so";
    let config = onnx_serve_config(dir.path(), &format!("runtime:\n  onnx:\n    library_path: {configured}\n"));
    let (code, log) = run_to_exit(&exe, &config, dir.path(), &[("ORT_DYLIB_PATH", from_env)]);
    assert!(code.is_some_and(|c| c != 0), "exit code {code:?}; log:\n{log}");
    for want in ["ONNX Runtime library", "scripts/setup.sh", "ORT_DYLIB_PATH", configured, from_env] {
        assert!(log.contains(want), "the startup error should mention {want:?}; log:\n{log}");
    }
    assert!(!log.contains("panicked"), "{log}");

    // Without the configured path and the variable, the error lists the discovery places.
    let config = onnx_serve_config(dir.path(), "");
    let (code, log) = run_to_exit(&exe, &config, dir.path(), &[]);
    assert!(code.is_some_and(|c| c != 0), "exit code {code:?}; log:\n{log}");
    let under_cwd = format!("{}", dir.path().join(".switchyard/lib/libonnxruntime.so").display());
    for want in ["ONNX Runtime library", "scripts/setup.sh", under_cwd.as_str()] {
        assert!(log.contains(want), "the startup error should mention {want:?}; log:\n{log}");
    }
}

/// A configured `library_path` that does not exist falls back to discovery
/// (docs/onnx-backend.md: "the first existing file of"), with a warning.
#[tokio::test]
async fn a_missing_configured_library_path_is_warned_about_and_discovery_continues() {
    let sy = Switchyard::config(&format!(
        "runtime:\n  onnx:\n    library_path: /nonexistent/libonnxruntime.so\nbackends:\n{}models:\n  mlp:\n    variants:\n      - {{name: main, backend: local}}\n",
        onnx_backend("local", &repo_root().join("examples/models"), "{latest: 1}", "    models: [mlp]\n")
    ))
    .start()
    .await;
    assert!(
        sy.log().contains("configured ONNX Runtime library_path does not exist"),
        "no warning about the missing library_path; log:\n{}",
        sy.log()
    );
    let (v, _) = mlp_infer(&sy, "/v2/models/mlp/infer", 0).await;
    assert_eq!(v, "2");
}
