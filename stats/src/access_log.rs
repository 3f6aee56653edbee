//! The access and audit log: one JSON object per line, written by the data
//! plane (one line per request) and the control plane (one line per
//! mutation) to the same destination. Every value is JSON-escaped here, so
//! no client-supplied string — a header, a model name, an A/B `test_id` —
//! can end a line early or forge one. A leaf like the rest of this crate:
//! the binary configures it once ([`init`]); until then lines go to stdout.

use std::fmt::Write as _;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

struct Sink {
    out: Mutex<Box<dyn Write + Send>>,
    /// Per-request lines on at all.
    enabled: bool,
    /// Fraction of successful requests written.
    sample: f64,
    seen: AtomicU64,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Where lines go: `stdout`, `stderr` or a file appended to.
pub fn init(enabled: bool, path: &str, sample: f64) -> std::io::Result<()> {
    let out: Box<dyn Write + Send> = match path {
        "stdout" => Box::new(std::io::stdout()),
        "stderr" => Box::new(std::io::stderr()),
        p => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(p)?),
    };
    let sink = Sink { out: Mutex::new(out), enabled, sample, seen: AtomicU64::new(0) };
    SINK.set(sink).map_err(|_| std::io::Error::other("the access log is already set up"))
}

fn sink() -> &'static Sink {
    SINK.get_or_init(|| Sink {
        out: Mutex::new(Box::new(std::io::stdout())),
        enabled: true,
        sample: 1.0,
        seen: AtomicU64::new(0),
    })
}

/// Whether a request line is due: every error, and `sample` of the rest —
/// spread evenly (every 10th at 0.1), not by chance, so the rate is exact.
pub fn wanted(error: bool) -> bool {
    let s = sink();
    if !s.enabled {
        return false;
    }
    if error || s.sample >= 1.0 {
        return true;
    }
    let n = s.seen.fetch_add(1, Ordering::Relaxed) as f64;
    ((n + 1.0) * s.sample).floor() > (n * s.sample).floor()
}

/// One log line under construction: `{"ts":"…","kind":"…"` then fields in order.
pub struct Line(String);

impl Line {
    /// `kind` is `access` (a request) or `audit` (a control-plane mutation).
    pub fn new(kind: &str) -> Line {
        let mut l = Line(String::with_capacity(384));
        l.0.push_str("{\"ts\":\"");
        rfc3339_now(&mut l.0);
        l.0.push('"');
        l.str("kind", kind)
    }

    pub fn str(mut self, key: &str, v: &str) -> Line {
        self.key(key);
        escape_into(&mut self.0, v);
        self
    }

    pub fn opt(self, key: &str, v: Option<&str>) -> Line {
        match v {
            Some(v) => self.str(key, v),
            None => self,
        }
    }

    pub fn num(mut self, key: &str, v: impl std::fmt::Display) -> Line {
        self.key(key);
        let _ = write!(self.0, "{v}");
        self
    }

    fn key(&mut self, key: &str) {
        self.0.push(',');
        escape_into(&mut self.0, key);
        self.0.push(':');
    }

    /// Writes the line whole (one `write` of the whole line, so lines of
    /// concurrent requests never interleave). A failing destination is not
    /// the request's problem: the line is dropped.
    pub fn write(mut self) {
        self.0.push_str("}\n");
        if let Ok(mut out) = sink().out.lock() {
            let _ = out.write_all(self.0.as_bytes());
            let _ = out.flush();
        }
    }

    /// The line as it would be written (tests).
    pub fn finish(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

/// `s` as a JSON string: quotes, backslashes and every control character escaped.
pub fn escape_into(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // U+2028/2029 end lines in some readers.
            c if (c as u32) < 0x20 || c == '\u{7f}' || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Now as `2026-11-30T06:12:39.123Z`.
fn rfc3339_now(out: &mut String) {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days → civil date.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_value_can_forge_a_line() {
        let evil = "t1\"}\n{\"ts\":\"x\",\"kind\":\"audit\",\"who\":\"admin\"\r\u{2028}\u{1b}[2J\\";
        let line = Line::new("audit").str("test_id", evil).str(evil, "k").num("status", 200).finish();
        assert!(!line.contains('\n') && !line.contains('\r') && !line.contains('\u{2028}'), "{line}");
        // One object, whose fields read back exactly.
        let mut fields = line.matches("\"kind\"").count();
        assert_eq!(fields, 1, "{line}");
        fields = line.matches("\"test_id\"").count();
        assert_eq!(fields, 1);
        assert!(line.starts_with("{\"ts\":\"") && line.ends_with("\"status\":200}"), "{line}");
        assert!(
            line.contains(
                r#""test_id":"t1\"}\n{\"ts\":\"x\",\"kind\":\"audit\",\"who\":\"admin\"\r\u2028\u001b[2J\\""#
            ),
            "{line}"
        );
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let mut s = String::new();
        rfc3339_now(&mut s);
        assert_eq!(s.len(), 24, "{s}");
        assert!(s.starts_with("20") && s.ends_with('Z') && &s[10..11] == "T", "{s}");
    }
}
