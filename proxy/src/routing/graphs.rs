//! Graph routes (`graphs:`): one route per graph whose single variant, named
//! `graph`, stands for the graph's steps (`crate::graph`). Built after the
//! model routes, graphs before the graphs that call them, so each graph
//! holds the routes it calls.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderValue;
use switchyard_config::{SequenceConfig, ValidatedConfig};
use switchyard_runtime::{Backend, ModelTarget};

use super::select::{Arm, Picker};
use super::{BuildContext, Route, Variant};
use crate::graph::Graph;

/// The variant name every graph route has.
const GRAPH_VARIANT: &str = "graph";

/// Adds a route per graph to `routes`, which holds the model routes.
pub(super) fn add(
    cfg: &ValidatedConfig,
    ctx: &BuildContext<'_>,
    routes: &mut HashMap<Arc<str>, Arc<Route>>,
) -> Result<(), String> {
    let mut pending: Vec<_> = cfg.graphs.values().collect();
    while !pending.is_empty() {
        let before = pending.len();
        let mut i = 0;
        while i < pending.len() {
            let g = pending[i];
            if !g.references().all(|r| routes.contains_key(r) || !cfg.graphs.contains_key(r)) {
                i += 1;
                continue;
            }
            pending.swap_remove(i);
            let mut calls = HashMap::new();
            for r in g.references() {
                let route =
                    routes.get(r).ok_or_else(|| format!("graph `{}` calls `{r}`, which is no route", g.name))?;
                calls.insert(r.clone(), route.clone());
            }
            let graph = Arc::new(Graph::new(g.clone(), ctx.metrics.clone(), calls));
            routes.insert(g.name.clone(), Arc::new(route(&g.name, graph, ctx)));
        }
        if pending.len() == before {
            let names: Vec<&str> = pending.iter().map(|g| &*g.name).collect();
            return Err(format!("graphs {} call each other in a cycle", names.join(", ")));
        }
    }
    Ok(())
}

fn route(name: &Arc<str>, graph: Arc<Graph>, ctx: &BuildContext<'_>) -> Route {
    let variant: Arc<str> = Arc::from(GRAPH_VARIANT);
    let backend: Arc<dyn Backend> = graph.clone();
    let sequences = match ctx.previous.and_then(|p| p.routes.get(name)) {
        Some(old) => old.sequences.clone(),
        None => crate::sequence::SequenceTable::new(name.clone(), &SequenceConfig::default(), &ctx.metrics.sequences),
    };
    Route {
        name: name.clone(),
        sticky_header: None,
        variants: vec![Variant {
            name: variant.clone(),
            weight: 1.0,
            backend_name: variant.clone(),
            backend,
            model: None,
            version: None,
            header_value: HeaderValue::from_static(GRAPH_VARIANT),
            metrics: ctx.metrics.variant(name, GRAPH_VARIANT),
            batcher: None,
            other_versions: None,
            stats: ctx.stats.get_or_create(name, GRAPH_VARIANT),
            shadow_percent: None,
            cache: None,
            drift: None,
            labels: Vec::new(),
            features: None,
            torchserve: None,
        }],
        targets: vec![Some(ModelTarget { name: name.clone(), version: None })],
        picker: Picker::new(name.clone(), vec![Arm::new(variant, 1.0, None)]),
        shadows: Vec::new(),
        quality: None,
        sequences,
        graph: Some(graph),
        rules: Default::default(),
    }
}
