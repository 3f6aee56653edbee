//! PEM files — certificate chains, private keys, CA bundles — read from disk
//! with every error naming the file. The one PEM reader of the workspace:
//! config validation checks a file with it, and the TLS code (listeners,
//! backends, the control API, the injector, JWKS fetches) loads with it, so
//! a file that validates is a file that loads.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A file's bytes, so a reloader can tell whether it changed.
pub fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Every CERTIFICATE block of a PEM file (a chain, leaf first, or a CA bundle).
pub fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no CERTIFICATE block", path.display()));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("{}: not a PEM private key: {e}", path.display()))
}

/// Reads and parses a certificate file.
pub fn read_certificates(path: &Path) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), String> {
    let pem = read(path)?;
    let certs = certificates(path, &pem)?;
    Ok((pem, certs))
}

/// Reads and parses a private key file.
pub fn read_private_key(path: &Path) -> Result<(Vec<u8>, PrivateKeyDer<'static>), String> {
    let pem = read(path)?;
    let key = private_key(path, &pem)?;
    Ok((pem, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = std::env::temp_dir().join(format!("switchyard-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        assert!(read_certificates(&missing).unwrap_err().contains("missing.pem"));
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no pem here\n").unwrap();
        let e = read_certificates(&empty).unwrap_err();
        assert!(e.contains("empty.pem") && e.contains("no CERTIFICATE"), "{e}");
        let e = read_private_key(&empty).unwrap_err();
        assert!(e.contains("empty.pem") && e.contains("private key"), "{e}");
        let broken = dir.join("broken.pem");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n").unwrap();
        assert!(read_certificates(&broken).unwrap_err().contains("broken.pem"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
