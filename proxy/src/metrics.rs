//! Prometheus metrics of the data plane. Per-variant handles are resolved when
//! a routing snapshot is built, so the hot path only bumps atomics.

use std::sync::{Arc, OnceLock};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Latency buckets from 50 µs to 10 s: proxy overhead and model time alike.
const LATENCY_BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Status codes whose counters are resolved ahead of time.
const COMMON_CODES: [u16; 10] = [200, 400, 404, 413, 422, 500, 502, 503, 504, 499];

/// The `model` label of requests for models no route serves.
pub const UNKNOWN_MODEL: &str = "<unknown>";

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    backend_duration: HistogramVec,
    pub in_flight: IntGauge,
    model_in_flight: IntGaugeVec,
    passthrough: IntCounterVec,
    /// Pass-through counters of `COMMON_CODES`, resolved on first use (no label lookup per request).
    passthrough_by_code: Arc<[OnceLock<IntCounter>; COMMON_CODES.len()]>,
    batch_size: HistogramVec,
    batch_queue_time: HistogramVec,
    batch_execution_time: HistogramVec,
    batch_queue_depth: IntGaugeVec,
    batch_rejections: IntCounterVec,
    shadow_requests: IntCounterVec,
    shadow_rows: IntCounterVec,
    shadow_max_abs_error: HistogramVec,
    rule_matches: IntCounterVec,
    task_panics: IntGaugeVec,
    /// Read from `switchyard_stats::access_log::dropped` at scrape time.
    access_log_dropped: IntCounter,
    /// Concurrency limits (`admission`).
    pub admission: crate::admission::AdmissionMetrics,
    /// Live Triton sequences (`sequence`).
    pub sequences: crate::sequence::SequenceMetrics,
}

/// Metric handles of one batch queue.
#[derive(Clone)]
pub struct BatchMetrics {
    pub batch_size: Histogram,
    pub queue_time: Histogram,
    pub execution_time: Histogram,
    pub queue_depth: IntGauge,
    pub rejected_full: IntCounter,
    pub rejected_timeout: IntCounter,
    pub rejected_cancelled: IntCounter,
}

#[derive(Clone)]
pub struct VariantMetrics {
    model: String,
    variant: String,
    requests: IntCounterVec,
    shadow_requests: IntCounterVec,
    shadow_rows: IntCounterVec,
    shadow_max_abs_error: Histogram,
    /// Resolved on first use, so unused codes export no series.
    by_code: Arc<[OnceLock<IntCounter>; COMMON_CODES.len()]>,
    pub request_duration: Histogram,
    pub backend_duration: Histogram,
    /// Requests routed to this variant and not yet answered (an autoscaling signal).
    pub in_flight: IntGauge,
}

impl VariantMetrics {
    /// A mirrored request that was `dropped` or `failed`.
    pub fn shadow_outcome(&self, outcome: &str) {
        self.shadow_requests.with_label_values(&[&self.model, &self.variant, outcome]).inc();
    }

    /// A mirrored request compared with the primary's answer.
    pub fn shadow_compared(&self, rows: u64, agreeing: u64, max_abs_error: f64) {
        self.shadow_outcome("compared");
        self.shadow_rows.with_label_values(&[&self.model, &self.variant, "agree"]).inc_by(agreeing);
        self.shadow_rows.with_label_values(&[&self.model, &self.variant, "disagree"]).inc_by(rows - agreeing);
        self.shadow_max_abs_error.observe(max_abs_error);
    }

    pub fn count(&self, code: u16) {
        match COMMON_CODES.iter().position(|c| *c == code) {
            Some(i) => self.by_code[i]
                .get_or_init(|| self.requests.with_label_values(&[&self.model, &self.variant, &code.to_string()]))
                .inc(),
            None => self.requests.with_label_values(&[&self.model, &self.variant, &code.to_string()]).inc(),
        }
    }
}

impl Metrics {
    /// Metrics in their own registry (served by the metrics listener).
    pub fn new_unregistered() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("switchyard_requests_total", "Inference requests answered, by model, variant and HTTP status"),
            &["model", "variant", "code"],
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_request_duration_seconds",
                "Time from request received to response written, by model and variant",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["model", "variant"],
        )
        .expect("valid metric");
        let backend_duration = HistogramVec::new(
            HistogramOpts::new("switchyard_backend_request_duration_seconds", "Time spent in the backend call")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["model", "variant"],
        )
        .expect("valid metric");
        let model_in_flight = IntGaugeVec::new(
            Opts::new(
                "switchyard_model_requests_in_flight",
                "Requests routed to a model's variant and not yet answered (queued, batching or at the backend)",
            ),
            &["model", "variant"],
        )
        .expect("valid metric");
        let task_panics = IntGaugeVec::new(
            Opts::new(
                "switchyard_background_task_panics",
                "Panics of background tasks (batch schedulers, config reload, control clock) since start, by task",
            ),
            &["task"],
        )
        .expect("valid metric");
        let access_log_dropped = IntCounter::new(
            "switchyard_access_log_dropped_total",
            "Access lines dropped because the log's writer thread was behind (its queue full)",
        )
        .expect("valid metric");
        let in_flight =
            IntGauge::new("switchyard_requests_in_flight", "Requests being processed on the data port").expect("valid");
        let passthrough = IntCounterVec::new(
            Opts::new(
                "switchyard_passthrough_requests_total",
                "Requests proxied unchanged to the listener's default upstream, by status",
            ),
            &["code"],
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new("switchyard_build_info", "Build information; the value is always 1"),
            &["version"],
        )
        .expect("valid");
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let batch_labels = &["model", "version", "backend"];
        let batch_size = HistogramVec::new(
            HistogramOpts::new("switchyard_batch_size", "Rows per batch sent to the backend")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            batch_labels,
        )
        .expect("valid metric");
        let batch_queue_time = HistogramVec::new(
            HistogramOpts::new("switchyard_batch_queue_seconds", "Time a request waited in the batch queue")
                .buckets(LATENCY_BUCKETS.to_vec()),
            batch_labels,
        )
        .expect("valid metric");
        let batch_execution_time = HistogramVec::new(
            HistogramOpts::new("switchyard_batch_execution_seconds", "Backend time of one batch")
                .buckets(LATENCY_BUCKETS.to_vec()),
            batch_labels,
        )
        .expect("valid metric");
        let batch_queue_depth = IntGaugeVec::new(
            Opts::new("switchyard_batch_queue_depth", "Requests waiting in the batch queue"),
            batch_labels,
        )
        .expect("valid metric");
        let batch_rejections = IntCounterVec::new(
            Opts::new(
                "switchyard_batch_rejections_total",
                "Requests that left the batch queue without a backend answer, by reason",
            ),
            &["model", "version", "backend", "reason"],
        )
        .expect("valid metric");
        let shadow_requests = IntCounterVec::new(
            Opts::new("switchyard_shadow_requests_total", "Mirrored requests to shadow variants, by outcome"),
            &["model", "variant", "outcome"],
        )
        .expect("valid metric");
        let shadow_rows = IntCounterVec::new(
            Opts::new(
                "switchyard_shadow_argmax_rows_total",
                "Rows compared between shadow and primary, by whether their argmax agreed",
            ),
            &["model", "variant", "result"],
        )
        .expect("valid metric");
        let shadow_max_abs_error = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_shadow_max_abs_error",
                "Largest absolute difference between shadow and primary outputs, per mirrored request",
            )
            .buckets(vec![1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0]),
            &["model", "variant"],
        )
        .expect("valid metric");
        let rule_matches = IntCounterVec::new(
            Opts::new(
                "switchyard_route_rule_matches_total",
                "Requests a content-routing rule matched, by the model whose rule it is and the rule's name",
            ),
            &["model", "rule"],
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(rule_matches.clone()),
            Box::new(request_duration.clone()),
            Box::new(backend_duration.clone()),
            Box::new(in_flight.clone()),
            Box::new(model_in_flight.clone()),
            Box::new(passthrough.clone()),
            Box::new(build_info),
            Box::new(batch_size.clone()),
            Box::new(batch_queue_time.clone()),
            Box::new(batch_execution_time.clone()),
            Box::new(batch_queue_depth.clone()),
            Box::new(batch_rejections.clone()),
            Box::new(shadow_requests.clone()),
            Box::new(shadow_rows.clone()),
            Box::new(shadow_max_abs_error.clone()),
            Box::new(task_panics.clone()),
            Box::new(access_log_dropped.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        let admission = crate::admission::AdmissionMetrics::new(&registry);
        let sequences = crate::sequence::SequenceMetrics::new(&registry);
        Metrics {
            admission,
            sequences,
            registry,
            requests,
            request_duration,
            backend_duration,
            in_flight,
            model_in_flight,
            passthrough,
            passthrough_by_code: Arc::new(std::array::from_fn(|_| OnceLock::new())),
            batch_size,
            batch_queue_time,
            batch_execution_time,
            batch_queue_depth,
            batch_rejections,
            shadow_requests,
            shadow_rows,
            shadow_max_abs_error,
            rule_matches,
            task_panics,
            access_log_dropped,
        }
    }

    pub fn batch(&self, model: &str, version: &str, backend: &str) -> BatchMetrics {
        let l = [model, version, backend];
        let reason = |r: &str| self.batch_rejections.with_label_values(&[model, version, backend, r]);
        BatchMetrics {
            batch_size: self.batch_size.with_label_values(&l),
            queue_time: self.batch_queue_time.with_label_values(&l),
            execution_time: self.batch_execution_time.with_label_values(&l),
            queue_depth: self.batch_queue_depth.with_label_values(&l),
            rejected_full: reason("queue_full"),
            rejected_timeout: reason("timeout"),
            rejected_cancelled: reason("cancelled"),
        }
    }

    /// The match counter of content-routing rule `rule` of `model` (resolved when a snapshot is built).
    pub fn rule(&self, model: &str, rule: &str) -> IntCounter {
        self.rule_matches.with_label_values(&[model, rule])
    }

    pub fn variant(&self, model: &str, variant: &str) -> VariantMetrics {
        VariantMetrics {
            model: model.to_string(),
            variant: variant.to_string(),
            requests: self.requests.clone(),
            shadow_requests: self.shadow_requests.clone(),
            shadow_rows: self.shadow_rows.clone(),
            shadow_max_abs_error: self.shadow_max_abs_error.with_label_values(&[model, variant]),
            by_code: Arc::new(std::array::from_fn(|_| OnceLock::new())),
            request_duration: self.request_duration.with_label_values(&[model, variant]),
            backend_duration: self.backend_duration.with_label_values(&[model, variant]),
            in_flight: self.model_in_flight.with_label_values(&[model, variant]),
        }
    }

    /// Counts a request proxied unchanged to the default upstream, answered `code` (0: no answer written).
    pub fn count_passthrough(&self, code: u16) {
        match COMMON_CODES.iter().position(|c| *c == code) {
            Some(i) => self.passthrough_by_code[i]
                .get_or_init(|| self.passthrough.with_label_values(&[&code.to_string()]))
                .inc(),
            None => self.passthrough.with_label_values(&[&code.to_string()]).inc(),
        }
    }

    /// Counts a request that never reached a variant: `route` is the route's
    /// name when the model has one (a bad variant override), `None` for an
    /// unknown model — labelled `UNKNOWN_MODEL`, never with the client's
    /// name, so clients cannot grow the series without bound.
    pub fn count_unrouted(&self, route: Option<&str>, code: u16) {
        self.requests.with_label_values(&[route.unwrap_or(UNKNOWN_MODEL), "", &code.to_string()]).inc();
    }

    /// Prometheus text exposition of Switchyard's metrics and the process-wide default registry.
    pub fn encode(&self) -> Vec<u8> {
        // Read at scrape time from the process-wide record (`switchyard_stats::tasks`).
        if switchyard_stats::tasks::any_panicked() {
            for p in switchyard_stats::tasks::panicked() {
                self.task_panics.with_label_values(&[&p.task]).set(0);
            }
            for p in switchyard_stats::tasks::panicked() {
                self.task_panics.with_label_values(&[&p.task]).inc();
            }
        }
        let dropped = switchyard_stats::access_log::dropped();
        let seen = self.access_log_dropped.get();
        if dropped > seen {
            self.access_log_dropped.inc_by(dropped - seen);
        }
        let mut families = self.registry.gather();
        families.extend(prometheus::gather());
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&families, &mut out).expect("encoding to memory");
        out
    }
}
