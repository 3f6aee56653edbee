//! A value built from files and rebuilt when their bytes change: checked
//! every `TLS_RELOAD_INTERVAL` on a thread of its own, swapped whole (a
//! reader loads it once per handshake), and kept as it was when the new
//! files do not build — mid-rotation a certificate and its key may not
//! match yet — with the reason logged once.

use std::sync::Arc;

use arc_swap::ArcSwap;
use switchyard_config::TLS_RELOAD_INTERVAL;

/// The latest good build.
pub struct Reloading<T> {
    current: ArcSwap<T>,
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Builds now (an error fails the caller: nothing good to keep yet) and
    /// rebuilds while the returned handle lives. `build` returns the bytes it
    /// read, to tell a change, with what it built; `what` names it in logs.
    pub fn start<F>(what: String, build: F) -> Result<Arc<Reloading<T>>, String>
    where
        F: Fn() -> Result<(Vec<u8>, T), String> + Send + 'static,
    {
        let (mut seen, first) = build()?;
        let me = Arc::new(Reloading { current: ArcSwap::from_pointee(first) });
        let weak = Arc::downgrade(&me);
        let failed = format!("{what}: cannot start the TLS reload thread");
        std::thread::Builder::new()
            .name("switchyard-tls".into())
            .spawn(move || {
                let mut last_error = None;
                loop {
                    std::thread::sleep(TLS_RELOAD_INTERVAL);
                    let Some(me) = weak.upgrade() else { return };
                    match build() {
                        Ok((bytes, _)) if bytes == seen => last_error = None,
                        Ok((bytes, value)) => {
                            me.current.store(Arc::new(value));
                            seen = bytes;
                            last_error = None;
                            tracing::info!(tls = %what, "TLS certificate reloaded");
                        }
                        Err(e) if last_error.as_ref() != Some(&e) => {
                            tracing::warn!(tls = %what, "TLS files not reloaded, the previous ones stay in use: {e}");
                            last_error = Some(e);
                        }
                        Err(_) => {}
                    }
                }
            })
            .map_err(|e| format!("{failed}: {e}"))?;
        Ok(me)
    }

    pub fn load(&self) -> Arc<T> {
        self.current.load_full()
    }
}
