//! Data-plane authentication and authorization through the built binary,
//! over HTTP and gRPC alike: every rule of `auth:` (valid, expired, wrong
//! audience, wrong key, rotated key, no permission, override without
//! permission, API keys), the probes left open, an unauthenticated body
//! never read, `routing.allow_override: false`, and `switchyard token`.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{repo_root, Switchyard, TempDir};
use serde_json::{json, Value};
use switchyard_proxy::auth::jwt::SigningKey;
use switchyard_runtime::codec::grpc::pb;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

type Client = pb::grpc_inference_service_client::GrpcInferenceServiceClient<Channel>;

const EXE: &str = env!("CARGO_BIN_EXE_switchyard");

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A fresh Ed25519 key in PKCS#8 PEM, as `openssl genpkey` writes it.
fn new_key(dir: &Path, name: &str) -> (std::path::PathBuf, SigningKey) {
    let path = dir.join(name);
    let out = Command::new("openssl").args(["genpkey", "-algorithm", "ed25519", "-out"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    let key = SigningKey::from_pem(&std::fs::read_to_string(&path).unwrap()).unwrap();
    (path, key)
}

/// `switchyard token ARGS...` → its stdout, trimmed.
fn cli(args: &[&str]) -> String {
    let out = Command::new(EXE).arg("token").args(args).output().unwrap();
    assert!(out.status.success(), "switchyard token {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn write_jwks(path: &Path, keys: &[(&SigningKey, &str)]) {
    let v = json!({"keys": keys.iter().map(|(k, kid)| k.public_jwk(Some(kid))).collect::<Vec<_>>()});
    // Written beside and renamed: the refresher never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, v.to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn claims(sub: &str, perms: &[&str], exp: u64) -> Value {
    json!({"sub": sub, "iss": "https://issuer.test", "aud": "switchyard", "exp": exp, "permissions": perms})
}

fn sha256_hex(s: &str) -> String {
    switchyard_proxy::auth::sha256(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn config(dir: &Path, extra_routing: &str) -> String {
    format!(
        r#"
auth:
  jwt:
    jwks_file: {jwks}
    issuer: https://issuer.test
    audience: switchyard
    leeway: 5s
  api_keys:
    - principal: batch-job
      sha256: "sha256:{key_hash}"
      permissions: ["model:ml*:infer"]
  refresh: 200ms
routing:
  sticky_header: x-user-id
{extra_routing}
backends:
  local:
    kind: onnx
    repository: {repo}
    version_policy: {{all: true}}
    warmup: 1
models:
  mlp:
    variants:
      - {{name: v1, backend: local, version: 1, weight: 100}}
      - {{name: dark, backend: local, version: 2, weight: 0}}
"#,
        jwks = dir.join("jwks.json").display(),
        key_hash = sha256_hex("batch-secret"),
        repo = repo_root().join("examples/models").display(),
    )
}

fn infer_body() -> String {
    let data: Vec<f32> = (0..16).map(|i| i as f32 * 0.1).collect();
    json!({"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": data}]}).to_string()
}

fn grpc_request(version: &str) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: "mlp".into(),
        model_version: version.into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, 16],
            parameters: Default::default(),
            contents: Some(pb::InferTensorContents {
                fp32_contents: (0..16).map(|i| i as f32 * 0.1).collect(),
                ..Default::default()
            }),
        }],
        ..Default::default()
    }
}

async fn grpc_client(port: u16) -> Client {
    let ch = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .unwrap();
    Client::new(ch)
}

fn with_md<T>(msg: T, md: &[(&'static str, String)]) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    for (k, v) in md {
        r.metadata_mut().insert(*k, v.parse().unwrap());
    }
    r
}

/// One case: credentials as headers, the HTTP status and gRPC code both protocols must answer.
struct Case {
    name: &'static str,
    headers: Vec<(&'static str, String)>,
    version: &'static str,
    http: u16,
    grpc: Code,
}

fn bearer(t: &str) -> Vec<(&'static str, String)> {
    vec![("authorization", format!("Bearer {t}"))]
}

async fn check(sy: &Switchyard, grpc: &mut Client, c: &Case) {
    let path = if c.version.is_empty() {
        "/v2/models/mlp/infer".to_string()
    } else {
        format!("/v2/models/mlp/versions/{}/infer", c.version)
    };
    let mut headers: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    headers.push(("content-type", "application/json"));
    let r = sy.post(&path, &headers, infer_body()).await;
    assert_eq!(r.status, c.http, "{} over HTTP: {}", c.name, r.text());
    if c.http == 401 {
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{}", c.name);
    }
    if c.http >= 400 {
        assert!(!r.error().is_empty(), "{}: a V2 error body", c.name);
    }
    let g = grpc.model_infer(with_md(grpc_request(c.version), &c.headers)).await;
    match g {
        Ok(_) => assert_eq!(c.grpc, Code::Ok, "{} over gRPC answered OK", c.name),
        Err(s) => assert_eq!(s.code(), c.grpc, "{} over gRPC: {}", c.name, s.message()),
    }
}

#[tokio::test]
async fn every_auth_rule_over_http_and_grpc() {
    let dir = TempDir::new("auth");
    let (key1_path, key1) = new_key(dir.path(), "key1.pem");
    let (_, key2) = new_key(dir.path(), "key2.pem");
    let (_, stranger) = new_key(dir.path(), "stranger.pem");
    write_jwks(&dir.path().join("jwks.json"), &[(&key1, "k1")]);
    let sy = Switchyard::config(&config(dir.path(), "")).start().await;
    let mut grpc = grpc_client(sy.grpc_port).await;

    let exp = now() + 600;
    let sign = |k: &SigningKey, kid: &str, c: Value| k.sign(&c, Some(kid)).unwrap();
    // Minted by the CLI, as a user would.
    let k1 = key1_path.to_str().unwrap();
    let good = cli(&[
        "--key",
        k1,
        "--sub",
        "alice",
        "--allow",
        "model:mlp:infer,model:mlp:metadata",
        "--ttl",
        "10m",
        "--iss",
        "https://issuer.test",
        "--aud",
        "switchyard",
        "--kid",
        "k1",
    ]);
    let overrider = sign(&key1, "k1", claims("ops", &["model:*:*", "override"], exp));
    let mut wrong_aud = claims("alice", &["model:mlp:infer"], exp);
    wrong_aud["aud"] = "someone-else".into();
    let mut wrong_iss = claims("alice", &["model:mlp:infer"], exp);
    wrong_iss["iss"] = "https://evil.test".into();
    let mut not_yet = claims("alice", &["model:mlp:infer"], exp);
    not_yet["nbf"] = (now() + 300).into();

    let cases = vec![
        Case { name: "no credentials", headers: vec![], version: "", http: 401, grpc: Code::Unauthenticated },
        Case { name: "valid token", headers: bearer(&good), version: "", http: 200, grpc: Code::Ok },
        Case { name: "valid token, version named", headers: bearer(&good), version: "1", http: 200, grpc: Code::Ok },
        Case {
            name: "expired",
            headers: bearer(&sign(&key1, "k1", claims("alice", &["model:mlp:infer"], now() - 60))),
            version: "",
            http: 401,
            grpc: Code::Unauthenticated,
        },
        Case {
            name: "not yet valid",
            headers: bearer(&sign(&key1, "k1", not_yet)),
            version: "",
            http: 401,
            grpc: Code::Unauthenticated,
        },
        Case {
            name: "wrong audience",
            headers: bearer(&sign(&key1, "k1", wrong_aud)),
            version: "",
            http: 401,
            grpc: Code::Unauthenticated,
        },
        Case {
            name: "wrong issuer",
            headers: bearer(&sign(&key1, "k1", wrong_iss)),
            version: "",
            http: 401,
            grpc: Code::Unauthenticated,
        },
        Case {
            name: "wrong key, same kid",
            headers: bearer(&sign(&stranger, "k1", claims("mallory", &["*"], exp))),
            version: "",
            http: 401,
            grpc: Code::Unauthenticated,
        },
        Case {
            name: "no permission for the model",
            headers: bearer(&sign(&key1, "k1", claims("bob", &["model:fraud-*:infer"], exp))),
            version: "",
            http: 403,
            grpc: Code::PermissionDenied,
        },
        Case {
            name: "permission for another version only",
            headers: bearer(&sign(&key1, "k1", claims("carol", &["model:mlp/2:infer"], exp))),
            version: "1",
            http: 403,
            grpc: Code::PermissionDenied,
        },
        Case {
            name: "version-pinned permission, that version",
            headers: bearer(&sign(&key1, "k1", claims("carol", &["model:mlp/2:infer"], exp))),
            version: "2",
            http: 200,
            grpc: Code::Ok,
        },
        Case {
            name: "override without permission",
            headers: vec![("authorization", format!("Bearer {good}")), ("x-switchyard-variant", "dark".into())],
            version: "",
            http: 403,
            grpc: Code::PermissionDenied,
        },
        Case {
            name: "API key (wildcard permission)",
            headers: vec![("x-api-key", "batch-secret".into())],
            version: "",
            http: 200,
            grpc: Code::Ok,
        },
        Case { name: "API key as bearer", headers: bearer("batch-secret"), version: "", http: 200, grpc: Code::Ok },
        Case {
            name: "unknown API key",
            headers: vec![("x-api-key", "guess".into())],
            version: "",
            http: 401,
            grpc: Code::Unauthenticated,
        },
        Case {
            name: "not a bearer",
            headers: vec![("authorization", "Basic YTpi".into())],
            version: "",
            http: 401,
            grpc: Code::Unauthenticated,
        },
    ];
    for c in &cases {
        check(&sy, &mut grpc, c).await;
    }

    // Override with the permission: the weight-0 variant answers.
    let mut h: Vec<(&str, &str)> =
        vec![("authorization", ""), ("x-switchyard-variant", "dark"), ("content-type", "application/json")];
    let auth_header = format!("Bearer {overrider}");
    h[0].1 = &auth_header;
    let r = sy.post("/v2/models/mlp/infer", &h, infer_body()).await;
    assert_eq!((r.status, r.header("x-switchyard-variant")), (200, Some("dark")), "{}", r.text());
    let md = vec![("authorization", auth_header.clone()), ("x-switchyard-variant", "dark".to_string())];
    let g = grpc.model_infer(with_md(grpc_request(""), &md)).await.unwrap();
    assert_eq!(g.metadata().get("x-switchyard-variant").unwrap(), "dark");

    // Metadata needs `metadata`: alice has it, the API key does not.
    let r = sy
        .client
        .get_with(&format!("{}/v2/models/mlp", sy.http_url()), &[("authorization", &format!("Bearer {good}"))])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = sy.client.get_with(&format!("{}/v2/models/mlp", sy.http_url()), &[("x-api-key", "batch-secret")]).await;
    assert_eq!(r.status, 403, "{}", r.text());
    let s = grpc
        .model_metadata(with_md(
            pb::ModelMetadataRequest { name: "mlp".into(), version: String::new() },
            &[("x-api-key", "batch-secret".into())],
        ))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied);
    let s = grpc.model_ready(pb::ModelReadyRequest { name: "mlp".into(), version: String::new() }).await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);

    // Probes and server metadata stay open.
    for path in ["/health", "/ready", "/startup", "/v2/health/live", "/v2/health/ready", "/v2"] {
        assert_eq!(sy.get(path).await.status, 200, "{path}");
    }
    assert!(grpc.server_live(pb::ServerLiveRequest {}).await.unwrap().into_inner().live);
    assert!(grpc.server_ready(pb::ServerReadyRequest {}).await.unwrap().into_inner().ready);

    // Streaming: refused at the call, before any message.
    let s = grpc.model_stream_infer(tokio_stream_once(grpc_request(""))).await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);

    // An unauthenticated request is answered from its headers: its body is never awaited.
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", sy.http_port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    sock.write_all(b"POST /v2/models/mlp/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000000\r\n\r\n").unwrap();
    let mut buf = [0u8; 64];
    let n = sock.read(&mut buf).expect("answered before the body was sent");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 401"), "{}", String::from_utf8_lossy(&buf[..n]));

    // Rotation: the JWKS file now holds key2 only; within `refresh` key2's
    // tokens pass and key1's fail, with no restart.
    write_jwks(&dir.path().join("jwks.json"), &[(&key2, "k2")]);
    let rotated = sign(&key2, "k2", claims("alice", &["model:mlp:infer"], exp));
    let ok = |t: String| {
        let sy = &sy;
        async move {
            let h = format!("Bearer {t}");
            sy.post(
                "/v2/models/mlp/infer",
                &[("authorization", &h), ("content-type", "application/json")],
                infer_body(),
            )
            .await
            .status
        }
    };
    assert_eventually!(ok(rotated.clone()).await == 200, "a token of the rotated-in key is accepted");
    assert_eq!(ok(good.clone()).await, 401, "a token of the rotated-out key is refused");
    let g = grpc.model_infer(with_md(grpc_request(""), &bearer(&rotated))).await;
    assert!(g.is_ok(), "{g:?}");

    // A JWKS that turns bad keeps the last good keys.
    std::fs::write(dir.path().join("jwks.json"), "{ not json").unwrap();
    assert_eventually!(sy.log().contains("key material not reloaded"), "the bad JWKS is logged");
    assert_eq!(ok(rotated.clone()).await, 200);
}

fn tokio_stream_once(m: pb::ModelInferRequest) -> impl tonic::IntoStreamingRequest<Message = pb::ModelInferRequest> {
    tonic::codegen::tokio_stream::iter(vec![m])
}

/// `routing.allow_override: false` ignores the header for everyone, a principal with `override` too.
#[tokio::test]
async fn override_switched_off() {
    let dir = TempDir::new("auth-off");
    let (_, key) = new_key(dir.path(), "k.pem");
    write_jwks(&dir.path().join("jwks.json"), &[(&key, "k")]);
    let sy = Switchyard::config(&config(dir.path(), "  allow_override: false")).start().await;
    let t = key.sign(&claims("ops", &["*"], now() + 600), Some("k")).unwrap();
    let h = format!("Bearer {t}");
    for _ in 0..5 {
        let r = sy
            .post(
                "/v2/models/mlp/infer",
                &[("authorization", &h), ("x-switchyard-variant", "dark"), ("content-type", "application/json")],
                infer_body(),
            )
            .await;
        assert_eq!((r.status, r.header("x-switchyard-variant")), (200, Some("v1")), "{}", r.text());
    }
}

#[test]
fn token_cli_refuses_bad_input() {
    let dir = TempDir::new("token-cli");
    let (k, _) = new_key(dir.path(), "k.pem");
    let k = k.to_str().unwrap();
    for (args, why) in [
        (vec!["--key", k, "--sub", "a", "--allow", "model:x"], "--allow"),
        (vec!["--key", k, "--sub", "a", "--ttl", "soon"], "--ttl"),
        (vec!["--key", "/nonexistent.pem", "--sub", "a"], "nonexistent"),
    ] {
        let out = Command::new(EXE).arg("token").args(&args).output().unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(why),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The shipped dev key pairs with the shipped JWKS.
    let ex = repo_root().join("examples/auth");
    let jwks: Value = serde_json::from_str(&std::fs::read_to_string(ex.join("jwks.json")).unwrap()).unwrap();
    let printed: Value = serde_json::from_str(&cli(&[
        "--key",
        ex.join("dev-signing-key.pem").to_str().unwrap(),
        "--jwks",
        "--kid",
        "dev-1",
    ]))
    .unwrap();
    assert_eq!(jwks, printed);
}
