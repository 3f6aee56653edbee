//! Integration-test harness: real processes (the built `switchyard` binary,
//! MLServer) on loopback ports, a small async HTTP client, and
//! `assert_eventually!` for waiting on conditions instead of sleeping.
//!
//! Every process is started in its own process group and killed with it by a
//! Drop guard, so nothing outlives a test, also when it panics.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// How long `assert_eventually!` and the start-up waits keep trying by default.
pub const PATIENCE: Duration = Duration::from_secs(20);
/// How often a condition is polled.
pub const POLL: Duration = Duration::from_millis(50);
/// MLServer loads three models with onnxruntime; on a busy 2-core box that is slow.
pub const MLSERVER_PATIENCE: Duration = Duration::from_secs(60);
/// Any single HTTP exchange of a test; a hung request fails the test instead of hanging it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Polls an async condition until it holds or `PATIENCE` (or the given patience) runs out.
///
/// `assert_eventually!(cond_expr, "message {}", args)` — `cond_expr` may use `.await`.
#[macro_export]
macro_rules! assert_eventually {
    (patience = $patience:expr, $cond:expr, $($msg:tt)+) => {{
        let deadline = ::std::time::Instant::now() + $patience;
        loop {
            if $cond {
                break;
            }
            if ::std::time::Instant::now() >= deadline {
                panic!("not true within {:?}: {}", $patience, format!($($msg)+));
            }
            ::tokio::time::sleep($crate::common::POLL).await;
        }
    }};
    ($cond:expr, $($msg:tt)+) => {
        $crate::assert_eventually!(patience = $crate::common::PATIENCE, $cond, $($msg)+)
    };
}

/// The workspace root (where `Cargo.toml`, `tests/` and `examples/` are).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A port on 127.0.0.1 that was free a moment ago, for a server the test starts.
///
/// Never the same port twice in one test process: between this call and the
/// server's own bind the port is free, and a test running beside it could
/// otherwise be handed it too (seen: "control API cannot bind ... in use").
/// Drawn at random below the kernel's ephemeral range where that leaves room:
/// a port from `bind(0)` is one the kernel may hand next to any outgoing
/// connection (the load tests open thousands) before the server binds it.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let floor = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|low| *low > 12_000);
    for attempt in 0u32.. {
        let port = match floor {
            Some(low) if attempt < 1_000 => {
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u32(attempt);
                10_000 + (h.finish() % u64::from(low - 10_000)) as u16
            }
            _ => TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port(),
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && GIVEN.lock().unwrap_or_else(|e| e.into_inner()).insert(port)
        {
            return port;
        }
    }
    unreachable!("the loop returns or panics")
}

/// `host:port` where nothing listens. It is on 127.0.0.2: test servers bind
/// 127.0.0.1 only, so a port handed out by `free_port` can never come to life
/// there (on 127.0.0.1 the kernel may give the same port to the next server).
pub fn dead_address() -> String {
    format!("127.0.0.2:{}", free_port())
}

/// A fresh directory under the system temp dir, removed on drop unless the
/// thread is panicking (then it is kept for the post-mortem and its path printed).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "switchyard-it-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test failed: keeping {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A child process in its own process group; the whole group is killed and
/// reaped on drop.
pub struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        Proc { name, child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics (with the log) if the process has already exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited early with {status}; its log:\n{}", self.name, self.log());
        }
    }

    /// Waits for the process to exit; its exit code (`None`: still running, or killed by a signal).
    pub async fn wait_exit(&mut self, patience: Duration) -> Option<i32> {
        let deadline = Instant::now() + patience;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn kill_group(&mut self) {
        // The group id is the leader's pid (process_group(0)); a negative pid addresses the group.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_group();
        if std::thread::panicking() {
            let log = self.log();
            let tail: String =
                log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().fold(String::new(), |mut s, l| {
                    let _ = writeln!(s, "  {l}");
                    s
                });
            eprintln!("--- last lines of {} ({}):\n{tail}", self.name, self.log.display());
        }
    }
}

static UPGRADES: AtomicUsize = AtomicUsize::new(0);

/// Sends `pid` a signal by name (`TERM`, `QUIT`).
pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid} failed");
}

/// Waits until `url` answers 200, failing early if the process died.
async fn wait_ready(proc: &mut Proc, client: &HttpClient, url: &str, patience: Duration) {
    let deadline = Instant::now() + patience;
    loop {
        proc.assert_running();
        if let Ok(r) = client.try_request(Method::GET, url, &[], Bytes::new()).await {
            if r.status == 200 {
                return;
            }
        }
        if Instant::now() >= deadline {
            panic!("{} not ready at {url} within {patience:?}; log:\n{}", proc.name, proc.log());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A real MLServer (tests/mlserver/start.sh) serving `mlp` v1+v2 and `slow`.
pub struct MlServer {
    pub http_port: u16,
    pub grpc_port: u16,
    // Field order matters: the process dies before its scratch directory goes.
    proc: Proc,
    _dir: TempDir,
}

impl MlServer {
    pub async fn start() -> MlServer {
        let dir = TempDir::new("mlserver");
        let http_port = free_port();
        let grpc_port = free_port();
        let mut cmd = Command::new(repo_root().join("tests/mlserver/start.sh"));
        cmd.arg(http_port.to_string())
            .arg(grpc_port.to_string())
            // start.sh keeps its scratch (telemetry cache, envs) under TMPDIR.
            .env("TMPDIR", dir.path())
            .env("XDG_CACHE_HOME", dir.path().join("xdg"));
        let mut proc = Proc::spawn("mlserver", cmd, dir.path().join("mlserver.log"));
        let url = format!("http://127.0.0.1:{http_port}/v2/health/ready");
        wait_ready(&mut proc, &HttpClient::new(), &url, MLSERVER_PATIENCE).await;
        MlServer { http_port, grpc_port, proc, _dir: dir }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }
}

/// Builder for a `switchyard serve` process: the harness writes the
/// `listeners` section (loopback, free ports); the test gives the rest.
pub struct SwitchyardBuilder {
    body: String,
    default_upstream: Option<String>,
    grpc_max_message_bytes: Option<usize>,
    control_token: Option<String>,
    ports: Option<(u16, u16)>,
}

impl SwitchyardBuilder {
    /// The HTTP and gRPC listeners on these ports (a replica restarted where it was).
    pub fn ports(mut self, http: u16, grpc: u16) -> Self {
        self.ports = Some((http, grpc));
        self
    }

    /// `listeners.grpc.max_message_bytes` of the gRPC listener.
    pub fn grpc_max_message_bytes(mut self, n: usize) -> Self {
        self.grpc_max_message_bytes = Some(n);
        self
    }

    /// Every control API call must carry this bearer token.
    pub fn control_token(mut self, token: &str) -> Self {
        self.control_token = Some(token.to_string());
        self
    }

    /// Listeners pass unknown paths through to this base URL.
    pub fn default_upstream(mut self, url: &str) -> Self {
        self.default_upstream = Some(url.to_string());
        self
    }

    pub async fn start(self) -> Switchyard {
        assert!(!self.body.contains("listeners:"), "the harness owns the listeners section");
        let dir = TempDir::new("switchyard");
        let (http_port, grpc_port) = self.ports.unwrap_or_else(|| (free_port(), free_port()));
        let metrics_port = free_port();
        let control_port = free_port();
        let mut yaml = format!("listeners:\n  http:\n    address: 127.0.0.1:{http_port}\n");
        if let Some(up) = &self.default_upstream {
            yaml.push_str(&format!("    default_upstream: {up}\n"));
        }
        yaml.push_str(&format!("  metrics:\n    address: 127.0.0.1:{metrics_port}\n"));
        yaml.push_str(&format!("  control:\n    address: 127.0.0.1:{control_port}\n"));
        if let Some(t) = &self.control_token {
            yaml.push_str(&format!("    token: {t}\n"));
        }
        yaml.push_str(&format!("  grpc:\n    address: 127.0.0.1:{grpc_port}\n"));
        if let Some(n) = self.grpc_max_message_bytes {
            yaml.push_str(&format!("    max_message_bytes: {n}\n"));
        }
        yaml.push_str(&self.body);
        let config = dir.path().join("switchyard.yaml");
        std::fs::write(&config, &yaml).expect("write config");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.arg("serve").arg("--config").arg(&config).env("SWITCHYARD_LOG_FORMAT", "text").current_dir(dir.path());
        let mut proc = Proc::spawn("switchyard", cmd, dir.path().join("switchyard.log"));
        let client = HttpClient::new();
        let url = format!("http://127.0.0.1:{http_port}/startup");
        wait_ready(&mut proc, &client, &url, PATIENCE).await;
        Switchyard { http_port, metrics_port, grpc_port, control_port, config, client, proc, _dir: dir }
    }
}

/// A running `switchyard serve`.
pub struct Switchyard {
    pub http_port: u16,
    pub metrics_port: u16,
    pub grpc_port: u16,
    pub control_port: u16,
    pub config: PathBuf,
    pub client: HttpClient,
    proc: Proc,
    _dir: TempDir,
}

impl Switchyard {
    /// `config` is the YAML after the `listeners` section (backends, models, limits, routing...).
    pub fn config(body: &str) -> SwitchyardBuilder {
        SwitchyardBuilder {
            body: body.to_string(),
            default_upstream: None,
            grpc_max_message_bytes: None,
            control_token: None,
            ports: None,
        }
    }

    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn control_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.control_port)
    }

    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.metrics_port)
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// The process id (to stop, continue or kill it with a signal).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Sends the process a signal by name (`TERM`, `QUIT`).
    pub fn signal(&self, sig: &str) {
        signal(self.proc.pid(), sig);
    }

    /// Waits for the process to exit; its exit code.
    pub async fn wait_exit(&mut self, patience: Duration) -> Option<i32> {
        self.proc.wait_exit(patience).await
    }

    /// Starts `serve --upgrade` on the same config (the caller sends this process SIGQUIT
    /// once `lifecycle.upgrade_socket` exists) and makes it the process this handle drives;
    /// the old process is returned.
    pub fn upgrade(&mut self) -> Proc {
        let dir = self.config.parent().expect("config dir").to_path_buf();
        let n = UPGRADES.fetch_add(1, Ordering::Relaxed);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        cmd.arg("serve")
            .arg("--upgrade")
            .arg("--config")
            .arg(&self.config)
            .env("SWITCHYARD_LOG_FORMAT", "text")
            .current_dir(&dir);
        let new = Proc::spawn("switchyard (upgraded)", cmd, dir.join(format!("switchyard-{n}.log")));
        std::mem::replace(&mut self.proc, new)
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.client.get(&format!("{}{path}", self.http_url())).await
    }

    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Resp {
        self.client.post(&format!("{}{path}", self.http_url()), headers, body).await
    }

    /// Prometheus text from the metrics listener.
    pub async fn metrics(&self) -> Metrics {
        let r = self.client.get(&self.metrics_url()).await;
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        Metrics(r.text())
    }
}

/// A Prometheus text exposition.
pub struct Metrics(pub String);

impl Metrics {
    /// Sum of the samples of `name` whose labels include all of `labels`; `None` when no sample matches.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for line in self.0.lines().filter(|l| !l.starts_with('#')) {
            let Some(rest) = line.strip_prefix(name) else { continue };
            let (label_text, value) = if let Some(r) = rest.strip_prefix('{') {
                let Some((l, v)) = r.split_once('}') else { continue };
                (l, v)
            } else if rest.starts_with(' ') {
                ("", rest)
            } else {
                continue;
            };
            let have = parse_labels(label_text);
            if labels.iter().all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v)) {
                let v: f64 = value.trim().parse().unwrap_or_else(|_| panic!("bad sample: {line}"));
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }

    /// Like `get`, treating a missing series as 0 (lazily created counters).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

fn parse_labels(text: &str) -> Vec<(String, String)> {
    // `k="v",k2="v2"`; values in these tests contain no escaped quotes.
    text.split("\",")
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once("=\"")?;
            Some((k.trim().to_string(), v.trim_end_matches('"').to_string()))
        })
        .collect()
}

/// An HTTP answer, fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): status {} {:?}", self.status, self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The V2 error message of an error response (`{"error": "..."}`).
    pub fn error(&self) -> String {
        let v = self.json();
        v["error"].as_str().unwrap_or_else(|| panic!("no V2 `error` in {v}")).to_string()
    }
}

/// A minimal keep-alive HTTP/1.1 client (hyper-util's pooled client).
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    pub fn new() -> HttpClient {
        HttpClient { client: Client::builder(TokioExecutor::new()).build_http() }
    }

    pub async fn try_request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Resp, String> {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(
                HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?,
                HeaderValue::from_str(v).map_err(|e| e.to_string())?,
            );
        }
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| format!("{e:?}"))?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok(Resp { status: parts.status.as_u16(), headers: parts.headers, body })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer from {url} within {REQUEST_TIMEOUT:?}"))?
    }

    pub async fn request(&self, method: Method, url: &str, headers: &[(&str, &str)], body: Bytes) -> Resp {
        let what = format!("{method} {url}");
        self.try_request(method, url, headers, body).await.unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    pub async fn get(&self, url: &str) -> Resp {
        self.request(Method::GET, url, &[], Bytes::new()).await
    }

    pub async fn get_with(&self, url: &str, headers: &[(&str, &str)]) -> Resp {
        self.request(Method::GET, url, headers, Bytes::new()).await
    }

    pub async fn post(&self, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Resp {
        self.request(Method::POST, url, headers, body.into()).await
    }
}

/// A tiny HTTP/1.1 upstream on a loopback listener bound to port 0: answers
/// every request with `200 {"upstream":"test"}` and records what it received.
/// For pass-through checks that need no real model server.
pub struct TestUpstream {
    pub port: u16,
    received: std::sync::Arc<std::sync::Mutex<Vec<(String, usize)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestUpstream {
    pub async fn start() -> TestUpstream {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                let log = log.clone();
                tokio::spawn(async move {
                    let Some((head, body)) = read_request(&mut sock).await else { return };
                    let request_line = head.lines().next().unwrap_or("").to_string();
                    log.lock().expect("upstream log").push((request_line, body.len()));
                    let body = br#"{"upstream":"test"}"#;
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.write_all(body).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        TestUpstream { port, received, task }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `(request line, body bytes)` of every request received so far.
    pub fn received(&self) -> Vec<(String, usize)> {
        self.received.lock().expect("upstream log").clone()
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub mod dns;
pub mod fault;
pub mod redis;
pub mod redis_cluster;

/// Reads one HTTP/1.1 request from a test server's socket: the head (request
/// line and headers) and its `Content-Length` body; `None` if the peer leaves first.
pub async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16384];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some((head, buf[head_end..head_end + len].to_vec()))
}
pub mod mlp;
