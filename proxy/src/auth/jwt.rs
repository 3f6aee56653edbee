//! JSON Web Tokens: verification of compact JWS tokens signed with RS256,
//! ES256 or EdDSA (Ed25519) against a JWKS, the registered claims (`exp`,
//! `nbf` with leeway, `iss`, `aud`), and — for `switchyard token` and tests —
//! signing with a PKCS#8 PEM key and the JWKS that pairs with it. Only
//! asymmetric algorithms: `none` and HMAC are refused, so a public JWKS can
//! never be used to mint tokens.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, KeyPair};
use serde_json::{json, Map, Value};

/// A signature algorithm Switchyard accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Es256,
    EdDsa,
}

impl Alg {
    fn parse(s: &str) -> Option<Alg> {
        match s {
            "RS256" => Some(Alg::Rs256),
            "ES256" => Some(Alg::Es256),
            "EdDSA" => Some(Alg::EdDsa),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }
}

/// One verification key of a JWKS.
#[derive(Debug, Clone)]
struct Jwk {
    kid: Option<String>,
    alg: Alg,
    key: PublicKey,
}

#[derive(Debug, Clone)]
enum PublicKey {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed SEC1 point (0x04 ‖ x ‖ y) or the Ed25519 key bytes.
    Raw(Vec<u8>),
}

/// A parsed JWKS: the keys tokens may be signed with.
#[derive(Debug, Clone, Default)]
pub struct Jwks {
    keys: Vec<Jwk>,
}

fn b64url(field: &str, v: &Value) -> Result<Vec<u8>, String> {
    let s = v.as_str().ok_or_else(|| format!("`{field}` is missing or not a string"))?;
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).map_err(|e| format!("`{field}` is not base64url: {e}"))
}

impl Jwks {
    /// Parses `{"keys": [...]}`. Keys of other types or uses (`use: enc`) are skipped;
    /// a key of a supported type that is malformed is an error.
    pub fn parse(text: &[u8]) -> Result<Jwks, String> {
        let v: Value = serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
        let keys = v.get("keys").and_then(Value::as_array).ok_or("no `keys` array")?;
        let mut out = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            if k.get("use").and_then(Value::as_str).is_some_and(|u| u != "sig") {
                continue;
            }
            let kid = k.get("kid").and_then(Value::as_str).map(str::to_string);
            let declared = k.get("alg").and_then(Value::as_str);
            let ctx =
                |e: String| format!("key {i}{}: {e}", kid.as_ref().map(|k| format!(" ({k})")).unwrap_or_default());
            let (alg, key) = match (k.get("kty").and_then(Value::as_str), k.get("crv").and_then(Value::as_str)) {
                (Some("RSA"), _) => {
                    let n = b64url("n", &k["n"]).map_err(ctx)?;
                    if n.len() < 256 {
                        return Err(ctx(format!("RSA modulus of {} bits is below 2048", n.len() * 8)));
                    }
                    (Alg::Rs256, PublicKey::Rsa { n, e: b64url("e", &k["e"]).map_err(ctx)? })
                }
                (Some("EC"), Some("P-256")) => {
                    let (x, y) = (b64url("x", &k["x"]).map_err(ctx)?, b64url("y", &k["y"]).map_err(ctx)?);
                    if x.len() != 32 || y.len() != 32 {
                        return Err(ctx("P-256 coordinates must be 32 bytes".into()));
                    }
                    let mut point = vec![4u8];
                    point.extend_from_slice(&x);
                    point.extend_from_slice(&y);
                    (Alg::Es256, PublicKey::Raw(point))
                }
                (Some("OKP"), Some("Ed25519")) => {
                    let x = b64url("x", &k["x"]).map_err(ctx)?;
                    if x.len() != 32 {
                        return Err(ctx("an Ed25519 key must be 32 bytes".into()));
                    }
                    (Alg::EdDsa, PublicKey::Raw(x))
                }
                _ => continue,
            };
            if let Some(d) = declared {
                if Alg::parse(d) != Some(alg) {
                    return Err(ctx(format!("alg `{d}` does not fit the key type (expected {})", alg.name())));
                }
            }
            out.push(Jwk { kid, alg, key });
        }
        if out.is_empty() {
            return Err("no RS256, ES256 or EdDSA signing key".into());
        }
        Ok(Jwks { keys: out })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// What a token must satisfy besides its signature.
#[derive(Debug, Clone)]
pub struct Rules {
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway: Duration,
}

/// Why a token was refused (the message is safe to show the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    pub message: String,
    /// No key of the JWKS fits the token's `alg` and `kid`: the issuer may
    /// have rotated its keys (a JWKS fetched from a URL is fetched again).
    pub unknown_key: bool,
}

fn invalid(m: impl Into<String>) -> Invalid {
    Invalid { message: m.into(), unknown_key: false }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Verifies `token` and returns its claims.
pub fn verify(token: &str, jwks: &Jwks, rules: &Rules) -> Result<Map<String, Value>, Invalid> {
    verify_at(token, jwks, rules, now_secs())
}

fn verify_at(token: &str, jwks: &Jwks, rules: &Rules, now: u64) -> Result<Map<String, Value>, Invalid> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(invalid("malformed token: not three dot-separated parts"));
    };
    let header: Value = URL_SAFE_NO_PAD
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| invalid("malformed token header"))?;
    let alg_name = header.get("alg").and_then(Value::as_str).unwrap_or("");
    let alg = Alg::parse(alg_name)
        .ok_or_else(|| invalid(format!("token algorithm `{alg_name}` is not accepted (RS256, ES256, EdDSA)")))?;
    let kid = header.get("kid").and_then(Value::as_str);
    let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| invalid("malformed token signature"))?;
    let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
    let candidates = jwks.keys.iter().filter(|k| k.alg == alg && (kid.is_none() || k.kid.as_deref() == kid));
    let mut tried = false;
    let mut ok = false;
    for k in candidates {
        tried = true;
        if check(k, signed, &sig) {
            ok = true;
            break;
        }
    }
    if !tried {
        let message = match kid {
            Some(kid) => format!("no {} key with kid `{kid}` in the JWKS", alg.name()),
            None => format!("no {} key in the JWKS", alg.name()),
        };
        return Err(Invalid { message, unknown_key: true });
    }
    if !ok {
        return Err(invalid("token signature does not verify"));
    }
    let claims: Map<String, Value> = URL_SAFE_NO_PAD
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| invalid("malformed token claims"))?;
    let leeway = rules.leeway.as_secs();
    let exp = claims.get("exp").and_then(Value::as_u64).ok_or_else(|| invalid("token has no numeric `exp`"))?;
    if now > exp.saturating_add(leeway) {
        return Err(invalid(format!("token expired {}s ago", now - exp)));
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_u64().ok_or_else(|| invalid("token `nbf` is not a number"))?;
        if now.saturating_add(leeway) < nbf {
            return Err(invalid(format!("token not valid for another {}s (nbf)", nbf - now)));
        }
    }
    if let Some(iss) = &rules.issuer {
        if claims.get("iss").and_then(Value::as_str) != Some(iss) {
            return Err(invalid(format!("token issuer is not `{iss}`")));
        }
    }
    if let Some(aud) = &rules.audience {
        let fits = match claims.get("aud") {
            Some(Value::String(a)) => a == aud,
            Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(aud)),
            _ => false,
        };
        if !fits {
            return Err(invalid(format!("token audience does not include `{aud}`")));
        }
    }
    Ok(claims)
}

fn check(k: &Jwk, signed: &[u8], sig: &[u8]) -> bool {
    match (&k.key, k.alg) {
        (PublicKey::Rsa { n, e }, _) => signature::RsaPublicKeyComponents { n, e }
            .verify(&signature::RSA_PKCS1_2048_8192_SHA256, signed, sig)
            .is_ok(),
        (PublicKey::Raw(raw), Alg::Es256) => {
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, raw).verify(signed, sig).is_ok()
        }
        (PublicKey::Raw(raw), _) => {
            signature::UnparsedPublicKey::new(&signature::ED25519, raw).verify(signed, sig).is_ok()
        }
    }
}

/// A private signing key read from a PKCS#8 PEM file (Ed25519, P-256 or RSA).
pub enum SigningKey {
    Ed(signature::Ed25519KeyPair),
    Ec(signature::EcdsaKeyPair),
    Rsa(signature::RsaKeyPair),
}

impl SigningKey {
    /// Reads `-----BEGIN PRIVATE KEY-----` (PKCS#8) text.
    pub fn from_pem(pem: &str) -> Result<SigningKey, String> {
        let body: String = pem
            .lines()
            .skip_while(|l| !l.starts_with("-----BEGIN PRIVATE KEY-----"))
            .skip(1)
            .take_while(|l| !l.starts_with("-----END"))
            .collect();
        if body.is_empty() {
            return Err("no `-----BEGIN PRIVATE KEY-----` block (a PKCS#8 key is needed; convert with `openssl pkcs8 -topk8 -nocrypt`)".into());
        }
        let der = STANDARD.decode(body.trim()).map_err(|e| format!("the PEM block is not base64: {e}"))?;
        if let Ok(k) = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der) {
            return Ok(SigningKey::Ed(k));
        }
        let rng = SystemRandom::new();
        if let Ok(k) = signature::EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng) {
            return Ok(SigningKey::Ec(k));
        }
        signature::RsaKeyPair::from_pkcs8(&der)
            .map(SigningKey::Rsa)
            .map_err(|e| format!("not an Ed25519, P-256 or RSA PKCS#8 key: {e}"))
    }

    pub fn alg(&self) -> Alg {
        match self {
            SigningKey::Ed(_) => Alg::EdDsa,
            SigningKey::Ec(_) => Alg::Es256,
            SigningKey::Rsa(_) => Alg::Rs256,
        }
    }

    /// A compact JWS of `claims`, with `kid` in its header when given.
    pub fn sign(&self, claims: &Value, kid: Option<&str>) -> Result<String, String> {
        let mut header = json!({"alg": self.alg().name(), "typ": "JWT"});
        if let Some(k) = kid {
            header["kid"] = Value::from(k);
        }
        let enc = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json values encode"));
        let signed = format!("{}.{}", enc(&header), enc(claims));
        let sig = match self {
            SigningKey::Ed(k) => k.sign(signed.as_bytes()).as_ref().to_vec(),
            SigningKey::Ec(k) => {
                k.sign(&SystemRandom::new(), signed.as_bytes()).map_err(|_| "signing failed")?.as_ref().to_vec()
            }
            SigningKey::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &SystemRandom::new(), signed.as_bytes(), &mut sig)
                    .map_err(|_| "signing failed")?;
                sig
            }
        };
        Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }

    /// The public half as a JWK (with `kid` when given).
    pub fn public_jwk(&self, kid: Option<&str>) -> Value {
        let b = |bytes: &[u8]| Value::from(URL_SAFE_NO_PAD.encode(bytes));
        let mut jwk = match self {
            SigningKey::Ed(k) => json!({"kty": "OKP", "crv": "Ed25519", "x": b(k.public_key().as_ref())}),
            SigningKey::Ec(k) => {
                let p = k.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "x": b(&p[1..33]), "y": b(&p[33..65])})
            }
            SigningKey::Rsa(k) => {
                let c: signature::RsaPublicKeyComponents<Vec<u8>> = k.public().into();
                json!({"kty": "RSA", "n": b(&c.n), "e": b(&c.e)})
            }
        };
        jwk["alg"] = Value::from(self.alg().name());
        jwk["use"] = Value::from("sig");
        if let Some(k) = kid {
            jwk["kid"] = Value::from(k);
        }
        jwk
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn ed_key() -> SigningKey {
        let doc = signature::Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        SigningKey::Ed(signature::Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap())
    }

    fn ec_key() -> SigningKey {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let doc = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        SigningKey::Ec(signature::EcdsaKeyPair::from_pkcs8(alg, doc.as_ref(), &rng).unwrap())
    }

    /// A 2048-bit RSA key for tests only (ring cannot generate RSA keys).
    fn rsa_key() -> SigningKey {
        SigningKey::from_pem(include_str!("testdata/rsa-test-key.pem")).unwrap()
    }

    pub fn jwks_of(keys: &[(&SigningKey, &str)]) -> Jwks {
        let v = json!({"keys": keys.iter().map(|(k, kid)| k.public_jwk(Some(kid))).collect::<Vec<_>>()});
        Jwks::parse(&serde_json::to_vec(&v).unwrap()).unwrap()
    }

    fn rules() -> Rules {
        Rules { issuer: Some("iss-1".into()), audience: Some("sy".into()), leeway: Duration::from_secs(30) }
    }

    fn claims(exp: u64) -> Value {
        json!({"sub": "alice", "iss": "iss-1", "aud": ["x", "sy"], "exp": exp, "permissions": ["model:*:infer"]})
    }

    #[test]
    fn every_algorithm_round_trips() {
        for key in [ed_key(), ec_key(), rsa_key()] {
            let jwks = jwks_of(&[(&key, "k1")]);
            let t = key.sign(&claims(1_000), Some("k1")).unwrap();
            let c = verify_at(&t, &jwks, &rules(), 900).unwrap();
            assert_eq!(c["sub"], "alice", "{}", key.alg().name());
            // Without a kid every key of the algorithm is tried.
            let t = key.sign(&claims(1_000), None).unwrap();
            assert!(verify_at(&t, &jwks, &rules(), 900).is_ok());
        }
    }

    #[test]
    fn claims_and_keys_are_checked() {
        let (key, other) = (ed_key(), ed_key());
        let jwks = jwks_of(&[(&key, "k1")]);
        let r = rules();
        let sign = |v: Value| key.sign(&v, Some("k1")).unwrap();
        let err = |t: &str, now| verify_at(t, &jwks, &r, now).unwrap_err().message;
        // Expiry and not-before, with the leeway.
        assert!(verify_at(&sign(claims(1_000)), &jwks, &r, 1_029).is_ok());
        assert!(err(&sign(claims(1_000)), 1_031).contains("expired"));
        let mut c = claims(2_000);
        c["nbf"] = 1_100.into();
        assert!(err(&sign(c.clone()), 1_000).contains("nbf"));
        assert!(verify_at(&sign(c), &jwks, &r, 1_071).is_ok());
        let mut c = claims(2_000);
        c["aud"] = "other".into();
        assert!(err(&sign(c), 1_000).contains("audience"));
        let mut c = claims(2_000);
        c["iss"] = "evil".into();
        assert!(err(&sign(c), 1_000).contains("issuer"));
        let mut c = claims(2_000);
        c.as_object_mut().unwrap().remove("exp");
        assert!(err(&sign(c), 1_000).contains("exp"));
        // Signed by a key the JWKS does not hold.
        assert!(err(&other.sign(&claims(2_000), Some("k1")).unwrap(), 1_000).contains("signature"));
        assert!(err(&other.sign(&claims(2_000), Some("k9")).unwrap(), 1_000).contains("kid `k9`"));
        // A tampered payload.
        let t = sign(claims(2_000));
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(9_999)).unwrap());
        parts[1] = &forged;
        assert!(err(&parts.join("."), 1_000).contains("signature"));
        // `none` and HMAC are never accepted.
        let none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#), parts[2]);
        assert!(err(&none, 1_000).contains("`none`"));
        let hs = format!("{}.{}.{}", URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256"}"#), parts[1], parts[2]);
        assert!(err(&hs, 1_000).contains("HS256"));
        assert!(err("abc", 1_000).contains("malformed"));
    }

    #[test]
    fn jwks_rejects_bad_keys() {
        assert!(Jwks::parse(b"{}").is_err());
        assert!(Jwks::parse(br#"{"keys":[{"kty":"oct","k":"AAAA"}]}"#).unwrap_err().contains("no RS256"));
        assert!(Jwks::parse(br#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAA"}]}"#)
            .unwrap_err()
            .contains("32 bytes"));
        let mut jwk = ed_key().public_jwk(Some("a"));
        jwk["alg"] = "RS256".into();
        let text = serde_json::to_vec(&json!({ "keys": [jwk] })).unwrap();
        assert!(Jwks::parse(&text).unwrap_err().contains("does not fit"));
    }
}
