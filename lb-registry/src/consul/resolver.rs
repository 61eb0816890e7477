//! [`ConsulResolver`]: discovery by `/v1/health/service/<name>?passing` blocking queries.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use hyper::Method;
use lb_core::discover::BoxDiscover;
use lb_core::BoxError;

use super::client::{encode, Client, Reply};
use super::watch::{Fetch, Watch, WatchConfig};
use super::{parse_bool, parse_duration, Common};
use crate::cache::Cache;
use crate::{Error, Resolver, Target};

/// Consul's own ceiling on `wait`.
const MAX_WAIT: Duration = Duration::from_secs(600);

/// Discovery from Consul's health endpoint. See the [module docs](super) for the mapping and the
/// blocking-query rules.
///
/// ```no_run
/// # async fn demo() -> Result<(), lb_registry::Error> {
/// use lb_registry::consul::ConsulResolver;
/// use lb_registry::Resolver as _;
///
/// let resolver = ConsulResolver::builder()
///     .address("127.0.0.1:8500")
///     .token("a-token-from-a-secret-store")
///     .datacenter("eu1")
///     .build()?;
/// let updates = resolver.resolve("greeter"); // hand it to lb_core::Pool::spawn
/// # let _ = updates; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct ConsulResolver {
    client: Client,
    cfg: Arc<Config>,
}

#[derive(Debug)]
struct Config {
    datacenter: Option<String>,
    namespace: Option<String>,
    tags: Vec<String>,
    allow_empty: bool,
    watch: WatchConfig,
}

/// Options of a [`ConsulResolver`].
#[derive(Clone, Debug)]
pub struct ConsulResolverBuilder {
    common: Common,
    datacenter: Option<String>,
    allow_empty: bool,
    watch: WatchConfig,
}

impl ConsulResolver {
    /// A builder with the defaults: the agent from `CONSUL_HTTP_ADDR` or `127.0.0.1:8500`, the
    /// token from `CONSUL_HTTP_TOKEN`, 60 s waits, at most 10 queries a second after a burst of 5.
    pub fn builder() -> ConsulResolverBuilder {
        ConsulResolverBuilder {
            common: Common::default(),
            datacenter: None,
            allow_empty: false,
            watch: WatchConfig::default(),
        }
    }

    /// A resolver configured by a `consul://` target's authority and query (see the module docs).
    pub fn from_target(target: &Target) -> Result<Self, Error> {
        ConsulResolverBuilder::from_target(target)?.build()
    }
}

impl ConsulResolverBuilder {
    /// The builder for a `consul://` target's authority and query (see the module docs); further
    /// options, such as the token, can be set before [`build`](Self::build).
    pub fn from_target(target: &Target) -> Result<Self, Error> {
        let mut b = ConsulResolver::builder();
        b.common = Common::from_target(target)?;
        b.datacenter = target.param("dc").filter(|s| !s.is_empty()).map(str::to_string);
        if let Some(w) = target.param("wait") {
            b = b.wait(parse_duration("wait", w)?);
        }
        if let Some(a) = target.param("allow_empty") {
            b.allow_empty = parse_bool("allow_empty", a)?;
        }
        Ok(b)
    }

    /// Adds a Consul agent address (`host:port`, `http://host:port` or `https://host:port`); several
    /// are tried in turn after failures.
    pub fn address(mut self, addr: impl Into<String>) -> Self {
        self.common.addrs.push(addr.into());
        self
    }

    /// The ACL token, sent as `X-Consul-Token` (default: `CONSUL_HTTP_TOKEN`).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.common.token = Some(token.into());
        self
    }

    /// Enables TLS, trusting the CA in this PEM (default: `CONSUL_CACERT`, else the platform's
    /// roots). See the [module docs](super#tls).
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.common.tls_ca_pem(pem.into());
        self
    }

    /// Enables TLS, trusting the CA in this PEM file. An unreadable file fails [`build`](Self::build).
    pub fn tls_ca_file(mut self, path: impl AsRef<Path>) -> Self {
        self.common.tls_ca_file(path.as_ref());
        self
    }

    /// Enables TLS and presents this client certificate and key (PEM) to agents that verify
    /// clients (`verify_incoming`; default: `CONSUL_CLIENT_CERT` and `CONSUL_CLIENT_KEY`).
    pub fn tls_identity_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.common.tls_identity_pem(cert.into(), key.into());
        self
    }

    /// Enables TLS and presents the client certificate and key in these PEM files.
    pub fn tls_identity_files(mut self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Self {
        self.common.tls_identity_files(cert.as_ref(), key.as_ref());
        self
    }

    /// Enables TLS and verifies the agent's certificate against this name instead of the
    /// address's host (default: `CONSUL_TLS_SERVER_NAME`).
    pub fn tls_domain(mut self, domain: impl Into<String>) -> Self {
        self.common.tls_domain(domain.into());
        self
    }

    /// The datacenter to query (default: the agent's).
    pub fn datacenter(mut self, dc: impl Into<String>) -> Self {
        self.datacenter = Some(dc.into());
        self
    }

    /// The namespace (Consul Enterprise).
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.common.namespace = Some(ns.into());
        self
    }

    /// Only instances carrying this tag (repeatable: every tag must match).
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.common.tags.push(tag.into());
        self
    }

    /// The longest blocking wait (default 60 s, at most 10 minutes).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.watch.wait = wait.clamp(Duration::from_millis(10), MAX_WAIT);
        self
    }

    /// The sustained rate limit Consul's docs ask of blocking clients: one query per `interval`
    /// (default 100 ms, as consul-template), after a burst of [`burst`](Self::burst) queries.
    pub fn min_interval(mut self, interval: Duration) -> Self {
        self.watch.min_interval = interval;
        self
    }

    /// How many queries may go out back to back before [`min_interval`](Self::min_interval)
    /// applies (default 5), so that a few changes in a row propagate without delay.
    pub fn burst(mut self, burst: u32) -> Self {
        self.watch.burst = burst.max(1);
        self
    }

    /// The longest pause after repeated failures (default 30 s).
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.watch.max_backoff = max;
        self
    }

    /// Whether an answer that would empty a non-empty set is applied (default `false`).
    pub fn allow_empty(mut self, allow: bool) -> Self {
        self.allow_empty = allow;
        self
    }

    /// Seeds the jitter (default: OS entropy), for reproducible tests.
    pub fn seed(mut self, seed: u64) -> Self {
        self.watch.seed = Some(seed);
        self
    }

    /// Builds the resolver. Nothing is contacted until the stream is polled.
    pub fn build(self) -> Result<ConsulResolver, Error> {
        let client = self.common.client()?;
        Ok(ConsulResolver {
            client,
            cfg: Arc::new(Config {
                datacenter: self.datacenter,
                namespace: self.common.namespace,
                tags: self.common.tags,
                allow_empty: self.allow_empty,
                watch: self.watch,
            }),
        })
    }
}

impl Resolver for ConsulResolver {
    fn resolve(&self, service: &str) -> BoxDiscover {
        let mut query = String::from("passing");
        if let Some(dc) = &self.cfg.datacenter {
            query.push_str(&format!("&dc={}", encode(dc)));
        }
        if let Some(ns) = &self.cfg.namespace {
            query.push_str(&format!("&ns={}", encode(ns)));
        }
        for tag in &self.cfg.tags {
            query.push_str(&format!("&tag={}", encode(tag)));
        }
        let fetch = HealthFetch {
            client: self.client.clone(),
            base: format!("/v1/health/service/{}?{query}", encode(service)),
        };
        let name = format!("consul://{}/{service}", self.client.addr());
        let watch = Watch::new(Box::new(fetch), service, self.cfg.watch.clone());
        Cache::builder()
            .name(&name)
            .allow_empty(self.cfg.allow_empty)
            .wrap(watch.into_stream())
            .boxed()
    }
}

struct HealthFetch {
    client: Client,
    base: String,
}

impl Fetch for HealthFetch {
    fn fetch(&self, index: u64, wait: Duration) -> BoxFuture<'static, Result<Reply, BoxError>> {
        let client = self.client.clone();
        let path = if index == 0 {
            self.base.clone()
        } else {
            format!("{}&index={index}&wait={}", self.base, super::go_duration(wait))
        };
        // Consul may hold the request for wait + wait/16; allow that plus a margin for the network.
        let timeout = wait + wait / 16 + Duration::from_secs(5);
        Box::pin(async move { client.send(Method::GET, &path, None, timeout).await })
    }
}
