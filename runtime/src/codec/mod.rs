//! Wire codecs: each protocol's bodies to and from the tensor model.

pub mod grpc;
pub mod tfserving;
pub mod torchserve;
pub mod v2;
