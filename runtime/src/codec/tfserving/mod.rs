//! TensorFlow Serving's protocol over the tensor model: REST predict bodies
//! (`rest`), gRPC `TensorProto`s (`tensor_proto`) and the generated gRPC
//! messages, clients and servers (`pb`), the `DT_*` type mapping (`dtype`),
//! the status and metadata documents built from a model's V2 metadata
//! (`model`), and the client's direction for the `tfserving` backend
//! (`client`). The front end serves every model under one predict
//! signature, `serving_default`, whose inputs and outputs are the model's own.

pub mod client;
pub mod dtype;
pub mod model;
pub mod pb;
pub mod rest;
pub mod tensor_proto;

pub use model::{input_specs, metadata_json, output_names, signature_def_map, status_json, VersionState};
pub use rest::{
    check_signature, decode_predict, decode_predict_doc, encode_predict, parse_json, signature_name, Format, InputSpec,
    Predict, DEFAULT_SIGNATURE,
};
pub use tensor_proto::{tensor_from_proto, tensor_to_proto};
