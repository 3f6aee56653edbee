//! One loaded model version: its sessions, its signature, request validation
//! against that signature, and running a request (on a pool thread).

use std::borrow::Cow;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use std::time::{Duration, Instant, SystemTime};

use ort::ep;
use ort::session::Session;
use switchyard_config::ExecutionProvider;

use super::convert;
use super::library::{cuda_unavailable, Library};
use super::warmup::{self, Sample};
use crate::backend::triton::VersionStats;
use crate::error::BackendError;
use crate::tensor::{DataType, InferRequest, RequestedOutput, Tensor, TensorSpec};

/// `model.onnx` as last seen on disk: a changed file is reloaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub len: u64,
    pub modified: Option<SystemTime>,
}

impl Fingerprint {
    pub fn of(path: &Path) -> std::io::Result<Fingerprint> {
        let m = std::fs::metadata(path)?;
        Ok(Fingerprint { len: m.len(), modified: m.modified().ok() })
    }
}

/// A model input or output as the model declares it.
#[derive(Clone, Debug, PartialEq)]
pub struct Io {
    pub name: String,
    pub datatype: DataType,
    /// -1 for a dynamic dim.
    pub shape: Vec<i64>,
}

impl Io {
    pub fn spec(&self) -> TensorSpec {
        TensorSpec { name: self.name.clone(), datatype: self.datatype.as_str(), shape: self.shape.clone() }
    }
}

/// How sessions are built: from the process-wide runtime settings and the backend's.
#[derive(Clone)]
pub struct SessionSettings {
    pub library: Library,
    pub intra_op_threads: usize,
    pub provider: ExecutionProvider,
    pub instances: usize,
    /// Synthetic warm-up runs per session, when the model has no warm-up samples.
    pub warmup: u32,
    /// Runs of each `MODEL/warmup/*.json` sample per session.
    pub warmup_requests: u32,
}

/// Where one execution spent its time, for Triton's statistics.
#[derive(Clone, Copy, Debug, Default)]
pub struct Phases {
    pub input: Duration,
    pub infer: Duration,
    pub output: Duration,
}

pub struct LoadedVersion {
    pub model: Arc<str>,
    pub version: u64,
    pub label: Arc<str>,
    pub inputs: Vec<Io>,
    pub outputs: Vec<Io>,
    pub fingerprint: Fingerprint,
    /// `Session::run` needs `&mut`: one lock per instance.
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
    /// The warm-up samples this version was warmed with (file names).
    pub warmup_samples: Vec<String>,
    /// Triton-style statistics since this version was loaded.
    stats: Mutex<VersionStats>,
}

impl LoadedVersion {
    /// Builds `instances` sessions and warms each up; blocking (call off the reactor).
    pub fn load(
        model: &Arc<str>,
        version: u64,
        path: &Path,
        fingerprint: Fingerprint,
        s: &SessionSettings,
    ) -> Result<LoadedVersion, String> {
        let mut sessions = Vec::with_capacity(s.instances);
        for _ in 0..s.instances.max(1) {
            sessions.push(build_session(path, s)?);
        }
        let first = &sessions[0];
        let io = |outlets: &[ort::value::Outlet]| -> Result<Vec<Io>, String> {
            outlets
                .iter()
                .map(|o| {
                    let (datatype, shape) = convert::tensor_signature(o.name(), o.dtype())?;
                    Ok(Io { name: o.name().to_owned(), datatype, shape })
                })
                .collect()
        };
        let inputs = io(first.inputs())?;
        let outputs = io(first.outputs())?;
        let lv = LoadedVersion {
            model: model.clone(),
            version,
            label: Arc::from(version.to_string()),
            inputs,
            outputs,
            fingerprint,
            sessions: sessions.into_iter().map(Mutex::new).collect(),
            next: AtomicUsize::new(0),
            warmup_samples: Vec::new(),
            stats: Mutex::new(VersionStats {
                name: model.to_string(),
                version: version.to_string(),
                ..VersionStats::default()
            }),
        };
        // Samples live beside the versions: MODEL/warmup/*.json.
        let samples = match path.parent().and_then(Path::parent) {
            Some(dir) => warmup::samples(&dir.join(warmup::DIR))?,
            None => Vec::new(),
        };
        let mut lv = lv;
        lv.warm_up(&samples, s)?;
        lv.warmup_samples = samples.into_iter().map(|s| s.file).collect();
        Ok(lv)
    }

    /// Runs every warm-up sample (or, without samples, synthetic inputs every
    /// parser accepts) through every instance, so the first real request pays
    /// no first-run cost and a model that cannot run never serves.
    fn warm_up(&self, samples: &[Sample], s: &SessionSettings) -> Result<(), String> {
        let fail = |what: &str, e: String| {
            format!("warm-up of model '{}' version {} failed on {what}: {e}", self.model, self.version)
        };
        if samples.is_empty() {
            if s.warmup == 0 {
                return Ok(());
            }
            let inputs: Vec<Tensor> =
                self.inputs.iter().map(|i| warmup::synthetic(&i.name, i.datatype, &i.shape)).collect();
            let what = format!("synthetic inputs ({})", warmup::describe(&inputs));
            for session in &self.sessions {
                let mut session = session.lock().unwrap_or_else(PoisonError::into_inner);
                for _ in 0..s.warmup {
                    self.run_on(&mut session, &inputs, &[]).map_err(|e| fail(&what, e))?;
                }
            }
            return Ok(());
        }
        for sample in samples {
            let what = format!("sample warmup/{} ({})", sample.file, warmup::describe(&sample.request.inputs));
            self.validate(&sample.request).map_err(|e| fail(&what, e.to_string()))?;
            for session in &self.sessions {
                let mut session = session.lock().unwrap_or_else(PoisonError::into_inner);
                for _ in 0..s.warmup_requests {
                    self.run_on(&mut session, &sample.request.inputs, &sample.request.outputs)
                        .map_err(|e| fail(&what, e))?;
                }
            }
        }
        Ok(())
    }

    /// The statistics since this version was loaded.
    pub fn statistics(&self) -> VersionStats {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Counts a request refused before it ran (Triton counts these as failures).
    pub fn record_failure(&self, took: Duration) {
        let mut st = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        st.fail.add(took);
        st.last_inference_ms = now_ms();
    }

    /// Checks a request against the signature; every error names the tensor.
    /// Messages start with Triton's words for the same fault (clients match
    /// on them); Switchyard's detail follows.
    pub fn validate(&self, req: &InferRequest) -> Result<(), BackendError> {
        let invalid = |msg: String| Err(BackendError::InvalidInput(msg));
        req.validate().map_err(|e| BackendError::InvalidInput(e.to_string()))?;
        if req.inputs.len() != self.inputs.len() {
            let missing: Vec<String> = self
                .inputs
                .iter()
                .filter(|i| !req.inputs.iter().any(|t| t.name == i.name))
                .map(|i| format!("'{}' ({} {})", i.name, i.datatype, shape_str(&i.shape)))
                .collect();
            let unexpected: Vec<String> = req
                .inputs
                .iter()
                .filter(|t| !self.inputs.iter().any(|i| i.name == t.name))
                .map(|t| format!("'{}'", t.name))
                .collect();
            let mut detail = format!("model inputs: {}", names(&self.inputs));
            if !missing.is_empty() {
                detail.push_str(&format!("; missing input {}", missing.join(", ")));
            }
            if !unexpected.is_empty() {
                detail.push_str(&format!("; unexpected input {}", unexpected.join(", ")));
            }
            return invalid(format!(
                "expected {} inputs but got {} inputs for model '{}' ({detail})",
                self.inputs.len(),
                req.inputs.len(),
                self.model,
            ));
        }
        for t in &req.inputs {
            let Some(io) = self.inputs.iter().find(|i| i.name == t.name) else {
                return invalid(format!(
                    "unexpected inference input '{}' for model '{}' (it takes {})",
                    t.name,
                    self.model,
                    names(&self.inputs)
                ));
            };
            if t.datatype != io.datatype {
                return invalid(format!(
                    "inference input '{}' data-type is '{}', but model '{}' expects '{}'",
                    t.name, t.datatype, self.model, io.datatype
                ));
            }
            let why = if t.shape.len() != io.shape.len() {
                Some(format!("model expects rank {}", io.shape.len()))
            } else {
                (0..io.shape.len())
                    .find(|&d| io.shape[d] >= 0 && io.shape[d] != t.shape[d])
                    .map(|d| format!("dimension {d} must be {}", io.shape[d]))
            };
            if let Some(why) = why {
                return invalid(format!(
                    "unexpected shape for input '{}' for model '{}'. Expected {}, got {} ({why})",
                    t.name,
                    self.model,
                    shape_str(&io.shape),
                    shape_str(&t.shape)
                ));
            }
            if t.datatype == DataType::Bytes {
                // ONNX string tensors hold C strings of text: refuse here, not on the pool.
                for (i, el) in crate::tensor::bytes_elements(&t.data).enumerate() {
                    let el = el.map_err(|e| BackendError::InvalidInput(format!("input '{}': {e}", t.name)))?;
                    match std::str::from_utf8(el) {
                        Err(_) => {
                            return invalid(format!(
                                "input '{}': BYTES element {i} is not UTF-8, which ONNX string tensors need",
                                t.name
                            ))
                        }
                        Ok(s) if s.contains('\0') => {
                            return invalid(format!("input '{}': BYTES element {i} contains a NUL byte", t.name))
                        }
                        Ok(_) => {}
                    }
                }
            }
        }
        for o in &req.outputs {
            if !self.outputs.iter().any(|io| io.name == o.name) {
                return invalid(format!(
                    "unknown output '{}': model '{}' has {}",
                    o.name,
                    self.model,
                    names(&self.outputs)
                ));
            }
        }
        Ok(())
    }

    /// Runs a validated request that waited `queued` for a pool thread, and
    /// records it in the statistics; blocking (call on the pool).
    pub fn run(&self, req: &InferRequest, queued: Duration) -> Result<Vec<Tensor>, BackendError> {
        let start = Instant::now();
        let result = self.with_session(|session| self.run_on(session, &req.inputs, &req.outputs));
        let took = queued + start.elapsed();
        let mut st = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        st.last_inference_ms = now_ms();
        match result {
            Ok((outputs, phases)) => {
                // Rows of the first input when the model's first dimension is dynamic (it batches); else 1.
                let rows = match (self.inputs.first(), req.inputs.first()) {
                    (Some(io), Some(t)) if io.shape.first() == Some(&-1) => t.shape.first().copied().unwrap_or(1),
                    _ => 1,
                }
                .max(1) as u64;
                st.success.add(took);
                st.queue.add(queued);
                st.compute_input.add(phases.input);
                st.compute_infer.add(phases.infer);
                st.compute_output.add(phases.output);
                st.inference_count += rows;
                st.execution_count += 1;
                let b = st.batches.entry(rows).or_default();
                b.compute_input.add(phases.input);
                b.compute_infer.add(phases.infer);
                b.compute_output.add(phases.output);
                Ok(outputs)
            }
            Err(e) => {
                st.fail.add(took);
                Err(BackendError::Internal(format!("model '{}' version {}: {e}", self.model, self.label)))
            }
        }
    }

    /// A free instance if there is one, else waits for one (round-robin, so waiters spread).
    fn with_session<R>(&self, f: impl FnOnce(&mut Session) -> R) -> R {
        for s in &self.sessions {
            match s.try_lock() {
                Ok(mut g) => return f(&mut g),
                Err(TryLockError::Poisoned(p)) => return f(&mut p.into_inner()),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.sessions.len();
        let mut g = self.sessions[i].lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut g)
    }

    fn run_on(
        &self,
        session: &mut Session,
        inputs: &[Tensor],
        wanted: &[RequestedOutput],
    ) -> Result<(Vec<Tensor>, Phases), String> {
        let t0 = Instant::now();
        let mut values = Vec::with_capacity(inputs.len());
        for t in inputs {
            values.push((Cow::Borrowed(t.name.as_str()), convert::input_value(t)?));
        }
        let t1 = Instant::now();
        let mut outputs = session.run(values).map_err(|e| e.to_string())?;
        let t2 = Instant::now();
        let names: Vec<&str> = if wanted.is_empty() {
            self.outputs.iter().map(|o| o.name.as_str()).collect()
        } else {
            wanted.iter().map(|o| o.name.as_str()).collect()
        };
        let mut tensors: Vec<Tensor> = Vec::with_capacity(names.len());
        for name in names {
            // Each value is taken out (its buffer may become the response's); a name asked for
            // twice shares the first tensor's bytes.
            if let Some(same) = tensors.iter().find(|t| t.name == name) {
                tensors.push(same.clone());
                continue;
            }
            let v = outputs.remove(name).ok_or_else(|| format!("ONNX Runtime returned no output '{name}'"))?;
            tensors.push(convert::output_tensor(name, v)?);
        }
        let phases = Phases { input: t1 - t0, infer: t2 - t1, output: t2.elapsed() };
        Ok((tensors, phases))
    }
}

fn build_session(path: &Path, s: &SessionSettings) -> Result<Session, String> {
    let mut b = Session::builder(&s.library.env)
        .map_err(|e| e.to_string())?
        .with_intra_threads(s.intra_op_threads)
        .map_err(|e| e.to_string())?
        .with_inter_threads(1)
        .map_err(|e| e.to_string())?;
    if let ExecutionProvider::Cuda { device } = s.provider {
        b = b
            .with_execution_providers([ep::CUDA::default().with_device_id(device as i32).build().error_on_failure()])
            .map_err(|e| cuda_unavailable(&s.library, &e.to_string()))?;
    }
    b.commit_from_file(path).map_err(|e| e.to_string())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn names(ios: &[Io]) -> String {
    let n: Vec<String> = ios.iter().map(|i| format!("'{}'", i.name)).collect();
    n.join(", ")
}

fn shape_str(shape: &[i64]) -> String {
    let d: Vec<String> = shape.iter().map(i64::to_string).collect();
    format!("[{}]", d.join(", "))
}
