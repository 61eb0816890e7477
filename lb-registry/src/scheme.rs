//! The target schemes and the query keys each one reads: the one table a target is checked
//! against, whichever entry point (`resolve`, `register`, a provider's `from_target`) reads it.
//!
//! A key no table row lists is an error that names it and lists the known ones, so a typo
//! (`snapshott=`) or an option of another scheme (`refresh=` on an etcd target) never passes
//! silently. A scheme's keys cover discovery and registration alike, because one target string
//! usually configures both sides of a service (the server registers with it, clients resolve it).

use std::time::Duration;

use crate::cache::{CacheBuilder, KEYS as CACHE_KEYS};
use crate::{Error, Target};

/// One target scheme.
#[derive(Debug)]
pub(crate) struct Scheme {
    pub(crate) name: &'static str,
    /// The provider's own query keys.
    pub(crate) keys: &'static [&'static str],
    /// Whether discovery runs behind the [cache](crate::cache), whose keys the scheme then accepts
    /// too: every registry; not a fixed list, which has no registry to lose.
    pub(crate) cached: bool,
    /// The cache's resync period when the target sets none.
    pub(crate) resync: Option<Duration>,
}

pub(crate) const STATIC: Scheme = Scheme {
    name: "static",
    keys: &[],
    cached: false,
    resync: None,
};

pub(crate) const DNS: Scheme = Scheme {
    name: "dns",
    keys: &["family", "refresh"],
    cached: true,
    resync: None,
};

pub(crate) const ETCD: Scheme = Scheme {
    name: "etcd",
    keys: &["prefix", "ttl"],
    cached: true,
    // A watch cannot see a store that was emptied and refilled with keys of the same revisions;
    // a periodic relist bounds how long such a difference lasts.
    resync: Some(Duration::from_secs(300)),
};

pub(crate) const CONSUL: Scheme = Scheme {
    name: "consul",
    keys: &["dc", "deregister_after", "ns", "tag", "ttl", "wait"],
    cached: true,
    resync: None,
};

pub(crate) const KUBERNETES: Scheme = Scheme {
    name: "kubernetes",
    keys: &["hints", "node", "region", "zone"],
    cached: true,
    resync: None,
};

const ALL: [&Scheme; 5] = [&STATIC, &DNS, &ETCD, &CONSUL, &KUBERNETES];

/// The scheme of this name, whether or not its feature is enabled.
pub(crate) fn get(name: &str) -> Option<&'static Scheme> {
    ALL.into_iter().find(|s| s.name == name)
}

impl Scheme {
    /// Refuses a target with a query key this scheme does not read, or with a cache option whose
    /// value does not parse (the cache reads them later, but a mistake is reported where the target
    /// is first read).
    pub(crate) fn check(&self, target: &Target) -> Result<(), Error> {
        for key in target.params().keys() {
            let key = key.as_str();
            if self.keys.contains(&key) || (self.cached && CACHE_KEYS.contains(&key)) {
                continue;
            }
            let why = if CACHE_KEYS.contains(&key) {
                format!(": `{key}` configures the discovery cache, and a {} list needs none", self.name)
            } else {
                String::new()
            };
            return Err(Error::invalid_target(format!(
                "`{}` targets take no option `{key}`{why} (known: {})",
                self.name,
                self.known()
            )));
        }
        if self.cached {
            CacheBuilder::from_target(target)?;
        }
        Ok(())
    }

    fn known(&self) -> String {
        let mut all: Vec<&str> = self.keys.to_vec();
        if self.cached {
            all.extend(CACHE_KEYS);
        }
        all.sort_unstable();
        if all.is_empty() {
            "none".to_string()
        } else {
            all.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(uri: &str) -> Result<(), Error> {
        let t = Target::parse(uri).expect("parses as a URI");
        get(t.scheme()).expect("a known scheme").check(&t)
    }

    #[test]
    fn every_scheme_accepts_its_keys_and_the_cache_keys() {
        check("dns:///a:1?refresh=5s&family=ipv4&snapshot=/tmp/s.json&resync=off&allow_empty").expect("dns");
        check("etcd://h:1/s?prefix=/p&ttl=3s&snapshot=/tmp/s.json").expect("etcd");
        check("consul://h:1/s?dc=a&ns=b&tag=c&wait=5s&ttl=3s&deregister_after=1m&resync=10m").expect("consul");
        check("kubernetes:///s.ns:p?node=n&zone=z&region=r&hints=off&snapshot=/tmp/s.json").expect("kubernetes");
        check("static:///127.0.0.1:1").expect("static");
    }

    #[test]
    fn an_unknown_key_is_named_with_the_known_ones() {
        let err = check("kubernetes:///s.ns:p?snapshott=/tmp/x").expect_err("a typo");
        assert!(err.is_invalid_target());
        assert_eq!(
            err.to_string(),
            "`kubernetes` targets take no option `snapshott` (known: allow_empty, hints, node, region, resync, snapshot, zone)"
        );
        let err = check("etcd://h:1/s?refresh=5s").expect_err("another scheme's key");
        assert!(err.to_string().contains("`refresh`") && err.to_string().contains("prefix, resync"), "{err}");
        let err = check("static:///127.0.0.1:1?snapshot=/tmp/x").expect_err("a static list has no cache");
        assert!(err.to_string().contains("needs none") && err.to_string().contains("known: none"), "{err}");
    }

    #[test]
    fn bad_cache_values_are_refused_up_front() {
        for bad in ["dns:///a:1?resync=5 fortnights", "consul://h:1/s?allow_empty=maybe", "etcd://h:1/s?snapshot="] {
            assert!(check(bad).expect_err(bad).is_invalid_target(), "{bad}");
        }
    }
}
