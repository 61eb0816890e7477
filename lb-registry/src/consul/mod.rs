//! Consul: agent registration with a TTL check, and discovery by health blocking queries.
//!
//! # Target URI
//!
//! ```text
//! consul://127.0.0.1:8500/greeter?dc=eu1&tag=v2&wait=60s
//! ```
//!
//! The authority lists Consul agents (`host:port`, comma-separated; the next one is tried after a
//! transport error). When it is empty, `CONSUL_HTTP_ADDR` is used, then `127.0.0.1:8500`. Plain
//! HTTP only: TLS to the agent is not implemented yet. The path is the Consul service name.
//!
//! | query key | used by | meaning (default) |
//! |---|---|---|
//! | `dc` | discovery | datacenter to query (the agent's own). Registration always goes to the agent's datacenter: Consul's agent endpoints take no `dc`. |
//! | `ns` | both | namespace (Consul Enterprise; none) |
//! | `tag` | both | discovery: only instances carrying every listed tag (comma-separated); registration: the tags to register with |
//! | `wait` | discovery | longest blocking-query wait, a duration such as `30s` or `5m` (`60s`; at most 10 minutes) |
//! | `allow_empty` | discovery | `true` applies an answer that would empty a non-empty set (`false`) |
//! | `ttl` | registration | TTL of the check; it is passed every `ttl/3` (`10s`) |
//! | `deregister_after` | registration | `DeregisterCriticalServiceAfter` (`1m`; Consul enforces at least a minute) |
//!
//! The ACL token never goes in the URI (a `token` key is rejected: URIs end up in logs): it comes
//! from the builders' `token` option or the `CONSUL_HTTP_TOKEN` environment variable, and is sent
//! in the `X-Consul-Token` header.
//!
//! # Where the data lives
//!
//! [`ConsulRegistrar`] registers one Consul service instance per [`Endpoint`] through the local
//! agent (`PUT /v1/agent/service/register`). Weight and locality travel with it:
//!
//! | field | content |
//! |---|---|
//! | `ID` | the endpoint id when it was set explicitly, else `<service>-<ip>-<port>` |
//! | `Address`, `Port` | the endpoint's address |
//! | `Weights.Passing` | the weight, at least 1 (Consul rejects 0); `Weights.Warning` is 1 |
//! | `Meta["lb-weight"]` | the exact weight, 0 included (read first by discovery) |
//! | `Meta["lb-zone"]`, `Meta["lb-region"]`, `Meta["lb-node"]` | the locality, when known |
//! | other `Meta` keys | the endpoint's metadata (keys must match Consul's `[A-Za-z0-9_-]{1,128}`, no `consul-` prefix) |
//! | `Check` | a TTL check `service:<ID>` with `DeregisterCriticalServiceAfter` |
//!
//! Discovery ([`ConsulResolver`]) reads `GET /v1/health/service/<name>?passing` and maps each entry
//! back: id `<node>/<service ID>` (service IDs are unique per agent only), weight from `lb-weight`,
//! else `Weights.Passing`, locality from the `lb-*` keys (the node falling back to the Consul node
//! name), the remaining meta as metadata. Entries that do not map — no port, an address that is not
//! an IP (hostnames are not resolved), a non-numeric `lb-weight` — are skipped with a `warn!` and
//! counted in `lb_registry_invalid_entries_total{registry="consul"}`; an instance that was known
//! before keeps its last good value instead of disappearing.
//!
//! # Blocking queries
//!
//! Discovery long-polls with `index` and `wait` and follows the "Implementation Details" of
//! Consul's *Blocking Queries* page: the index is reset to 0 when it goes backwards (an agent or
//! cluster that lost its state), raised to 1 when Consul returns 0, and queries are rate-limited:
//! a token bucket lets bursts of [`ConsulResolverBuilder::burst`] through, then one query per
//! [`ConsulResolverBuilder::min_interval`] (100 ms, as consul-template), and an exponential backoff
//! applies when a query fails or returns early without a new index. The requested wait is jittered down by up to 1/16 so clients started together do not
//! wake together (Consul adds the same fraction on its side). After a failure the next query is
//! non-blocking, so a restarted agent is noticed at once rather than after a full wait. Every answer
//! that changed the set becomes one [`Update::Reset`](lb_core::Update), which the pool diffs.
//!
//! The stream runs behind the crate's [`Cache`](crate::cache::Cache): errors keep the last-known-good
//! set, and an answer that would empty a non-empty set (an agent restarted without its
//! registrations, an ACL token that lost `service:read` — Consul then answers `[]`, not 403) is
//! refused unless `allow_empty` is set.
//!
//! # Why a thin client rather than `rs-consul`
//!
//! `rs-consul` covers health blocking queries, but not agent service registration with checks, TTL
//! check updates or agent deregistration, which registration needs; we would write those anyway, on a
//! second HTTP stack. It also deserializes a whole health response into strict types, so one
//! malformed entry fails the whole answer where we must skip that entry and keep the rest, and it
//! brings `ureq` (a blocking HTTP client), `slog` logging beside our `tracing`, and `tokio/full`.
//! Using it only for discovery would still bring all of that in, for one request. The four
//! endpoints used here are a few lines each on hyper 1 (hyper-util's legacy pooled client,
//! HTTP/1.1 keep-alive), with entry-by-entry parsing over `serde_json::Value`.

mod client;
mod entries;
mod registrar;
mod resolver;
mod watch;

use std::time::Duration;

use lb_core::discover::BoxDiscover;
use lb_core::Endpoint;

pub use self::registrar::{ConsulRegistrar, ConsulRegistrarBuilder};
pub use self::resolver::{ConsulResolver, ConsulResolverBuilder};
use crate::{Error, Registrar as _, Registration, Resolver as _, Target};

/// Counter of malformed registry entries skipped, label `registry="consul"`.
pub const INVALID_ENTRIES: &str = "lb_registry_invalid_entries_total";
/// Counter of registrations made again because Consul had forgotten them, label `registry="consul"`.
pub const REREGISTRATIONS: &str = "lb_registry_reregistrations_total";

const DEFAULT_ADDR: &str = "127.0.0.1:8500";

pub(crate) fn resolve(target: &Target) -> Result<BoxDiscover, Error> {
    let service = service_name(target)?;
    Ok(ConsulResolver::from_target(target)?.resolve(service))
}

pub(crate) async fn register(target: &Target, instance: Endpoint) -> Result<Registration, Error> {
    let service = service_name(target)?;
    ConsulRegistrar::from_target(target)?.register(service, instance).await
}

fn service_name(target: &Target) -> Result<&str, Error> {
    let name = target.path();
    if name.is_empty() || name.contains('/') {
        return Err(Error::invalid_target(format!(
            "`{target}` needs one Consul service name as its path, e.g. consul://127.0.0.1:8500/greeter"
        )));
    }
    Ok(name)
}

/// Settings both sides share: where the agents are, the token, the namespace.
#[derive(Clone, Debug, Default)]
struct Common {
    addrs: Vec<String>,
    token: Option<String>,
    namespace: Option<String>,
    tags: Vec<String>,
}

impl Common {
    fn from_target(target: &Target) -> Result<Self, Error> {
        if target.param("token").is_some() {
            return Err(Error::invalid_target(
                "consul targets do not take a `token` in the URI (it would end up in logs); use the builder's token option or CONSUL_HTTP_TOKEN",
            ));
        }
        Ok(Common {
            addrs: target.hosts().into_iter().map(str::to_string).collect(),
            token: None,
            namespace: target.param("ns").filter(|s| !s.is_empty()).map(str::to_string),
            tags: target
                .param("tag")
                .map(|t| t.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect())
                .unwrap_or_default(),
        })
    }

    /// Fills in the environment's defaults and builds the HTTP client.
    fn client(&self) -> Result<client::Client, Error> {
        let mut addrs = self.addrs.clone();
        if addrs.is_empty() {
            addrs.push(std::env::var("CONSUL_HTTP_ADDR").unwrap_or_else(|_| DEFAULT_ADDR.to_string()));
        }
        let addrs = addrs.iter().map(|a| normalize_addr(a)).collect::<Result<Vec<_>, _>>()?;
        let token = self
            .token
            .clone()
            .or_else(|| std::env::var("CONSUL_HTTP_TOKEN").ok())
            .filter(|t| !t.is_empty());
        client::Client::new(addrs, token)
    }
}

fn normalize_addr(addr: &str) -> Result<String, Error> {
    let addr = addr.trim();
    if addr.starts_with("https://") {
        return Err(Error::invalid_target(format!("`{addr}`: TLS to the Consul agent is not supported yet")));
    }
    let addr = addr.strip_prefix("http://").unwrap_or(addr).trim_end_matches('/');
    if addr.is_empty() || addr.contains('/') {
        return Err(Error::invalid_target(format!("`{addr}` is not a Consul agent address (host:port)")));
    }
    Ok(addr.to_string())
}

/// Parses a duration option: `500ms`, `10s`, `5m`, `1h` (a bare number is seconds).
fn parse_duration(key: &str, value: &str) -> Result<Duration, Error> {
    let v = value.trim();
    let bad = || Error::invalid_target(format!("`{key}={value}` is not a duration (e.g. 500ms, 10s, 5m)"));
    let split = v.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(v.len());
    let n: f64 = v[..split].parse().map_err(|_| bad())?;
    let scale = match &v[split..] {
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(n * scale).map_err(|_| bad())
}

/// Formats a duration the way Consul (Go's `time.ParseDuration`) reads it.
fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

fn parse_bool(key: &str, value: &str) -> Result<bool, Error> {
    match value {
        "" | "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(Error::invalid_target(format!("`{key}={value}` is not true or false"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_reject_tokens_in_uris() {
        let t = Target::parse("consul://a:1,b:2/greeter?ns=team&tag=v2,blue").expect("valid");
        let c = Common::from_target(&t).expect("valid options");
        assert_eq!(c.addrs, vec!["a:1", "b:2"]);
        assert_eq!(c.namespace.as_deref(), Some("team"));
        assert_eq!(c.tags, vec!["v2", "blue"]);

        let t = Target::parse("consul://a:1/greeter?token=s3cret").expect("valid uri");
        let err = Common::from_target(&t).expect_err("token in uri");
        assert!(err.is_invalid_target() && !err.to_string().contains("s3cret"), "{err}");

        let t = Target::parse("consul://a:1/").expect("valid uri");
        assert!(service_name(&t).expect_err("no service").is_invalid_target());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("wait", "250ms").expect("ms"), Duration::from_millis(250));
        assert_eq!(parse_duration("wait", "5m").expect("m"), Duration::from_secs(300));
        assert_eq!(parse_duration("wait", "7").expect("bare"), Duration::from_secs(7));
        assert!(parse_duration("wait", "soon").is_err());
        assert!(parse_duration("wait", "-1s").is_err());
        assert_eq!(go_duration(Duration::from_secs(10)), "10000ms");
    }

    #[test]
    fn https_agents_are_refused_clearly() {
        assert!(normalize_addr("https://c:8501").expect_err("tls").is_invalid_target());
        assert_eq!(normalize_addr("http://c:8500/").expect("http"), "c:8500");
    }
}
