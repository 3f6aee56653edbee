//! The raw shape of a `backends.NAME` entry: its `kind`, then one
//! `deny_unknown_fields` struct per kind, read in a second pass so that every
//! field keeps its `line:column`.
//!
//! Why not `#[serde(tag = "kind")]`: serde's internally tagged enums buffer the
//! map in serde's private `Content` before picking the variant, and that drops
//! serde-saphyr's locations: every `Spanned` inside reads 0:0, and an unknown
//! or mistyped field is reported at the backend's name instead of the field.
//! So the first pass (`RawConfig`) reads only each backend's `kind`; the second
//! ([`read_fields`]) walks the document again and hands each backend's live map
//! to its kind's struct, whatever the order of its keys.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, IntoDeserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::error::field_error;
use crate::validated::FieldError;

type S<T> = Spanned<T>;

/// One entry of `backends`, as the first pass sees it.
///
/// Not `deny_unknown_fields`: the other keys belong to the kind, whose struct
/// denies what it does not know in the second pass.
#[derive(Debug, Deserialize)]
pub struct RawBackend {
    pub kind: S<String>,
    /// The kind's fields; `None` when `kind` names no kind (validation says so).
    #[serde(skip)]
    pub fields: Option<RawBackendFields>,
}

#[derive(Debug)]
pub enum RawBackendFields {
    // Boxed: every field optional and spanned makes each kind large.
    V2Http(Box<RawV2HttpBackend>),
    V2Grpc(Box<RawV2GrpcBackend>),
    TfServing(Box<RawTfServingBackend>),
    Onnx(Box<RawOnnxBackend>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawV2HttpBackend {
    /// Base URLs of the server's replicas.
    #[serde(default)]
    pub endpoints: Vec<S<String>>,
    /// `host:port` (or `http://host:port[/prefix]`) whose A/AAAA records are the replicas.
    pub dns: Option<S<String>>,
    pub dns_refresh: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub connect_timeout: Option<S<String>>,
    pub pool_size: Option<S<u64>>,
    pub eject_after_failures: Option<S<u64>>,
    pub eject_for: Option<S<String>>,
    pub health_check: Option<S<RawHealthCheck>>,
    pub outlier_detection: Option<S<RawOutlierDetection>>,
    pub retry_budget: Option<S<RawRetryBudget>>,
    pub load_metrics: Option<S<RawLoadMetrics>>,
    /// `auto` (ask `GET /v2`), `always` or `never`.
    pub binary: Option<S<String>>,
    pub forward_headers: Option<S<RawForwardHeaders>>,
    /// TLS to the endpoints (`https://` endpoints use it; defaults apply without it).
    pub tls: Option<S<RawClientTls>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawV2GrpcBackend {
    /// `host:port` (or `http://host:port`) of each replica.
    #[serde(default)]
    pub endpoints: Vec<S<String>>,
    /// `host:port` whose A/AAAA records are the replicas.
    pub dns: Option<S<String>>,
    pub dns_refresh: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub connect_timeout: Option<S<String>>,
    /// Largest message either way.
    pub max_message_bytes: Option<S<u64>>,
    pub eject_after_failures: Option<S<u64>>,
    pub eject_for: Option<S<String>>,
    pub health_check: Option<S<RawHealthCheck>>,
    pub outlier_detection: Option<S<RawOutlierDetection>>,
    pub retry_budget: Option<S<RawRetryBudget>>,
    pub load_metrics: Option<S<RawLoadMetrics>>,
    pub forward_headers: Option<S<RawForwardHeaders>>,
    /// TLS to the endpoints: set it (or write `https://host:port`) for gRPC over TLS.
    pub tls: Option<S<RawClientTls>>,
}

/// A remote TensorFlow Serving server, over its REST or its gRPC API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTfServingBackend {
    /// `rest` (default) or `grpc`.
    pub protocol: Option<S<String>>,
    /// REST: base URLs of the replicas; gRPC: `host:port` of each.
    #[serde(default)]
    pub endpoints: Vec<S<String>>,
    /// `host:port` whose A/AAAA records are the replicas.
    pub dns: Option<S<String>>,
    pub dns_refresh: Option<S<String>>,
    /// The signature every request runs (default `serving_default`).
    pub signature_name: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub connect_timeout: Option<S<String>>,
    /// REST only: idle keep-alive connections kept per endpoint.
    pub pool_size: Option<S<u64>>,
    /// gRPC only: largest message either way.
    pub max_message_bytes: Option<S<u64>>,
    pub eject_after_failures: Option<S<u64>>,
    pub eject_for: Option<S<String>>,
    pub health_check: Option<S<RawHealthCheck>>,
    pub outlier_detection: Option<S<RawOutlierDetection>>,
    pub retry_budget: Option<S<RawRetryBudget>>,
    pub forward_headers: Option<S<RawForwardHeaders>>,
    pub tls: Option<S<RawClientTls>>,
}

/// TLS as a client (to a backend, a JWKS URL): PEM files relative to the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientTls {
    /// CA bundle the server's certificate must chain to; absent: the platform's roots.
    pub ca: Option<S<String>>,
    /// Client certificate chain (mutual TLS); needs `key`.
    pub cert: Option<S<String>>,
    pub key: Option<S<String>>,
    /// The name sent as SNI and verified in the server's certificate (default: the endpoint's host).
    pub server_name: Option<S<String>>,
}

/// Active readiness probes of every endpoint of a remote backend.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub interval: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub unhealthy_after: Option<S<u64>>,
    pub healthy_after: Option<S<u64>>,
}

/// Ejection of endpoints whose error rate or latency stands out from the rest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlierDetection {
    pub interval: Option<S<String>>,
    pub min_requests: Option<S<u64>>,
    pub max_error_rate: Option<S<f64>>,
    pub max_latency_ratio: Option<S<f64>>,
    pub max_ejected_percent: Option<S<u64>>,
}

/// Retries allowed as a share of requests.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetryBudget {
    pub ratio: Option<S<f64>>,
    pub min_per_second: Option<S<u64>>,
}

/// Where each endpoint's own queue figures (Triton's Prometheus metrics) are read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLoadMetrics {
    pub port: Option<S<u64>>,
    pub path: Option<S<String>>,
    pub interval: Option<S<String>>,
    /// Scrape over https (default: as the backend's endpoints).
    pub tls: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOnnxBackend {
    /// The model repository directory (`MODEL/VERSION/model.onnx`); required,
    /// checked by validation so that its absence is reported with the rest.
    pub repository: Option<S<String>>,
    /// Which versions of each model to load.
    pub version_policy: Option<S<RawVersionPolicy>>,
    /// Models to serve; empty means every model in the repository.
    #[serde(default)]
    pub models: Vec<S<String>>,
    /// Warm-up runs per loaded version.
    pub warmup: Option<S<u64>>,
    /// Runs of each `MODEL/warmup/*.json` sample per session.
    pub warmup_requests: Option<S<u64>>,
    /// Sessions per loaded version.
    pub instances: Option<S<u64>>,
    /// Poll interval fallback for repository watching.
    pub poll_interval: Option<S<String>>,
    /// The MLflow registry a `repository: mlflow://…` URL names (docs/mlflow.md).
    pub mlflow: Option<S<super::sources::RawMlflowSource>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVersionPolicy {
    pub latest: Option<u64>,
    pub specific: Option<Vec<u64>>,
    pub all: Option<bool>,
}

/// Which client request headers a remote backend receives.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForwardHeaders {
    /// When present, only these are forwarded.
    pub allow: Option<Vec<S<String>>>,
    /// Never forwarded (applied after `allow`).
    #[serde(default)]
    pub deny: Vec<S<String>>,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    V2Http,
    V2Grpc,
    TfServing,
    Onnx,
}

impl Kind {
    fn from_name(name: &str) -> Option<Kind> {
        match name {
            "v2-http" => Some(Kind::V2Http),
            "v2-grpc" => Some(Kind::V2Grpc),
            "tfserving" => Some(Kind::TfServing),
            "onnx" => Some(Kind::Onnx),
            _ => None,
        }
    }
}

/// The second pass: fills `fields` of every backend whose `kind` is known.
///
/// An error names the field being read (e.g. `backends.b.pool_size`): the
/// path serde-saphyr's error lacks.
pub fn read_fields(text: &str, backends: &mut BTreeMap<String, S<RawBackend>>) -> Result<(), FieldError> {
    let kinds: BTreeMap<&str, Kind> =
        backends.iter().filter_map(|(name, b)| Some((name.as_str(), Kind::from_name(&b.value.kind.value)?))).collect();
    if kinds.is_empty() {
        return Ok(());
    }
    let cursor = RefCell::new(Cursor::default());
    let read =
        serde_saphyr::with_deserializer_from_str(text, |d| Document { kinds: &kinds, cursor: &cursor }.deserialize(d));
    match read {
        Ok(mut fields) => {
            for (name, b) in backends.iter_mut() {
                b.value.fields = fields.remove(name.as_str());
            }
            Ok(())
        }
        Err(e) => Err(field_error(cursor.borrow().path(), &e)),
    }
}

/// Which backend (and which of its fields) the second pass is reading, so an
/// error can name its path; serde-saphyr's error has the location, not the path.
#[derive(Default)]
struct Cursor {
    backend: Option<String>,
    field: Option<String>,
}

impl Cursor {
    fn path(&self) -> String {
        match (&self.backend, &self.field) {
            (None, _) => "backends".to_string(),
            (Some(b), None) => format!("backends.{b}"),
            (Some(b), Some(f)) => format!("backends.{b}.{f}"),
        }
    }
}

type Fields = BTreeMap<String, RawBackendFields>;

/// The whole document; everything but `backends` was read by the first pass.
struct Document<'a> {
    kinds: &'a BTreeMap<&'a str, Kind>,
    cursor: &'a RefCell<Cursor>,
}

impl<'de> DeserializeSeed<'de> for Document<'_> {
    type Value = Fields;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Fields, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Document<'_> {
    type Value = Fields;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a config mapping")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut out = Fields::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == "backends" {
                out = map.next_value_seed(Backends { kinds: self.kinds, cursor: self.cursor })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(out)
    }
}

struct Backends<'a> {
    kinds: &'a BTreeMap<&'a str, Kind>,
    cursor: &'a RefCell<Cursor>,
}

impl<'de> DeserializeSeed<'de> for Backends<'_> {
    type Value = Fields;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Fields, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Backends<'_> {
    type Value = Fields;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of backend name to backend")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        let mut out = Fields::new();
        while let Some(name) = map.next_key::<String>()? {
            *self.cursor.borrow_mut() = Cursor { backend: Some(name.clone()), field: None };
            match self.kinds.get(name.as_str()) {
                Some(&kind) => {
                    let fields = map.next_value_seed(Backend { kind, cursor: self.cursor })?;
                    out.insert(name, fields);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        *self.cursor.borrow_mut() = Cursor::default();
        Ok(out)
    }
}

/// One backend, read as its kind's struct straight from the live map.
struct Backend<'a> {
    kind: Kind,
    cursor: &'a RefCell<Cursor>,
}

impl<'de> DeserializeSeed<'de> for Backend<'_> {
    type Value = RawBackendFields;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<RawBackendFields, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Backend<'_> {
    type Value = RawBackendFields;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a backend mapping")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawBackendFields, A::Error> {
        // The derived visitors pull keys and values through `WithoutKind`, so
        // values are still read by serde-saphyr itself and keep their spans.
        let d = de::value::MapAccessDeserializer::new(WithoutKind { map, cursor: self.cursor });
        Ok(match self.kind {
            Kind::V2Http => RawBackendFields::V2Http(Box::new(RawV2HttpBackend::deserialize(d)?)),
            Kind::V2Grpc => RawBackendFields::V2Grpc(Box::new(RawV2GrpcBackend::deserialize(d)?)),
            Kind::TfServing => RawBackendFields::TfServing(Box::new(RawTfServingBackend::deserialize(d)?)),
            Kind::Onnx => RawBackendFields::Onnx(Box::new(RawOnnxBackend::deserialize(d)?)),
        })
    }
}

/// A backend's map minus its `kind` entry (read by the first pass), noting
/// each key in the cursor.
struct WithoutKind<'a, A> {
    map: A,
    cursor: &'a RefCell<Cursor>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for WithoutKind<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        loop {
            let Some(key) = self.map.next_key::<String>()? else {
                // A missing field is reported after the last key: it belongs to the backend.
                self.cursor.borrow_mut().field = None;
                return Ok(None);
            };
            if key == "kind" {
                self.map.next_value::<IgnoredAny>()?;
                continue;
            }
            self.cursor.borrow_mut().field = Some(key.clone());
            return seed.deserialize(key.into_deserializer()).map(Some);
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.map.size_hint().map(|n| n.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::{read, RawConfig};

    fn fields<'a>(raw: &'a RawConfig, name: &str) -> &'a RawBackendFields {
        raw.backends[name].value.fields.as_ref().expect("known kind")
    }

    fn at<T>(s: &Spanned<T>) -> (u64, u64) {
        (s.referenced.line(), s.referenced.column())
    }

    /// What `#[serde(tag = "kind")]` loses: every field of every kind keeps
    /// its line:column, whichever key comes first.
    #[test]
    fn spans_survive_for_every_kind_in_any_key_order() {
        let raw = read(
            "backends:\n  h:\n    kind: v2-http\n    endpoints: ['http://h:1']\n    forward_headers: {deny: [cookie]}\n  g:\n    max_message_bytes: 1024\n    endpoints: ['h:1']\n    kind: v2-grpc\n  o: {repository: models, kind: onnx, poll_interval: 1s}\n",
        )
        .unwrap();
        let RawBackendFields::V2Http(h) = fields(&raw, "h") else { panic!("h is v2-http") };
        assert_eq!(at(&h.endpoints[0]), (4, 17));
        assert_eq!(at(&h.forward_headers.as_ref().unwrap().value.deny[0]), (5, 30));
        let RawBackendFields::V2Grpc(g) = fields(&raw, "g") else { panic!("g is v2-grpc") };
        assert_eq!(at(g.max_message_bytes.as_ref().unwrap()), (7, 24));
        assert_eq!(at(&g.endpoints[0]), (8, 17));
        let RawBackendFields::Onnx(o) = fields(&raw, "o") else { panic!("o is onnx") };
        assert_eq!(at(o.repository.as_ref().unwrap()), (10, 19));
        assert_eq!(at(o.poll_interval.as_ref().unwrap()), (10, 54));
        assert_eq!(at(&raw.backends["o"].value.kind), (10, 33));
    }

    #[test]
    fn an_unknown_kind_is_left_to_validation() {
        let raw = read("backends:\n  b:\n    kind: grpc9\n    whatever: 1\n").unwrap();
        assert!(raw.backends["b"].value.fields.is_none());
    }

    #[test]
    fn merge_keys_and_aliases_are_read_like_any_other_field() {
        let raw = read(
            "backends:\n  a: &http\n    kind: v2-http\n    endpoints: ['http://h:1']\n  b:\n    <<: *http\n    timeout: 2s\n",
        )
        .unwrap();
        let RawBackendFields::V2Http(b) = fields(&raw, "b") else { panic!("b is v2-http") };
        assert_eq!(b.endpoints[0].value, "http://h:1");
        assert_eq!(at(b.timeout.as_ref().unwrap()), (7, 14));
    }

    #[test]
    fn errors_name_the_field_being_read() {
        for (yaml, path) in [
            ("backends:\n  b: {kind: onnx, warmup: x}\n", "backends.b.warmup"),
            ("backends:\n  b: {kind: onnx, version_policy: {latest: x}}\n", "backends.b.version_policy"),
            ("backends:\n  b: {kind: v2-grpc, forward_headers: {allow: a}}\n", "backends.b.forward_headers"),
        ] {
            let e = read(yaml).expect_err(yaml);
            assert_eq!((e.path.as_str(), e.line), (path, 2), "{yaml}: {e}");
        }
    }
}
