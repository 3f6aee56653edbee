//! The access and audit log: one JSON object per line, written by the data
//! plane (one line per request) and the control plane (one line per
//! mutation) to the same destination. Every value is JSON-escaped here, so
//! no client-supplied string — a header, a model name, an A/B `test_id` —
//! can end a line early or forge one. A leaf like the rest of this crate:
//! the binary configures it once ([`init`]); until then lines go to stdout.

use std::fmt::Write as _;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Lines waiting for the writer thread when not configured.
pub const DEFAULT_QUEUE: usize = 8192;
/// How long a written line may sit in the writer's buffer when not configured.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// The writer's buffer: lines are written to the destination in chunks of about this size.
const BUFFER_BYTES: usize = 64 * 1024;
/// Longest `flush` waits for the writer (at shutdown a stuck destination must not hold the exit).
const FLUSH_PATIENCE: Duration = Duration::from_secs(2);

enum Msg {
    Line(String),
    /// Write out everything buffered, then answer.
    Flush(mpsc::Sender<()>),
}

struct Sink {
    tx: SyncSender<Msg>,
    /// Per-request lines on at all.
    enabled: bool,
    /// Fraction of successful requests written.
    sample: f64,
    seen: AtomicU64,
    /// Access lines dropped because the writer's queue was full.
    dropped: AtomicU64,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Where lines go: `stdout`, `stderr` or a file appended to; at most `queue`
/// lines wait for the writer thread, which flushes every `flush_interval`.
pub fn init(enabled: bool, path: &str, sample: f64, queue: usize, flush_interval: Duration) -> std::io::Result<()> {
    let out: Box<dyn Write + Send> = match path {
        "stdout" => Box::new(std::io::stdout()),
        "stderr" => Box::new(std::io::stderr()),
        p => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(p)?),
    };
    let sink = start(out, enabled, sample, queue, flush_interval)?;
    SINK.set(sink).map_err(|_| std::io::Error::other("the access log is already set up"))
}

/// Starts the writer thread: the only place lines are written and flushed,
/// so a slow destination never stalls a request.
fn start(
    out: Box<dyn Write + Send>,
    enabled: bool,
    sample: f64,
    queue: usize,
    flush_interval: Duration,
) -> std::io::Result<Sink> {
    let (tx, rx) = mpsc::sync_channel::<Msg>(queue.max(1));
    std::thread::Builder::new().name("switchyard-access-log".into()).spawn(move || {
        let mut out = std::io::BufWriter::with_capacity(BUFFER_BYTES, out);
        // When the oldest unflushed line was written.
        let mut dirty: Option<Instant> = None;
        loop {
            let wait = dirty.map_or(flush_interval, |d| flush_interval.saturating_sub(d.elapsed()));
            match rx.recv_timeout(wait) {
                Ok(Msg::Line(l)) => {
                    // A failing destination is not the requests' problem: the line is lost.
                    let _ = out.write_all(l.as_bytes());
                    dirty.get_or_insert_with(Instant::now);
                }
                Ok(Msg::Flush(done)) => {
                    let _ = out.flush();
                    dirty = None;
                    let _ = done.send(());
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
            if dirty.is_some_and(|d| d.elapsed() >= flush_interval) {
                let _ = out.flush();
                dirty = None;
            }
        }
    })?;
    Ok(Sink { tx, enabled, sample, seen: AtomicU64::new(0), dropped: AtomicU64::new(0) })
}

fn sink() -> &'static Sink {
    SINK.get_or_init(|| {
        start(Box::new(std::io::stdout()), true, 1.0, DEFAULT_QUEUE, DEFAULT_FLUSH_INTERVAL)
            .expect("starting the access log writer")
    })
}

/// Writes out every line handed over so far (drain and shutdown), waiting
/// at most two seconds for the writer.
pub fn flush() {
    let Some(s) = SINK.get() else { return };
    let (tx, rx) = mpsc::channel();
    if s.tx.send(Msg::Flush(tx)).is_ok() {
        let _ = rx.recv_timeout(FLUSH_PATIENCE);
    }
}

/// Access lines dropped so far because the writer could not keep up.
pub fn dropped() -> u64 {
    SINK.get().map_or(0, |s| s.dropped.load(Ordering::Relaxed))
}

/// Whether per-request lines are on at all: a caller may skip gathering a
/// line's fields when they are not (`wanted` still decides each line).
pub fn enabled() -> bool {
    sink().enabled
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
pub struct Line(String, Kind);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A request's line: dropped (and counted) when the writer is behind.
    Access,
    /// A control-plane mutation's: rare, and never dropped (its writer waits for room).
    Audit,
}

impl Line {
    /// `kind` is `access` (a request) or `audit` (a control-plane mutation).
    pub fn new(kind: &str) -> Line {
        let k = if kind == "audit" { Kind::Audit } else { Kind::Access };
        let mut l = Line(String::with_capacity(384), k);
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

    /// Hands the line to the writer thread (whole, so lines of concurrent
    /// requests never interleave) without waiting on the destination. When
    /// the writer's queue is full an access line is dropped and counted
    /// ([`dropped`]) rather than block a request; an audit line waits.
    pub fn write(mut self) {
        self.0.push_str("}\n");
        let s = sink();
        match self.1 {
            Kind::Audit => {
                let _ = s.tx.send(Msg::Line(self.0));
            }
            Kind::Access => {
                if let Err(TrySendError::Full(_)) = s.tx.try_send(Msg::Line(self.0)) {
                    s.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
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

    /// A destination that blocks until told, and records what reached it.
    /// (open, bytes written, flushes, writes that started).
    type GateState = (bool, Vec<u8>, usize, usize);

    #[derive(Clone, Default)]
    struct Gate(std::sync::Arc<(std::sync::Mutex<GateState>, std::sync::Condvar)>);

    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let (m, cv) = &*self.0;
            m.lock().unwrap().3 += 1;
            let mut g = cv.wait_while(m.lock().unwrap(), |(open, _, _, _)| !*open).unwrap();
            g.1.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.0 .0.lock().unwrap().2 += 1;
            Ok(())
        }
    }

    #[test]
    fn the_writer_buffers_flushes_and_drops_instead_of_blocking() {
        let gate = Gate::default();
        let s = start(Box::new(gate.clone()), true, 1.0, 2, Duration::from_secs(3600)).unwrap();
        let send = |n: usize| {
            let line = Line::new("access").num("n", n);
            let mut text = line.0;
            text.push_str("}\n");
            s.tx.try_send(Msg::Line(text))
        };
        assert!(send(0).is_ok());
        let (tx, rx) = mpsc::channel();
        s.tx.send(Msg::Flush(tx)).unwrap();
        // The destination is closed: the flush blocks the writer, and the queue (2) fills up.
        let t0 = Instant::now();
        while gate.0 .0.lock().unwrap().3 == 0 {
            assert!(t0.elapsed() < Duration::from_secs(10), "the writer never wrote");
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut full = 0;
        for n in 1..10 {
            if matches!(send(n), Err(TrySendError::Full(_))) {
                full += 1;
            }
        }
        assert_eq!(full, 7, "two queued, the rest refused at once");
        {
            let (m, cv) = &*gate.0;
            m.lock().unwrap().0 = true;
            cv.notify_all();
        }
        rx.recv_timeout(Duration::from_secs(5)).expect("the flush completes");
        let (tx, rx) = mpsc::channel();
        s.tx.send(Msg::Flush(tx)).unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let g = gate.0 .0.lock().unwrap();
        let text = String::from_utf8(g.1.clone()).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.lines().all(|l| l.starts_with("{\"ts\"") && l.ends_with('}')), "{text}");
        assert!(g.2 >= 2, "flushed on request");
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let mut s = String::new();
        rfc3339_now(&mut s);
        assert_eq!(s.len(), 24, "{s}");
        assert!(s.starts_with("20") && s.ends_with('Z') && &s[10..11] == "T", "{s}");
    }
}
