//! TensorFlow Serving's protocol over the tensor model: REST predict bodies
//! (`rest`), the `DT_*` type mapping (`dtype`), and the status and metadata
//! documents built from a model's V2 metadata (`model`), and the client's
//! direction for the `tfserving` backend (`client`). Every model is
//! served under one predict signature, `serving_default`, whose inputs and
//! outputs are the model's own.

pub mod client;
pub mod dtype;
pub mod model;
pub mod rest;

pub use model::{input_specs, metadata_json, status_json, VersionState};
pub use rest::{decode_predict, encode_predict, Format, InputSpec, Predict, DEFAULT_SIGNATURE};
