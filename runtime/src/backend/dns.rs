//! Endpoints from DNS: a background task per `dns:` backend resolves the
//! name's A/AAAA records, hands each changed address set to its backend, and
//! resolves again when the records' TTL runs out or `dns_refresh` passes,
//! whichever comes first. A failed lookup (timeout, SERVFAIL) keeps the last
//! set, so a DNS hiccup never empties a healthy backend; an answer that the
//! name has no addresses (NXDOMAIN, no records) empties it, as a headless
//! Service whose last pod left does.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, NameServerConfigGroup, ResolverConfig as Servers, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use switchyard_config::{DnsEndpoints, ResolverConfig};
use tokio::task::JoinHandle;

/// The shortest wait between two resolutions, whatever the TTL says (a TTL of 0 must not spin).
const MIN_REFRESH: Duration = Duration::from_millis(500);
/// How long one resolution may take before it counts as failed.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// A resolver for `dns:` backends: the configured name servers, or the system's.
pub fn resolver(cfg: &ResolverConfig) -> Result<TokioResolver, String> {
    let mut builder = if cfg.nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| format!("reading the system's DNS settings: {e}"))?
    } else {
        let mut group = NameServerConfigGroup::new();
        for a in &cfg.nameservers {
            group.merge(NameServerConfigGroup::from_ips_clear(&[a.ip()], a.port(), true));
        }
        TokioResolver::builder_with_config(Servers::from_parts(None, vec![], group), TokioConnectionProvider::default())
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.timeout = LOOKUP_TIMEOUT;
    opts.attempts = 1;
    // A name and its addresses are never cached beyond the record's TTL (hickory's own cache
    // honours it); the hosts file is not a Service's truth.
    opts.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
    Ok(builder.build())
}

/// What one resolution found.
enum Found {
    /// The addresses, and how long the answer stays valid.
    Addresses(BTreeSet<SocketAddr>, Duration),
    /// The name exists in no record (NXDOMAIN or no A/AAAA): no replicas.
    Nothing,
    /// The lookup failed; the last set stays.
    Failed(String),
}

async fn resolve(resolver: &TokioResolver, target: &DnsEndpoints) -> Found {
    match tokio::time::timeout(LOOKUP_TIMEOUT * 2, resolver.lookup_ip(target.host.as_str())).await {
        Err(_) => Found::Failed("timed out".into()),
        Ok(Ok(lookup)) => {
            let ttl = lookup.valid_until().saturating_duration_since(std::time::Instant::now());
            let set: BTreeSet<SocketAddr> = lookup.iter().map(|ip: IpAddr| SocketAddr::new(ip, target.port)).collect();
            if set.is_empty() {
                Found::Nothing
            } else {
                Found::Addresses(set, ttl)
            }
        }
        Ok(Err(e)) if says_no_address(&e) => Found::Nothing,
        Ok(Err(e)) => Found::Failed(e.to_string()),
    }
}

/// NXDOMAIN, or NOERROR without an A/AAAA record: the name has no replicas.
/// Any other code (SERVFAIL, REFUSED...) says the server failed, not the name.
fn says_no_address(e: &hickory_resolver::ResolveError) -> bool {
    use hickory_resolver::proto::op::ResponseCode;
    use hickory_resolver::proto::ProtoErrorKind;
    match e.proto().map(|p| p.kind()) {
        Some(ProtoErrorKind::NoRecordsFound { response_code, .. }) => {
            matches!(*response_code, ResponseCode::NXDomain | ResponseCode::NoError)
        }
        _ => false,
    }
}

/// The background resolution of one backend's name; stops when dropped (the
/// backend it feeds was replaced by a reload or removed).
pub struct DnsWatch {
    task: JoinHandle<()>,
}

impl Drop for DnsWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DnsWatch {
    /// Starts resolving on the current tokio runtime; `apply` gets every set
    /// that differs from the previous one (the first answer included).
    pub fn spawn<F>(backend: Arc<str>, target: DnsEndpoints, resolver: TokioResolver, mut apply: F) -> DnsWatch
    where
        F: FnMut(&BTreeSet<SocketAddr>) + Send + 'static,
    {
        let task = tokio::spawn(async move {
            let mut current: Option<BTreeSet<SocketAddr>> = None;
            let name = format!("{}:{}", target.host, target.port);
            loop {
                let wait = match resolve(&resolver, &target).await {
                    Found::Addresses(set, ttl) => {
                        if current.as_ref() != Some(&set) {
                            log_change(&backend, &name, current.as_ref(), &set);
                            apply(&set);
                            current = Some(set);
                        }
                        ttl.clamp(MIN_REFRESH, target.refresh.max(MIN_REFRESH))
                    }
                    Found::Nothing => {
                        let empty = BTreeSet::new();
                        if current.as_ref() != Some(&empty) {
                            tracing::warn!(backend = %backend, dns = %name, "the name resolves to no address: no endpoints");
                            apply(&empty);
                            current = Some(empty);
                        }
                        target.refresh.max(MIN_REFRESH)
                    }
                    Found::Failed(e) => {
                        tracing::warn!(backend = %backend, dns = %name, error = %e, "DNS lookup failed; keeping the last endpoints");
                        target.refresh.max(MIN_REFRESH)
                    }
                };
                tokio::time::sleep(wait).await;
            }
        });
        DnsWatch { task }
    }
}

fn log_change(backend: &str, name: &str, old: Option<&BTreeSet<SocketAddr>>, new: &BTreeSet<SocketAddr>) {
    let empty = BTreeSet::new();
    let old = old.unwrap_or(&empty);
    let added: Vec<String> = new.difference(old).map(|a| a.to_string()).collect();
    let removed: Vec<String> = old.difference(new).map(|a| a.to_string()).collect();
    tracing::info!(backend, dns = name, ?added, ?removed, endpoints = new.len(), "endpoints from DNS changed");
}
