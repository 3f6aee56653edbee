//! An onnx backend whose model lives in an MLflow registry (`repository:
//! mlflow://HOST[:PORT]/MODEL[@ALIAS|/VERSION|/STAGE]`): resolves the
//! selector through MLflow's REST API, downloads the version's ONNX file
//! through the tracking server's artifact proxy, verifies it, and places it as
//! `MODEL/VERSION/model.onnx` in the backend's local cache repository, which
//! the [`Repository`] then loads and publishes as it does any directory.
//!
//! When the selector moves (an alias set to another version, a new version in
//! a stage), the new version is fetched and loaded beside the old one, and the
//! old one's directory is removed only after the new one is published; the
//! rescan that follows drops it from the snapshot, and requests already
//! holding it finish on it (the last one frees its sessions).
//!
//! **Architecture Invariant:** a registry that cannot be reached, or answers
//! with a version that cannot be fetched, verified or loaded, never unloads
//! what is served: it is reported (`/ready` detail, metrics) and retried at
//! the next poll.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus::{register_int_counter_vec, register_int_gauge_vec, IntCounterVec, IntGaugeVec};
use serde::Deserialize;
use serde_json::Value;
use switchyard_config::{MlflowSelector, MlflowSource};
use tokio::io::AsyncWriteExt;

use super::repository::{Repository, MODEL_FILE};

/// MLflow's REST API root under the tracking server.
const API: &str = "/api/2.0/mlflow";
/// The tracking server's artifact proxy (`mlflow server --serve-artifacts`).
const ARTIFACTS_API: &str = "/api/2.0/mlflow-artifacts/artifacts";
/// Model-version tag whose value, when set, is the ONNX file's SHA-256 (hex): MLflow records no checksum itself.
pub const SHA256_TAG: &str = "sha256";
/// Longest error text kept for `/ready` and logs.
const MAX_ERROR_CHARS: usize = 512;

static SOURCE_UP: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "switchyard_model_source_up",
        "1 when the model source (MLflow registry) answered the last poll, 0 when it did not",
        &["backend", "model"]
    )
    .expect("registered once")
});
static SOURCE_VERSION: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "switchyard_model_source_version",
        "The registry version a model source serves (0: none yet)",
        &["backend", "model"]
    )
    .expect("registered once")
});
static SOURCE_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchyard_model_source_sync_failures_total",
        "Polls of a model source that failed (unreachable, refused, or a version that could not be fetched or loaded)",
        &["backend", "model"]
    )
    .expect("registered once")
});

/// A version the selector resolved to.
#[derive(Debug, Clone, PartialEq)]
struct Selected {
    version: u64,
    /// The SHA-256 the version's tag declares, lower-case hex.
    sha256: Option<String>,
}

/// What the last poll found, for `/ready` and logs.
#[derive(Debug, Default)]
struct State {
    /// `None` before the first poll.
    reachable: Option<bool>,
    selected: Option<u64>,
    serving: Option<u64>,
    error: Option<String>,
    last_success: Option<SystemTime>,
    /// A version that was fetched but failed to load or verify: not fetched again while selected.
    rejected: Option<(u64, String)>,
}

/// Why a poll failed: the registry did not answer (keep serving, say unreachable),
/// or it answered something that cannot be served.
#[derive(Debug)]
enum Failure {
    Unreachable(String),
    Refused(String),
}

impl Failure {
    fn message(&self) -> &str {
        match self {
            Failure::Unreachable(m) | Failure::Refused(m) => m,
        }
    }
}

/// One backend's registry model: its selector, local cache and status.
pub struct Registry {
    backend: Arc<str>,
    src: MlflowSource,
    /// The cache repository (`MODEL/VERSION/model.onnx`).
    cache: PathBuf,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Distinguishes this instance's `/ready` entry from a reloaded successor's.
    owner: u64,
    state: Mutex<State>,
}

impl Registry {
    pub fn new(backend: Arc<str>, src: MlflowSource, cache: PathBuf) -> Registry {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(src.timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(2).build(connector);
        let r = Registry { backend, src, cache, client, owner: fastrand::u64(..), state: Mutex::default() };
        r.publish();
        r
    }

    /// What the last poll failed with, `None` after a good one.
    pub fn last_error(&self) -> Option<String> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).error.clone()
    }

    /// Resolves the selector, fetches and verifies a new version, loads it
    /// (`repo` publishes it once warm) and then retires the others. Errors
    /// are recorded in the status, never returned: what is served stays.
    pub async fn sync(&self, repo: &Arc<Repository>) {
        let outcome = self.sync_inner(repo).await;
        let up = !matches!(outcome, Err(Failure::Unreachable(_)));
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.reachable = Some(up);
        s.serving = repo.snapshot().get(self.src.model.as_str()).and_then(|e| e.versions.keys().next_back().copied());
        match outcome {
            Ok(()) => {
                if s.error.take().is_some() {
                    tracing::info!(backend = %self.backend, model = %self.src.model, "MLflow registry answers again");
                }
                s.last_success = Some(SystemTime::now());
            }
            Err(f) => {
                let msg: String = f.message().chars().take(MAX_ERROR_CHARS).collect();
                if s.error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(backend = %self.backend, model = %self.src.model, registry = %self.src.base_url,
                        "MLflow model source: {msg}; serving what is loaded");
                }
                s.error = Some(msg);
                SOURCE_FAILURES.with_label_values(&[&*self.backend, self.src.model.as_str()]).inc();
            }
        }
        drop(s);
        self.publish();
    }

    async fn sync_inner(&self, repo: &Arc<Repository>) -> Result<(), Failure> {
        let (selected, source) = self.resolve().await?;
        if repo.is_unloaded(&self.src.model) {
            // Unloaded through Triton's repository API: nothing is fetched or retired until it is loaded again.
            self.state.lock().unwrap_or_else(PoisonError::into_inner).selected = Some(selected.version);
            return Ok(());
        }
        {
            let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            s.selected = Some(selected.version);
            if let Some((v, why)) = &s.rejected {
                if *v == selected.version {
                    return Err(Failure::Refused(why.clone()));
                }
                s.rejected = None;
            }
        }
        let served = |repo: &Repository| {
            repo.snapshot().get(self.src.model.as_str()).is_some_and(|e| e.versions.contains_key(&selected.version))
        };
        if !served(repo) {
            if let Err(f) = self.fetch(&selected, &source).await {
                if let Failure::Refused(why) = &f {
                    self.reject(selected.version, why.clone());
                }
                return Err(f);
            }
            rescan(repo).await;
            if !served(repo) {
                let why = repo
                    .failures()
                    .into_iter()
                    .find(|f| f.model == self.src.model && f.version == selected.version)
                    .map_or_else(|| "it was not loaded".to_owned(), |f| f.error);
                let why = format!("version {} ({}) failed to load: {why}", selected.version, self.src.selector);
                // Removed, so that neither the watcher nor a restart tries it again; the rejection is remembered.
                let _ = std::fs::remove_dir_all(self.model_dir().join(selected.version.to_string()));
                self.reject(selected.version, why.clone());
                return Err(Failure::Refused(why));
            }
            tracing::info!(backend = %self.backend, model = %self.src.model, version = selected.version,
                selector = %self.src.selector, "MLflow version loaded and published");
        }
        // The selected version serves: the others leave (requests holding them finish on them).
        if self.retire_others(selected.version) {
            rescan(repo).await;
        }
        Ok(())
    }

    fn reject(&self, version: u64, why: String) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).rejected = Some((version, why));
    }

    fn model_dir(&self) -> PathBuf {
        self.cache.join(&self.src.model)
    }

    /// Removes every cached version but `keep`; whether any was removed.
    fn retire_others(&self, keep: u64) -> bool {
        let Ok(entries) = std::fs::read_dir(self.model_dir()) else {
            return false;
        };
        let mut removed = false;
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(v) = name.to_str().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            if v != keep {
                match std::fs::remove_dir_all(e.path()) {
                    Ok(()) => {
                        tracing::info!(backend = %self.backend, model = %self.src.model, version = v,
                            "retiring the version MLflow no longer selects");
                        removed = true;
                    }
                    Err(err) => tracing::error!(path = %e.path().display(), "cannot remove a retired version: {err}"),
                }
            }
        }
        removed
    }

    /// The version the selector names now, and where its artifacts are.
    async fn resolve(&self) -> Result<(Selected, String), Failure> {
        let name = encode(&self.src.model);
        let mv = match &self.src.selector {
            MlflowSelector::Version(v) => {
                self.get_json(&format!("{API}/model-versions/get?name={name}&version={v}")).await?["model_version"]
                    .take()
            }
            MlflowSelector::Alias(a) => self
                .get_json(&format!("{API}/registered-models/alias?name={name}&alias={}", encode(a)))
                .await?["model_version"]
                .take(),
            MlflowSelector::Stage(stage) => {
                let body = serde_json::json!({"name": self.src.model, "stages": [stage]});
                let mut r = self.post_json(&format!("{API}/registered-models/get-latest-versions"), &body).await?;
                newest(r["model_versions"].take()).ok_or_else(|| {
                    Failure::Refused(format!("no version of `{}` is in stage {stage}", self.src.model))
                })?
            }
            MlflowSelector::Latest => {
                let body = serde_json::json!({"name": self.src.model});
                let mut r = self.post_json(&format!("{API}/registered-models/get-latest-versions"), &body).await?;
                newest(r["model_versions"].take())
                    .ok_or_else(|| Failure::Refused(format!("`{}` has no versions", self.src.model)))?
            }
        };
        let version = mv["version"].as_str().and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| {
            Failure::Refused(format!("the registry answered no model version for {}", self.src.selector))
        })?;
        if let Some(status) = mv["status"].as_str().filter(|s| *s != "READY") {
            return Err(Failure::Refused(format!("version {version} is {status}, not READY")));
        }
        let sha256 = mv["tags"].as_array().and_then(|tags| {
            tags.iter().find(|t| t["key"] == SHA256_TAG).and_then(|t| t["value"].as_str()).map(str::to_ascii_lowercase)
        });
        // The download URI resolves `runs:/` and `models:/` sources to where the files are.
        let uri = self
            .get_json(&format!("{API}/model-versions/get-download-uri?name={name}&version={version}"))
            .await?["artifact_uri"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Failure::Refused(format!("the registry gave no artifact URI for version {version}")))?;
        Ok((Selected { version, sha256 }, uri))
    }

    /// Downloads the version's ONNX file into `MODEL/VERSION/model.onnx`, verified; a
    /// file already cached with the same size (and checksum, when declared) is kept.
    async fn fetch(&self, sel: &Selected, artifact_uri: &str) -> Result<(), Failure> {
        let (base, dir) = artifact_location(&self.src.base_url, artifact_uri).map_err(Failure::Refused)?;
        let listing = self.get_json_at(&base, &format!("{ARTIFACTS_API}?path={}", encode(&dir))).await?;
        let files: Vec<FileInfo> = serde_json::from_value(listing["files"].clone()).unwrap_or_default();
        let file = self.onnx_file(&base, &dir, &files).await?;
        let expected_size = files
            .iter()
            .find(|f| f.path == file && !f.is_dir)
            .and_then(|f| f.file_size)
            .ok_or_else(|| Failure::Refused(format!("`{dir}/{file}` is not in the artifact listing")))?;
        let target = self.model_dir().join(sel.version.to_string());
        let cached = target.join(MODEL_FILE);
        if std::fs::metadata(&cached).is_ok_and(|m| m.len() == expected_size)
            && sel.sha256.as_ref().is_none_or(|want| sha256_file(&cached).is_ok_and(|got| &got == want))
        {
            return Ok(());
        }
        let incoming = self.model_dir().join(format!(".incoming-{}", sel.version));
        let _ = std::fs::remove_dir_all(&incoming);
        std::fs::create_dir_all(&incoming)
            .map_err(|e| Failure::Refused(format!("cannot create {}: {e}", incoming.display())))?;
        let result =
            self.download(&base, &format!("{dir}/{file}"), &incoming.join(MODEL_FILE), expected_size, sel).await;
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&incoming);
            return Err(e);
        }
        let _ = std::fs::remove_dir_all(&target);
        std::fs::rename(&incoming, &target)
            .map_err(|e| Failure::Refused(format!("cannot place version {} in the cache: {e}", sel.version)))?;
        tracing::info!(backend = %self.backend, model = %self.src.model, version = sel.version, bytes = expected_size,
            "fetched from MLflow");
        Ok(())
    }

    /// The ONNX file in the model directory: the one the `MLmodel` file's onnx
    /// flavour names (as `mlflow.onnx` writes it), else the only `*.onnx` file.
    async fn onnx_file(&self, base: &str, dir: &str, files: &[FileInfo]) -> Result<String, Failure> {
        if files.iter().any(|f| f.path == "MLmodel" && !f.is_dir) {
            let text = self.get_bytes_at(base, &format!("{ARTIFACTS_API}/{}/MLmodel", encode_path(dir))).await?;
            let text = String::from_utf8_lossy(&text);
            let mlmodel: MlModel = serde_saphyr::from_str(&text)
                .map_err(|e| Failure::Refused(format!("`{dir}/MLmodel` is not a valid MLmodel file: {e}")))?;
            let data = mlmodel.flavors.onnx.map(|o| o.data).ok_or_else(|| {
                Failure::Refused(format!("`{dir}` is not an ONNX model: its MLmodel has no `onnx` flavour"))
            })?;
            if data.is_empty() || data.split('/').any(|p| p == ".." || p.is_empty()) {
                return Err(Failure::Refused(format!("`{dir}/MLmodel` names an unsafe file `{data}`")));
            }
            return Ok(data);
        }
        let onnx: Vec<&FileInfo> = files.iter().filter(|f| !f.is_dir && f.path.ends_with(".onnx")).collect();
        match onnx.as_slice() {
            [one] => Ok(one.path.clone()),
            [] => Err(Failure::Refused(format!("`{dir}` holds no .onnx file and no MLmodel"))),
            _ => Err(Failure::Refused(format!("`{dir}` holds several .onnx files and no MLmodel naming one"))),
        }
    }

    /// Streams an artifact to `dest`, checking its size and (when declared) its SHA-256.
    async fn download(&self, base: &str, path: &str, dest: &Path, size: u64, sel: &Selected) -> Result<(), Failure> {
        let uri = format!("{base}{ARTIFACTS_API}/{}", encode_path(path));
        let work = async {
            let resp = self.send(Method::GET, &uri, None).await?;
            if resp.status() != StatusCode::OK {
                let status = resp.status();
                let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                return Err(answer_error(status, &body, &uri));
            }
            let mut body = resp.into_body();
            let mut file = tokio::fs::File::create(dest)
                .await
                .map_err(|e| Failure::Refused(format!("cannot write {}: {e}", dest.display())))?;
            let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
            let mut got: u64 = 0;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| Failure::Unreachable(format!("downloading {uri}: {e}")))?;
                if let Ok(data) = frame.into_data() {
                    got += data.len() as u64;
                    if got > size {
                        break;
                    }
                    digest.update(&data);
                    file.write_all(&data)
                        .await
                        .map_err(|e| Failure::Refused(format!("writing {}: {e}", dest.display())))?;
                }
            }
            file.sync_all().await.map_err(|e| Failure::Refused(format!("writing {}: {e}", dest.display())))?;
            if got != size {
                return Err(Failure::Refused(format!(
                    "`{path}`: downloaded {got}{} bytes, the registry lists {size}",
                    if got > size { "+" } else { "" }
                )));
            }
            if let Some(want) = &sel.sha256 {
                let have = hex(digest.finish().as_ref());
                if &have != want {
                    return Err(Failure::Refused(format!(
                        "`{path}`: SHA-256 {have} does not match the version's `{SHA256_TAG}` tag {want}"
                    )));
                }
            }
            Ok(())
        };
        match tokio::time::timeout(self.src.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Unreachable(format!("downloading {uri} took longer than {:?}", self.src.timeout))),
        }
    }

    async fn send(
        &self,
        method: Method,
        uri: &str,
        body: Option<&Value>,
    ) -> Result<http::Response<hyper::body::Incoming>, Failure> {
        let mut req = Request::builder().method(method).uri(uri);
        let body = match body {
            Some(b) => {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(b.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req.body(body).map_err(|e| Failure::Refused(format!("bad registry request {uri}: {e}")))?;
        self.client
            .request(req)
            .await
            .map_err(|e| Failure::Unreachable(format!("{uri}: {}", crate::error::error_chain(&e))))
    }

    /// One registry call with a JSON answer, within the timeout.
    async fn call(&self, method: Method, uri: String, body: Option<&Value>) -> Result<Bytes, Failure> {
        let work = async {
            let resp = self.send(method, &uri, body).await?;
            let status = resp.status();
            let bytes =
                resp.into_body().collect().await.map_err(|e| Failure::Unreachable(format!("{uri}: {e}")))?.to_bytes();
            if status != StatusCode::OK {
                return Err(answer_error(status, &bytes, &uri));
            }
            Ok(bytes)
        };
        match tokio::time::timeout(self.src.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Unreachable(format!("{uri}: no answer within {:?}", self.src.timeout))),
        }
    }

    async fn get_json(&self, path: &str) -> Result<Value, Failure> {
        self.get_json_at(&self.src.base_url, path).await
    }

    async fn get_json_at(&self, base: &str, path: &str) -> Result<Value, Failure> {
        let bytes = self.get_bytes_at(base, path).await?;
        serde_json::from_slice(&bytes).map_err(|e| Failure::Refused(format!("{base}{path}: not JSON: {e}")))
    }

    async fn get_bytes_at(&self, base: &str, path: &str) -> Result<Bytes, Failure> {
        self.call(Method::GET, format!("{base}{path}"), None).await
    }

    async fn post_json(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        let bytes = self.call(Method::POST, format!("{}{path}", self.src.base_url), Some(body)).await?;
        serde_json::from_slice(&bytes).map_err(|e| Failure::Refused(format!("{path}: not JSON: {e}")))
    }

    /// The status as `/ready` lists it, and the gauges.
    fn publish(&self) {
        let s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let labels = [&*self.backend, self.src.model.as_str()];
        SOURCE_UP.with_label_values(&labels).set(i64::from(s.reachable.unwrap_or(false)));
        SOURCE_VERSION.with_label_values(&labels).set(s.serving.map_or(0, |v| v as i64));
        let detail = serde_json::json!({
            "backend": &*self.backend,
            "source": "mlflow",
            "registry": self.src.base_url,
            "model": self.src.model,
            "selector": self.src.selector.to_string(),
            "reachable": s.reachable,
            "selected_version": s.selected,
            "serving_version": s.serving,
            "error": s.error,
            "last_success_unix": s.last_success.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs()),
        });
        switchyard_stats::sources::set(&self.backend, self.owner, detail.to_string());
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        switchyard_stats::sources::remove_webhook(&self.backend, self.owner);
        if switchyard_stats::sources::remove(&self.backend, self.owner) {
            let labels = [&*self.backend, self.src.model.as_str()];
            let _ = SOURCE_UP.remove_label_values(&labels);
            let _ = SOURCE_VERSION.remove_label_values(&labels);
            let _ = SOURCE_FAILURES.remove_label_values(&labels);
        }
    }
}

/// Polls the registry every `poll_interval` until the backend (which holds
/// both the registry and the repository) is dropped. With a webhook secret,
/// a signed registry event for this model (delivered to the control
/// listener) wakes it at once; wakes during a sync coalesce into one more
/// sync, and polling stays as the safety net for a lost delivery.
pub fn spawn_poller(registry: &Arc<Registry>, repo: &Arc<Repository>) {
    let (weak_reg, weak_repo): (Weak<Registry>, Weak<Repository>) = (Arc::downgrade(registry), Arc::downgrade(repo));
    let every = registry.src.poll_interval;
    let wake = Arc::new(tokio::sync::Notify::new());
    if let Some(secret) = &registry.src.webhook_secret {
        let w = wake.clone();
        switchyard_stats::sources::set_webhook(
            registry.owner,
            switchyard_stats::sources::WebhookTarget {
                backend: registry.backend.to_string(),
                model: registry.src.model.clone(),
                secret: secret.0.clone(),
                wake: Arc::new(move || w.notify_one()),
            },
        );
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = wake.notified() => {}
            }
            let (Some(registry), Some(repo)) = (weak_reg.upgrade(), weak_repo.upgrade()) else { break };
            registry.sync(&repo).await;
        }
    });
}

async fn rescan(repo: &Arc<Repository>) {
    let r = repo.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || r.rescan()).await {
        tracing::error!("model repository rescan failed: {e}");
    }
}

/// An MLflow error answer: a 5xx means the registry is in trouble (unreachable
/// for our purpose); a 4xx names what it refused (`RESOURCE_DOES_NOT_EXIST`…).
fn answer_error(status: StatusCode, body: &[u8], uri: &str) -> Failure {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let detail = match (v["error_code"].as_str(), v["message"].as_str()) {
        (Some(code), Some(m)) => format!("{code}: {m}"),
        _ => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    };
    let msg = format!("{uri} answered {status}: {detail}");
    if status.is_server_error() {
        Failure::Unreachable(msg)
    } else {
        Failure::Refused(msg)
    }
}

/// The newest (highest-numbered) model version of a `model_versions` list.
fn newest(list: Value) -> Option<Value> {
    let Value::Array(list) = list else { return None };
    list.into_iter().max_by_key(|v| v["version"].as_str().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0))
}

/// Where a version's artifacts can be read: (artifact server base URL, path
/// under the artifact root). Only the tracking server's artifact proxy is
/// spoken: a store it does not proxy (s3://, file://) is refused by name.
fn artifact_location(base_url: &str, uri: &str) -> Result<(String, String), String> {
    let Some(rest) = uri.strip_prefix("mlflow-artifacts:") else {
        return Err(format!(
            "artifacts at `{uri}` are not served by the tracking server: run `mlflow server --serve-artifacts` \
             (artifact URIs mlflow-artifacts:/…)"
        ));
    };
    let (base, path) = match rest.strip_prefix("//") {
        Some(hosted) => {
            let (authority, path) = hosted.split_once('/').unwrap_or((hosted, ""));
            (format!("http://{authority}"), path)
        }
        None => (base_url.to_owned(), rest.trim_start_matches('/')),
    };
    let path = path.trim_end_matches('/');
    if path.split('/').any(|p| p == "..") {
        return Err(format!("artifact URI `{uri}` leaves the artifact root"));
    }
    Ok((base, path.to_owned()))
}

/// Percent-encodes a query value (RFC 3986 unreserved characters kept).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encodes each segment of a path, keeping its slashes.
fn encode_path(p: &str) -> String {
    p.split('/').map(encode).collect::<Vec<_>>().join("/")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let bytes = std::fs::read(path)?;
    Ok(hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref()))
}

#[derive(Debug, Deserialize)]
struct FileInfo {
    path: String,
    #[serde(default)]
    is_dir: bool,
    /// MLflow writes int64 fields as JSON numbers here; a string is accepted too.
    #[serde(default, deserialize_with = "number_or_string")]
    file_size: Option<u64>,
}

fn number_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    })
}

/// The part of an `MLmodel` file read here.
#[derive(Debug, Deserialize)]
struct MlModel {
    #[serde(default)]
    flavors: Flavors,
}

#[derive(Debug, Default, Deserialize)]
struct Flavors {
    onnx: Option<OnnxFlavor>,
}

#[derive(Debug, Deserialize)]
struct OnnxFlavor {
    data: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_locations() {
        let b = "http://reg:5000";
        assert_eq!(
            artifact_location(b, "mlflow-artifacts:/1/abc/artifacts/model").unwrap(),
            (b.into(), "1/abc/artifacts/model".into())
        );
        assert_eq!(
            artifact_location(b, "mlflow-artifacts://store:9000/1/x/").unwrap(),
            ("http://store:9000".into(), "1/x".into())
        );
        assert!(artifact_location(b, "s3://bucket/1/x").unwrap_err().contains("--serve-artifacts"));
        assert!(artifact_location(b, "mlflow-artifacts:/1/../../etc").is_err());
    }

    #[test]
    fn mlmodel_onnx_flavour() {
        let text = "artifact_path: model\nflavors:\n  onnx:\n    data: model.onnx\n    onnx_version: 1.23.2\n    providers:\n    - CPUExecutionProvider\nmodel_id: null\n";
        let m: MlModel = serde_saphyr::from_str(text).unwrap();
        assert_eq!(m.flavors.onnx.unwrap().data, "model.onnx");
        let m: MlModel = serde_saphyr::from_str("flavors:\n  python_function: {loader_module: x}\n").unwrap();
        assert!(m.flavors.onnx.is_none());
    }

    #[test]
    fn encoding_and_newest() {
        assert_eq!(encode("a b/c@d"), "a%20b%2Fc%40d");
        assert_eq!(encode_path("1/a b/model.onnx"), "1/a%20b/model.onnx");
        let list = serde_json::json!([{"version": "2"}, {"version": "10"}, {"version": "3"}]);
        assert_eq!(newest(list).unwrap()["version"], "10");
        assert!(newest(serde_json::json!([])).is_none());
    }
}
