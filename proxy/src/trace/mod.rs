//! Request tracing: W3C trace context (`traceparent`, `tracestate`) in and
//! out, spans for the phases of an inference, and their export over
//! OTLP/gRPC (docs/monitoring.md).
//!
//! Off (`tracing:` unset), a request pays nothing: the routing snapshot
//! carries no tracer. On, a sampled request keeps a few timestamps and, when
//! it is answered, hands its spans to a bounded channel with `try_send` (a
//! full queue drops them, counted); an exporter task batches them (up to
//! `max_batch` spans, at most `export_interval` apart) into `Export` calls.

pub mod otlp;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use prometheus::{IntCounterVec, Opts, Registry};
use switchyard_config::TracingConfig;
use tokio::sync::mpsc;

use otlp::{KeyValue, Span};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A parent from a client's `traceparent`: `00-<trace id>-<span id>-<flags>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

fn hex_into(s: &str, out: &mut [u8]) -> Option<()> {
    if s.len() != out.len() * 2 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(())
}

/// Parses a `traceparent` value; `None` for anything W3C says to ignore
/// (unknown version 0xff, all-zero ids, bad hex or length).
pub fn parse_traceparent(v: &[u8]) -> Option<Parent> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let mut parts = s.split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    let (mut trace_id, mut span_id, mut f) = ([0u8; 16], [0u8; 8], [0u8; 1]);
    hex_into(trace, &mut trace_id)?;
    hex_into(span, &mut span_id)?;
    hex_into(flags, &mut f)?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent { trace_id, span_id, sampled: f[0] & 1 == 1 })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The `traceparent` a backend receives: this trace, its parent the backend-call span.
pub fn traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> HeaderValue {
    let v = format!("00-{}-{}-{}", hex(trace_id), hex(span_id), if sampled { "01" } else { "00" });
    HeaderValue::from_str(&v).expect("hex is a valid header value")
}

fn span_id() -> [u8; 8] {
    loop {
        let id = fastrand::u64(..).to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

/// The process's tracer: sampling decisions and the queue to the exporter.
pub struct Tracer {
    cfg: TracingConfig,
    tx: mpsc::Sender<Vec<Span>>,
    dropped: prometheus::IntCounter,
    /// Trace-id-ratio sampling: a new trace is kept when its id's last 8 bytes fall below this.
    threshold: u64,
}

/// One sampled request's trace, filled in as it runs.
pub struct ActiveTrace {
    pub trace_id: [u8; 16],
    root: [u8; 8],
    /// The span id the backend call gets: backends receive it as their parent.
    pub backend_span: [u8; 8],
    parent: Option<[u8; 8]>,
    trace_state: String,
    start: Instant,
    start_unix_nanos: u64,
    spans: Vec<Span>,
}

impl Tracer {
    /// Starts the exporter on the current tokio runtime; spans go to `cfg.otlp_endpoint`.
    pub fn start(cfg: TracingConfig, registry: &Registry) -> Result<std::sync::Arc<Tracer>, String> {
        let endpoint = tonic::transport::Endpoint::from_shared(cfg.otlp_endpoint.clone())
            .map_err(|e| format!("tracing.otlp_endpoint: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10));
        let channel = endpoint.connect_lazy();
        let spans = IntCounterVec::new(
            Opts::new(
                "switchyard_trace_spans_total",
                "Spans by outcome (exported, dropped: queue full, failed: export error)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let _ = registry.register(Box::new(spans.clone()));
        let (tx, rx) = mpsc::channel(cfg.max_queue.get());
        let threshold = (cfg.sampling_ratio * u64::MAX as f64) as u64;
        let exporter = Exporter {
            channel,
            rx,
            resource: otlp::Resource { attributes: vec![KeyValue::string("service.name", cfg.service_name.clone())] },
            max_batch: cfg.max_batch.get(),
            interval: cfg.export_interval,
            exported: spans.with_label_values(&["exported"]),
            failed: spans.with_label_values(&["failed"]),
        };
        tokio::spawn(exporter.run());
        Ok(std::sync::Arc::new(Tracer { threshold, dropped: spans.with_label_values(&["dropped"]), cfg, tx }))
    }

    /// A trace for this request when it is sampled: the client's sampled
    /// flag when it sent a valid `traceparent` (parent-based), else the ratio.
    pub fn begin(&self, metadata: &HeaderMap, start: Instant) -> Option<ActiveTrace> {
        let parent = metadata.get(TRACEPARENT).and_then(|v| parse_traceparent(v.as_bytes()));
        let trace_id = match parent {
            Some(p) => p.trace_id,
            None => {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&fastrand::u64(..).to_be_bytes());
                id[8..].copy_from_slice(&fastrand::u64(1..).to_be_bytes());
                id
            }
        };
        let sampled = match parent {
            Some(p) if self.cfg.parent_based => p.sampled,
            _ => u64::from_be_bytes(trace_id[8..].try_into().expect("8 bytes")) < self.threshold,
        };
        if !sampled {
            return None;
        }
        let trace_state = match (parent, metadata.get(TRACESTATE)) {
            (Some(_), Some(v)) => v.to_str().unwrap_or("").to_string(),
            _ => String::new(),
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Some(ActiveTrace {
            trace_id,
            root: span_id(),
            backend_span: span_id(),
            parent: parent.map(|p| p.span_id),
            trace_state,
            start,
            start_unix_nanos: (now.saturating_sub(start.elapsed())).as_nanos() as u64,
            spans: Vec::with_capacity(8),
        })
    }

    /// Hands a finished trace to the exporter; never waits.
    pub fn finish(&self, t: ActiveTrace) {
        let n = t.spans.len() as u64;
        if self.tx.try_send(t.spans).is_err() {
            self.dropped.inc_by(n);
        }
    }
}

impl ActiveTrace {
    fn nanos(&self, at: Instant) -> u64 {
        self.start_unix_nanos + at.saturating_duration_since(self.start).as_nanos() as u64
    }

    /// Records a child span of the request's span (`id`: a pre-assigned id, e.g. the backend call's).
    pub fn child(
        &mut self,
        name: &str,
        kind: i32,
        from: Instant,
        to: Instant,
        id: Option<[u8; 8]>,
        attributes: Vec<KeyValue>,
    ) {
        let span = Span {
            trace_id: self.trace_id.to_vec(),
            span_id: id.unwrap_or_else(span_id).to_vec(),
            trace_state: self.trace_state.clone(),
            parent_span_id: self.root.to_vec(),
            name: name.to_string(),
            kind,
            start_time_unix_nano: self.nanos(from),
            end_time_unix_nano: self.nanos(to.max(from)),
            attributes,
            status: None,
        };
        self.spans.push(span);
    }

    /// Records the request's own span (a server span, child of the client's), ending now.
    pub fn root(&mut self, name: &str, status: u16, attributes: Vec<KeyValue>) {
        let end = Instant::now();
        let span = Span {
            trace_id: self.trace_id.to_vec(),
            span_id: self.root.to_vec(),
            trace_state: self.trace_state.clone(),
            parent_span_id: self.parent.map(|p| p.to_vec()).unwrap_or_default(),
            name: name.to_string(),
            kind: otlp::KIND_SERVER,
            start_time_unix_nano: self.start_unix_nanos,
            end_time_unix_nano: self.nanos(end),
            attributes,
            status: Some(otlp::Status {
                message: String::new(),
                code: if status >= 500 { otlp::STATUS_ERROR } else { otlp::STATUS_OK },
            }),
        };
        self.spans.push(span);
    }
}

struct Exporter {
    channel: tonic::transport::Channel,
    rx: mpsc::Receiver<Vec<Span>>,
    resource: otlp::Resource,
    max_batch: usize,
    interval: Duration,
    exported: prometheus::IntCounter,
    failed: prometheus::IntCounter,
}

impl Exporter {
    async fn run(mut self) {
        let mut batch: Vec<Span> = Vec::new();
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let closed = tokio::select! {
                s = self.rx.recv() => match s {
                    Some(spans) => {
                        batch.extend(spans);
                        if batch.len() < self.max_batch {
                            continue;
                        }
                        false
                    }
                    None => true,
                },
                _ = tick.tick() => false,
            };
            while !batch.is_empty() {
                let rest = if batch.len() > self.max_batch { batch.split_off(self.max_batch) } else { Vec::new() };
                self.send(std::mem::replace(&mut batch, rest)).await;
            }
            if closed {
                return;
            }
        }
    }

    async fn send(&self, spans: Vec<Span>) {
        let n = spans.len() as u64;
        let req = otlp::ExportTraceServiceRequest {
            resource_spans: vec![otlp::ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![otlp::ScopeSpans {
                    scope: Some(otlp::InstrumentationScope {
                        name: "switchyard".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                    }),
                    spans,
                }],
            }],
        };
        match otlp::export(self.channel.clone(), req).await {
            Ok(()) => self.exported.inc_by(n),
            Err(e) => {
                // A collector that is down loses these spans, not the requests' time.
                tracing::debug!("OTLP export of {n} spans failed: {e}");
                self.failed.inc_by(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parses_as_w3c_says() {
        let p = parse_traceparent(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(hex(&p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!((hex(&p.span_id).as_str(), p.sampled), ("00f067aa0ba902b7", true));
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        let v = traceparent(&p.trace_id, &p.span_id, false);
        assert_eq!(v, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
    }
}
