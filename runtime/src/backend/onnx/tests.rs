//! Tests against the real ONNX Runtime library (found like the binary finds it:
//! `scripts/setup.sh` links it under `.switchyard/lib/`) and the committed models.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use half::f16;
use switchyard_config::{ExecutionProvider, OnnxBackend as Config, OnnxRuntime, ValidatedConfig, VersionPolicy};

use super::*;
use crate::tensor::{bytes_elements, DataType, RequestedOutput, Tensor};

const PATIENCE: Duration = Duration::from_secs(30);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn runtime_cfg(provider: ExecutionProvider) -> OnnxRuntime {
    OnnxRuntime {
        library_path: None,
        pool_threads: NonZeroUsize::new(2).unwrap(),
        intra_op_threads: NonZeroUsize::new(1).unwrap(),
        execution_provider: provider,
    }
}

fn shared() -> &'static OnnxShared {
    static SHARED: OnceLock<OnnxShared> = OnceLock::new();
    SHARED.get_or_init(|| {
        OnnxShared::new(&runtime_cfg(ExecutionProvider::Cpu))
            .unwrap_or_else(|e| panic!("these tests need the ONNX Runtime library (run scripts/setup.sh): {e}"))
    })
}

fn cfg(repository: &Path, policy: VersionPolicy, models: &[&str]) -> Config {
    Config {
        repository: repository.to_path_buf(),
        version_policy: policy,
        models: models.iter().map(|m| m.to_string()).collect(),
        warmup: 1,
        warmup_requests: 1,
        instances: NonZeroUsize::MIN,
        poll_interval: Duration::from_millis(500),
        mlflow: None,
    }
}

fn latest(n: usize) -> VersionPolicy {
    VersionPolicy::Latest(NonZeroUsize::new(n).unwrap())
}

async fn start(c: &Config) -> OnnxBackend {
    OnnxBackend::start("test", c, shared()).await.unwrap()
}

fn target(name: &str, version: Option<&str>) -> ModelTarget {
    ModelTarget { name: Arc::from(name), version: version.map(Arc::from) }
}

fn f32_tensor(name: &str, shape: Vec<i64>, values: &[f32]) -> Tensor {
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Tensor::new(name, DataType::Fp32, shape, Bytes::from(data))
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn request(inputs: Vec<Tensor>) -> InferRequest {
    InferRequest { id: Some("req-1".into()), inputs, ..Default::default() }
}

fn mlp_input(rows: usize) -> Tensor {
    let values: Vec<f32> = (0..rows * 16).map(|i| (i as f32 * 0.37).sin()).collect();
    f32_tensor("input", vec![rows as i64, 16], &values)
}

/// A directory under the system temp dir, removed on drop.
struct TempRepo(PathBuf);

impl TempRepo {
    fn new(tag: &str) -> TempRepo {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let p = std::env::temp_dir().join(format!("switchyard-onnx-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempRepo(p)
    }

    fn add(&self, model: &str, version: u64, from: &Path) {
        let dir = self.0.join(model).join(version.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(from, dir.join("model.onnx")).unwrap();
    }

    fn add_bytes(&self, model: &str, version: u64, bytes: &[u8]) {
        let dir = self.0.join(model).join(version.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.onnx"), bytes).unwrap();
    }
}

impl Drop for TempRepo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn example(model: &str, version: u64) -> PathBuf {
    workspace_root().join("examples/models").join(model).join(version.to_string()).join("model.onnx")
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn invalid(r: Result<InferResponse, BackendError>) -> String {
    match r {
        Err(BackendError::InvalidInput(m)) => m,
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlp_rows_sum_to_one_and_versions_differ() {
    let b = start(&cfg(&workspace_root().join("examples/models"), VersionPolicy::All, &["mlp"])).await;
    assert_eq!(b.versions("mlp"), vec![1, 2]);
    let mut outs = Vec::new();
    for v in ["1", "2"] {
        let r = b.infer(&target("mlp", Some(v)), request(vec![mlp_input(3)])).await.unwrap();
        assert_eq!(r.model_name, "mlp");
        assert_eq!(r.model_version.as_deref(), Some(v));
        assert_eq!(r.id.as_deref(), Some("req-1"));
        assert_eq!(r.outputs.len(), 1);
        let o = &r.outputs[0];
        assert_eq!((o.name.as_str(), o.datatype, o.shape.clone()), ("probabilities", DataType::Fp32, vec![3, 4]));
        let p = f32s(o);
        for row in p.chunks(4) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row:?}");
        }
        outs.push(p);
    }
    assert_ne!(outs[0], outs[1], "v1 and v2 must differ");
    // No version: the latest loaded.
    let r = b.infer(&target("mlp", None), request(vec![mlp_input(1)])).await.unwrap();
    assert_eq!(r.model_version.as_deref(), Some("2"));
    assert!(b.ready().await);
    assert!(b.model_ready(&target("mlp", Some("1"))).await.unwrap());
    assert!(!b.model_ready(&target("mlp", Some("3"))).await.unwrap());
    assert!(!b.model_ready(&target("nope", None)).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_describes_the_signature() {
    let b = start(&cfg(&workspace_root().join("examples/models"), VersionPolicy::All, &["mlp"])).await;
    let md = b.model_metadata(&target("mlp", None)).await.unwrap();
    assert_eq!(
        md,
        serde_json::json!({
            "name": "mlp",
            "versions": ["1", "2"],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}],
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 4]}],
        })
    );
    let err = b.model_metadata(&target("mlp", Some("7"))).await.unwrap_err();
    assert!(matches!(err, BackendError::NotFound(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_policies() {
    let repo = workspace_root().join("examples/models");
    let cases = [
        (latest(1), vec![2]),
        (latest(5), vec![1, 2]),
        (VersionPolicy::Specific(vec![1]), vec![1]),
        (VersionPolicy::Specific(vec![2, 9]), vec![2]),
        (VersionPolicy::All, vec![1, 2]),
    ];
    for (policy, want) in cases {
        let b = start(&cfg(&repo, policy.clone(), &["mlp"])).await;
        assert_eq!(b.versions("mlp"), want, "{policy:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_model_list_serves_every_model_and_heavy_mlp_runs() {
    let b = start(&cfg(&workspace_root().join("examples/models"), latest(1), &[])).await;
    assert_eq!(b.versions("mlp"), vec![2]);
    assert_eq!(b.versions("mlp_heavy"), vec![1]);
    let x: Vec<f32> = (0..2 * 256).map(|i| (i % 7) as f32 / 7.0).collect();
    let r = b.infer(&target("mlp_heavy", None), request(vec![f32_tensor("input", vec![2, 256], &x)])).await.unwrap();
    assert_eq!(r.outputs[0].name, "logits");
    assert_eq!(r.outputs[0].shape, vec![2, 10]);
    assert!(f32s(&r.outputs[0]).iter().all(|v| v.is_finite()));
}

fn le<T: Copy, const N: usize>(values: &[T], f: impl Fn(T) -> [u8; N]) -> Bytes {
    Bytes::from(values.iter().flat_map(|&v| f(v)).collect::<Vec<u8>>())
}

fn bytes_tensor(name: &str, shape: Vec<i64>, elements: &[&[u8]]) -> Tensor {
    let mut raw = Vec::new();
    for e in elements {
        raw.extend_from_slice(&(e.len() as u32).to_le_bytes());
        raw.extend_from_slice(e);
    }
    Tensor::new(name, DataType::Bytes, shape, Bytes::from(raw))
}

fn dtypes_inputs() -> Vec<Tensor> {
    let s = vec![2, 2];
    vec![
        Tensor::new("f32", DataType::Fp32, s.clone(), le(&[1.5f32, -2.0, f32::MAX, 0.0], f32::to_le_bytes)),
        Tensor::new("f64", DataType::Fp64, s.clone(), le(&[1e300f64, -0.5, 3.25, 7.0], f64::to_le_bytes)),
        Tensor::new(
            "f16",
            DataType::Fp16,
            s.clone(),
            le(&[f16::from_f32(1.5), f16::from_f32(-2.0), f16::MAX, f16::ZERO], f16::to_le_bytes),
        ),
        Tensor::new("i8", DataType::Int8, s.clone(), le(&[-128i8, 127, 0, -1], i8::to_le_bytes)),
        Tensor::new("i16", DataType::Int16, s.clone(), le(&[i16::MIN, i16::MAX, 0, -1], i16::to_le_bytes)),
        Tensor::new("i32", DataType::Int32, s.clone(), le(&[i32::MIN, i32::MAX, 0, -1], i32::to_le_bytes)),
        Tensor::new("i64", DataType::Int64, s.clone(), le(&[i64::MIN, i64::MAX, 0, -1], i64::to_le_bytes)),
        Tensor::new("u8", DataType::Uint8, s.clone(), le(&[0u8, 255, 1, 128], u8::to_le_bytes)),
        Tensor::new("b", DataType::Bool, s.clone(), Bytes::from_static(&[1, 0, 0, 1])),
        bytes_tensor("s", vec![2, 1], &["héllo wörld".as_bytes(), b""]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_datatype_round_trips() {
    let b = start(&cfg(&workspace_root().join("tests/models"), latest(1), &["dtypes"])).await;
    let md = b.model_metadata(&target("dtypes", None)).await.unwrap();
    let types: Vec<(String, String)> = md["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap().to_owned(), i["datatype"].as_str().unwrap().to_owned()))
        .collect();
    assert!(types.contains(&("s".into(), "BYTES".into())), "{types:?}");
    assert!(types.contains(&("f16".into(), "FP16".into())), "{types:?}");

    let inputs = dtypes_inputs();
    let r = b.infer(&target("dtypes", None), request(inputs.clone())).await.unwrap();
    assert_eq!(r.outputs.len(), inputs.len());
    for i in &inputs {
        let o = r
            .outputs
            .iter()
            .find(|o| o.name == format!("{}_out", i.name))
            .unwrap_or_else(|| panic!("no output for {}", i.name));
        assert_eq!((o.datatype, &o.shape, &o.data), (i.datatype, &i.shape, &i.data), "{}", i.name);
    }
    let s = r.outputs.iter().find(|o| o.name == "s_out").unwrap();
    let strings: Vec<&[u8]> = bytes_elements(&s.data).map(Result::unwrap).collect();
    assert_eq!(strings, vec!["héllo wörld".as_bytes(), b""]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_outputs_in_order_and_unaligned_inputs() {
    let b = start(&cfg(&workspace_root().join("tests/models"), latest(1), &["dtypes"])).await;
    let mut inputs = dtypes_inputs();
    // Unaligned buffers take the copy path.
    for t in inputs.iter_mut().filter(|t| t.datatype.size().is_some_and(|s| s > 1)) {
        let mut shifted = vec![0xAAu8];
        shifted.extend_from_slice(&t.data);
        let original = t.data.clone();
        t.data = Bytes::from(shifted).slice(1..);
        assert_eq!(t.data, original);
    }
    let mut req = request(inputs.clone());
    req.outputs = ["s_out", "i64_out", "f32_out"]
        .iter()
        .map(|n| RequestedOutput { name: n.to_string(), ..Default::default() })
        .collect();
    let r = b.infer(&target("dtypes", None), req).await.unwrap();
    let names: Vec<&str> = r.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, vec!["s_out", "i64_out", "f32_out"]);
    let i64_in = inputs.iter().find(|t| t.name == "i64").unwrap();
    assert_eq!(r.outputs[1].data, i64_in.data);
}

/// `t` with its rows repeated `times` (BYTES elements are self-delimiting, so their bytes repeat too).
fn repeat_rows(mut t: Tensor, times: usize) -> Tensor {
    t.shape[0] *= times as i64;
    t.data = Bytes::from(t.data.repeat(times));
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_outputs_share_onnx_runtime_buffers_and_outlive_the_backend() {
    let b = start(&cfg(&workspace_root().join("tests/models"), latest(1), &["dtypes"])).await;
    // f32_out: 8192 rows of 2 floats = 64 KiB (shared); u8_out: 16 KiB (copied).
    let inputs: Vec<Tensor> = dtypes_inputs().into_iter().map(|t| repeat_rows(t, 4096)).collect();
    let mut req = request(inputs.clone());
    req.outputs = ["f32_out", "u8_out", "f32_out"]
        .iter()
        .map(|n| RequestedOutput { name: n.to_string(), ..Default::default() })
        .collect();
    let r = b.infer(&target("dtypes", None), req).await.unwrap();
    // The answer holds no borrow of the session: it stays valid once the model is gone.
    drop(b);
    let input = |n: &str| inputs.iter().find(|t| t.name == n).unwrap();
    assert!(r.outputs[0].data.len() >= convert::ZERO_COPY_MIN);
    assert!(r.outputs[1].data.len() < convert::ZERO_COPY_MIN);
    assert_eq!((&r.outputs[0].shape, &r.outputs[0].data), (&input("f32").shape, &input("f32").data));
    assert_eq!((&r.outputs[1].shape, &r.outputs[1].data), (&input("u8").shape, &input("u8").data));
    // An output asked for twice is one buffer, not two copies.
    assert_eq!(r.outputs[2].name, "f32_out");
    assert_eq!(r.outputs[2].data.as_ptr(), r.outputs[0].data.as_ptr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_shape_model() {
    let b = start(&cfg(&workspace_root().join("tests/models"), latest(1), &["fixed"])).await;
    let x = [1.0f32, 2.0, 3.0, -4.0, 0.5, 0.0];
    let r = b.infer(&target("fixed", None), request(vec![f32_tensor("x", vec![2, 3], &x)])).await.unwrap();
    assert_eq!(r.outputs[0].name, "y");
    assert_eq!(r.outputs[0].shape, vec![2, 3]);
    assert_eq!(f32s(&r.outputs[0]), x.iter().map(|v| v * 2.0).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_rejected_before_running() {
    let models = workspace_root().join("examples/models");
    let tests = workspace_root().join("tests/models");
    let mlp = start(&cfg(&models, VersionPolicy::All, &["mlp"])).await;
    let fixed = start(&cfg(&tests, latest(1), &["fixed"])).await;
    let dtypes = start(&cfg(&tests, latest(1), &["dtypes"])).await;
    let t = target("mlp", None);

    let cases: Vec<(&str, &OnnxBackend, &str, InferRequest, &str)> = vec![
        (
            "datatype",
            &mlp,
            "mlp",
            request(vec![Tensor::new("input", DataType::Fp64, vec![1, 16], Bytes::from(vec![0u8; 128]))]),
            "inference input 'input' data-type is 'FP64', but model 'mlp' expects 'FP32'",
        ),
        (
            "unexpected input",
            &mlp,
            "mlp",
            request(vec![mlp_input(1), f32_tensor("extra", vec![1], &[1.0])]),
            "expected 1 inputs but got 2 inputs for model 'mlp' (model inputs: 'input'; unexpected input 'extra')",
        ),
        (
            "missing input",
            &dtypes,
            "dtypes",
            request(dtypes_inputs().into_iter().filter(|t| t.name != "i16").collect()),
            "missing input 'i16'",
        ),
        (
            "rank",
            &mlp,
            "mlp",
            request(vec![f32_tensor("input", vec![16], &[0.0; 16])]),
            "unexpected shape for input 'input' for model 'mlp'. Expected [-1, 16], got [16] (model expects rank 2)",
        ),
        (
            "dynamic model, fixed dim",
            &mlp,
            "mlp",
            request(vec![f32_tensor("input", vec![1, 15], &[0.0; 15])]),
            "unexpected shape for input 'input' for model 'mlp'. Expected [-1, 16], got [1, 15] (dimension 1 must be 16)",
        ),
        (
            "fixed model, batch dim",
            &fixed,
            "fixed",
            request(vec![f32_tensor("x", vec![3, 3], &[0.0; 9])]),
            "unexpected shape for input 'x' for model 'fixed'. Expected [2, 3], got [3, 3] (dimension 0 must be 2)",
        ),
        (
            "data size",
            &mlp,
            "mlp",
            request(vec![Tensor::new("input", DataType::Fp32, vec![1, 16], Bytes::from(vec![0u8; 60]))]),
            "input 'input': data holds 60 bytes",
        ),
        (
            "unknown output",
            &mlp,
            "mlp",
            InferRequest {
                outputs: vec![RequestedOutput { name: "logits".into(), ..Default::default() }],
                ..request(vec![mlp_input(1)])
            },
            "unknown output 'logits'",
        ),
        (
            "BF16 to an FP32 model",
            &mlp,
            "mlp",
            request(vec![Tensor::new("input", DataType::Bf16, vec![1, 16], Bytes::from(vec![0u8; 32]))]),
            "inference input 'input' data-type is 'BF16', but model 'mlp' expects 'FP32'",
        ),
        (
            "BYTES that are not UTF-8",
            &dtypes,
            "dtypes",
            request(
                dtypes_inputs()
                    .into_iter()
                    .map(|t| if t.name == "s" { bytes_tensor("s", vec![2, 1], &[b"ok", &[0xff, 0xfe]]) } else { t })
                    .collect(),
            ),
            "input 's': BYTES element 1 is not UTF-8",
        ),
        ("no inputs", &mlp, "mlp", request(vec![]), "request has no inputs"),
    ];
    for (case, backend, model, req, want) in cases {
        let msg = invalid(backend.infer(&target(model, None), req).await);
        assert!(msg.contains(want), "{case}: {msg:?} should contain {want:?}");
    }

    match mlp.infer(&target("mlp", Some("3")), request(vec![mlp_input(1)])).await {
        Err(BackendError::NotFound(m)) => {
            assert_eq!(m, "Request for unknown model: 'mlp' version 3 is not found (loaded: 1, 2)")
        }
        other => panic!("{other:?}"),
    }
    match mlp.infer(&target("mlp", Some("latest")), request(vec![mlp_input(1)])).await {
        Err(BackendError::InvalidInput(m)) => {
            assert!(m.starts_with("failed to get model version from specified version string 'latest'"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    match mlp.infer(&target("resnet", None), request(vec![mlp_input(1)])).await {
        Err(BackendError::NotFound(m)) => {
            assert_eq!(m, "Request for unknown model: 'resnet' is not found (not loaded; loaded: mlp)")
        }
        other => panic!("{other:?}"),
    }
    // Still serving after all of that.
    mlp.infer(&t, request(vec![mlp_input(2)])).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_add_and_remove_versions() {
    let repo = TempRepo::new("hot");
    repo.add("mlp", 1, &example("mlp", 1));
    let b = start(&cfg(&repo.0, VersionPolicy::All, &[])).await;
    assert_eq!(b.versions("mlp"), vec![1]);
    let in_flight = b.resolve(&target("mlp", Some("1"))).unwrap();

    repo.add("mlp", 2, &example("mlp", 2));
    eventually("mlp v2 loaded", || b.versions("mlp") == [1, 2]).await;
    let r = b.infer(&target("mlp", Some("2")), request(vec![mlp_input(1)])).await.unwrap();
    assert_eq!(r.model_version.as_deref(), Some("2"));

    // A new model directory appears too.
    repo.add("fixed", 1, &workspace_root().join("tests/models/fixed/1/model.onnx"));
    eventually("fixed loaded", || b.versions("fixed") == [1]).await;

    std::fs::remove_dir_all(repo.0.join("mlp/1")).unwrap();
    eventually("mlp v1 removed", || b.versions("mlp") == [2]).await;
    assert!(matches!(
        b.infer(&target("mlp", Some("1")), request(vec![mlp_input(1)])).await,
        Err(BackendError::NotFound(_))
    ));
    // A request that already holds the removed version still completes.
    let req = request(vec![mlp_input(1)]);
    let out = b.pool.run(move || in_flight.run(&req, std::time::Duration::ZERO)).await.unwrap().unwrap();
    assert_eq!(out[0].shape, vec![1, 4]);

    std::fs::remove_dir_all(repo.0.join("fixed")).unwrap();
    eventually("fixed removed", || b.versions("fixed").is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_version_is_reported_and_old_one_keeps_serving() {
    let repo = TempRepo::new("corrupt");
    repo.add("mlp", 1, &example("mlp", 1));
    let b = start(&cfg(&repo.0, latest(1), &["mlp"])).await;
    assert_eq!(b.versions("mlp"), vec![1]);

    repo.add_bytes("mlp", 2, b"this is not an onnx model");
    eventually("the failure is reported", || b.load_failures().iter().any(|f| f.model == "mlp" && f.version == 2))
        .await;
    assert_eq!(b.versions("mlp"), vec![1]);
    let r = b.infer(&target("mlp", None), request(vec![mlp_input(1)])).await.unwrap();
    assert_eq!(r.model_version.as_deref(), Some("1"));

    // Fixing the file in place loads it.
    std::fs::copy(example("mlp", 2), repo.0.join("mlp/2/model.onnx")).unwrap();
    eventually("the fixed v2 replaces v1", || b.versions("mlp") == [2]).await;
    assert!(b.load_failures().is_empty(), "{:?}", b.load_failures());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_skips_a_corrupt_latest_but_fails_a_model_with_nothing_loadable() {
    let repo = TempRepo::new("startup");
    repo.add("mlp", 1, &example("mlp", 1));
    repo.add_bytes("mlp", 3, b"garbage");
    repo.add_bytes("broken", 1, b"garbage");
    let b = start(&cfg(&repo.0, latest(1), &["mlp"])).await;
    assert_eq!(b.versions("mlp"), vec![1]);
    assert_eq!(b.load_failures().len(), 1);

    let err = match OnnxBackend::start("test", &cfg(&repo.0, latest(1), &["mlp", "broken"]), shared()).await {
        Ok(_) => panic!("a listed model without a loadable version must fail startup"),
        Err(e) => e,
    };
    assert!(err.contains("model `broken` has no loadable version"), "{err}");
    assert!(err.contains("version 1:"), "{err}");

    let err = match OnnxBackend::start("test", &cfg(&repo.0, latest(1), &["absent"]), shared()).await {
        Ok(_) => panic!("a listed model missing from the repository must fail startup"),
        Err(e) => e,
    };
    assert!(err.contains("model `absent` has no loadable version"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_instances() {
    let mut c = cfg(&workspace_root().join("examples/models"), latest(1), &["mlp"]);
    c.instances = NonZeroUsize::new(2).unwrap();
    let b = Arc::new(start(&c).await);
    let mut tasks = Vec::new();
    for i in 0..64 {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            let r = b.infer(&target("mlp", None), request(vec![mlp_input(1 + i % 4)])).await.unwrap();
            assert_eq!(r.outputs[0].shape, vec![1 + (i % 4) as i64, 4]);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuda_is_refused_clearly_by_a_cpu_library() {
    use ort::ep::ExecutionProvider as _;
    let _ = shared();
    let lib_has_cuda = ort::ep::CUDA::is_available().unwrap_or(false);
    match OnnxShared::new(&runtime_cfg(ExecutionProvider::Cuda { device: 0 })) {
        Ok(_) => assert!(lib_has_cuda, "CUDA accepted by a library without it"),
        Err(err) => {
            assert!(!lib_has_cuda, "{err}");
            assert!(
                err.contains("the CUDA execution provider is not available in the loaded ONNX Runtime library"),
                "{err}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_backends_wires_the_onnx_kind() {
    let _ = shared();
    let yaml =
        "backends:\n  local:\n    kind: onnx\n    repository: examples/models\n    models: [mlp]\n    warmup: 1\n";
    let cfg = ValidatedConfig::parse(yaml, &workspace_root()).unwrap_or_else(|e| panic!("{e}"));
    let backends = crate::backend::build_backends(&cfg).await.unwrap();
    let b = &backends["local"];
    assert_eq!(b.kind(), "onnx");
    let r = b.infer(&target("mlp", None), request(vec![mlp_input(2)])).await.unwrap();
    assert_eq!(r.model_version.as_deref(), Some("2"));
}
