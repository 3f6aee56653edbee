//! The `cache` section (the tiers every cached variant shares) and the
//! per-model / per-variant cache policies that opt into it.

use std::time::Duration;

use serde_saphyr::Spanned;

use super::fields::{duration, loc, positive, Errors};
use crate::raw::*;
use crate::validated::*;

pub(super) fn cache_config(errs: &mut Errors, raw: &RawCache) -> CacheConfig {
    let redis = raw.redis.as_ref().map(|r| {
        let path = "cache.redis";
        let v = &r.value;
        let (urls, cluster) = match (&v.url, &v.cluster) {
            (Some(u), None) => (vec![u], false),
            (None, Some(c)) if !c.value.is_empty() => (c.value.iter().collect(), true),
            (None, Some(c)) => {
                errs.at(format!("{path}.cluster"), loc(c), "list at least one seed node");
                (vec![], true)
            }
            _ => {
                errs.at(path, loc(r), "give exactly one of `url` (standalone) or `cluster` (seed node URLs)");
                (vec![], false)
            }
        };
        for u in &urls {
            let ok = u.value.starts_with("redis://") || u.value.starts_with("rediss://");
            if !ok || u.value.len() <= "redis://".len() {
                errs.at(
                    format!("{path}.{}", if cluster { "cluster" } else { "url" }),
                    loc(u),
                    format!("`{}` is not a redis://host:port URL", u.value),
                );
            }
        }
        let breaker_failures =
            positive(errs, &format!("{path}.breaker_failures"), &v.breaker_failures, DEFAULT_BREAKER_FAILURES as usize)
                .get()
                .min(u32::MAX as usize) as u32;
        RedisConfig {
            urls: urls.iter().map(|u| u.value.clone()).collect(),
            cluster,
            timeout: duration(errs, &format!("{path}.timeout"), &v.timeout, DEFAULT_REDIS_TIMEOUT, false),
            connect_timeout: duration(
                errs,
                &format!("{path}.connect_timeout"),
                &v.connect_timeout,
                DEFAULT_REDIS_CONNECT_TIMEOUT,
                false,
            ),
            breaker_failures,
            breaker_cooldown: duration(
                errs,
                &format!("{path}.breaker_cooldown"),
                &v.breaker_cooldown,
                DEFAULT_BREAKER_COOLDOWN,
                false,
            ),
            key_prefix: match &v.key_prefix {
                Some(p) if p.value.is_empty() || p.value.contains(char::is_whitespace) => {
                    errs.at(format!("{path}.key_prefix"), loc(p), "must be non-empty, without whitespace");
                    DEFAULT_REDIS_KEY_PREFIX.to_string()
                }
                Some(p) => p.value.clone(),
                None => DEFAULT_REDIS_KEY_PREFIX.to_string(),
            },
        }
    });
    CacheConfig { l1_max_bytes: raw.l1_max_bytes.as_ref().map(|b| b.value).unwrap_or(DEFAULT_L1_MAX_BYTES), redis }
}

pub(super) fn cache_policy(
    errs: &mut Errors,
    path: &str,
    c: &Spanned<RawCachePolicy>,
    have_redis: bool,
) -> CachePolicy {
    let r = &c.value;
    let l2 = r.l2.unwrap_or(false);
    if l2 && !have_redis {
        errs.at(format!("{path}.l2"), loc(c), "`l2: true` needs a `cache.redis` section");
    }
    CachePolicy {
        ttl: duration(errs, &format!("{path}.ttl"), &Some(r.ttl.clone()), Duration::from_secs(60), false),
        max_entry_bytes: match &r.max_entry_bytes {
            None => DEFAULT_MAX_ENTRY_BYTES,
            Some(b) if b.value == 0 => {
                errs.at(format!("{path}.max_entry_bytes"), loc(b), "must be at least 1");
                DEFAULT_MAX_ENTRY_BYTES
            }
            Some(b) => b.value as usize,
        },
        l2,
    }
}
