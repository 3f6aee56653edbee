//! The in-memory `Exchange` a graph step runs through: the step's request is
//! already decoded, its answer stays a tensor response, and the step has no
//! client of its own to lose (the graph's client is watched by the graph's
//! own exchange, which drops the whole graph when it leaves).

use http::HeaderMap;
use switchyard_runtime::{InferRequest, InferResponse};

use crate::error::Error;
use crate::pipeline::Exchange;
use crate::protocol::Param;

pub struct StepExchange<'a> {
    pub metadata: &'a HeaderMap,
    pub request: Option<InferRequest>,
}

impl Exchange for StepExchange<'_> {
    type Encoded = InferResponse;

    fn metadata(&self) -> &HeaderMap {
        self.metadata
    }

    async fn decode(&mut self) -> Result<InferRequest, Error> {
        self.request.take().ok_or_else(|| Error::internal("a graph step's request was read twice"))
    }

    fn parameter(&self, name: &str) -> Option<Param<'_>> {
        self.request.as_ref()?.parameters.get(name).and_then(Param::from_json)
    }

    async fn closed(&mut self) {
        std::future::pending::<()>().await
    }

    fn encode(&mut self, response: InferResponse) -> Result<InferResponse, Error> {
        Ok(response)
    }
}
