//! TLS settings: a listener's certificate and key, a client's CA, identity
//! and server name. Every file is read and parsed here (with
//! [`crate::pem`], the same reader that later loads it), so a missing file
//! or one that is not PEM fails validation naming the field and the file
//! instead of failing a connection later.

use std::path::Path;

use serde_saphyr::Spanned;

use super::fields::{escaped, loc, Errors};
use crate::pem;
use crate::raw::{RawClientTls, RawTls};
use crate::validated::{ClientIdentity, ClientTlsConfig, TlsConfig};

type S<T> = Spanned<T>;

fn certificates(errs: &mut Errors, field: String, v: &S<String>, base_dir: &Path) -> std::path::PathBuf {
    let p = base_dir.join(&v.value);
    if let Err(m) = pem::read_certificates(&p) {
        errs.at(field, loc(v), m);
    }
    p
}

fn private_key(errs: &mut Errors, field: String, v: &S<String>, base_dir: &Path) -> std::path::PathBuf {
    let p = base_dir.join(&v.value);
    if let Err(m) = pem::read_private_key(&p) {
        errs.at(field, loc(v), m);
    }
    p
}

/// A listener's TLS, its files checked.
pub(super) fn server(errs: &mut Errors, path: &str, raw: &S<RawTls>, base_dir: &Path) -> TlsConfig {
    let t = &raw.value;
    TlsConfig {
        cert: certificates(errs, format!("{path}.cert"), &t.cert, base_dir),
        key: private_key(errs, format!("{path}.key"), &t.key, base_dir),
        client_ca: t.client_ca.as_ref().map(|c| certificates(errs, format!("{path}.client_ca"), c, base_dir)),
    }
}

/// A client's TLS, its files checked; `None` in the file: the defaults
/// (platform roots, no client certificate, the endpoint's host as the name).
pub(super) fn client(errs: &mut Errors, path: &str, raw: Option<&S<RawClientTls>>, base_dir: &Path) -> ClientTlsConfig {
    let Some(raw) = raw else { return ClientTlsConfig::default() };
    let t = &raw.value;
    let ca = t.ca.as_ref().map(|c| certificates(errs, format!("{path}.ca"), c, base_dir));
    let identity = match (&t.cert, &t.key) {
        (Some(c), Some(k)) => Some(ClientIdentity {
            cert: certificates(errs, format!("{path}.cert"), c, base_dir),
            key: private_key(errs, format!("{path}.key"), k, base_dir),
        }),
        (None, None) => None,
        (Some(c), None) => {
            errs.at(format!("{path}.key"), loc(c), "a client certificate needs its `key`");
            None
        }
        (None, Some(k)) => {
            errs.at(format!("{path}.cert"), loc(k), "a client `key` needs its `cert`");
            None
        }
    };
    let server_name = t.server_name.as_ref().and_then(|n| {
        let ok = !n.value.is_empty()
            && n.value.len() <= 253
            && n.value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
        if !ok {
            errs.at(
                format!("{path}.server_name"),
                loc(n),
                format!("`{}` is not a DNS name or IP address", escaped(&n.value)),
            );
        }
        ok.then(|| n.value.clone())
    });
    ClientTlsConfig { ca, identity, server_name }
}

/// Whether a remote backend's endpoints use TLS: an `https://` endpoint
/// does, and so does every endpoint of a backend with a `tls:` block
/// (gRPC endpoints and `dns:` names are often written bare, `host:port`).
/// An explicit `http://` beside `https://` or a `tls:` block is refused:
/// one backend, one transport.
pub(super) fn backend_uses_tls(
    errs: &mut Errors,
    path: &str,
    list: &[S<String>],
    dns: Option<&S<String>>,
    block: Option<&S<RawClientTls>>,
) -> bool {
    let named: Vec<(String, &S<String>)> = list
        .iter()
        .enumerate()
        .map(|(i, e)| (format!("{path}.endpoints[{i}]"), e))
        .chain(dns.map(|d| (format!("{path}.dns"), d)))
        .collect();
    let https = named.iter().find(|(_, e)| e.value.starts_with("https://"));
    let http = named.iter().find(|(_, e)| e.value.starts_with("http://"));
    match (https, http, block) {
        (Some(_), Some((field, e)), _) => {
            errs.at(
                field.clone(),
                loc(e),
                format!(
                    "`{}` is http:// but other endpoints are https://; a backend uses one transport",
                    escaped(&e.value)
                ),
            );
            true
        }
        (None, Some((field, e)), Some(_)) => {
            errs.at(
                field.clone(),
                loc(e),
                format!("`{}` is http:// but the backend has `tls:` settings; write https://", escaped(&e.value)),
            );
            false
        }
        (Some(_), _, _) | (None, None, Some(_)) => true,
        (None, _, None) => false,
    }
}
