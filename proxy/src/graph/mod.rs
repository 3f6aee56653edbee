//! Inference graphs (`graphs:` in the config, docs/ensembles.md): a route
//! whose answer is computed by other routes. Steps run in order over a
//! working set of named tensors (the client's inputs first): a model step
//! feeds the previous step's outputs (or the tensors its `inputs` name) to
//! one route, a fan-out sends the same inputs to several routes at once and
//! combines one output of each, and a condition picks the route from a
//! tensor value or a request parameter. Every step is one trip through the
//! normal request lifecycle (`pipeline::infer`, over the in-memory
//! `exchange::StepExchange`), so routing, admission, cache, batching and
//! metrics apply per step; the graph's own exchange (the client's protocol)
//! decodes the request and encodes the answer.

mod combine;
mod exchange;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::HeaderMap;
use serde_json::{json, Value};
use switchyard_config::{CaseTest, CombineOp, Condition, ConditionSource, GraphConfig, StepConfig, StepKind};
use switchyard_runtime::tensor::bytes_elements;
use switchyard_runtime::{Backend, BackendError, DataType, InferRequest, InferResponse, ModelTarget, Tensor};

use crate::error::{BackendFailure, Error, ErrorKind};
use crate::metrics::Metrics;
use crate::outcome::{Executed, Outcome};
use crate::pipeline::{self, Call};
use crate::routing::{Composite, Route, RoutingTable, StepCaller};
use crate::sequence;
use combine::Vote;
use exchange::StepExchange;

/// The platform graphs report in V2 model metadata.
pub const PLATFORM: &str = "switchyard_graph";

/// One configured graph, bound to the routes of the snapshot it was built in.
pub struct Graph {
    cfg: GraphConfig,
    metrics: Metrics,
    /// Every route a step may call, for readiness and metadata.
    routes: HashMap<Arc<str>, Arc<Route>>,
}

impl Graph {
    /// `routes` must hold every route the graph refers to (validation made sure they exist).
    pub fn new(cfg: GraphConfig, metrics: Metrics, routes: HashMap<Arc<str>, Arc<Route>>) -> Graph {
        Graph { cfg, metrics, routes }
    }

    async fn execute(
        &self,
        table: &RoutingTable,
        mut metadata: HeaderMap,
        req: InferRequest,
        caller: StepCaller,
    ) -> Outcome {
        let t0 = Instant::now();
        // A forced variant names one of the graph's, never one of a step's routes.
        metadata.remove(&table.override_header);
        // A Triton sequence is one model's state, which no graph step holds.
        if sequence::params(&req)?.is_some() {
            return Err(Error::bad_field(
                sequence::SEQUENCE_ID,
                format!(
                    "graph `{}` keeps no sequence state: send a sequence's requests to the model itself",
                    self.cfg.name
                ),
            ));
        }
        let parameters = req.parameters.clone();
        let mut last: Vec<String> = req.inputs.iter().map(|t| t.name.clone()).collect();
        let mut work: Vec<Tensor> = req.inputs.clone();
        let run = Run { graph: self, table, metadata: &metadata, caller, parameters: &parameters, id: req.id.clone() };
        for step in &self.cfg.steps {
            match run.step(step, &work, &last, &req).await {
                Ok(outputs) => {
                    last = outputs.iter().map(|t| t.name.clone()).collect();
                    for t in outputs {
                        match work.iter_mut().find(|w| w.name == t.name) {
                            Some(w) => *w = t,
                            None => work.push(t),
                        }
                    }
                }
                Err(e) if step.optional && !matches!(e.kind, ErrorKind::ClientClosed | ErrorKind::DeadlineExceeded) => {
                    tracing::debug!(graph = %self.cfg.name, step = %step.name, error = %e, "optional step skipped");
                }
                Err(e) => return Err(e),
            }
        }
        let names: Vec<String> = match &self.cfg.outputs {
            Some(o) => o.clone(),
            None => last,
        };
        let mut outputs = Vec::with_capacity(names.len());
        for n in &names {
            let t = work.iter().find(|t| t.name == *n).ok_or_else(|| {
                Error::unavailable(format!(
                    "graph `{}`: no tensor `{n}` to answer with (the step that makes it was skipped)",
                    self.cfg.name
                ))
            })?;
            outputs.push(t.clone());
        }
        if !req.outputs.is_empty() {
            let mut chosen = Vec::with_capacity(req.outputs.len());
            for o in &req.outputs {
                let t = outputs.iter().find(|t| t.name == o.name).ok_or_else(|| {
                    Error::bad_field(
                        o.name.clone(),
                        format!(
                            "graph `{}` has no output `{}` (it answers {})",
                            self.cfg.name,
                            o.name,
                            names.join(", ")
                        ),
                    )
                })?;
                chosen.push(t.clone());
            }
            outputs = chosen;
        }
        let response = InferResponse { model_name: self.cfg.name.to_string(), outputs, ..InferResponse::default() };
        Ok(Executed::from_backend(response, t0.elapsed()))
    }

    fn route(&self, name: &str) -> Result<(&Route, usize), BackendError> {
        let r = self.routes.get(name).ok_or_else(|| BackendError::NotFound(format!("no route `{name}`")))?;
        Ok((r, r.variants.iter().position(|v| v.weight > 0.0).unwrap_or(0)))
    }

    async fn metadata_of(&self, name: &str) -> Result<Value, BackendError> {
        let (r, i) = self.route(name)?;
        let v = r.variants.get(i).ok_or_else(|| BackendError::NotFound(format!("route `{name}` has no variant")))?;
        v.backend.model_metadata(&r.target_of(i, name, None)).await
    }
}

impl Composite for Graph {
    fn run<'a>(
        &'a self,
        table: &'a RoutingTable,
        metadata: HeaderMap,
        req: InferRequest,
        caller: StepCaller,
    ) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>> {
        Box::pin(self.execute(table, metadata, req, caller))
    }
}

/// One request's walk through the graph.
struct Run<'a> {
    graph: &'a Graph,
    table: &'a RoutingTable,
    metadata: &'a HeaderMap,
    caller: StepCaller,
    parameters: &'a switchyard_runtime::tensor::Parameters,
    id: Option<String>,
}

impl Run<'_> {
    /// The tensors a step adds to the working set.
    async fn step(
        &self,
        step: &StepConfig,
        work: &[Tensor],
        last: &[String],
        req: &InferRequest,
    ) -> Result<Vec<Tensor>, Error> {
        let g = &self.graph.cfg.name;
        let inputs = inputs(g, step, work, last)?;
        match &step.kind {
            StepKind::Model(m) => Ok(renamed(step, self.call(step, m, inputs).await?)),
            StepKind::Condition(c) => {
                let m = choose(g, step, c, work, req)?;
                Ok(renamed(step, self.call(step, m, inputs).await?))
            }
            StepKind::FanOut { members, combine } => {
                let answers =
                    futures_util::future::join_all(members.iter().map(|mb| self.call(step, &mb.model, inputs.clone())))
                        .await;
                let mut votes = Vec::with_capacity(members.len());
                let mut failed = Vec::new();
                for (mb, a) in members.iter().zip(&answers) {
                    let e = match a {
                        Ok(resp) => match resp.outputs.iter().find(|t| t.name == combine.tensor) {
                            Some(t) => {
                                votes.push(Vote { tensor: t, weight: mb.weight });
                                continue;
                            }
                            None => Error::new(
                                ErrorKind::Backend(BackendFailure::Invalid),
                                format!(
                                    "graph `{g}` step `{}` (model `{}`): its answer has no `{}` to combine (it has {})",
                                    step.name,
                                    mb.model,
                                    combine.tensor,
                                    resp.outputs.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
                                ),
                            ),
                        },
                        Err(e) => e.clone(),
                    };
                    if !mb.optional {
                        return Err(e);
                    }
                    failed.push(e);
                }
                if votes.is_empty() {
                    let first = failed.first().map_or(ErrorKind::Internal, |e| e.kind.clone());
                    let why: Vec<String> = failed.iter().map(|e| e.message.clone()).collect();
                    return Err(Error::new(
                        first,
                        format!("graph `{g}` step `{}`: no member answered ({})", step.name, why.join("; ")),
                    ));
                }
                let t = combine::combine(combine.op, &combine.output, &votes).map_err(|why| {
                    Error::new(
                        ErrorKind::Backend(BackendFailure::Invalid),
                        format!(
                            "graph `{g}` step `{}`: cannot {} the members' `{}`: {why}",
                            step.name,
                            combine.op.as_str(),
                            combine.tensor
                        ),
                    )
                })?;
                Ok(vec![t])
            }
        }
    }

    /// One step's request through the whole request lifecycle of `model`'s route.
    async fn call(&self, step: &StepConfig, model: &str, inputs: Vec<Tensor>) -> Result<InferResponse, Error> {
        let mut x = StepExchange {
            metadata: self.metadata,
            request: Some(InferRequest {
                id: self.id.clone(),
                inputs,
                parameters: self.parameters.clone(),
                ..InferRequest::default()
            }),
        };
        // The graph is the unit the client was authorized and charged for: its
        // steps run on its authority, under no rate limit of their own.
        let call = Call {
            // A step is routed as the graph's client asked: its protocol, no path of its own.
            protocol: self.caller.protocol,
            path: None,
            model,
            version: None,
            variant: None,
            deadline: None,
            start: Instant::now(),
            priority: self.caller.priority,
            principal: None,
            limiter: None,
            client: self.caller.client,
            input_bytes: None,
        };
        let answer = Box::pin(pipeline::infer(self.table, &self.graph.metrics, &mut x, call)).await;
        answer.result.map_err(|e| blame(e, &self.graph.cfg.name, &step.name, model))
    }
}

/// A step's error, named after the graph, step and model; an HTTP backend's
/// own error body is not relayed (it would not name the step).
fn blame(e: Error, graph: &str, step: &str, model: &str) -> Error {
    let kind = match e.kind {
        ErrorKind::Backend(BackendFailure::Http { status, .. }) => {
            ErrorKind::Backend(BackendFailure::Http { status, reply: None })
        }
        k => k,
    };
    Error::new(kind, format!("graph `{graph}` step `{step}` (model `{model}`): {}", e.message))
}

/// The step's request tensors: those its `inputs` name, renamed, else the previous step's outputs.
fn inputs(graph: &str, step: &StepConfig, work: &[Tensor], last: &[String]) -> Result<Vec<Tensor>, Error> {
    let find = |name: &str| work.iter().find(|t| t.name == name);
    if step.inputs.is_empty() {
        return Ok(last.iter().filter_map(|n| find(n).cloned()).collect());
    }
    step.inputs
        .iter()
        .map(|(model_input, from)| {
            let mut t = find(from).cloned().ok_or_else(|| {
                Error::bad_field(
                    from.clone(),
                    format!(
                        "graph `{graph}` step `{}`: no tensor `{from}` for input `{model_input}` (there are: {})",
                        step.name,
                        work.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                )
            })?;
            t.name.clone_from(model_input);
            Ok(t)
        })
        .collect()
}

/// A model's answer as working tensors: outputs renamed as the step says.
fn renamed(step: &StepConfig, resp: InferResponse) -> Vec<Tensor> {
    resp.outputs
        .into_iter()
        .map(|mut t| {
            if let Some((_, to)) = step.outputs.iter().find(|(from, _)| *from == t.name) {
                t.name.clone_from(to);
            }
            t
        })
        .collect()
}

/// What a condition reads.
enum Seen {
    Number(f64),
    Text(String),
}

/// The route a condition step calls: the first case that holds, else its default.
fn choose<'c>(
    graph: &str,
    step: &StepConfig,
    c: &'c Condition,
    work: &[Tensor],
    req: &InferRequest,
) -> Result<&'c Arc<str>, Error> {
    let (what, field) = match &c.on {
        ConditionSource::Tensor(t) => (format!("tensor `{t}`"), t.clone()),
        ConditionSource::Parameter(p) => (format!("parameter `{p}`"), p.clone()),
    };
    let refuse = |why: String| Error::bad_field(field.clone(), format!("graph `{graph}` step `{}`: {why}", step.name));
    let seen = match &c.on {
        ConditionSource::Parameter(p) => req.parameters.get(p).map(|v| match v {
            Value::Number(n) => Seen::Number(n.as_f64().unwrap_or(f64::NAN)),
            Value::String(s) => Seen::Text(s.clone()),
            other => Seen::Text(other.to_string()),
        }),
        ConditionSource::Tensor(name) => match work.iter().find(|t| t.name == *name) {
            None => None,
            Some(t) if t.datatype == DataType::Bytes => {
                let els: Vec<&[u8]> = bytes_elements(&t.data)
                    .collect::<Result<_, _>>()
                    .map_err(|e| refuse(format!("{what} is malformed: {e}")))?;
                match els[..] {
                    [one] => Some(Seen::Text(String::from_utf8_lossy(one).into_owned())),
                    _ => return Err(refuse(format!("{what} holds {} values; a condition reads one", els.len()))),
                }
            }
            Some(t) => match combine::values(t).as_deref() {
                Some([one]) => Some(Seen::Number(*one)),
                Some(v) => return Err(refuse(format!("{what} holds {} values; a condition reads one", v.len()))),
                None => {
                    return Err(refuse(format!("{what} is {}, which a condition cannot read", t.datatype.as_str())))
                }
            },
        },
    };
    if let Some(s) = &seen {
        let number = match s {
            Seen::Number(n) => Some(*n),
            Seen::Text(t) => t.trim().parse::<f64>().ok(),
        };
        for case in &c.cases {
            let holds = match &case.test {
                CaseTest::Equals(e) => match (s, e.trim().parse::<f64>()) {
                    (Seen::Number(n), Ok(x)) => *n == x,
                    (Seen::Text(t), _) => t == e,
                    (Seen::Number(_), Err(_)) => false,
                },
                CaseTest::Above(x) => number.is_some_and(|n| n > *x),
                CaseTest::Below(x) => number.is_some_and(|n| n < *x),
            };
            if holds {
                return Ok(&case.model);
            }
        }
    }
    c.default.as_ref().ok_or_else(|| match &seen {
        None => refuse(format!("the request has no {what} and the condition has no default")),
        Some(Seen::Number(n)) => refuse(format!("no case holds for {what} = {n} and the condition has no default")),
        Some(Seen::Text(t)) => refuse(format!("no case holds for {what} = {t:?} and the condition has no default")),
    })
}

/// A graph stands in its route as its one variant's backend: readiness and
/// metadata come from the routes it calls. Requests never reach `infer`:
/// the pipeline hands a graph route's requests to `Composite::run`.
#[async_trait]
impl Backend for Graph {
    fn kind(&self) -> &'static str {
        "graph"
    }

    async fn infer(&self, _target: &ModelTarget, _req: InferRequest) -> Result<InferResponse, BackendError> {
        Err(BackendError::Internal(format!("graph `{}` runs through the request pipeline only", self.cfg.name)))
    }

    /// The first step's inputs (under the working names its `inputs` give
    /// them) and the last step's outputs (renamed; a fan-out's combined tensor).
    async fn model_metadata(&self, _target: &ModelTarget) -> Result<Value, BackendError> {
        let (Some(first), Some(final_step)) = (self.cfg.steps.first(), self.cfg.steps.last()) else {
            return Err(BackendError::NotFound(format!("graph `{}` has no steps", self.cfg.name)));
        };
        let entry = first_route(first);
        let md = self.metadata_of(entry).await?;
        let inputs: Vec<Value> = md["inputs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|spec| {
                let mut spec = spec.clone();
                if let Some((_, from)) = first.inputs.iter().find(|(i, _)| spec["name"] == i.as_str()) {
                    spec["name"] = json!(from);
                }
                spec
            })
            .collect();
        let md = self.metadata_of(first_route(final_step)).await?;
        let specs = md["outputs"].as_array().cloned().unwrap_or_default();
        let mut outputs: Vec<Value> = match &final_step.kind {
            StepKind::FanOut { combine, .. } => {
                let member = specs.iter().find(|s| s["name"] == combine.tensor.as_str());
                let mut shape: Vec<i64> = member
                    .and_then(|s| s["shape"].as_array())
                    .map(|a| a.iter().filter_map(Value::as_i64).collect())
                    .unwrap_or_else(|| vec![-1]);
                let datatype = match combine.op {
                    CombineOp::MajorityVote | CombineOp::WeightedVote => {
                        shape.truncate(1);
                        "INT64"
                    }
                    CombineOp::Concat => {
                        if let Some(l) = shape.last_mut() {
                            *l = -1;
                        }
                        "FP32"
                    }
                    CombineOp::Average | CombineOp::Max => "FP32",
                };
                vec![json!({"name": combine.output, "datatype": datatype, "shape": shape})]
            }
            _ => specs
                .into_iter()
                .map(|mut spec| {
                    if let Some((_, to)) = final_step.outputs.iter().find(|(o, _)| spec["name"] == o.as_str()) {
                        spec["name"] = json!(to);
                    }
                    spec
                })
                .collect(),
        };
        if let Some(names) = &self.cfg.outputs {
            outputs.retain(|s| names.iter().any(|n| s["name"] == n.as_str()));
        }
        Ok(json!({
            "name": self.cfg.name,
            "versions": [],
            "platform": PLATFORM,
            "inputs": inputs,
            "outputs": outputs,
        }))
    }

    async fn model_ready(&self, _target: &ModelTarget) -> Result<bool, BackendError> {
        Ok(self.ready().await)
    }

    /// Ready when every route a step must call has a ready variant; routes
    /// only optional steps and members call do not count.
    async fn ready(&self) -> bool {
        for step in &self.cfg.steps {
            if step.optional {
                continue;
            }
            let needed: Vec<&Arc<str>> = match &step.kind {
                StepKind::Model(m) => vec![m],
                StepKind::FanOut { members, .. } => members.iter().filter(|m| !m.optional).map(|m| &m.model).collect(),
                StepKind::Condition(c) => c.cases.iter().map(|c| &c.model).chain(c.default.as_ref()).collect(),
            };
            for name in needed {
                let Some(r) = self.routes.get(name) else { return false };
                let mut ok = false;
                for v in r.variants.iter().filter(|v| v.weight > 0.0) {
                    if v.backend.ready().await {
                        ok = true;
                        break;
                    }
                }
                if !ok {
                    return false;
                }
            }
        }
        true
    }
}

/// The route a step's metadata is read from: its model, first member or first case.
fn first_route(step: &StepConfig) -> &str {
    match &step.kind {
        StepKind::Model(m) => m,
        StepKind::FanOut { members, .. } => members.first().map_or("", |m| &m.model),
        StepKind::Condition(c) => c.cases.first().map(|c| &c.model).or(c.default.as_ref()).map_or("", |m| m),
    }
}
