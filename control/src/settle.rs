//! When a config file's contents count as written. Editors and
//! orchestrators write in many ways (tmp + rename, in place, a slow writer
//! trickling bytes, a `..data` symlink swap); reading in the middle of a
//! write can yield a valid *prefix* of the new file — a config with a model
//! missing. So a content read is trusted only once it has stopped changing:
//! the file is read at the start and at the end of a settle window, and only
//! identical contents are applied. Different contents start another window;
//! nothing is applied while the file keeps changing, however long that is.
//!
//! A window ends after [`QUIET`] without directory events, or at the latest
//! [`MAX_WINDOW`] after it began: a stream of events (a busy directory, a
//! file touched over and over) cannot keep a window open, so stable
//! contents are still applied — the bound is on the window, never on the
//! rule that contents must agree.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

/// Quiet time (no directory events) that ends a settle window.
pub const QUIET: Duration = Duration::from_millis(50);
/// Longest settle window: a directory that never goes quiet still gets its contents compared.
pub const MAX_WINDOW: Duration = Duration::from_millis(250);
/// How long an explicit reload (`POST /reload`) waits for a changing file before it gives up.
pub const EXPLICIT_GIVE_UP: Duration = Duration::from_secs(5);
/// After this long of changing contents, one warning says why nothing is applied yet.
const WARN_AFTER: Duration = Duration::from_secs(2);

/// One read of the config file: its text, or why it could not be read.
pub type Contents = Result<String, String>;

/// The settle rule's timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub quiet: Duration,
    pub max_window: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing { quiet: QUIET, max_window: MAX_WINDOW }
    }
}

/// How settling ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// The same contents at the start and the end of a window.
    Stable(Contents),
    /// Still changing after the caller's give-up time.
    StillChanging(Duration),
    /// The event source is gone (the watcher stopped).
    Closed,
}

/// Reads `path` off the async workers (tokio's blocking pool).
pub async fn read(path: &Path) -> Contents {
    tokio::fs::read_to_string(path).await.map_err(|e| format!("{}: cannot read: {e}", path.display()))
}

/// Waits until `events` has been quiet for `t.quiet`, or `t.max_window` passed; `false` when it closed.
async fn window(events: &mut UnboundedReceiver<()>, t: Timing) -> bool {
    let end = Instant::now() + t.max_window;
    loop {
        let wait = t.quiet.min(end.saturating_duration_since(Instant::now()));
        if wait.is_zero() {
            return true;
        }
        match tokio::time::timeout(wait, events.recv()).await {
            Ok(Some(())) => continue,
            Ok(None) => return false,
            Err(_) => return true,
        }
    }
}

/// Reads with `read` until the contents at the start and the end of a window
/// agree, and returns them. Without `events` a window is `t.quiet` long.
/// `give_up`: stop waiting for a file that keeps changing (never applied).
pub async fn settle<R, F>(
    mut read: R,
    mut events: Option<&mut UnboundedReceiver<()>>,
    t: Timing,
    give_up: Option<Duration>,
) -> Settled
where
    R: FnMut() -> F,
    F: Future<Output = Contents>,
{
    let began = Instant::now();
    let mut warned = false;
    let mut before = read().await;
    loop {
        match events.as_deref_mut() {
            Some(rx) => {
                if !window(rx, t).await {
                    return Settled::Closed;
                }
            }
            None => tokio::time::sleep(t.quiet).await,
        }
        let after = read().await;
        if after == before {
            return Settled::Stable(after);
        }
        before = after;
        let waited = began.elapsed();
        if give_up.is_some_and(|g| waited >= g) {
            return Settled::StillChanging(waited);
        }
        if !warned && waited >= WARN_AFTER {
            warned = true;
            tracing::warn!(?waited, "the config file keeps changing; it is applied once it stops");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::sync::mpsc;

    use super::*;

    const T: Timing = Timing { quiet: Duration::from_millis(5), max_window: Duration::from_millis(20) };

    /// A file whose contents change on each of the first `changes` reads ("v0", "v1", ...), then stay.
    fn changing(changes: usize) -> (Arc<AtomicUsize>, impl FnMut() -> std::future::Ready<Contents>) {
        let reads = Arc::new(AtomicUsize::new(0));
        let r = reads.clone();
        let read = move || {
            let n = r.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok(format!("v{}", n.min(changes))))
        };
        (reads, read)
    }

    #[tokio::test]
    async fn stable_contents_are_returned_after_one_window() {
        let (reads, read) = changing(0);
        assert_eq!(settle(read, None, T, None).await, Settled::Stable(Ok("v0".into())));
        assert_eq!(reads.load(Ordering::SeqCst), 2, "one read at each end of the window");
    }

    #[tokio::test]
    async fn changing_contents_are_never_returned_until_they_stop_changing() {
        // Changes on every read for longer than many max windows: no give-up, no half file.
        let (reads, read) = changing(30);
        assert_eq!(settle(read, None, T, None).await, Settled::Stable(Ok("v30".into())));
        assert_eq!(reads.load(Ordering::SeqCst), 32);
    }

    #[tokio::test]
    async fn an_explicit_reload_gives_up_on_a_file_that_keeps_changing() {
        let (_, read) = changing(usize::MAX);
        let r = settle(read, None, T, Some(Duration::from_millis(30))).await;
        assert!(matches!(r, Settled::StillChanging(_)), "{r:?}");
    }

    #[tokio::test]
    async fn unreadable_is_a_stable_answer_too() {
        let read = || std::future::ready(Err::<String, _>("gone".to_string()));
        assert_eq!(settle(read, None, T, None).await, Settled::Stable(Err("gone".into())));
    }

    #[tokio::test]
    async fn a_steady_stream_of_events_does_not_starve_stable_contents() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        // An event every millisecond, forever (until the test ends): never quiet.
        let feeder = tokio::spawn(async move {
            loop {
                if tx.send(()).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let (_, read) = changing(3);
        let r = tokio::time::timeout(Duration::from_secs(10), settle(read, Some(&mut rx), T, None)).await;
        assert_eq!(r.expect("settled despite the events"), Settled::Stable(Ok("v3".into())));
        feeder.abort();
    }

    #[tokio::test]
    async fn events_extend_a_window_until_quiet() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        for _ in 0..3 {
            tx.send(()).unwrap();
        }
        let started = Instant::now();
        assert!(window(&mut rx, T).await);
        assert!(started.elapsed() >= T.quiet);
        drop(tx);
        assert!(!window(&mut rx, T).await, "a closed source ends settling");
    }
}
