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
pub mod rest;
pub mod tensor_proto;

/// Generated from the trimmed, wire-compatible TF Serving protos under
/// `runtime/proto/` (`tensorflow_serving/apis/*.proto`,
/// `tensorflow/core/...`), nested as prost lays the packages out:
/// `pb::tensorflow` (`TensorProto`, `DataType`, `SignatureDef`, ...),
/// `pb::tensorflow::serving` (requests, responses, and the
/// `prediction_service_{client,server}` / `model_service_{client,server}`
/// modules), `pb::tensorflow::error` (`Code`). `google.protobuf` types are
/// `prost_types`'.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    pub mod tensorflow {
        tonic::include_proto!("tensorflow");
        pub mod serving {
            tonic::include_proto!("tensorflow.serving");
        }
        pub mod error {
            tonic::include_proto!("tensorflow.error");
        }
    }
}

pub use model::{input_specs, metadata_json, status_json, VersionState};
pub use rest::{decode_predict, encode_predict, Format, InputSpec, Predict, DEFAULT_SIGNATURE};
pub use tensor_proto::{tensor_from_proto, tensor_to_proto};
