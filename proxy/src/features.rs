//! Online-feature enrichment (a variant's `features`): reads each row's entity
//! key from an input tensor or a request parameter, fetches the declared
//! features from a Feast feature server (`POST /get-online-features`), and
//! adds them to the request as one `[rows, features]` tensor in the declared
//! order, before the cache, the batch queue and the backend see it. Rows
//! fetched within `cache_ttl` are reused from an in-process cache.
//!
//! **Architecture Invariant:** a fetch never outlives its `timeout`, and an
//! entity the store lacks is either the declared default or a 400 naming the
//! entity: never a row of zeros the model did not ask for.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus::IntCounter;
use serde_json::Value;
use switchyard_config::{EntityKeys, FeatureDatatype, FeaturesConfig};
use switchyard_runtime::tensor::{bytes_elements, DataType, Tensor};
use switchyard_runtime::InferRequest;

use crate::error::{BackendFailure, Error, ErrorKind};

/// Most rows one request may ask features for.
pub const MAX_ROWS: usize = 4096;

/// One row's entity key as the feature server takes it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EntityKey {
    Int(i64),
    Str(String),
}

impl EntityKey {
    fn json(&self) -> Value {
        match self {
            EntityKey::Int(i) => Value::from(*i),
            EntityKey::Str(s) => Value::from(s.as_str()),
        }
    }
}

impl std::fmt::Display for EntityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EntityKey::Int(i) => write!(f, "{i}"),
            EntityKey::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// A cached row: the values in declared order, and when they were fetched.
type Row = (Instant, Arc<[f64]>);

/// One entity's answer: its whole row, or (some feature absent) what was there.
type Fetched = Result<Arc<[f64]>, Vec<Option<f64>>>;

static LOOKUPS: std::sync::LazyLock<prometheus::IntCounterVec> = std::sync::LazyLock::new(|| {
    prometheus::register_int_counter_vec!(
        "switchyard_feature_lookups_total",
        "Online-feature rows by how they were found: cache_hit, fetched, defaulted, missing (refused), error (per failed fetch)",
        &["model", "variant", "result"]
    )
    .expect("registered once")
});

/// Lookup counters of one variant, resolved when the routing snapshot is built.
pub struct FeatureMetrics {
    cache_hits: IntCounter,
    fetched: IntCounter,
    defaulted: IntCounter,
    missing: IntCounter,
    errors: IntCounter,
}

impl FeatureMetrics {
    pub fn new(model: &str, variant: &str) -> FeatureMetrics {
        let c = |result: &str| LOOKUPS.with_label_values(&[model, variant, result]);
        FeatureMetrics {
            cache_hits: c("cache_hit"),
            fetched: c("fetched"),
            defaulted: c("defaulted"),
            missing: c("missing"),
            errors: c("error"),
        }
    }
}

/// One variant's feature enrichment.
pub struct Enricher {
    cfg: FeaturesConfig,
    endpoint: Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    /// The server's column name of each declared feature (`view__feature`, full names asked for).
    columns: Vec<String>,
    cache: Option<quick_cache::sync::Cache<EntityKey, Row>>,
    metrics: FeatureMetrics,
}

impl Enricher {
    pub fn new(cfg: FeaturesConfig, metrics: FeatureMetrics) -> Result<Enricher, String> {
        let endpoint: Uri = format!("{}/get-online-features", cfg.feast_url)
            .parse()
            .map_err(|e| format!("feature server URL `{}`: {e}", cfg.feast_url))?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(cfg.timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(32).build(connector);
        let columns = cfg.features.iter().map(|f| f.replacen(':', "__", 1)).collect();
        let cache = (!cfg.cache_ttl.is_zero()).then(|| quick_cache::sync::Cache::new(cfg.cache_max_entries.get()));
        Ok(Enricher { cfg, endpoint, client, columns, cache, metrics })
    }

    /// Adds the features tensor to `req` (and drops the entity tensor unless kept).
    pub async fn enrich(&self, req: &mut InferRequest) -> Result<(), Error> {
        if req.inputs.iter().any(|t| t.name == *self.cfg.input) {
            return Err(Error::bad_field(
                self.cfg.input.to_string(),
                format!("input `{}` is filled from the feature store: do not send it", self.cfg.input),
            ));
        }
        let keys = self.keys(req)?;
        let rows = self.rows(&keys).await?;
        let width = self.cfg.features.len();
        let mut data = Vec::with_capacity(rows.len() * width * 8);
        for row in &rows {
            for v in row.iter() {
                match self.cfg.datatype {
                    FeatureDatatype::Fp32 => data.extend_from_slice(&(*v as f32).to_le_bytes()),
                    FeatureDatatype::Fp64 => data.extend_from_slice(&v.to_le_bytes()),
                    FeatureDatatype::Int64 => data.extend_from_slice(&(*v as i64).to_le_bytes()),
                }
            }
        }
        let dt = match self.cfg.datatype {
            FeatureDatatype::Fp32 => DataType::Fp32,
            FeatureDatatype::Fp64 => DataType::Fp64,
            FeatureDatatype::Int64 => DataType::Int64,
        };
        if let EntityKeys::Input { name, keep: false } = &self.cfg.keys {
            req.inputs.retain(|t| t.name != **name);
        }
        req.inputs.push(Tensor::new(
            self.cfg.input.to_string(),
            dt,
            vec![rows.len() as i64, width as i64],
            Bytes::from(data),
        ));
        Ok(())
    }

    /// The entity key of each row.
    fn keys(&self, req: &InferRequest) -> Result<Vec<EntityKey>, Error> {
        match &self.cfg.keys {
            EntityKeys::Parameter(p) => {
                let key = match req.parameters.get(&**p) {
                    Some(Value::Number(n)) if n.is_i64() => EntityKey::Int(n.as_i64().expect("is_i64")),
                    Some(Value::String(s)) => EntityKey::Str(s.clone()),
                    Some(other) => {
                        return Err(Error::bad_field(
                            p.to_string(),
                            format!("parameter `{p}` must be an integer or a string entity key, got {other}"),
                        ))
                    }
                    None => {
                        return Err(Error::bad_field(
                            p.to_string(),
                            format!("parameter `{p}` (the `{}` entity key) is missing", self.cfg.entity),
                        ))
                    }
                };
                Ok(vec![key])
            }
            EntityKeys::Input { name, .. } => {
                let t = req.inputs.iter().find(|t| t.name == **name).ok_or_else(|| {
                    Error::bad_field(
                        name.to_string(),
                        format!("input `{name}` (the `{}` entity keys) is missing", self.cfg.entity),
                    )
                })?;
                if t.in_shared_memory() {
                    return Err(Error::bad_field(
                        name.to_string(),
                        format!("entity keys `{name}` cannot be read from shared memory"),
                    ));
                }
                let rows = match t.shape.as_slice() {
                    [n] | [n, 1] => *n as usize,
                    _ => {
                        return Err(Error::bad_field(
                            name.to_string(),
                            format!("entity keys `{name}` must have shape [N] or [N,1], got {:?}", t.shape),
                        ))
                    }
                };
                if rows > MAX_ROWS {
                    return Err(Error::bad_field(
                        name.to_string(),
                        format!("at most {MAX_ROWS} entity keys per request"),
                    ));
                }
                let keys = int_keys(t)
                    .or_else(|| {
                        (t.datatype == DataType::Bytes).then(|| {
                            bytes_elements(&t.data)
                                .map(|e| {
                                    e.ok().and_then(|b| std::str::from_utf8(b).ok()).map(|s| EntityKey::Str(s.to_owned()))
                                })
                                .collect::<Option<Vec<_>>>()
                        })?
                    })
                    .ok_or_else(|| {
                        Error::bad_field(
                            name.to_string(),
                            format!(
                                "entity keys `{name}` must be integers (INT8..INT64, UINT8..UINT32) or UTF-8 BYTES, got {}",
                                t.datatype.as_str()
                            ),
                        )
                    })?;
                if keys.len() != rows {
                    return Err(Error::bad_field(
                        name.to_string(),
                        format!("entity keys `{name}`: {} keys for {rows} rows", keys.len()),
                    ));
                }
                Ok(keys)
            }
        }
    }

    /// Each key's row: from the cache when fresh, else from the feature server in one call.
    async fn rows(&self, keys: &[EntityKey]) -> Result<Vec<Arc<[f64]>>, Error> {
        let mut out: Vec<Option<Arc<[f64]>>> = vec![None; keys.len()];
        if let Some(cache) = &self.cache {
            for (i, k) in keys.iter().enumerate() {
                if let Some((at, row)) = cache.get(k) {
                    if at.elapsed() < self.cfg.cache_ttl {
                        out[i] = Some(row);
                        self.metrics.cache_hits.inc();
                    }
                }
            }
        }
        // Each distinct key once, however many rows share it.
        let mut wanted: Vec<&EntityKey> = Vec::new();
        let mut index: std::collections::HashMap<&EntityKey, usize> = std::collections::HashMap::new();
        for (k, r) in keys.iter().zip(&out) {
            if r.is_none() {
                index.entry(k).or_insert_with(|| {
                    wanted.push(k);
                    wanted.len() - 1
                });
            }
        }
        if !wanted.is_empty() {
            let fetched = self.fetch(&wanted).await?;
            for (i, k) in keys.iter().enumerate() {
                if out[i].is_some() {
                    continue;
                }
                let j = index[k];
                out[i] = Some(match &fetched[j] {
                    Ok(row) => {
                        self.metrics.fetched.inc();
                        if let Some(cache) = &self.cache {
                            cache.insert(k.clone(), (Instant::now(), row.clone()));
                        }
                        row.clone()
                    }
                    Err(partial) => match &self.cfg.defaults {
                        // What the store has, the declared default for what it lacks.
                        Some(d) => {
                            self.metrics.defaulted.inc();
                            partial.iter().zip(d).map(|(got, default)| got.unwrap_or(*default)).collect()
                        }
                        None => {
                            self.metrics.missing.inc();
                            let names: Vec<&str> = self
                                .cfg
                                .features
                                .iter()
                                .zip(partial.iter())
                                .filter(|(_, got)| got.is_none())
                                .map(|(f, _)| &**f)
                                .collect();
                            return Err(Error::bad_field(
                                self.key_field(),
                                format!(
                                    "entity {}={k} has no value in the feature store for {} (and the variant declares no defaults)",
                                    self.cfg.entity,
                                    names.join(", ")
                                ),
                            ));
                        }
                    },
                });
            }
        }
        Ok(out.into_iter().map(|r| r.expect("every row filled")).collect())
    }

    fn key_field(&self) -> String {
        match &self.cfg.keys {
            EntityKeys::Input { name, .. } => name.to_string(),
            EntityKeys::Parameter(p) => p.to_string(),
        }
    }

    /// One `get-online-features` call for `keys`: per key, its full row or
    /// (when any feature is absent) what was present and what was not.
    async fn fetch(&self, keys: &[&EntityKey]) -> Result<Vec<Fetched>, Error> {
        let body = serde_json::json!({
            "features": self.cfg.features.iter().map(|f| &**f).collect::<Vec<_>>(),
            "entities": { &*self.cfg.entity: keys.iter().map(|k| k.json()).collect::<Vec<_>>() },
            "full_feature_names": true,
        });
        let req = Request::builder()
            .method(Method::POST)
            .uri(self.endpoint.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| Error::internal(format!("feature store request: {e}")))?;
        let started = Instant::now();
        let call = async {
            let resp = self.client.request(req).await.map_err(|e| {
                store_error(BackendFailure::Unreachable, format!("{} is unreachable: {e}", self.cfg.feast_url))
            })?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| store_error(BackendFailure::Unreachable, format!("reading its answer: {e}")))?
                .to_bytes();
            Ok::<_, Error>((status, bytes))
        };
        let (status, bytes) = match tokio::time::timeout(self.cfg.timeout, call).await {
            Ok(r) => r.inspect_err(|_| self.metrics.errors.inc())?,
            Err(_) => {
                self.metrics.errors.inc();
                return Err(store_error(
                    BackendFailure::Timeout,
                    format!("no answer within {:?} (features.timeout)", self.cfg.timeout),
                ));
            }
        };
        if status != StatusCode::OK {
            self.metrics.errors.inc();
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
            return Err(store_error(BackendFailure::Failed, format!("answered {status}: {text}")));
        }
        tracing::trace!(rows = keys.len(), took = ?started.elapsed(), "features fetched");
        parse_answer(&bytes, &self.columns, keys.len()).map_err(|m| {
            self.metrics.errors.inc();
            store_error(BackendFailure::Invalid, m)
        })
    }
}

fn store_error(kind: BackendFailure, message: String) -> Error {
    Error::new(ErrorKind::Backend(kind), format!("feature store: {message}"))
}

/// Integer keys of an integer tensor, `None` for other datatypes.
fn int_keys(t: &Tensor) -> Option<Vec<EntityKey>> {
    let d = &t.data;
    let keys: Vec<i64> = match t.datatype {
        DataType::Int64 => d.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8"))).collect(),
        DataType::Int32 => d.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("4")).into()).collect(),
        DataType::Int16 => d.chunks_exact(2).map(|c| i16::from_le_bytes(c.try_into().expect("2")).into()).collect(),
        DataType::Int8 => d.iter().map(|b| (*b as i8).into()).collect(),
        DataType::Uint32 => d.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4")).into()).collect(),
        DataType::Uint16 => d.chunks_exact(2).map(|c| u16::from_le_bytes(c.try_into().expect("2")).into()).collect(),
        DataType::Uint8 => d.iter().map(|b| (*b).into()).collect(),
        _ => return None,
    };
    Some(keys.into_iter().map(EntityKey::Int).collect())
}

/// Reads a `get-online-features` answer: `metadata.feature_names` names the
/// columns of `results` (each with `values` and `statuses`, one per entity).
/// A value is absent when it is null or its status is not `PRESENT`.
fn parse_answer(bytes: &[u8], columns: &[String], rows: usize) -> Result<Vec<Fetched>, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("its answer is not JSON: {e}"))?;
    let names = v["metadata"]["feature_names"].as_array().ok_or("its answer has no metadata.feature_names")?;
    let results = v["results"].as_array().ok_or("its answer has no results")?;
    let mut table: Vec<Vec<Option<f64>>> = vec![Vec::with_capacity(columns.len()); rows];
    for col in columns {
        let i = names
            .iter()
            .position(|n| n.as_str() == Some(col.as_str()))
            .ok_or_else(|| format!("its answer has no column `{col}`"))?;
        let r = results.get(i).ok_or_else(|| format!("its answer has no results for `{col}`"))?;
        let values = r["values"].as_array().ok_or_else(|| format!("`{col}` has no values"))?;
        let statuses = r["statuses"].as_array();
        if values.len() != rows {
            return Err(format!("`{col}` has {} values for {rows} entities", values.len()));
        }
        for (e, val) in values.iter().enumerate() {
            let present = statuses.and_then(|s| s.get(e)).and_then(Value::as_str).is_none_or(|s| s == "PRESENT");
            let num = match val {
                Value::Number(n) => n.as_f64(),
                Value::Bool(b) => Some(f64::from(u8::from(*b))),
                Value::Null => None,
                other => return Err(format!("`{col}` holds a value that is not a number: {other}")),
            };
            table[e].push(num.filter(|_| present));
        }
    }
    Ok(table
        .into_iter()
        .map(|row| {
            if row.iter().all(Option::is_some) {
                Ok(row.into_iter().map(|v| v.expect("all present")).collect::<Arc<[f64]>>())
            } else {
                Err(row)
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = r#"{"results":[
        {"values":[1,2,1000],"statuses":["PRESENT","PRESENT","PRESENT"]},
        {"values":[-0.25,0.5,null],"statuses":["PRESENT","PRESENT","PRESENT"]},
        {"values":[3,6,null],"statuses":["PRESENT","PRESENT","NOT_FOUND"]}],
        "metadata":{"feature_names":["user_id","user_stats__f00","user_stats__trips"]}}"#;

    #[test]
    fn answers_are_read_in_declared_order() {
        let cols = vec!["user_stats__trips".to_owned(), "user_stats__f00".to_owned()];
        let rows = parse_answer(ANSWER.as_bytes(), &cols, 3).unwrap();
        assert_eq!(&*rows[0].as_ref().unwrap().clone(), &[3.0, -0.25]);
        assert_eq!(&*rows[1].as_ref().unwrap().clone(), &[6.0, 0.5]);
        let absent = rows[2].as_ref().unwrap_err();
        assert_eq!(absent, &vec![None, None]);
    }

    #[test]
    fn malformed_answers_are_named() {
        let cols = vec!["user_stats__nope".to_owned()];
        assert!(parse_answer(ANSWER.as_bytes(), &cols, 3).unwrap_err().contains("user_stats__nope"));
        let cols = vec!["user_stats__f00".to_owned()];
        assert!(parse_answer(ANSWER.as_bytes(), &cols, 2).unwrap_err().contains("3 values for 2"));
        assert!(parse_answer(b"[]", &cols, 1).is_err());
    }

    #[test]
    fn integer_keys_of_every_width() {
        let t = Tensor::new(
            "k",
            DataType::Int32,
            vec![2],
            Bytes::from([7i32.to_le_bytes(), (-1i32).to_le_bytes()].concat()),
        );
        assert_eq!(int_keys(&t).unwrap(), vec![EntityKey::Int(7), EntityKey::Int(-1)]);
        let t = Tensor::new("k", DataType::Fp32, vec![1], Bytes::from(1f32.to_le_bytes().to_vec()));
        assert!(int_keys(&t).is_none());
    }
}
