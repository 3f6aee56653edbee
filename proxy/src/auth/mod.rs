//! Data-plane authentication and authorization: a request's credentials
//! (`Authorization: Bearer <JWT or API key>`, or `x-api-key`) become a
//! [`Principal`] — its name and permissions — before its body is read;
//! [`Principal::authorize`] then checks a model, version and action against
//! the permissions (`model:fraud-*:infer`). Key material on disk (the JWKS
//! file, the API key file) is re-read every `auth.refresh` by a background
//! thread, so rotated keys take effect without a restart; a file that turns
//! bad keeps the last good keys and logs why.

pub mod jwt;
pub mod remote;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use http::HeaderMap;
use serde_json::Value;
use switchyard_config::{check_permission, parse_sha256, ApiKey, AuthConfig, JwksSource};

use crate::error::{Error, ErrorKind};

/// The header an API key may come in instead of `Authorization`.
pub const API_KEY_HEADER: &str = "x-api-key";

/// The bare permission Triton's system shared memory register, unregister and
/// status need: a region maps a file of this host into the proxy.
pub const SHM_PERMISSION: &str = "shm";

/// What a request asks to do to a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Infer,
    /// Model metadata, readiness, config and statistics.
    Metadata,
    /// Ground truth for a model's served answers (`POST /ml/models/{m}/feedback`).
    Feedback,
    /// Triton's repository load and unload of a model: administrative.
    Admin,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Infer => "infer",
            Action::Metadata => "metadata",
            Action::Feedback => "feedback",
            Action::Admin => "admin",
        }
    }
}

/// One granted permission, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Permission {
    /// `*`: everything.
    All,
    Model {
        name: String,
        version: Option<String>,
        action: String,
    },
    Word(String),
}

impl Permission {
    /// Parses a permission; grammar errors were reported by config validation
    /// (JWT claims unchecked there: a bad one grants nothing).
    fn parse(p: &str) -> Option<Permission> {
        check_permission(p).ok()?;
        if p == "*" {
            return Some(Permission::All);
        }
        Some(match p.strip_prefix("model:").and_then(|r| r.rsplit_once(':')) {
            Some((target, action)) => {
                let (name, version) = match target.split_once('/') {
                    Some((n, v)) => (n.to_string(), Some(v.to_string())),
                    None => (target.to_string(), None),
                };
                Permission::Model { name, version, action: action.to_string() }
            }
            None => Permission::Word(p.to_string()),
        })
    }
}

/// `*` matches any run of characters, everything else itself.
fn glob(pattern: &str, s: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), s.as_bytes());
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            pi += 1;
            mark = si;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// Who a request runs as, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: Arc<str>,
    permissions: Vec<Permission>,
    /// Whether the variant-override header is honoured for it.
    pub may_override: bool,
    /// Its requests' admission priority (1 is the highest): the best a
    /// request of it may claim (`admission::effective_priority`).
    pub priority: Option<u64>,
}

impl Principal {
    fn new(name: &str, permissions: &[impl AsRef<str>], override_permission: &str, priority: Option<u64>) -> Principal {
        let permissions: Vec<Permission> = permissions.iter().filter_map(|p| Permission::parse(p.as_ref())).collect();
        let priority = priority.filter(|p| *p > 0);
        let mut p = Principal { name: name.into(), permissions, may_override: false, priority };
        p.may_override = p.has(override_permission);
        p
    }

    /// Whether a bare permission (`override`, `passthrough`) is granted.
    pub fn has(&self, word: &str) -> bool {
        self.permissions.iter().any(|p| match p {
            Permission::All => true,
            Permission::Word(w) => glob(w, word),
            Permission::Model { .. } => false,
        })
    }

    /// Whether it may do `action` on `model` (and the `version` the client named).
    /// A permission pinned to a version grants only requests that name it.
    pub fn may(&self, model: &str, version: Option<&str>, action: Action) -> bool {
        self.permissions.iter().any(|p| match p {
            Permission::All => true,
            Permission::Word(_) => false,
            Permission::Model { name, version: pv, action: pa } => {
                glob(name, model)
                    && glob(pa, action.name())
                    && match (pv, version) {
                        (None, _) => true,
                        (Some(pv), Some(v)) => glob(pv, v),
                        (Some(_), None) => false,
                    }
            }
        })
    }

    /// 403 unless it may do `action` on `model`.
    pub fn authorize(&self, model: &str, version: Option<&str>, action: Action) -> Result<(), Error> {
        if self.may(model, version, action) {
            return Ok(());
        }
        let target = match version {
            Some(v) => format!("{model}/{v}"),
            None => model.to_string(),
        };
        Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "principal '{}' may not {} model '{target}' (needs model:{target}:{})",
                self.name,
                action.name(),
                action.name()
            ),
        ))
    }

    /// 403 unless it holds the bare permission `word`.
    pub fn require(&self, word: &str, what: &str) -> Result<(), Error> {
        if self.has(word) {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::PermissionDenied,
            format!("principal '{}' may not {what} (needs permission `{word}`)", self.name),
        ))
    }
}

/// The keys in force; replaced whole when a file is re-read.
#[derive(Default)]
struct Keys {
    /// SHA-256 of an API key → its principal.
    api_keys: HashMap<[u8; 32], Arc<Principal>>,
    jwks: jwt::Jwks,
}

/// The data plane's authenticator, built once from `auth:`.
pub struct Auth {
    cfg: AuthConfig,
    rules: Option<jwt::Rules>,
    keys: ArcSwap<Keys>,
    /// The JWKS of `auth.jwt.jwks_url` (the file one lives in `keys`).
    remote: Option<Arc<remote::RemoteJwks>>,
}

/// SHA-256 of an API key, as `auth.api_keys[].sha256` holds it.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Parses an API key file: `principal sha256:HEX [perm[,perm...]] [priority=N]`
/// per line, `#` comments.
pub fn parse_key_file(text: &str) -> Result<Vec<ApiKey>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let shape = || format!("line {}: expected `principal sha256:HEX [perm[,perm...]] [priority=N]`", i + 1);
        let mut f = line.split_whitespace();
        let (Some(name), Some(hash)) = (f.next(), f.next()) else { return Err(shape()) };
        let hash = parse_sha256(hash).map_err(|e| format!("line {}: {e}", i + 1))?;
        let (mut perms, mut priority): (Option<Vec<String>>, Option<u64>) = (None, None);
        for field in f {
            match field.strip_prefix("priority=") {
                Some(n) if priority.is_none() => match n.parse::<u64>() {
                    Ok(p) if p > 0 => priority = Some(p),
                    _ => return Err(format!("line {}: priority must be an integer of 1 (the highest) or more", i + 1)),
                },
                None if perms.is_none() && priority.is_none() => {
                    perms = Some(field.split(',').map(str::to_string).collect())
                }
                _ => return Err(shape()),
            }
        }
        let perms = perms.unwrap_or_default();
        for p in &perms {
            check_permission(p).map_err(|e| format!("line {}: {e}", i + 1))?;
        }
        out.push(ApiKey { principal: name.to_string(), sha256: hash, permissions: perms, priority });
    }
    Ok(out)
}

impl Auth {
    /// Reads the key files now: a missing or bad file fails start-up.
    pub fn new(cfg: &AuthConfig) -> Result<Arc<Auth>, String> {
        let rules = cfg.jwt.as_ref().map(|j| jwt::Rules {
            issuer: j.issuer.clone(),
            audience: j.audience.clone(),
            leeway: j.leeway,
        });
        let remote = match cfg.jwt.as_ref().map(|j| &j.jwks) {
            Some(JwksSource::Url { url, tls, refresh }) => Some(remote::RemoteJwks::start(url, tls, *refresh)?),
            _ => None,
        };
        let auth = Auth { cfg: cfg.clone(), rules, keys: ArcSwap::from_pointee(Keys::default()), remote };
        auth.keys.store(Arc::new(auth.load()?));
        Ok(Arc::new(auth))
    }

    fn load(&self) -> Result<Keys, String> {
        let op = &self.cfg.override_permission;
        let mut keys = Keys::default();
        for k in &self.cfg.api_keys {
            keys.api_keys.insert(k.sha256, Arc::new(Principal::new(&k.principal, &k.permissions, op, k.priority)));
        }
        if let Some(path) = &self.cfg.api_keys_file {
            let text = read(path, "auth.api_keys_file")?;
            for k in parse_key_file(&text).map_err(|e| format!("{}: {e}", path.display()))? {
                keys.api_keys.insert(k.sha256, Arc::new(Principal::new(&k.principal, &k.permissions, op, k.priority)));
            }
        }
        if let Some(JwksSource::File(path)) = self.cfg.jwt.as_ref().map(|j| &j.jwks) {
            let text = read(path, "auth.jwt.jwks_file")?;
            keys.jwks = jwt::Jwks::parse(text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(keys)
    }

    /// Re-reads the key files every `auth.refresh` for as long as `self` lives.
    pub fn spawn_refresh(self: &Arc<Self>) {
        let weak: Weak<Auth> = Arc::downgrade(self);
        let every = self.cfg.refresh;
        let spawned = std::thread::Builder::new().name("switchyard-keys".into()).spawn(move || loop {
            std::thread::sleep(every);
            let Some(auth) = weak.upgrade() else { return };
            match auth.load() {
                Ok(k) => auth.keys.store(Arc::new(k)),
                Err(e) => tracing::warn!(error = %e, "key material not reloaded; the last good keys stay in force"),
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the key refresh thread; keys are not re-read");
        }
    }

    /// The principal a request's credentials name, or 401.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Principal>, Error> {
        let bearer = headers
            .get(http::header::AUTHORIZATION)
            .map(|v| {
                v.to_str()
                    .ok()
                    .and_then(|s| s.strip_prefix("Bearer ").or_else(|| s.strip_prefix("bearer ")))
                    .map(str::trim)
                    .ok_or_else(|| unauthenticated("the Authorization header is not `Bearer <token>`"))
            })
            .transpose()?;
        let api_key = headers.get(API_KEY_HEADER).map(|v| v.as_bytes());
        let keys = self.keys.load();
        match (bearer, api_key) {
            (None, None) => Err(unauthenticated("credentials required: send `Authorization: Bearer <token>`")),
            (_, Some(k)) => self.api_key(&keys, k),
            (Some(t), None) if t.bytes().filter(|&b| b == b'.').count() == 2 && self.rules.is_some() => {
                self.jwt(&keys, t)
            }
            (Some(t), None) => self.api_key(&keys, t.as_bytes()),
        }
    }

    fn api_key(&self, keys: &Keys, key: &[u8]) -> Result<Arc<Principal>, Error> {
        keys.api_keys.get(&sha256(key)).cloned().ok_or_else(|| unauthenticated("unknown API key"))
    }

    fn jwt(&self, keys: &Keys, token: &str) -> Result<Arc<Principal>, Error> {
        let (Some(rules), Some(j)) = (&self.rules, &self.cfg.jwt) else {
            return Err(unauthenticated("JWTs are not accepted here"));
        };
        let fetched;
        let jwks = match &self.remote {
            None => &keys.jwks,
            Some(r) => {
                fetched = r
                    .current()
                    .ok_or_else(|| unauthenticated("no signing keys fetched yet from the issuer's JWKS URL"))?;
                &*fetched
            }
        };
        let claims = jwt::verify(token, jwks, rules).map_err(|e| {
            if e.unknown_key {
                // The issuer may have rotated its keys: fetch its set again (rate-limited).
                if let Some(r) = &self.remote {
                    r.unknown_key();
                }
            }
            unauthenticated(&format!("invalid token: {e}"))
        })?;
        let sub = claims.get("sub").and_then(Value::as_str).ok_or_else(|| unauthenticated("token has no `sub`"))?;
        // An array of strings, or one space-separated string (as OAuth's `scope`).
        let perms: Vec<&str> = match claims.get(&j.permissions_claim) {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            Some(Value::String(s)) => s.split_whitespace().collect(),
            _ => Vec::new(),
        };
        // A positive integer; anything else grants no priority (the request's own applies).
        let priority = claims.get(&j.priority_claim).and_then(Value::as_u64);
        Ok(Arc::new(Principal::new(sub, &perms, &self.cfg.override_permission, priority)))
    }
}

fn read(path: &Path, field: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{field} {}: {e}", path.display()))
}

fn unauthenticated(m: &str) -> Error {
    Error::new(ErrorKind::Unauthenticated, m)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::HeaderValue;
    use serde_json::json;
    use switchyard_config::JwtConfig;

    use super::*;

    #[test]
    fn globs() {
        for (p, s, m) in [
            ("fraud-*", "fraud-v2", true),
            ("fraud-*", "fraud-", true),
            ("fraud-*", "frau", false),
            ("*", "", true),
            ("a*c", "abbbc", true),
            ("a*c", "abbbd", false),
            ("*-x-*", "a-x-b", true),
            ("mlp", "mlp2", false),
        ] {
            assert_eq!(glob(p, s), m, "{p} ~ {s}");
        }
    }

    #[test]
    fn permissions_by_model_version_and_action() {
        let p = Principal::new("u", &["model:fraud-*:infer", "model:mlp/2:*", "override"], "override", None);
        assert!(p.may("fraud-a", None, Action::Infer));
        assert!(p.may("fraud-a", Some("9"), Action::Infer));
        assert!(!p.may("fraud-a", None, Action::Metadata));
        assert!(!p.may("mlp", None, Action::Infer), "a version-pinned permission needs the version named");
        assert!(p.may("mlp", Some("2"), Action::Metadata));
        assert!(!p.may("mlp", Some("3"), Action::Infer));
        assert!(p.may_override && p.has("override") && !p.has("passthrough"));
        let e = p.authorize("mlp", None, Action::Infer).unwrap_err();
        assert_eq!(e.kind, ErrorKind::PermissionDenied);
        assert!(e.message.contains("model:mlp:infer"), "{}", e.message);
        let all = Principal::new("root", &["*"], "override", Some(1));
        assert!(all.may("x", Some("1"), Action::Infer) && all.may_override);
        // A malformed claim grants nothing.
        assert!(!Principal::new("u", &["model:x"], "override", None).may("x", None, Action::Infer));
    }

    fn headers(name: &str, v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn api_keys_and_jwts_become_principals() {
        let dir = std::env::temp_dir().join(format!("sy-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = jwt::tests::ed_key();
        let jwks = json!({"keys": [key.public_jwk(Some("k1"))]});
        std::fs::write(dir.join("jwks.json"), serde_json::to_vec(&jwks).unwrap()).unwrap();
        let file_key_hash = sha256(b"from-file");
        let hex: String = file_key_hash.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(dir.join("keys"), format!("# ci\nci sha256:{hex} model:*:infer,override priority=2\n")).unwrap();
        let cfg = AuthConfig {
            api_keys: vec![ApiKey {
                principal: "batch".into(),
                sha256: sha256(b"s3cret"),
                permissions: vec![],
                priority: Some(3),
            }],
            api_keys_file: Some(dir.join("keys")),
            jwt: Some(JwtConfig {
                jwks: JwksSource::File(dir.join("jwks.json")),
                issuer: None,
                audience: None,
                leeway: Duration::ZERO,
                permissions_claim: "perms".into(),
                priority_claim: "prio".into(),
            }),
            override_permission: "override".into(),
            refresh: Duration::from_secs(60),
        };
        let auth = Auth::new(&cfg).unwrap();
        let batch = auth.authenticate(&headers("x-api-key", "s3cret")).unwrap();
        assert_eq!((&*batch.name, batch.priority), ("batch", Some(3)));
        let ci = auth.authenticate(&headers("authorization", "Bearer from-file")).unwrap();
        assert!(ci.may_override && ci.may("m", None, Action::Infer));
        assert_eq!(ci.priority, Some(2));
        let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 60;
        let t = key
            .sign(&json!({"sub": "alice", "exp": exp, "perms": "model:a:infer model:b:infer", "prio": 4}), Some("k1"))
            .unwrap();
        let alice = auth.authenticate(&headers("authorization", &format!("Bearer {t}"))).unwrap();
        assert_eq!(&*alice.name, "alice");
        assert!(alice.may("b", None, Action::Infer) && !alice.may_override);
        assert_eq!(alice.priority, Some(4));
        let t = key.sign(&json!({"sub": "eve", "exp": exp, "prio": "high"}), Some("k1")).unwrap();
        assert_eq!(auth.authenticate(&headers("authorization", &format!("Bearer {t}"))).unwrap().priority, None);
        for (h, v, why) in [
            ("x-other", "1", "credentials required"),
            ("authorization", "Basic abc", "Bearer"),
            ("x-api-key", "nope", "unknown API key"),
            ("authorization", "Bearer a.b.c", "invalid token"),
        ] {
            let e = auth.authenticate(&headers(h, v)).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Unauthenticated);
            assert!(e.message.contains(why), "{h}: {}", e.message);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn key_file_lines() {
        assert!(parse_key_file("a sha256:00").unwrap_err().contains("line 1"));
        assert!(parse_key_file(&format!("a sha256:{} model:x", "00".repeat(32))).unwrap_err().contains("line 1"));
        assert_eq!(parse_key_file(&format!("\n# c\na sha256:{}\n", "00".repeat(32))).unwrap().len(), 1);
        let k = parse_key_file(&format!("a sha256:{} priority=5", "00".repeat(32))).unwrap();
        assert_eq!((k[0].priority, k[0].permissions.len()), (Some(5), 0));
        for bad in ["priority=0", "priority=x", "m:*:infer m:*:infer", "priority=2 model:x:infer"] {
            assert!(parse_key_file(&format!("a sha256:{} {bad}", "00".repeat(32))).is_err(), "{bad}");
        }
    }
}
