//! Admission control: the concurrency limits of `admission.models` and
//! `admission.backends` (`limit::Limiter`), applied to every inference in
//! two steps. `Admission::enter` runs after routing and before the body is
//! read or decoded, and refuses at once (503 + `Retry-After`) when the
//! selected variant's model or backend is saturated; `Ticket::admit` runs
//! once the request's priority is known and takes the slots, waiting in the
//! bounded queue or displacing lower-priority waiters. So excess load costs
//! one header parse, never a body, and is never queued without bound.
//!
//! Priority (1 is the highest, larger is lower, 0 or none is
//! `admission.default_priority`) comes from Triton's `priority` request
//! parameter and from the caller: an authenticated principal's priority
//! (`auth.api_keys[].priority`, a JWT's priority claim) is the best its
//! requests may claim (`effective_priority`).
//!
//! Limiters live across routing snapshots: a reload that keeps a limit's
//! settings keeps its state (in-flight count, adaptive limit, waiters).

use std::collections::HashMap;
use std::sync::Arc;

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use switchyard_config::{AdmissionConfig, ConcurrencyLimit};

use crate::error::Error;
use crate::limit::{Entry, Limiter, LimiterMetrics, Permit, Refusal};

/// Prometheus handles of every limiter, labelled by scope (`model`/`backend`) and name.
#[derive(Clone)]
pub struct AdmissionMetrics {
    limit: IntGaugeVec,
    in_flight: IntGaugeVec,
    queued: IntGaugeVec,
    refused: IntCounterVec,
}

impl AdmissionMetrics {
    pub fn new(registry: &Registry) -> AdmissionMetrics {
        let labels = &["scope", "name"];
        let gauge = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
        let m = AdmissionMetrics {
            limit: gauge("switchyard_concurrency_limit", "Current concurrency limit (moves when adaptive)"),
            in_flight: gauge("switchyard_concurrency_in_flight", "Requests holding a concurrency slot"),
            queued: gauge("switchyard_concurrency_queued", "Requests waiting for a concurrency slot"),
            refused: IntCounterVec::new(
                Opts::new(
                    "switchyard_admission_refused_total",
                    "Requests refused by a concurrency limit, by reason (full, shed, queue_timeout)",
                ),
                &["scope", "name", "reason"],
            )
            .expect("valid metric"),
        };
        for c in [
            Box::new(m.limit.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.in_flight.clone()),
            Box::new(m.queued.clone()),
            Box::new(m.refused.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        m
    }

    fn limiter(&self, scope: &str, name: &str) -> LimiterMetrics {
        let l = [scope, name];
        LimiterMetrics {
            limit: self.limit.with_label_values(&l),
            in_flight: self.in_flight.with_label_values(&l),
            queued: self.queued.with_label_values(&l),
            full: self.refused.with_label_values(&[scope, name, Refusal::Full.as_str()]),
            shed: self.refused.with_label_values(&[scope, name, Refusal::Shed.as_str()]),
            timeout: self.refused.with_label_values(&[scope, name, Refusal::Timeout.as_str()]),
        }
    }
}

/// The limiters of one routing snapshot.
#[derive(Default)]
pub struct Admission {
    models: HashMap<Arc<str>, Arc<Limiter>>,
    backends: HashMap<Arc<str>, Arc<Limiter>>,
    retry_after_secs: u32,
    default_priority: u64,
}

impl Admission {
    /// Limiters for `cfg`, reusing `previous`'s where the settings are unchanged.
    pub fn build(cfg: &AdmissionConfig, previous: Option<&Admission>, metrics: &AdmissionMetrics) -> Admission {
        let make = |scope: &str,
                    wanted: &std::collections::BTreeMap<Arc<str>, ConcurrencyLimit>,
                    old: Option<&HashMap<Arc<str>, Arc<Limiter>>>| {
            wanted
                .iter()
                .map(|(name, c)| {
                    let reuse = old.and_then(|o| o.get(name)).filter(|l| l.config() == c).cloned();
                    let limiter = reuse.unwrap_or_else(|| Limiter::new(c.clone(), metrics.limiter(scope, name)));
                    (name.clone(), limiter)
                })
                .collect()
        };
        Admission {
            models: make("model", &cfg.models, previous.map(|p| &p.models)),
            backends: make("backend", &cfg.backends, previous.map(|p| &p.backends)),
            // Whole seconds, as `Retry-After` counts them; at least 1.
            retry_after_secs: cfg.retry_after.as_secs_f64().ceil().max(1.0) as u32,
            default_priority: cfg.default_priority,
        }
    }

    /// The gate before the body: places in the route's and the backend's
    /// limiters, or the 503 to answer now.
    pub fn enter(&self, route: &str, backend: &str) -> Result<Ticket, Error> {
        let model = match self.models.get(route) {
            Some(l) => Some(l.enter().map_err(|r| self.refused("model", route, r))?),
            None => None,
        };
        let backend_entry = match self.backends.get(backend) {
            Some(l) => Some(l.enter().map_err(|r| self.refused("backend", backend, r))?),
            None => None,
        };
        Ok(Ticket {
            model: model.map(|e| (route.to_string(), e)),
            backend: backend_entry.map(|e| (backend.to_string(), e)),
            retry_after_secs: self.retry_after_secs,
            default_priority: self.default_priority,
        })
    }

    fn refused(&self, scope: &str, name: &str, r: Refusal) -> Error {
        refusal(self.retry_after_secs, scope, name, r)
    }
}

fn refusal(retry_after_secs: u32, scope: &str, name: &str, r: Refusal) -> Error {
    let why = match r {
        Refusal::Full => "is at its concurrency limit and its queue is full",
        Refusal::Shed => "shed this request for one of higher priority",
        Refusal::Timeout => "had no free slot within its queue timeout",
    };
    Error::overloaded(retry_after_secs, format!("{scope} `{name}` {why}; retry later"))
}

/// Places reserved before the body was read.
pub struct Ticket {
    model: Option<(String, Entry)>,
    backend: Option<(String, Entry)>,
    retry_after_secs: u32,
    default_priority: u64,
}

impl Ticket {
    /// Takes the slots for a request of `priority` (`None` or 0: the default).
    pub async fn admit(self, priority: Option<u64>) -> Result<Permits, Error> {
        let priority = priority.filter(|p| *p > 0).unwrap_or(self.default_priority);
        let retry = self.retry_after_secs;
        let mut permits = Permits::default();
        if let Some((name, e)) = self.model {
            permits.model = Some(e.acquire(priority).await.map_err(|r| refusal(retry, "model", &name, r))?);
        }
        if let Some((name, e)) = self.backend {
            permits.backend = Some(e.acquire(priority).await.map_err(|r| refusal(retry, "backend", &name, r))?);
        }
        Ok(permits)
    }
}

/// Held slots, freed when dropped.
#[derive(Default)]
pub struct Permits {
    model: Option<Permit>,
    backend: Option<Permit>,
}

impl Permits {
    /// Feeds the outcome of the work done in the slots to adaptive limits:
    /// a success, or a failure that signals overload.
    pub fn record(&mut self, ok: bool) {
        for p in [&mut self.model, &mut self.backend].into_iter().flatten() {
            p.record(ok);
        }
    }
}

/// The priority a request runs at, from its own `priority` parameter and
/// its caller's (a principal's `priority`): the caller's is the best the
/// request may claim — it may ask to run lower, never higher — so a
/// low-priority client cannot jump the queue by setting the parameter.
/// 0 or none: the other one, else `admission.default_priority`.
pub fn effective_priority(request: Option<u64>, caller: Option<u64>) -> Option<u64> {
    match (request.filter(|p| *p > 0), caller.filter(|p| *p > 0)) {
        (Some(r), Some(c)) => Some(r.max(c)),
        (r, c) => r.or(c),
    }
}

/// The `priority` request parameter, when it is a non-negative integer
/// (anything else is the batcher's or the backend's to refuse).
pub fn request_priority(req: &switchyard_runtime::InferRequest) -> Option<u64> {
    req.parameters.get("priority").and_then(|v| v.as_u64())
}

#[cfg(test)]
mod tests {
    use super::effective_priority;

    #[test]
    fn a_caller_priority_caps_what_a_request_claims() {
        assert_eq!(effective_priority(None, None), None);
        assert_eq!(effective_priority(Some(2), None), Some(2));
        assert_eq!(effective_priority(None, Some(3)), Some(3));
        assert_eq!(effective_priority(Some(0), Some(3)), Some(3));
        // A priority-3 caller asking for 1 runs at 3; asking for 5 runs at 5.
        assert_eq!(effective_priority(Some(1), Some(3)), Some(3));
        assert_eq!(effective_priority(Some(5), Some(3)), Some(5));
    }
}
