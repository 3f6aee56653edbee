//! Generated from the trimmed, wire-compatible TF Serving protos under
//! `runtime/proto/` (`tensorflow_serving/apis/*.proto`,
//! `tensorflow/core/...`), nested as prost lays the packages out:
//! `pb::tensorflow` (`TensorProto`, `DataType`, `SignatureDef`, ...),
//! `pb::tensorflow::serving` (requests, responses, and the
//! `prediction_service_{client,server}` / `model_service_{client,server}`
//! modules), `pb::tensorflow::error` (`Code`). `google.protobuf` types are
//! `prost_types`'.

#![allow(clippy::all, missing_docs)]

pub mod tensorflow {
    tonic::include_proto!("tensorflow");
    pub mod serving {
        tonic::include_proto!("tensorflow.serving");
    }
    pub mod error {
        tonic::include_proto!("tensorflow.error");
    }
}
