//! The pass-through default upstream's address, resolved off the request
//! path. A literal IP is parsed once. A hostname is looked up before the
//! listener starts and then again every `REFRESH` on a thread of its own; a
//! request only reads the last good address (one atomic load). A failed
//! lookup keeps the last good address; with none yet, requests get 502
//! naming the host instead of blocking a worker on DNS or panicking.
//! An `https://` upstream is dialled with its [`UpstreamTls`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use pingora_core::upstreams::peer::HttpPeer;
use switchyard_config::Upstream;

use super::upstream_tls::UpstreamTls;

/// How often a hostname upstream is looked up again (the system resolver
/// does not report record TTLs).
pub const REFRESH: Duration = Duration::from_secs(5);

pub struct ResolvedUpstream {
    pub config: Upstream,
    addr: Arc<ArcSwapOption<SocketAddr>>,
    /// Set for an `https://` upstream by [`ResolvedUpstream::set_tls`].
    tls: Option<UpstreamTls>,
}

impl ResolvedUpstream {
    /// Parses or resolves `config` now; a hostname keeps being re-resolved in the background.
    pub fn start(config: Upstream) -> ResolvedUpstream {
        let addr = Arc::new(ArcSwapOption::empty());
        if let Ok(ip) = config.authority.parse::<SocketAddr>() {
            addr.store(Some(Arc::new(ip)));
            return ResolvedUpstream { config, addr, tls: None };
        }
        refresh(&config.authority, &addr);
        let (authority, slot) = (config.authority.clone(), Arc::downgrade(&addr));
        let spawned = std::thread::Builder::new().name("switchyard-upstream-dns".into()).spawn(move || loop {
            std::thread::sleep(REFRESH);
            // Gone with its listener: stop.
            let Some(slot) = slot.upgrade() else { return };
            refresh(&authority, &slot);
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the default upstream's DNS refresh thread");
        }
        ResolvedUpstream { config, addr, tls: None }
    }

    pub fn set_tls(&mut self, tls: UpstreamTls) {
        self.tls = Some(tls);
    }

    /// The address to dial now, if any lookup has succeeded.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr.load().as_deref().copied()
    }

    /// The peer to dial at `addr`: over TLS for an `https://` upstream
    /// (an error, never plaintext, if its TLS settings were not loaded).
    pub fn peer(&self, addr: SocketAddr) -> Result<HttpPeer, String> {
        match (self.config.tls, &self.tls) {
            (false, _) => Ok(HttpPeer::new(addr, false, String::new())),
            (true, Some(tls)) => Ok(tls.peer(addr)),
            (true, None) => Err(format!("{}: no TLS settings loaded", self.config)),
        }
    }
}

fn refresh(authority: &str, slot: &ArcSwapOption<SocketAddr>) {
    match authority.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) => {
            if slot.load().as_deref() != Some(&a) {
                tracing::info!(upstream = authority, addr = %a, "default upstream resolved");
            }
            slot.store(Some(Arc::new(a)));
        }
        Ok(None) | Err(_) => {
            tracing::warn!(upstream = authority, "cannot resolve the default upstream; keeping the last address");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(authority: &str) -> Upstream {
        Upstream { authority: authority.into(), base_path: String::new(), tls: false }
    }

    #[test]
    fn literal_addresses_need_no_lookup() {
        let u = ResolvedUpstream::start(upstream("127.0.0.1:9000"));
        assert_eq!(u.addr(), Some("127.0.0.1:9000".parse().unwrap()));
    }

    #[test]
    fn hostnames_resolve_and_failures_leave_no_address() {
        let u = ResolvedUpstream::start(upstream("localhost:9000"));
        assert_eq!(u.addr().map(|a| a.port()), Some(9000));
        // `.invalid` never resolves (RFC 2606): no address, and no panic.
        let u = ResolvedUpstream::start(upstream("no-such-host.invalid:9000"));
        assert_eq!(u.addr(), None);
    }
}
