//! Listener TLS for pingora (the data HTTP and metrics listeners): the
//! certificate and client-CA handling live in `switchyard_tls::ServerTls`
//! (files re-read on change, mutual TLS with `client_ca`); this module only
//! hands them to pingora's settings. The gRPC listener takes the same
//! `ServerTls` as a rustls config (`grpc/tls.rs`).

use pingora_core::listeners::tls::TlsSettings;
pub use switchyard_tls::ServerTls;

/// A pingora listener's TLS settings (HTTP/1.1) from `tls`.
pub fn pingora_settings(tls: &ServerTls) -> Result<TlsSettings, String> {
    let mut s = TlsSettings::intermediate("", "").map_err(|e| e.to_string())?;
    s.set_cert_resolver(tls.cert_resolver());
    if let Some(v) = tls.client_verifier() {
        s.set_client_cert_verifier(v);
    }
    Ok(s)
}
