//! TensorFlow Serving's protocol over the tensor model: REST predict bodies
//! (`rest`), the `DT_*` type mapping (`dtype`), and the status and metadata
//! documents built from a model's V2 metadata (`model`). Every model is
//! served under one predict signature, `serving_default`, whose inputs and
//! outputs are the model's own.

pub mod dtype;
pub mod model;
pub mod rest;

pub use model::{input_specs, metadata_json, status_json, VersionState};
pub use rest::{
    decode_predict, decode_predict_doc, encode_predict, parse_json, signature_name, Format, InputSpec, Predict,
    DEFAULT_SIGNATURE,
};
