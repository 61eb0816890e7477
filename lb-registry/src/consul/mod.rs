//! Consul: agent registration with a TTL check, and discovery by health blocking queries.
//!
//! # Target URI
//!
//! ```text
//! consul://127.0.0.1:8500/greeter?dc=eu1&tag=v2&wait=60s
//! ```
//!
//! The authority lists Consul agents (`host:port`, comma-separated; the next one is tried after a
//! transport error). When it is empty, `CONSUL_HTTP_ADDR` is used, then `127.0.0.1:8500`. HTTP by
//! default; see [TLS](#tls) for HTTPS agents. The path is the Consul service name.
//!
//! | query key | used by | meaning (default) |
//! |---|---|---|
//! | `dc` | discovery | datacenter to query (the agent's own). Registration always goes to the agent's datacenter: Consul's agent endpoints take no `dc`. |
//! | `ns` | both | namespace (Consul Enterprise; none) |
//! | `tag` | both | discovery: only instances carrying every listed tag (comma-separated); registration: the tags to register with |
//! | `wait` | discovery | longest blocking-query wait, a duration such as `30s` or `5m` (`60s`; at most 10 minutes) |
//! | `ttl` | registration | TTL of the check; it is passed every `ttl/3` (`10s`) |
//! | `deregister_after` | registration | `DeregisterCriticalServiceAfter` (`1m`; Consul enforces at least a minute) |
//!
//! and the [cache](crate::cache)'s keys (`allow_empty`, `snapshot`, `resync`), as every registry
//! target; any other key is an error.
//!
//! No query key configures TLS: as with etcd, it comes from the agent addresses' scheme, the
//! builders and the environment (see [TLS](#tls)).
//!
//! The ACL token never goes in the URI (a `token` key is rejected: URIs end up in logs): it comes
//! from the builders' `token` option or the `CONSUL_HTTP_TOKEN` environment variable, and is sent
//! in the `X-Consul-Token` header.
//!
//! # TLS
//!
//! Agents listening on HTTPS (`ports.https`, usually 8501) are reached over TLS (rustls, TLS 1.2
//! and 1.3), with the same options and names as etcd's TLS. Like the token, key material and TLS
//! settings never go in the URI, so a target-only client (`lb_registry::resolve`) takes them from
//! Consul's own environment variables ([`env`](mod@env)), which the builders read too for every option
//! they do not set. For each option, a builder call wins over the environment:
//!
//! | builder option | environment variable | meaning |
//! |---|---|---|
//! | an `https://host:port` [`address`](ConsulResolverBuilder::address) | `CONSUL_HTTP_ADDR=https://…` | this agent speaks TLS |
//! | any `tls_*` option below | `CONSUL_HTTP_SSL=true` | agents given as a bare `host:port` speak TLS |
//! | `tls_ca_pem`, `tls_ca_file` | `CONSUL_CACERT` | PEM CA(s) the agent's certificate must chain to; without one, the platform's roots |
//! | `tls_identity_pem`, `tls_identity_files` | `CONSUL_CLIENT_CERT`, `CONSUL_CLIENT_KEY` | client certificate and key (PEM), for agents with `verify_incoming` |
//! | `tls_domain` | `CONSUL_TLS_SERVER_NAME` | name the certificate must carry, instead of the address's host (an IP is checked against IP SANs) |
//!
//! TLS is on when the addresses say `https://`; else when a `tls_*` option is set on the builder;
//! else when `CONSUL_HTTP_SSL` is true. An explicit `http://` address stays plain (the TLS
//! variables are then ignored, as Consul's CLI does), but `http://` with a builder `tls_*` option,
//! or `http://` and `https://` agents in one list, is a configuration error. Errors in the material
//! — an unreadable file, a PEM without a certificate or key, a key that does not match its
//! certificate, no CA and no platform roots — fail `build`, never a request. A handshake that fails
//! (an untrusted or misnamed agent, a refused client certificate) is a transport error: the
//! registrar retries, discovery keeps its last good set, and the next agent of the list is tried.
//! When an agent asked for a client certificate and none is configured, the error says so (with
//! TLS 1.3 the agent refuses only after the handshake, often by just closing the connection).
//! Consul's `CONSUL_CAPATH` and `CONSUL_HTTP_SSL_VERIFY=false` are not read: name the CA file, and
//! verification cannot be turned off.
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
//! applies when a query fails or returns early without a new index. The requested wait is jittered
//! down by up to 1/16 so clients started together do not wake together (Consul adds the same
//! fraction on its side). After a failure the next query is non-blocking, so a restarted agent is
//! noticed at once rather than after a full wait. Every answer that changed the set becomes one
//! [`Update::Reset`](lb_core::Update::Reset), which the pool diffs; the first answer after a
//! failure that changed nothing is an [`Update::Current`](lb_core::Update::Current).
//!
//! # ACLs
//!
//! Consul does not refuse a read the token may not see: it answers `200` with the entries the
//! token may see — often none — and `X-Consul-Results-Filtered-By-ACLs: true`. Discovery treats
//! such an answer as an error that names the token by its last four characters and where it came
//! from (`the ACL token …3f9a (from CONSUL_HTTP_TOKEN)`), never as a set: the pool logs it, counts it
//! (`lb_discovery_errors_total`, and [`AUTH_ERRORS`] here) and keeps its last set, and a request that
//! finds no endpoint fails with it in its message (`UNAVAILABLE`, HTTP 503, the C ABI's last
//! error). Consul hides that header from requests without a token; an empty answer to one, from an
//! agent whose default policy is `deny`, is reported the same way until a first set arrived. A
//! write without `service:write` is a `403`, which registration reports and retries.
//!
//! [`lb_registry::resolve`](crate::resolve) puts the stream behind the crate's
//! [cache](crate::cache): errors keep the last-known-good set, and an answer that would empty a
//! non-empty set (an agent restarted without its registrations) is refused unless `allow_empty`
//! is set.
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

mod builder;
mod client;
mod entries;
mod registrar;
mod resolver;
mod tls;
mod watch;

use std::path::Path;
use std::time::Duration;

use lb_core::Endpoint;

pub use self::builder::{ConsulBuilder, RegistrarOptions, ResolverOptions};
pub use self::registrar::{ConsulRegistrar, ConsulRegistrarBuilder};
pub use self::resolver::{ConsulResolver, ConsulResolverBuilder};
use crate::options::parse_duration;
use crate::{scheme, Error, Registrar as _, Registration, Target};

/// Counter of malformed registry entries skipped, label `registry="consul"`.
pub const INVALID_ENTRIES: &str = "lb_registry_invalid_entries_total";
/// Counter of registrations made again because Consul had forgotten them, label `registry="consul"`.
pub const REREGISTRATIONS: &str = "lb_registry_reregistrations_total";
/// Counter of health answers not used because ACLs filtered them, labels `registry="consul"` and
/// `reason` (`acl_filtered`: the token lacks a permission; `anonymous_denied`: no token and an
/// agent whose default policy is deny). The Kubernetes provider counts its 401s and 403s under the
/// same name.
pub const AUTH_ERRORS: &str = "lb_registry_auth_errors_total";

const DEFAULT_ADDR: &str = "127.0.0.1:8500";

/// The environment variables of Consul's own CLI and API client that are read when the builder
/// does not set the option (see the [module docs](super#tls)).
pub mod env {
    /// Agent address(es) when the builder and the target name none: `host:port` or a
    /// `http://` / `https://` URL.
    pub const HTTP_ADDR: &str = "CONSUL_HTTP_ADDR";
    /// The ACL token.
    pub const HTTP_TOKEN: &str = "CONSUL_HTTP_TOKEN";
    /// `true` turns TLS on for agent addresses given without a scheme.
    pub const HTTP_SSL: &str = "CONSUL_HTTP_SSL";
    /// PEM file of the CA that signed the agent's certificate.
    pub const CACERT: &str = "CONSUL_CACERT";
    /// PEM client certificate (with [`CLIENT_KEY`]) for agents that verify clients.
    pub const CLIENT_CERT: &str = "CONSUL_CLIENT_CERT";
    /// PEM private key of [`CLIENT_CERT`].
    pub const CLIENT_KEY: &str = "CONSUL_CLIENT_KEY";
    /// Server name to verify the agent's certificate against, instead of the address's host.
    pub const TLS_SERVER_NAME: &str = "CONSUL_TLS_SERVER_NAME";
}

pub(crate) fn resolver(target: &Target) -> Result<ConsulResolver, Error> {
    service_name(target)?;
    ConsulResolver::from_target(target)
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

/// Settings both sides share: where the agents are, the token, the namespace, TLS.
#[derive(Clone, Debug, Default)]
struct Common {
    addrs: Vec<String>,
    token: Option<String>,
    namespace: Option<String>,
    tags: Vec<String>,
    tls: tls::TlsOptions,
    /// The first option that could not be applied (an unreadable file), reported by `build`.
    error: Option<String>,
}

/// Whether an agent address named its scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

impl Common {
    fn from_target(target: &Target) -> Result<Self, Error> {
        if target.param("token").is_some() {
            return Err(Error::invalid_target(
                "consul targets do not take a `token` in the URI (it would end up in logs); use the builder's token option or CONSUL_HTTP_TOKEN",
            ));
        }
        scheme::CONSUL.check(target)?;
        Ok(Common {
            addrs: target.hosts().into_iter().map(str::to_string).collect(),
            token: None,
            namespace: target.param("ns").filter(|s| !s.is_empty()).map(str::to_string),
            tags: target
                .param("tag")
                .map(|t| t.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string).collect())
                .unwrap_or_default(),
            tls: tls::TlsOptions::default(),
            error: None,
        })
    }

    fn fail(&mut self, message: String) {
        self.error.get_or_insert(message);
    }

    fn tls_ca_pem(&mut self, pem: Vec<u8>) {
        self.tls.ca_pem = Some(pem);
    }

    fn tls_ca_file(&mut self, path: &Path) {
        match std::fs::read(path) {
            Ok(pem) => self.tls_ca_pem(pem),
            Err(e) => self.fail(format!("cannot read the Consul CA file {}: {e}", path.display())),
        }
    }

    fn tls_identity_pem(&mut self, cert: Vec<u8>, key: Vec<u8>) {
        self.tls.identity_pem = Some((cert, key));
    }

    fn tls_identity_files(&mut self, cert: &Path, key: &Path) {
        match (std::fs::read(cert), std::fs::read(key)) {
            (Ok(c), Ok(k)) => self.tls_identity_pem(c, k),
            (Err(e), _) => self.fail(format!("cannot read the Consul client certificate {}: {e}", cert.display())),
            (_, Err(e)) => self.fail(format!("cannot read the Consul client key {}: {e}", key.display())),
        }
    }

    fn tls_domain(&mut self, domain: String) {
        self.tls.domain = Some(domain);
    }

    /// Fills in the environment's defaults and builds the HTTP client.
    fn client(&self) -> Result<client::Client, Error> {
        if let Some(e) = &self.error {
            return Err(Error::invalid_target(e.clone()));
        }
        let mut addrs = self.addrs.clone();
        if addrs.is_empty() {
            addrs.push(std::env::var(env::HTTP_ADDR).unwrap_or_else(|_| DEFAULT_ADDR.to_string()));
        }
        let addrs = addrs.iter().map(|a| normalize_addr(a)).collect::<Result<Vec<_>, _>>()?;
        let use_tls = self.use_tls(&addrs)?;
        let tls = if use_tls { Some(tls::settings(&self.tls)?) } else { None };
        let token = match self.token.clone().filter(|t| !t.is_empty()) {
            Some(t) => Some(client::Token::new(t, false)),
            None => std::env::var(env::HTTP_TOKEN).ok().filter(|t| !t.is_empty()).map(|t| client::Token::new(t, true)),
        };
        client::Client::new(addrs.into_iter().map(|(_, a)| a).collect(), token, tls)
    }

    /// TLS is on when the addresses say `https://`, else when a TLS option is set on the builder,
    /// else when `CONSUL_HTTP_SSL` says so.
    fn use_tls(&self, addrs: &[(Option<Scheme>, String)]) -> Result<bool, Error> {
        let mut explicit = addrs.iter().filter_map(|(s, _)| *s);
        match explicit.next() {
            Some(first) => {
                if explicit.any(|s| s != first) {
                    return Err(Error::invalid_target(
                        "the Consul agent addresses mix http:// and https://; one client speaks one of them",
                    ));
                }
                if first == Scheme::Http && self.tls.is_set() {
                    return Err(Error::invalid_target(
                        "TLS options are set but the Consul agent address says http://; use https:// or a bare host:port",
                    ));
                }
                Ok(first == Scheme::Https)
            }
            None if self.tls.is_set() => Ok(true),
            None => Ok(tls::env_enabled()?.unwrap_or(false)),
        }
    }
}

/// Splits an agent address into its scheme, when given, and `host:port`.
fn normalize_addr(addr: &str) -> Result<(Option<Scheme>, String), Error> {
    let addr = addr.trim();
    let (scheme, rest) = if let Some(rest) = addr.strip_prefix("https://") {
        (Some(Scheme::Https), rest)
    } else if let Some(rest) = addr.strip_prefix("http://") {
        (Some(Scheme::Http), rest)
    } else {
        (None, addr)
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.contains("://") {
        return Err(Error::invalid_target(format!("`{addr}` is not a Consul agent address ([http[s]://]host:port)")));
    }
    Ok((scheme, rest.to_string()))
}

/// Formats a duration the way Consul (Go's `time.ParseDuration`) reads it.
fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
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

        let t = Target::parse("consul://a:1/greeter?wiat=5s").expect("valid uri");
        let err = Common::from_target(&t).expect_err("a typo");
        assert!(err.is_invalid_target() && err.to_string().contains("`wiat`"), "{err}");
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
    fn agent_addresses_keep_their_scheme() {
        assert_eq!(normalize_addr("http://c:8500/").expect("http"), (Some(Scheme::Http), "c:8500".into()));
        assert_eq!(normalize_addr(" https://c:8501 ").expect("https"), (Some(Scheme::Https), "c:8501".into()));
        assert_eq!(normalize_addr("c:8500").expect("bare"), (None, "c:8500".into()));
        for bad in ["", "https://", "c:8500/v1", "ftp://c:21", "https://https://c:1"] {
            assert!(normalize_addr(bad).expect_err(bad).is_invalid_target(), "{bad}");
        }
    }

    #[test]
    fn the_scheme_and_the_builder_options_choose_tls() {
        let addrs = |list: &[&str]| list.iter().map(|a| normalize_addr(a)).collect::<Result<Vec<_>, _>>().expect("valid");
        let plain = Common::default();
        let with_ca = Common {
            tls: tls::TlsOptions {
                ca_pem: Some(b"pem".to_vec()),
                ..Default::default()
            },
            ..Common::default()
        };
        assert!(plain.use_tls(&addrs(&["https://a:8501", "b:8501"])).expect("https"));
        assert!(!plain.use_tls(&addrs(&["http://a:8500"])).expect("http"));
        assert!(with_ca.use_tls(&addrs(&["a:8501"])).expect("a CA turns TLS on"));
        assert!(with_ca.use_tls(&addrs(&["https://a:8501"])).expect("agreeing"));
        let mixed = plain.use_tls(&addrs(&["https://a:8501", "http://b:8500"])).expect_err("mixed schemes");
        assert!(mixed.is_invalid_target() && mixed.to_string().contains("mix"), "{mixed}");
        let contradiction = with_ca.use_tls(&addrs(&["http://a:8500"])).expect_err("TLS options on http://");
        assert!(contradiction.is_invalid_target(), "{contradiction}");
    }

    #[test]
    fn bad_tls_material_fails_the_build() {
        let err = ConsulResolver::builder()
            .address("https://127.0.0.1:8501")
            .tls_ca_file("/nonexistent/consul-ca.pem")
            .build()
            .expect_err("unreadable CA file");
        assert!(err.is_invalid_target() && err.to_string().contains("/nonexistent/consul-ca.pem"), "{err}");

        let err = ConsulRegistrar::builder()
            .address("127.0.0.1:8501")
            .tls_ca_pem("not a certificate")
            .build()
            .expect_err("PEM without a certificate");
        assert!(err.is_invalid_target() && err.to_string().contains("CA"), "{err}");

        let broken = "-----BEGIN CERTIFICATE-----\nAAAA\n";
        let err = ConsulRegistrar::builder().tls_ca_pem(broken).build().expect_err("truncated PEM");
        assert!(err.is_invalid_target(), "{err}");

        let err = ConsulResolver::builder()
            .address("127.0.0.1:8501")
            .tls_identity_files("/nonexistent/client.pem", "/nonexistent/client-key.pem")
            .build()
            .expect_err("unreadable client certificate");
        assert!(err.is_invalid_target() && err.to_string().contains("client certificate"), "{err}");

        // The private key never shows in debug output.
        let b = ConsulResolver::builder().tls_identity_pem("cert", "PRIVATE KEY MATERIAL");
        assert!(!format!("{b:?}").contains("PRIVATE KEY MATERIAL"));
    }
}
