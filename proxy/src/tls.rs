//! TLS for the data-plane listeners (rustls with ring): the served
//! certificate is re-read from disk every `TLS_RELOAD_INTERVAL` and swapped
//! in when its files change (cert-manager rotating a mounted Secret needs no
//! restart; a broken pair keeps the last good one and logs why); with
//! `client_ca` set, clients must present a certificate that chains to it
//! (mutual TLS). One `ServerTls` feeds pingora (HTTP, metrics) and
//! tokio-rustls (gRPC) alike.

use std::path::Path;
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use pingora_core::listeners::tls::TlsSettings;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use switchyard_config::{TlsConfig, TLS_RELOAD_INTERVAL};

/// The served certificate, swapped whole when its files change.
#[derive(Debug)]
pub struct ReloadingCert {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A listener's TLS, loaded and kept fresh.
pub struct ServerTls {
    cert: Arc<ReloadingCert>,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The files' bytes (to tell a change), and the key they make.
fn load_pair(cert: &Path, key: &Path) -> Result<(Vec<u8>, Arc<CertifiedKey>), String> {
    let cert_pem = std::fs::read(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
    let key_pem = std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: holds no CERTIFICATE block", cert.display()));
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?;
    let certified = CertifiedKey::from_der(chain, private, &provider())
        .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))?;
    let mut seen = cert_pem;
    seen.extend_from_slice(&key_pem);
    Ok((seen, Arc::new(certified)))
}

fn client_verifier(ca: &Path) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem) {
        let c = c.map_err(|e| format!("{}: not a PEM certificate: {e}", ca.display()))?;
        roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: holds no CERTIFICATE block", ca.display()));
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| format!("{}: {e}", ca.display()))
}

impl ServerTls {
    /// Reads the files now (a bad one fails start-up) and re-reads them every
    /// `TLS_RELOAD_INTERVAL` while the listener lives; `what` names the listener in logs.
    pub fn load(cfg: &TlsConfig, what: &'static str) -> Result<ServerTls, String> {
        let (mut seen, first) = load_pair(&cfg.cert, &cfg.key).map_err(|e| format!("{what} TLS: {e}"))?;
        let client_verifier =
            cfg.client_ca.as_deref().map(client_verifier).transpose().map_err(|e| format!("{what} TLS: {e}"))?;
        let cert = Arc::new(ReloadingCert { current: ArcSwap::new(first) });
        let weak: Weak<ReloadingCert> = Arc::downgrade(&cert);
        let (cert_path, key_path) = (cfg.cert.clone(), cfg.key.clone());
        std::thread::Builder::new()
            .name("switchyard-tls".into())
            .spawn(move || loop {
                std::thread::sleep(TLS_RELOAD_INTERVAL);
                let Some(cert) = weak.upgrade() else { return };
                match load_pair(&cert_path, &key_path) {
                    Ok((bytes, _)) if bytes == seen => {}
                    Ok((bytes, key)) => {
                        cert.current.store(key);
                        seen = bytes;
                        tracing::info!(listener = what, cert = %cert_path.display(), "TLS certificate reloaded");
                    }
                    Err(e) => tracing::warn!(
                        listener = what,
                        "TLS certificate not reloaded, the previous one is still served: {e}"
                    ),
                }
            })
            .map_err(|e| format!("{what} TLS: cannot start the reload thread: {e}"))?;
        Ok(ServerTls { cert, client_verifier })
    }

    /// A rustls server config (for tokio-rustls) offering `alpn`.
    pub fn rustls_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, String> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &self.client_verifier {
            Some(v) => builder.with_client_cert_verifier(v.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(self.cert.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// The same for a pingora listener (HTTP/1.1).
    pub fn pingora_settings(&self) -> Result<TlsSettings, String> {
        let mut s = TlsSettings::intermediate("", "").map_err(|e| e.to_string())?;
        s.set_cert_resolver(self.cert.clone());
        if let Some(v) = &self.client_verifier {
            s.set_client_cert_verifier(v.clone());
        }
        Ok(s)
    }
}
