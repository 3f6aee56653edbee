//! The client protocols a request can arrive in, named as content-routing
//! rules (`models.M.rules[].match.protocol`) and the proxy's `Call` name
//! them. A leaf: the config crate validates the names, the proxy tags every
//! inference with one.

use std::fmt;

/// One front end's protocol: the wire and the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// KServe V2 / Open Inference Protocol over HTTP (`/v2/...`), and the
    /// data port's simple `/ml/models/{m}/predict`.
    V2Http,
    /// KServe V2 over gRPC (`inference.GRPCInferenceService`).
    V2Grpc,
    /// TensorFlow Serving's REST API (`/v1/models/...`).
    TfServingRest,
    /// TensorFlow Serving's gRPC API (`tensorflow.serving.PredictionService`).
    TfServingGrpc,
    /// TorchServe's inference API over HTTP (`/predictions/...`).
    TorchServeRest,
    /// TorchServe's gRPC inference API (`org.pytorch.serve.grpc.inference`).
    TorchServeGrpc,
}

impl Protocol {
    /// Every protocol, in the order their names are listed to users.
    pub const ALL: [Protocol; 6] = [
        Protocol::V2Http,
        Protocol::V2Grpc,
        Protocol::TfServingRest,
        Protocol::TfServingGrpc,
        Protocol::TorchServeRest,
        Protocol::TorchServeGrpc,
    ];

    /// The name configs and logs use.
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::V2Http => "v2-http",
            Protocol::V2Grpc => "v2-grpc",
            Protocol::TfServingRest => "tfserving-rest",
            Protocol::TfServingGrpc => "tfserving-grpc",
            Protocol::TorchServeRest => "torchserve-rest",
            Protocol::TorchServeGrpc => "torchserve-grpc",
        }
    }

    /// The protocol a config names; `None` for an unknown name.
    pub fn from_name(name: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// The names, comma-separated, for error messages.
    pub fn names() -> String {
        Protocol::ALL.map(Protocol::as_str).join(", ")
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Protocol::ALL {
            assert_eq!(Protocol::from_name(p.as_str()), Some(p));
        }
        assert_eq!(Protocol::from_name("V2-HTTP"), None);
        assert_eq!(Protocol::from_name("grpc"), None);
    }
}
