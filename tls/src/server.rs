//! A listener's TLS: the served certificate chain and key, and with
//! `client_ca` the CA client certificates must chain to (mutual TLS), each
//! re-read from disk when it changes ([`crate::reload`]). One `ServerTls`
//! feeds pingora (HTTP, metrics: `switchyard_proxy::tls`), tokio-rustls
//! (gRPC, the control API, the injection webhook) alike.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use switchyard_config::{pem, TlsConfig};

use crate::crypto::provider;
use crate::reload::Reloading;

/// A certificate chain and its key, read and checked together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<(Vec<u8>, CertifiedKey), String> {
    let (mut seen, chain) = pem::read_certificates(cert)?;
    let (key_pem, private) = pem::read_private_key(key)?;
    let certified = CertifiedKey::from_der(chain, private, &provider())
        .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))?;
    seen.extend_from_slice(&key_pem);
    Ok((seen, certified))
}

/// The CA certificates of a PEM bundle as a root store.
pub fn load_roots(ca: &Path) -> Result<(Vec<u8>, RootCertStore), String> {
    let (pem, certs) = pem::read_certificates(ca)?;
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    Ok((pem, roots))
}

/// The served certificate, swapped whole when its files change.
pub struct ReloadingCert(Arc<Reloading<CertifiedKey>>);

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReloadingCert")
    }
}

impl ReloadingCert {
    pub fn start(cert: PathBuf, key: PathBuf, what: String) -> Result<Arc<ReloadingCert>, String> {
        let r = Reloading::start(what, move || load_certified_key(&cert, &key))?;
        Ok(Arc::new(ReloadingCert(r)))
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load())
    }
}

/// Client certificates verified against the current `client_ca`; a new CA
/// bundle on disk applies to the next handshake.
struct ReloadingClientVerifier(Arc<Reloading<Arc<dyn ClientCertVerifier>>>);

impl std::fmt::Debug for ReloadingClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReloadingClientVerifier")
    }
}

impl ClientCertVerifier for ReloadingClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints would borrow from a swapped value; they are optional (RFC 8446 §4.2.4).
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.load().verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.load().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.load().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.load().supported_verify_schemes()
    }
}

fn client_verifier(ca: &Path) -> Result<(Vec<u8>, Arc<dyn ClientCertVerifier>), String> {
    let (pem, roots) = load_roots(ca)?;
    let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| format!("{}: {e}", ca.display()))?;
    Ok((pem, v))
}

/// A listener's TLS, loaded and kept fresh.
pub struct ServerTls {
    cert: Arc<ReloadingCert>,
    client_verifier: Option<Arc<dyn ClientCertVerifier>>,
}

impl ServerTls {
    /// Reads the files now (a bad one fails start-up) and re-reads them while
    /// the listener lives; `what` names the listener in errors and logs.
    pub fn load(cfg: &TlsConfig, what: &str) -> Result<ServerTls, String> {
        let cert = ReloadingCert::start(cfg.cert.clone(), cfg.key.clone(), format!("{what} certificate"))
            .map_err(|e| format!("{what} TLS: {e}"))?;
        let client_verifier = match &cfg.client_ca {
            None => None,
            Some(ca) => {
                let ca = ca.clone();
                let r = Reloading::start(format!("{what} client CA"), move || client_verifier(&ca))
                    .map_err(|e| format!("{what} TLS: {e}"))?;
                Some(Arc::new(ReloadingClientVerifier(r)) as Arc<dyn ClientCertVerifier>)
            }
        };
        Ok(ServerTls { cert, client_verifier })
    }

    /// The served certificate, for servers that take a resolver (pingora).
    pub fn cert_resolver(&self) -> Arc<ReloadingCert> {
        self.cert.clone()
    }

    /// The client certificate verifier, when client certificates are required.
    pub fn client_verifier(&self) -> Option<Arc<dyn ClientCertVerifier>> {
        self.client_verifier.clone()
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
}
