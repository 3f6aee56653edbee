//! One loaded model version: its sessions, its signature, request validation
//! against that signature, and running a request (on a pool thread).

use std::borrow::Cow;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use std::time::SystemTime;

use ort::ep;
use ort::session::Session;
use switchyard_config::ExecutionProvider;

use super::convert;
use super::library::{cuda_unavailable, Library};
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
    pub warmup: u32,
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
        };
        lv.warm_up(s.warmup)?;
        Ok(lv)
    }

    /// Runs zero inputs through every instance, so the first real request pays no first-run cost.
    fn warm_up(&self, runs: u32) -> Result<(), String> {
        if runs == 0 {
            return Ok(());
        }
        let inputs: Vec<Tensor> =
            self.inputs.iter().map(|i| convert::zero_tensor(&i.name, i.datatype, &i.shape)).collect();
        for session in &self.sessions {
            let mut session = session.lock().unwrap_or_else(PoisonError::into_inner);
            for _ in 0..runs {
                self.run_on(&mut session, &inputs, &[]).map_err(|e| format!("warm-up failed: {e}"))?;
            }
        }
        Ok(())
    }

    /// Checks a request against the signature; every error names the tensor.
    pub fn validate(&self, req: &InferRequest) -> Result<(), BackendError> {
        let invalid = |msg: String| Err(BackendError::InvalidInput(msg));
        req.validate().map_err(|e| BackendError::InvalidInput(e.to_string()))?;
        for t in &req.inputs {
            let Some(io) = self.inputs.iter().find(|i| i.name == t.name) else {
                return invalid(format!(
                    "unexpected input '{}': model '{}' takes {}",
                    t.name,
                    self.model,
                    names(&self.inputs)
                ));
            };
            if t.datatype != io.datatype {
                return invalid(format!("input '{}': model expects {}, got {}", t.name, io.datatype, t.datatype));
            }
            if t.shape.len() != io.shape.len() {
                return invalid(format!(
                    "input '{}': model expects rank {} (shape {}), got shape {}",
                    t.name,
                    io.shape.len(),
                    shape_str(&io.shape),
                    shape_str(&t.shape)
                ));
            }
            if let Some(d) = (0..io.shape.len()).find(|&d| io.shape[d] >= 0 && io.shape[d] != t.shape[d]) {
                return invalid(format!(
                    "input '{}': dimension {d} must be {} (model shape {}), got shape {}",
                    t.name,
                    io.shape[d],
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
        if let Some(missing) = self.inputs.iter().find(|i| !req.inputs.iter().any(|t| t.name == i.name)) {
            return invalid(format!(
                "missing input '{}' ({} {}) for model '{}'",
                missing.name,
                missing.datatype,
                shape_str(&missing.shape),
                self.model
            ));
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

    /// Runs a validated request; blocking (call on the pool).
    pub fn run(&self, req: &InferRequest) -> Result<Vec<Tensor>, BackendError> {
        self.with_session(|session| self.run_on(session, &req.inputs, &req.outputs))
            .map_err(|e| BackendError::Internal(format!("model '{}' version {}: {e}", self.model, self.label)))
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
    ) -> Result<Vec<Tensor>, String> {
        let mut values = Vec::with_capacity(inputs.len());
        for t in inputs {
            values.push((Cow::Borrowed(t.name.as_str()), convert::input_value(t)?));
        }
        let outputs = session.run(values).map_err(|e| e.to_string())?;
        let pick = |name: &str| -> Result<Tensor, String> {
            let v = outputs.get(name).ok_or_else(|| format!("ONNX Runtime returned no output '{name}'"))?;
            convert::output_tensor(name, v)
        };
        if wanted.is_empty() {
            self.outputs.iter().map(|o| pick(&o.name)).collect()
        } else {
            wanted.iter().map(|o| pick(&o.name)).collect()
        }
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

fn names(ios: &[Io]) -> String {
    let n: Vec<String> = ios.iter().map(|i| format!("'{}'", i.name)).collect();
    n.join(", ")
}

fn shape_str(shape: &[i64]) -> String {
    let d: Vec<String> = shape.iter().map(i64::to_string).collect();
    format!("[{}]", d.join(", "))
}
