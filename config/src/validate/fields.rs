//! One field at a time: the error collector every section reports into, and
//! the checks of scalar values (durations, addresses, counts, header names)
//! that several sections share.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use crate::validated::{FieldError, DEFAULT_GRPC_MAX_MESSAGE_BYTES};

/// Every problem found so far; validation goes on after one, so all are reported at once.
#[derive(Default)]
pub(super) struct Errors(pub(super) Vec<FieldError>);

impl Errors {
    pub(super) fn at(&mut self, path: impl Into<String>, loc: &Location, message: impl Into<String>) {
        self.0.push(FieldError { path: path.into(), line: loc.line(), column: loc.column(), message: message.into() });
    }
}

pub(super) fn loc<T>(s: &Spanned<T>) -> &Location {
    &s.referenced
}

/// `s` as it can be shown in a message: control characters, whitespace other
/// than a space and non-ASCII characters escaped (`\t`, `\u{1}`), so an
/// invisible culprit becomes visible.
pub(super) fn escaped(s: &str) -> String {
    s.chars()
        .map(|c| if c == ' ' || c.is_ascii_graphic() { c.to_string() } else { c.escape_default().to_string() })
        .collect()
}

/// Parses `250ms`, `2s`, `1.5s`, `3m`, `100us`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{s}` has no unit (use us, ms, s, m or h)"))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a duration"))?;
    let secs = match unit.trim() {
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("unknown unit `{other}` in `{s}` (use us, ms, s, m or h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{s}` is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub(super) fn duration(
    errs: &mut Errors,
    path: &str,
    v: &Option<Spanned<String>>,
    default: Duration,
    allow_zero: bool,
) -> Duration {
    match v {
        None => default,
        Some(s) => match parse_duration(&s.value) {
            Ok(d) if d.is_zero() && !allow_zero => {
                errs.at(path, loc(s), "must be greater than zero");
                default
            }
            Ok(d) => d,
            Err(m) => {
                errs.at(path, loc(s), m);
                default
            }
        },
    }
}

pub(super) fn address(errs: &mut Errors, path: &str, v: &Option<Spanned<String>>, default: &str) -> SocketAddr {
    let (text, l) = match v {
        Some(s) => (s.value.as_str(), Some(loc(s))),
        None => (default, None),
    };
    match text.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            errs.at(
                path,
                l.unwrap_or(&Location::UNKNOWN),
                format!("`{text}` is not an address of the form IP:PORT (e.g. 0.0.0.0:8000)"),
            );
            default.parse().expect("default addresses parse")
        }
    }
}

pub(super) fn positive(errs: &mut Errors, path: &str, v: &Option<Spanned<u64>>, default: usize) -> NonZeroUsize {
    let n = match v {
        None => default,
        Some(s) if s.value == 0 => {
            errs.at(path, loc(s), "must be at least 1");
            default
        }
        Some(s) => s.value as usize,
    };
    NonZeroUsize::new(n.max(1)).expect("max(1) is non-zero")
}

/// A gRPC message limit: at least 1 byte, at most 4 GiB (the length prefix is a u32).
pub(super) fn message_bytes(errs: &mut Errors, path: &str, v: &Option<Spanned<u64>>) -> usize {
    match v {
        None => DEFAULT_GRPC_MAX_MESSAGE_BYTES,
        Some(s) if s.value == 0 || s.value > u32::MAX as u64 => {
            errs.at(path, loc(s), format!("must be between 1 and {} bytes, got {}", u32::MAX, s.value));
            DEFAULT_GRPC_MAX_MESSAGE_BYTES
        }
        Some(s) => s.value as usize,
    }
}

/// An HTTP header name (an RFC 9110 token), lower-cased; `None` (and an error) when it is not one.
pub(super) fn header_name(errs: &mut Errors, path: &str, s: &Spanned<String>) -> Option<String> {
    let v = s.value.trim().to_ascii_lowercase();
    let ok = !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !ok {
        errs.at(
            path,
            loc(s),
            format!(
                "`{}` is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only)",
                escaped(&s.value)
            ),
        );
        return None;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2ms").unwrap(), Duration::from_millis(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("100us").unwrap(), Duration::from_micros(100));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("ms").is_err());
    }

    #[test]
    fn escaping_shows_invisible_characters() {
        assert_eq!(escaped("plain host:80"), "plain host:80");
        assert_eq!(escaped("a\tb\u{1}c\u{7f}"), "a\\tb\\u{1}c\\u{7f}");
        assert_eq!(escaped("zero\u{200b}width"), "zero\\u{200b}width");
    }
}
