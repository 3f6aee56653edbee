//! TLS to an `https://` default upstream, in the form pingora's rustls
//! connector takes per peer: the CA bundle (`options.ca`, which replaces the
//! platform's roots for that connection), the client certificate and key
//! (`client_cert_key`, for upstreams that require mutual TLS), and the name
//! sent as SNI and verified (`server_name`, else the upstream's host). The
//! files are the ones a backend's `tls:` names, read with the same PEM reader
//! and re-read when they change (`switchyard_tls::reload`): each new
//! connection takes the latest good set. Everything pingora would `expect`
//! or `unwrap` later — a certificate x509-parser cannot read, a key whose
//! DER form is unrecognised, a certificate and key that do not match — is
//! checked here, so a bad file is an error naming it, never a panic on the
//! request path.

use std::net::SocketAddr;
use std::sync::Arc;

use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::{parse_x509, CertKey, WrappedX509};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use switchyard_config::{pem, ClientTlsConfig};
use switchyard_tls::reload::Reloading;

/// One consistent set of files, as pingora wants them.
struct Material {
    /// `None`: the platform's roots (pingora's connector default).
    ca: Option<Arc<[WrappedX509]>>,
    identity: Option<Arc<CertKey>>,
}

/// The default upstream's TLS settings, loaded and kept fresh.
pub struct UpstreamTls {
    material: Arc<Reloading<Material>>,
    /// Sent as SNI and verified; never empty (pingora skips verification for an empty SNI).
    sni: String,
}

/// Certificates as pingora holds them, each first parsed the way
/// `WrappedX509::new(_, parse_x509)` will (that one panics on failure).
fn wrapped(path: &std::path::Path, certs: &[CertificateDer<'_>]) -> Result<Vec<WrappedX509>, String> {
    certs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            x509_parser::parse_x509_certificate(c.as_ref())
                .map_err(|e| format!("{}: certificate #{} is not valid X.509: {e}", path.display(), i + 1))?;
            Ok(WrappedX509::new(c.to_vec(), parse_x509))
        })
        .collect()
}

fn build(cfg: &ClientTlsConfig) -> Result<(Vec<u8>, Material), String> {
    let mut seen = Vec::new();
    let ca = match &cfg.ca {
        None => None,
        Some(path) => {
            let (bytes, certs) = pem::read_certificates(path)?;
            seen.extend_from_slice(&bytes);
            // The root store pingora builds per connection must accept each one.
            let mut roots = rustls::RootCertStore::empty();
            for c in &certs {
                roots.add(c.clone()).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            Some(Arc::from(wrapped(path, &certs)?))
        }
    };
    let identity = match &cfg.identity {
        None => None,
        Some(id) => {
            let (cert_bytes, chain) = pem::read_certificates(&id.cert)?;
            let (key_bytes, key) = pem::read_private_key(&id.key)?;
            seen.extend_from_slice(&cert_bytes);
            seen.extend_from_slice(&key_bytes);
            let der = key.secret_der().to_vec();
            // pingora turns these bytes back into a key with `try_into().unwrap()`.
            PrivateKeyDer::try_from(der.clone())
                .map_err(|e| format!("{}: private key not usable: {e}", id.key.display()))?;
            wrapped(&id.cert, &chain)?;
            // The same check pingora's `with_client_auth_cert` makes, made now.
            rustls::ClientConfig::builder_with_provider(switchyard_tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_client_auth_cert(chain.clone(), key)
                .map_err(|e| format!("{} and {}: {e}", id.cert.display(), id.key.display()))?;
            Some(Arc::new(CertKey::new(chain.iter().map(|c| c.to_vec()).collect(), der)))
        }
    };
    Ok((seen, Material { ca, identity }))
}

impl UpstreamTls {
    /// Reads the files now (a bad one is an error naming it) and re-reads
    /// them while the returned value lives. `authority`: the upstream's
    /// `host:port`, whose host is the name verified without `server_name`.
    pub fn load(cfg: &ClientTlsConfig, authority: &str) -> Result<UpstreamTls, String> {
        Self::load_named(cfg, authority, "listeners.http.default_upstream_tls")
    }

    /// `load`, for the upstream that errors call `what`.
    pub fn load_named(cfg: &ClientTlsConfig, authority: &str, what: &str) -> Result<UpstreamTls, String> {
        let what = format!("{what} ({authority})");
        let sni = match &cfg.server_name {
            Some(n) => n.clone(),
            None => {
                let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
                host.trim_start_matches('[').trim_end_matches(']').to_string()
            }
        };
        ServerName::try_from(sni.as_str())
            .map_err(|e| format!("{what}: `{sni}` is not a valid TLS server name: {e}"))?;
        let cfg = cfg.clone();
        let material = Reloading::start(what.clone(), move || build(&cfg)).map_err(|e| format!("{what}: {e}"))?;
        Ok(UpstreamTls { material, sni })
    }

    /// A TLS peer at `addr` with the current files, the hostname verified.
    pub fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, true, self.sni.clone());
        let m = self.material.load();
        peer.options.ca = m.ca.clone();
        peer.client_cert_key = m.identity.clone();
        peer.options.verify_cert = true;
        peer.options.verify_hostname = true;
        peer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verified_name_is_the_host_unless_overridden() {
        let t = UpstreamTls::load(&ClientTlsConfig::default(), "10.0.0.7:8443").unwrap();
        let peer = t.peer("10.0.0.7:8443".parse().unwrap());
        assert_eq!(peer.sni, "10.0.0.7");
        assert!(peer.options.ca.is_none() && peer.client_cert_key.is_none());
        assert_eq!(UpstreamTls::load(&ClientTlsConfig::default(), "[::1]:443").unwrap().sni, "::1");
        assert_eq!(UpstreamTls::load(&ClientTlsConfig::default(), "up.svc:443").unwrap().sni, "up.svc");
        let cfg = ClientTlsConfig { server_name: Some("up.internal".into()), ..ClientTlsConfig::default() };
        assert_eq!(UpstreamTls::load(&cfg, "10.0.0.7:8443").unwrap().sni, "up.internal");
    }

    #[test]
    fn a_bad_ca_file_is_named() {
        let dir = std::env::temp_dir().join(format!("switchyard-upstream-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let cfg = ClientTlsConfig { ca: Some(missing), ..ClientTlsConfig::default() };
        let e = UpstreamTls::load(&cfg, "h:1").err().unwrap();
        assert!(e.contains("default_upstream_tls") && e.contains("missing.pem"), "{e}");
        // Base64 of bytes that are no certificate: PEM-valid, X.509-invalid.
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        let cfg = ClientTlsConfig { ca: Some(junk), ..ClientTlsConfig::default() };
        let e = UpstreamTls::load(&cfg, "h:1").err().unwrap();
        assert!(e.contains("junk.pem"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
