//! Target URIs: `scheme://[authority]/path[?key=value&…]`.
//!
//! ```text
//! static:///127.0.0.1:50051,127.0.0.1:50052
//! etcd://127.0.0.1:2379/greeter              etcd://h1:2379,h2:2379/greeter?prefix=/lb/services
//! consul://127.0.0.1:8500/greeter?dc=eu1
//! kubernetes:///greeter.default:grpc
//! dns:///greeter.default.svc.cluster.local:50051?refresh=30s
//! ```
//!
//! The authority is the registry's own address list (comma-separated, possibly empty); the path,
//! without its leading `/`, names the service (or, for `static`, lists the addresses, and for `dns`,
//! the `host:port` names to resolve). Options that belong in the URI — so that one string
//! configures the CLI, the C ABI and the agent alike — go in the query string; each scheme reads
//! its own keys plus the [cache](crate::cache)'s, and refuses any other with an error that names
//! it (the table is in the [crate docs](crate#target-options)). Credentials never go in the URI:
//! they come from builder options or environment variables.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::Error;

/// A parsed target URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    scheme: String,
    authority: String,
    path: String,
    params: BTreeMap<String, String>,
    raw: String,
}

impl Target {
    /// Parses a target URI.
    pub fn parse(uri: &str) -> Result<Self, Error> {
        let uri = uri.trim();
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| Error::invalid_target(format!("target `{uri}` has no scheme (expected e.g. static:///127.0.0.1:50051)")))?;
        if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.') {
            return Err(Error::invalid_target(format!("target `{uri}` has an invalid scheme")));
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let mut params = BTreeMap::new();
        if let Some(q) = query {
            for pair in q.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                params.insert(decode(k)?, decode(v)?);
            }
        }
        Ok(Target {
            scheme: scheme.to_ascii_lowercase(),
            authority: authority.to_string(),
            path: decode(path)?,
            params,
            raw: uri.to_string(),
        })
    }

    /// The scheme, lower-cased (`static`, `etcd`, …).
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The authority as written (the registry's address list), possibly empty.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The authority split on commas, empty entries dropped.
    pub fn hosts(&self) -> Vec<&str> {
        self.authority.split(',').map(str::trim).filter(|h| !h.is_empty()).collect()
    }

    /// The path without its leading `/`: the service name, or `static`'s address list.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// A query parameter.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.get(key).map(String::as_str)
    }

    /// Every query parameter.
    pub fn params(&self) -> &BTreeMap<String, String> {
        &self.params
    }

    /// The URI as given.
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl FromStr for Target {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Target::parse(s)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

fn decode(s: &str) -> Result<String, Error> {
    if !s.contains('%') {
        return Ok(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Error::invalid_target(format!("bad percent-escape in `{s}`")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::invalid_target(format!("`{s}` is not UTF-8 once decoded")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_documented_form() {
        let t = Target::parse("static:///127.0.0.1:50051,127.0.0.1:50052").expect("valid");
        assert_eq!((t.scheme(), t.authority(), t.path()), ("static", "", "127.0.0.1:50051,127.0.0.1:50052"));

        let t = Target::parse("etcd://h1:2379,h2:2379/greeter?prefix=%2Fx%2Fy&ttl=5").expect("valid");
        assert_eq!(t.hosts(), vec!["h1:2379", "h2:2379"]);
        assert_eq!(t.path(), "greeter");
        assert_eq!(t.param("prefix"), Some("/x/y"));
        assert_eq!(t.param("ttl"), Some("5"));

        let t = Target::parse("kubernetes:///greeter.default:grpc").expect("valid");
        assert_eq!(t.path(), "greeter.default:grpc");
        assert!(t.hosts().is_empty());
    }

    #[test]
    fn rejects_garbage_with_a_clear_error() {
        for bad in ["", "greeter", "://x", "e tcd://x/y", "etcd://h/%zz"] {
            let err = Target::parse(bad).expect_err(bad);
            assert!(err.is_invalid_target(), "{bad}: {err}");
        }
    }
}
