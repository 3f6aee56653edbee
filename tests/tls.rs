//! TLS on the data HTTP and metrics listeners through the built binary, with
//! curl as the client: HTTPS with a private CA, mutual TLS (no client
//! certificate, one from another CA, a good one), and a certificate swapped
//! on disk and served without a restart. Certificates are made here with the
//! openssl CLI. gRPC over TLS is tested with tritonclient in
//! tests/python/test_tls.py.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{free_port, repo_root, Proc, TempDir};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA (`NAME-ca.pem`, `NAME-ca.key`) in `dir`.
fn ca(dir: &Path, name: &str) -> PathBuf {
    let (pem, key) = (format!("{name}-ca.pem"), format!("{name}-ca.key"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} test CA"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    dir.join(pem)
}

/// A leaf `NAME.pem` + `NAME.key` signed by CA `ca`: a server certificate
/// for 127.0.0.1/localhost, or a client one.
fn leaf(dir: &Path, ca: &str, name: &str, server: bool) -> (PathBuf, PathBuf) {
    let ext = if server {
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    } else {
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"
    };
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    let (pem, key, csr) = (format!("{name}.pem"), format!("{name}.key"), format!("{name}.csr"));
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}-ca.pem"),
            "-CAkey",
            &format!("{ca}-ca.key"),
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
    (dir.join(pem), dir.join(key))
}

/// `curl ARGS URL` → (exit code, HTTP status or 0, body).
fn curl(args: &[&str], url: &str) -> (i32, u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (out.status.code().unwrap_or(-1), code.trim().parse().unwrap_or(0), body.to_string())
}

fn models() -> String {
    format!(
        "backends:\n  local:\n    kind: onnx\n    repository: {}\n    warmup: 1\nmodels:\n  mlp:\n    variants:\n      - {{name: v1, backend: local}}\n",
        repo_root().join("examples/models").display()
    )
}

const BODY: &str =
    r#"{"inputs":[{"name":"input","shape":[1,16],"datatype":"FP32","data":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}]}"#;

/// The serial of the certificate a TLS server on `port` presents.
fn served_serial(port: u16, ca: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -CAfile {} </dev/null 2>/dev/null | openssl x509 -noout -serial",
            ca.display()
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn serial_of(pem: &Path) -> String {
    let out = Command::new("openssl").args(["x509", "-noout", "-serial", "-in"]).arg(pem).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn https_mutual_tls_and_a_certificate_reloaded_from_disk() {
    let dir = TempDir::new("tls");
    let d = dir.path();
    let server_ca = ca(d, "server");
    let client_ca = ca(d, "client");
    let other_ca = ca(d, "other");
    let (cert, key) = leaf(d, "server", "server", true);
    let (ccert, ckey) = leaf(d, "client", "alice", false);
    let (bad_cert, bad_key) = leaf(d, "other", "mallory", false);
    let (http_port, metrics_port) = (free_port(), free_port());
    let cfg = d.join("switchyard.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listeners:\n  http:\n    address: 127.0.0.1:{http_port}\n    tls: {{cert: {}, key: {}, client_ca: {}}}\n  metrics:\n    address: 127.0.0.1:{metrics_port}\n    tls: {{cert: {}, key: {}}}\n  grpc: {{enabled: false}}\n  control: {{enabled: false}}\n{}",
            cert.display(),
            key.display(),
            client_ca.display(),
            cert.display(),
            key.display(),
            models()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.arg("serve").arg("--config").arg(&cfg).env("SWITCHYARD_LOG_FORMAT", "text");
    let mut proc = Proc::spawn("switchyard", cmd, d.join("switchyard.log"));
    let ca_arg = server_ca.to_str().unwrap();
    let startup = format!("https://127.0.0.1:{http_port}/startup");
    let client = ["--cacert", ca_arg, "--cert", ccert.to_str().unwrap(), "--key", ckey.to_str().unwrap()];
    assert_eventually!(
        {
            proc.assert_running();
            curl(&client, &startup).1 == 200
        },
        "HTTPS /startup answers: {}",
        proc.log()
    );
    let url = format!("https://127.0.0.1:{http_port}/v2/models/mlp/infer");
    let post = ["-H", "content-type: application/json", "-d", BODY, "--cacert", ca_arg];

    // mTLS: no client certificate, one from a CA the server does not trust: the handshake fails.
    let (code, status, _) = curl(&post, &url);
    assert!(code != 0 && status == 0, "no client certificate: curl exit {code}, status {status}");
    let bad = [&post[..], &["--cert", bad_cert.to_str().unwrap(), "--key", bad_key.to_str().unwrap()]].concat();
    let (code, status, _) = curl(&bad, &url);
    assert!(code != 0 && status == 0, "an untrusted client certificate: curl exit {code}, status {status}");
    // Plain HTTP on the TLS port is not served.
    let (_, status, _) = curl(&[], &format!("http://127.0.0.1:{}/health", http_port));
    assert_ne!(status, 200);
    // A good client certificate: inference works.
    let good = [&post[..], &["--cert", ccert.to_str().unwrap(), "--key", ckey.to_str().unwrap()]].concat();
    let (code, status, body) = curl(&good, &url);
    assert_eq!((code, status), (0, 200), "{body}");
    assert!(body.contains("probabilities"), "{body}");
    // The server certificate does not verify against another CA.
    let (code, _, _) = curl(&["--cacert", other_ca.to_str().unwrap()], &url);
    assert_ne!(code, 0);

    // Metrics over HTTPS (no client certificate asked there).
    let (code, status, body) = curl(&["--cacert", ca_arg], &format!("https://127.0.0.1:{}/metrics", metrics_port));
    assert_eq!((code, status), (0, 200), "{body}");

    // Reload: a new certificate for the same names, written over the files.
    let before = served_serial(http_port, &server_ca);
    assert_eq!(before, serial_of(&cert));
    let (new_cert, new_key) = leaf(d, "server", "server2", true);
    let new_serial = serial_of(&new_cert);
    assert_ne!(new_serial, before);
    // Key first, then the certificate; each by rename, so no half-written file is read.
    std::fs::copy(&new_key, d.join("k.tmp")).unwrap();
    std::fs::rename(d.join("k.tmp"), &key).unwrap();
    std::fs::copy(&new_cert, d.join("c.tmp")).unwrap();
    std::fs::rename(d.join("c.tmp"), &cert).unwrap();
    assert_eventually!(
        patience = std::time::Duration::from_secs(30),
        served_serial(http_port, &server_ca) == new_serial,
        "the new certificate is served without a restart"
    );
    assert_eq!(served_serial(metrics_port, &server_ca), new_serial);
    let (code, status, _) = curl(&good, &url);
    assert_eq!((code, status), (0, 200));
}

#[test]
fn a_missing_certificate_fails_start_up() {
    let dir = TempDir::new("tls-missing");
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listeners:\n  http:\n    address: 127.0.0.1:0\n    tls: {{cert: nope.pem, key: nope.key}}\n  grpc: {{enabled: false}}\n  metrics: {{enabled: false}}\n  control: {{enabled: false}}\n{}",
            models()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("ORT_DYLIB_PATH", std::env::var("ORT_DYLIB_PATH").unwrap_or_default())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listeners.http TLS") && err.contains("nope.pem"), "{err}");
}
