//! The metrics listener: Prometheus text exposition at `GET /metrics`.

use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::metrics::Metrics;

pub struct MetricsApp {
    pub metrics: Metrics,
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path();
        let (status, ctype, body) = match path {
            "/metrics" | "/" => (200, "text/plain; version=0.0.4", self.metrics.encode()),
            _ => (404, "text/plain", b"not found; metrics are at /metrics\n".to_vec()),
        };
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, ctype)
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .expect("static response parts")
    }
}
