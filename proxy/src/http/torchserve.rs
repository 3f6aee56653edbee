//! TorchServe's inference API on the data port: `POST /predictions/{m}[/{v}]`
//! and `POST /explanations/{m}[/{v}]` through the shared lifecycle
//! (`TsExchange`: the body as it came, or translated, as the chosen variant
//! takes it — `crate::torchserve`), and `GET /ping` from the routes'
//! readiness. `{v}` pins the variant of that version, as V2's
//! `/versions/{v}`; without it the A/B split picks. Errors are TorchServe's
//! `{"code", "type", "message"}` with its status codes.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use pingora_proxy::Session;
use switchyard_config::Limits;
use switchyard_runtime::codec::torchserve::BODY_INPUT;

use super::body;
use super::reply::Reply;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::pipeline::{self, Call, Exchange, Routed};
use crate::respond;
use crate::routing::RoutingTable;
use crate::torchserve::{self, TsCall};

/// An error in TorchServe's form.
pub fn error(e: &Error) -> Reply {
    let a = respond::torchserve_http(e);
    Reply {
        status: a.status,
        body: a.body,
        content_type: Some(a.content_type),
        retry_after: a.retry_after,
        error: Some(e.kind.label()),
        ..Reply::default()
    }
}

/// Whether `path` is one of TorchServe's inference API paths (answered in its error form).
pub fn is_torchserve_path(path: &str) -> bool {
    path == "/ping" || path.starts_with("/predictions/") || path.starts_with("/explanations/")
}

/// The query string's parameters as inputs (TorchServe hands each to the
/// handler as one, its value as text). `data` is the body's name: a query
/// parameter of that name is refused rather than silently shadowed.
fn query_inputs(query: Option<&str>) -> Result<Vec<(String, Bytes)>, Error> {
    let mut out: Vec<(String, Bytes)> = Vec::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if k == BODY_INPUT {
            return Err(Error::bad_field(
                BODY_INPUT,
                format!("query parameter '{BODY_INPUT}' would shadow the body, which travels as input '{BODY_INPUT}'"),
            ));
        }
        if out.iter().any(|(name, _)| *name == k) {
            return Err(Error::bad_field(k.to_string(), format!("query parameter '{k}' is given more than once")));
        }
        out.push((k.into_owned(), Bytes::from(v.into_owned())));
    }
    Ok(out)
}

/// A TorchServe REST inference on a pingora session.
struct TsExchange<'s> {
    session: &'s mut Session,
    limits: &'s Limits,
    call: TsCall,
    body_len: Option<u64>,
}

impl Exchange for TsExchange<'_> {
    type Encoded = (Bytes, Option<String>);

    fn metadata(&self) -> &HeaderMap {
        &self.session.req_header().headers
    }

    fn routed(&mut self, routed: &Routed<'_>) {
        self.call.routed(routed);
    }

    async fn decode(&mut self) -> Result<switchyard_runtime::InferRequest, Error> {
        // Query-string parameters are inputs of their own, as TorchServe makes them.
        let mut inputs = query_inputs(self.session.req_header().uri.query())?;
        let body = body::read(self.session, self.limits).await?;
        self.body_len = Some(body.len() as u64);
        inputs.push((BODY_INPUT.to_owned(), body));
        self.call.inputs = inputs;
        self.call.decode().await
    }

    async fn closed(&mut self) {
        self.session.set_abort_on_close(true);
        match self.session.read_body_or_idle(true).await {
            Err(_) => {}
            Ok(_) => std::future::pending().await,
        }
    }

    fn body_len(&self) -> Option<u64> {
        self.body_len
    }

    fn encode(&mut self, resp: switchyard_runtime::InferResponse) -> Result<Self::Encoded, Error> {
        self.call.encode(resp)
    }
}

/// `POST /predictions/{m}[/{v}]`, `POST /explanations/{m}[/{v}]`.
pub async fn predict(
    session: &mut Session,
    table: &RoutingTable,
    metrics: &Metrics,
    limits: &Limits,
    explain: bool,
    call: Call<'_>,
) -> Reply {
    if table.route(call.model).is_err() {
        return error(&torchserve::model_not_found(call.model));
    }
    let content_type =
        session.req_header().headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let mut x = TsExchange { session, limits, call: TsCall::new(call.model, content_type, explain), body_len: None };
    let a = pipeline::infer(table, metrics, &mut x, call).await;
    let mut reply = match a.result {
        Ok((body, ct)) => Reply {
            status: 200,
            body,
            content_type: ct.and_then(|c| HeaderValue::from_str(&c).ok()),
            ..Reply::default()
        },
        Err(e) => error(&e),
    };
    reply.variant = a.variant;
    reply.batch_rows = a.batch_rows;
    reply.cache = a.cache;
    reply.overhead = Some(a.overhead);
    reply.rule = a.rule;
    reply
}

/// `GET /ping`: 200 `Healthy`, or 500 `Unhealthy` as TorchServe answers when a model lacks workers.
pub async fn ping(table: &RoutingTable) -> Reply {
    let ok = torchserve::healthy(table).await;
    Reply::json(if ok { 200 } else { 500 }, torchserve::health_json(ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_inputs() {
        let got = query_inputs(Some("topk=3&label=a%20b")).unwrap();
        assert_eq!(got, vec![("topk".into(), Bytes::from("3")), ("label".into(), Bytes::from("a b"))]);
        assert!(query_inputs(None).unwrap().is_empty());
        let e = query_inputs(Some("data=x")).unwrap_err();
        assert!(e.message.contains("would shadow the body"), "{e}");
        let e = query_inputs(Some("k=1&k=2")).unwrap_err();
        assert!(e.message.contains("more than once"), "{e}");
    }
}
