//! Triton's model configuration, statistics and repository API for models
//! served by a backend that owns them (the embedded runtime), shared by the
//! HTTP and gRPC listeners: which backend answers, and the answer rendered as
//! Triton's HTTP JSON or its gRPC messages (`inference.ModelConfig`,
//! `inference.ModelStatistics`), field for field alike.

use std::sync::Arc;

use http::HeaderMap;
use serde_json::{json, Map, Value};
use switchyard_config::{BatchingConfig, VersionPolicy};
use switchyard_runtime::backend::triton::{IndexEntry, ModelDescription, StatDuration, TritonModels, VersionStats};
use switchyard_runtime::codec::grpc::pb;
use switchyard_runtime::tensor::TensorSpec;

use crate::auth::{Action, Principal};
use crate::error::{Error, ErrorKind};
use crate::pipeline;
use crate::routing::{RoutingTable, Selection};

/// What a request about one model resolves to.
pub enum Owner<'t> {
    /// A backend that owns the model answers itself.
    Embedded(Selection<'t>, &'t dyn TritonModels),
    /// A remote backend: its own answer is relayed (or the request passed through).
    Remote(Selection<'t>),
}

/// The variant (and its backend) that owns `model` for this client.
pub fn owner<'t>(
    table: &'t RoutingTable,
    headers: &HeaderMap,
    model: &str,
    version: Option<&str>,
    principal: Option<&Principal>,
    action: Action,
) -> Result<Owner<'t>, Error> {
    // Authorization before routing: a model the principal may not touch is not disclosed.
    pipeline::authorize(principal, model, version, action)?;
    let sel = pipeline::select(table, model, version, headers, principal)?;
    Ok(match sel.variant.backend.triton() {
        Some(t) => Owner::Embedded(sel, t),
        None => Owner::Remote(sel),
    })
}

/// Every embedded repository behind the routes (each once), for requests that name no model.
pub fn repositories(table: &RoutingTable) -> Vec<&dyn TritonModels> {
    let mut found: Vec<&dyn TritonModels> = Vec::new();
    for v in table.all_routes().flat_map(|r| r.variants.iter()) {
        if let Some(t) = v.backend.triton() {
            if !found.iter().any(|f| std::ptr::addr_eq(*f, t)) {
                found.push(t);
            }
        }
    }
    found
}

/// The model's configuration as Triton's `ModelConfig`, under the client's model name.
pub fn config(model: &str, d: &ModelDescription, batching: Option<&BatchingConfig>) -> pb::ModelConfig {
    let max_batch = batching.map_or(0, |b| b.max_batch_size.get());
    // With batching, Triton's dims leave out the batch dimension.
    let dims = |s: &TensorSpec| -> Vec<i64> {
        if max_batch > 0 && !s.shape.is_empty() {
            s.shape[1..].to_vec()
        } else {
            s.shape.clone()
        }
    };
    let policy = match &d.version_policy {
        VersionPolicy::All => pb::model_version_policy::PolicyChoice::All(pb::model_version_policy::All {}),
        VersionPolicy::Latest(n) => pb::model_version_policy::PolicyChoice::Latest(pb::model_version_policy::Latest {
            num_versions: n.get().min(u32::MAX as usize) as u32,
        }),
        VersionPolicy::Specific(v) => {
            pb::model_version_policy::PolicyChoice::Specific(pb::model_version_policy::Specific {
                versions: v.iter().map(|v| *v as i64).collect(),
            })
        }
    };
    pb::ModelConfig {
        name: model.to_owned(),
        platform: d.platform.to_owned(),
        backend: d.backend.to_owned(),
        version_policy: Some(pb::ModelVersionPolicy { policy_choice: Some(policy) }),
        max_batch_size: max_batch.min(i32::MAX as usize) as i32,
        input: d
            .inputs
            .iter()
            .map(|i| pb::ModelInput { name: i.name.clone(), data_type: type_of(i.datatype) as i32, dims: dims(i) })
            .collect(),
        output: d
            .outputs
            .iter()
            .map(|o| pb::ModelOutput { name: o.name.clone(), data_type: type_of(o.datatype) as i32, dims: dims(o) })
            .collect(),
        instance_group: vec![pb::ModelInstanceGroup {
            name: model.to_owned(),
            count: d.instances.min(i32::MAX as usize) as i32,
            gpus: d.gpu.map(|g| vec![g as i32]).unwrap_or_default(),
            kind: if d.gpu.is_some() {
                pb::model_instance_group::Kind::Gpu
            } else {
                pb::model_instance_group::Kind::Cpu
            } as i32,
        }],
        // Samples are whole V2 requests (their inputs in the file), so only name and count are told.
        model_warmup: d
            .warmup_samples
            .iter()
            .map(|f| pb::ModelWarmup { name: f.clone(), batch_size: 0, count: d.warmup_count })
            .collect(),
        dynamic_batching: batching.map(|b| pb::ModelDynamicBatching {
            preferred_batch_size: b.preferred_batch_sizes.iter().map(|s| *s as i32).collect(),
            max_queue_delay_microseconds: b.max_queue_delay.as_micros() as u64,
            priority_levels: b.priority_levels.get() as u64,
            default_priority_level: b.default_priority as u64,
            default_queue_policy: Some(pb::ModelQueuePolicy {
                default_timeout_microseconds: b.default_timeout.map_or(0, |t| t.as_micros() as u64),
                max_queue_size: b.max_queue_size.min(u32::MAX as usize) as u32,
            }),
        }),
    }
}

/// Triton's `TYPE_*` for a V2 datatype name.
fn type_of(datatype: &str) -> pb::DataType {
    use pb::DataType as T;
    match datatype {
        "BOOL" => T::TypeBool,
        "UINT8" => T::TypeUint8,
        "UINT16" => T::TypeUint16,
        "UINT32" => T::TypeUint32,
        "UINT64" => T::TypeUint64,
        "INT8" => T::TypeInt8,
        "INT16" => T::TypeInt16,
        "INT32" => T::TypeInt32,
        "INT64" => T::TypeInt64,
        "FP16" => T::TypeFp16,
        "FP32" => T::TypeFp32,
        "FP64" => T::TypeFp64,
        "BYTES" => T::TypeString,
        "BF16" => T::TypeBf16,
        _ => T::TypeInvalid,
    }
}

/// `ModelConfig` as Triton's HTTP JSON: proto field names, enums by name, 64-bit integers as numbers.
pub fn config_json(c: &pb::ModelConfig) -> Value {
    let dt = |t: i32| pb::DataType::try_from(t).unwrap_or(pb::DataType::TypeInvalid).as_str_name();
    let policy = match c.version_policy.as_ref().and_then(|p| p.policy_choice.as_ref()) {
        Some(pb::model_version_policy::PolicyChoice::Latest(l)) => json!({"latest": {"num_versions": l.num_versions}}),
        Some(pb::model_version_policy::PolicyChoice::Specific(s)) => json!({"specific": {"versions": s.versions}}),
        _ => json!({"all": {}}),
    };
    let mut out = json!({
        "name": c.name,
        "platform": c.platform,
        "backend": c.backend,
        "version_policy": policy,
        "max_batch_size": c.max_batch_size,
        "input": c.input.iter().map(|i| json!({
            "name": i.name, "data_type": dt(i.data_type), "format": "FORMAT_NONE", "dims": i.dims,
            "is_shape_tensor": false, "allow_ragged_batch": false, "optional": false,
        })).collect::<Vec<_>>(),
        "output": c.output.iter().map(|o| json!({
            "name": o.name, "data_type": dt(o.data_type), "dims": o.dims, "label_filename": "",
            "is_shape_tensor": false,
        })).collect::<Vec<_>>(),
        "instance_group": c.instance_group.iter().map(|g| json!({
            "name": g.name,
            "kind": pb::model_instance_group::Kind::try_from(g.kind).unwrap_or_default().as_str_name(),
            "count": g.count, "gpus": g.gpus,
        })).collect::<Vec<_>>(),
        "default_model_filename": "model.onnx",
        "model_warmup": c.model_warmup.iter().map(|w| json!({
            "name": w.name, "batch_size": w.batch_size, "count": w.count, "inputs": {},
        })).collect::<Vec<_>>(),
    });
    if let (Some(b), Some(obj)) = (&c.dynamic_batching, out.as_object_mut()) {
        let q = b.default_queue_policy.unwrap_or_default();
        obj.insert(
            "dynamic_batching".into(),
            json!({
                "preferred_batch_size": b.preferred_batch_size,
                "max_queue_delay_microseconds": b.max_queue_delay_microseconds,
                "preserve_ordering": false,
                "priority_levels": b.priority_levels,
                "default_priority_level": b.default_priority_level,
                "default_queue_policy": {
                    "timeout_action": "REJECT",
                    "default_timeout_microseconds": q.default_timeout_microseconds,
                    "allow_timeout_override": true,
                    "max_queue_size": q.max_queue_size,
                },
            }),
        );
    }
    out
}

/// One version's statistics as Triton's `ModelStatistics`, under the client's model name.
pub fn statistics(model: &str, s: &VersionStats) -> pb::ModelStatistics {
    let d = |d: StatDuration| Some(pb::StatisticDuration { count: d.count, ns: d.ns });
    pb::ModelStatistics {
        name: model.to_owned(),
        version: s.version.clone(),
        last_inference: s.last_inference_ms,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: Some(pb::InferStatistics {
            success: d(s.success),
            fail: d(s.fail),
            queue: d(s.queue),
            compute_input: d(s.compute_input),
            compute_infer: d(s.compute_infer),
            compute_output: d(s.compute_output),
            // The response cache sits in front of the backend and keeps its own metrics.
            cache_hit: d(StatDuration::default()),
            cache_miss: d(StatDuration::default()),
        }),
        batch_stats: s
            .batches
            .iter()
            .map(|(size, b)| pb::InferBatchStatistics {
                batch_size: *size,
                compute_input: d(b.compute_input),
                compute_infer: d(b.compute_infer),
                compute_output: d(b.compute_output),
            })
            .collect(),
    }
}

/// `ModelStatistics` as Triton's HTTP JSON.
pub fn statistics_json(s: &pb::ModelStatistics) -> Value {
    let d = |d: &Option<pb::StatisticDuration>| {
        let d = d.unwrap_or_default();
        json!({"count": d.count, "ns": d.ns})
    };
    let i = s.inference_stats.unwrap_or_default();
    json!({
        "name": s.name,
        "version": s.version,
        "last_inference": s.last_inference,
        "inference_count": s.inference_count,
        "execution_count": s.execution_count,
        "inference_stats": {
            "success": d(&i.success), "fail": d(&i.fail), "queue": d(&i.queue),
            "compute_input": d(&i.compute_input), "compute_infer": d(&i.compute_infer),
            "compute_output": d(&i.compute_output), "cache_hit": d(&i.cache_hit), "cache_miss": d(&i.cache_miss),
        },
        "batch_stats": s.batch_stats.iter().map(|b| json!({
            "batch_size": b.batch_size,
            "compute_input": d(&b.compute_input),
            "compute_infer": d(&b.compute_infer),
            "compute_output": d(&b.compute_output),
        })).collect::<Vec<_>>(),
        "memory_usage": [],
    })
}

/// Statistics of the routes' models served by embedded repositories, under
/// the routes' names: every loaded version of the backend's model (a
/// variant's pinned version narrows routing, not the statistics), or the
/// version the client names. `None` for a model: every route (Triton: every model).
pub fn statistics_of(
    table: &RoutingTable,
    headers: &HeaderMap,
    model: Option<&str>,
    version: Option<&str>,
    principal: Option<&Principal>,
) -> Result<Vec<pb::ModelStatistics>, Error> {
    if let Some(model) = model {
        return match owner(table, headers, model, version, principal, Action::Metadata)? {
            Owner::Embedded(sel, t) => {
                let stats = t.statistics(Some(&sel.target.name), version)?;
                Ok(stats.iter().map(|s| statistics(model, s)).collect())
            }
            Owner::Remote(sel) => Err(Error::new(
                ErrorKind::NotImplemented,
                format!("statistics of model '{model}' come from its backend `{}`", sel.variant.backend_name),
            )),
        };
    }
    let mut out = Vec::new();
    let mut names: Vec<&str> = table.routes.keys().map(|k| &**k).collect();
    names.sort_unstable();
    // Every model: those the principal may read (Triton lists what it serves; a caller sees its share).
    for name in names.into_iter().filter(|n| principal.is_none_or(|p| p.may(n, None, Action::Metadata))) {
        let Ok(route) = table.route(name) else { continue };
        // Each embedded (backend, model) behind the route once, whichever variants share it.
        let mut seen: Vec<(&dyn TritonModels, Arc<str>)> = Vec::new();
        for (i, v) in route.variants.iter().enumerate() {
            let Some(t) = v.backend.triton() else { continue };
            let target = route.target_of(i, name, None).name;
            if seen.iter().any(|(b, m)| std::ptr::addr_eq(*b, t) && *m == target) {
                continue;
            }
            if let Ok(stats) = t.statistics(Some(&target), None) {
                out.extend(stats.iter().map(|s| statistics(name, s)));
            }
            seen.push((t, target));
        }
    }
    Ok(out)
}

/// The repository index as Triton's HTTP JSON array.
pub fn index_json(entries: &[IndexEntry], ready_only: bool) -> Value {
    Value::Array(
        entries
            .iter()
            .filter(|e| !ready_only || e.state == "READY")
            .map(|e| {
                let mut m = Map::new();
                m.insert("name".into(), e.name.clone().into());
                if let Some(v) = &e.version {
                    m.insert("version".into(), v.clone().into());
                }
                if !e.state.is_empty() {
                    m.insert("state".into(), e.state.into());
                }
                if !e.reason.is_empty() {
                    m.insert("reason".into(), e.reason.clone().into());
                }
                Value::Object(m)
            })
            .collect(),
    )
}

/// The index of every embedded repository behind the routes: the models the
/// principal may read the metadata of.
pub fn index(table: &RoutingTable, principal: Option<&Principal>) -> Vec<IndexEntry> {
    repositories(table)
        .into_iter()
        .flat_map(|r| r.index())
        .filter(|e| principal.is_none_or(|p| p.may(&e.name, None, Action::Metadata)))
        .collect()
}

/// Load parameters the embedded runtime cannot honour are refused, not ignored:
/// a `config` override or `file:` contents would change what is served.
pub fn check_control_parameters<'a>(mut names: impl Iterator<Item = &'a str>, load: bool) -> Result<(), Error> {
    match names.find(|n| *n == "config" || n.starts_with("file:")) {
        Some(n) if load => Err(Error::bad_field(
            n,
            format!(
                "load parameter '{n}' is not supported: the embedded runtime loads models from its repository \
                 directory as they are there"
            ),
        )),
        _ => Ok(()),
    }
}

/// Server metadata: Switchyard's (`server.name`, `server.version`, its
/// extensions), or the remote server's own when `server.metadata_from` names
/// a backend the routes use and it answers (else Switchyard's, logged).
pub async fn server_metadata(table: &RoutingTable) -> (String, String, Vec<String>) {
    let own = || {
        let e = extensions(table).into_iter().map(String::from).collect();
        (table.server.name.to_string(), table.server.version.to_string(), e)
    };
    let Some(from) = &table.server.metadata_from else { return own() };
    let Some(backend) =
        table.all_routes().flat_map(|r| r.variants.iter()).find(|v| &v.backend_name == from).map(|v| &v.backend)
    else {
        return own();
    };
    match backend.server_metadata().await {
        Some(Ok(v)) => {
            let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
            let ext = v
                .get("extensions")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|e| e.as_str().map(String::from)).collect())
                .unwrap_or_default();
            (s("name"), s("version"), ext)
        }
        Some(Err(e)) => {
            tracing::warn!(backend = %from, error = %e, "server metadata: the backend did not answer; answering Switchyard's own");
            own()
        }
        None => own(),
    }
}

/// The protocol extensions this server offers, as Triton names them in server metadata.
pub fn extensions(table: &RoutingTable) -> Vec<&'static str> {
    let mut e = vec!["binary_tensor_data", "model_configuration", "model_repository", "statistics"];
    if table.server.system_shared_memory {
        e.push("system_shared_memory");
    }
    e
}
