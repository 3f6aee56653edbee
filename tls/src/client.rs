//! TLS as a client — to a backend's endpoints, a JWKS URL: the CA the
//! server must chain to (a bundle from disk, or the platform's roots), an
//! optional client certificate for servers that require mutual TLS, and the
//! name sent as SNI and verified. The files are re-read when they change
//! ([`crate::reload`]); the next connection uses them.

use std::sync::{Arc, OnceLock};

use rustls::pki_types::ServerName;
use rustls::RootCertStore;
use switchyard_config::{pem, ClientTlsConfig};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::crypto::provider;
use crate::reload::Reloading;
use crate::server::load_roots;

/// The platform's CA certificates, read once per process.
fn platform_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            match rustls_native_certs::load_native_certs() {
                Ok(certs) => {
                    let (added, ignored) = roots.add_parsable_certificates(certs);
                    tracing::debug!(added, ignored, "platform CA certificates loaded");
                }
                Err(e) => tracing::warn!(error = %e, "the platform's CA certificates cannot be read"),
            }
            if roots.is_empty() {
                tracing::warn!(
                    "no platform CA certificates: TLS to servers without a configured `ca` will fail to verify"
                );
            }
            Arc::new(roots)
        })
        .clone()
}

fn build(cfg: &ClientTlsConfig, alpn: &[Vec<u8>]) -> Result<(Vec<u8>, rustls::ClientConfig), String> {
    let mut seen = Vec::new();
    let roots = match &cfg.ca {
        Some(ca) => {
            let (pem, roots) = load_roots(ca)?;
            seen.extend_from_slice(&pem);
            Arc::new(roots)
        }
        None => platform_roots(),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut config = match &cfg.identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let (cert_pem, chain) = pem::read_certificates(&id.cert)?;
            let (key_pem, key) = pem::read_private_key(&id.key)?;
            seen.extend_from_slice(&cert_pem);
            seen.extend_from_slice(&key_pem);
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("{} and {}: {e}", id.cert.display(), id.key.display()))?
        }
    };
    config.alpn_protocols = alpn.to_vec();
    Ok((seen, config))
}

/// A client's TLS settings, loaded and kept fresh.
pub struct ClientTls {
    config: Arc<Reloading<rustls::ClientConfig>>,
    server_name: Option<ServerName<'static>>,
    negotiates_h2: bool,
}

impl ClientTls {
    /// Reads the files now (a bad one is an error naming it) and re-reads
    /// them while the returned value lives. `alpn`: the protocols offered
    /// (`h2` for gRPC, `http/1.1` otherwise); `what` names the peer in logs.
    pub fn load(cfg: &ClientTlsConfig, alpn: &[&[u8]], what: &str) -> Result<Arc<ClientTls>, String> {
        let server_name = cfg
            .server_name
            .as_deref()
            .map(|n| ServerName::try_from(n.to_string()).map_err(|e| format!("{what}: server name `{n}`: {e}")))
            .transpose()?;
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let negotiates_h2 = alpn.iter().any(|p| p == b"h2");
        let (cfg, label) = (cfg.clone(), format!("{what} client TLS"));
        let config = Reloading::start(label, move || build(&cfg, &alpn)).map_err(|e| format!("{what}: {e}"))?;
        Ok(Arc::new(ClientTls { config, server_name, negotiates_h2 }))
    }

    /// The current rustls config (for clients that do their own handshakes).
    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        self.config.load()
    }

    /// Whether `h2` is offered (gRPC).
    pub fn negotiates_h2(&self) -> bool {
        self.negotiates_h2
    }

    /// The name to send and verify for a connection to `host`: the
    /// configured `server_name`, else the host itself (an IP address is
    /// verified against the certificate's IP addresses).
    pub fn server_name(&self, host: &str) -> Result<ServerName<'static>, String> {
        if let Some(n) = &self.server_name {
            return Ok(n.clone());
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_string()).map_err(|e| format!("`{host}` is not a valid TLS server name: {e}"))
    }

    /// The TLS handshake over a connected socket.
    pub async fn handshake(&self, host: &str, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        let name = self.server_name(host).map_err(std::io::Error::other)?;
        tokio_rustls::TlsConnector::from(self.config()).connect(name, tcp).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verified_name_is_the_host_unless_overridden() {
        let t = ClientTls::load(&ClientTlsConfig::default(), &[b"h2"], "test").unwrap();
        assert!(t.negotiates_h2());
        assert!(matches!(t.server_name("[::1]").unwrap(), ServerName::IpAddress(_)));
        assert!(matches!(t.server_name("10.0.0.7").unwrap(), ServerName::IpAddress(_)));
        assert_eq!(t.server_name("triton.models.svc").unwrap().to_str(), "triton.models.svc");
        assert!(t.server_name("bad name").is_err());
        let cfg = ClientTlsConfig { server_name: Some("triton.internal".into()), ..ClientTlsConfig::default() };
        let t = ClientTls::load(&cfg, &[b"http/1.1"], "test").unwrap();
        assert!(!t.negotiates_h2());
        assert_eq!(t.server_name("10.0.0.7").unwrap().to_str(), "triton.internal");
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let cfg = ClientTlsConfig { ca: Some("/nonexistent/ca.pem".into()), ..ClientTlsConfig::default() };
        let e = ClientTls::load(&cfg, &[], "backend `b`").err().unwrap();
        assert!(e.contains("backend `b`") && e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
