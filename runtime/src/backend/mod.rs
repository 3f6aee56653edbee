//! Backends: where an inference actually runs. Every backend speaks the tensor
//! model (`contract`), so routing, batching and caching never depend on
//! which one it is; `set` builds a generation's backends; `dns` keeps the
//! endpoint sets of backends named by DNS current; `health` keeps failing
//! replicas of a remote backend out of rotation and spreads load by it;
//! `http_pool` and `grpc_pool` are the pooled transports of the HTTP and
//! gRPC backends (`v2_http`, `v2_grpc`, `tfserving`, `torchserve`);
//! `affinity` keeps a Triton sequence on the one replica that holds its state.

pub mod affinity;
mod contract;
pub mod dns;
pub mod forward;
pub mod grpc_pool;
pub mod health;
mod http_conn;
pub mod http_pool;
pub mod onnx;
mod set;
pub mod tfserving;
pub mod torchserve;
pub mod triton;
pub mod v2_grpc;
pub mod v2_http;

pub use contract::{Backend, Backends, GrpcPassthrough, ModelTarget, TfRelay, TfVerb};
pub use set::{build_backends, BackendSet};
