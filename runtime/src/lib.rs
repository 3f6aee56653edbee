//! Switchyard's runtime layer: the tensor model every protocol decodes into,
//! the wire codecs, and the backends that run inferences (remote KServe V2
//! servers, the embedded ONNX Runtime).

pub mod backend;
pub mod codec;
pub mod error;
pub mod tensor;

pub use backend::{Backend, Backends, ModelTarget, TfRelay, TfVerb};
pub use error::{BackendError, CodecError, TensorError};
pub use tensor::{DataType, InferRequest, InferResponse, Tensor};
