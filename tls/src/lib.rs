//! TLS for the whole process, with rustls and ring: the certificates a
//! listener serves and the settings a client connects with are built from
//! PEM files (read by `switchyard_config::pem`) and rebuilt when the files
//! change on disk ([`reload`]), so a rotated certificate, key or CA needs no
//! restart. [`server`] serves the data, metrics and control listeners and
//! the injection webhook; [`client`] and [`connect`] reach TLS backends and
//! JWKS URLs; [`reload`] also keeps the files of an `https://` pass-through
//! upstream fresh (`switchyard_proxy`'s `http::upstream_tls`, for pingora).

pub mod client;
pub mod connect;
pub mod crypto;
pub mod reload;
pub mod server;

pub use client::ClientTls;
pub use connect::{Connector, Stream};
pub use crypto::provider;
pub use server::ServerTls;
