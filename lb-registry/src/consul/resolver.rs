//! [`ConsulResolver`]: discovery by `/v1/health/service/<name>?passing` blocking queries.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use hyper::Method;
use lb_core::discover::BoxDiscover;
use lb_core::BoxError;

use super::builder::{ConsulBuilder, ResolverOptions, Settings};
use super::client::{encode, Client, Reply};
use super::watch::{Fetch, Watch, WatchConfig};
use super::parse_duration;
use crate::{Error, Resolver, Target};

/// Consul's own ceiling on `wait`.
const MAX_WAIT: Duration = Duration::from_secs(600);

/// Discovery from Consul's health endpoint. See the [module docs](super) for the mapping and the
/// blocking-query rules. The stream is the registry's word, uncached: [`lb_registry::resolve`](crate::resolve)
/// puts it behind the [cache](crate::cache), and so does
/// [`Cache::builder()…resolve(resolver, service)`](crate::cache::CacheBuilder::resolve).
///
/// ```no_run
/// # async fn demo() -> Result<(), lb_registry::Error> {
/// use lb_registry::cache::Cache;
/// use lb_registry::consul::ConsulResolver;
///
/// let resolver = ConsulResolver::builder()
///     .address("127.0.0.1:8500")
///     .token("a-token-from-a-secret-store")
///     .datacenter("eu1")
///     .build()?;
/// let updates = Cache::builder().resolve(resolver, "greeter").boxed(); // hand it to lb_core::Pool::spawn
/// # let _ = updates; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct ConsulResolver {
    cfg: Arc<Settings<ResolverOptions>>,
}

/// Options of a [`ConsulResolver`]: the agent options every Consul builder has (see
/// [`ConsulBuilder`]) and discovery's own, below.
pub type ConsulResolverBuilder = ConsulBuilder<ResolverOptions>;

impl ConsulResolver {
    /// A builder with the defaults: the agent from `CONSUL_HTTP_ADDR` or `127.0.0.1:8500`, the
    /// token from `CONSUL_HTTP_TOKEN`, 60 s waits, at most 10 queries a second after a burst of 5.
    pub fn builder() -> ConsulResolverBuilder {
        ConsulBuilder::with_side(ResolverOptions {
            datacenter: None,
            watch: WatchConfig::default(),
        })
    }

    /// A resolver configured by a `consul://` target's authority and query (see the module docs);
    /// the cache keys are checked but left to [`lb_registry::resolve`](crate::resolve).
    pub fn from_target(target: &Target) -> Result<Self, Error> {
        ConsulResolverBuilder::from_target(target)?.build()
    }
}

impl ConsulBuilder<ResolverOptions> {
    /// The builder for a `consul://` target's authority and query (see the module docs); further
    /// options, such as the token, can be set before [`build`](Self::build).
    pub fn from_target(target: &Target) -> Result<Self, Error> {
        ConsulResolver::builder().with_target(target, ResolverOptions::read_target)
    }

    /// The datacenter to query (default: the agent's).
    pub fn datacenter(mut self, dc: impl Into<String>) -> Self {
        self.side.datacenter = Some(dc.into());
        self
    }

    /// The longest blocking wait (default 60 s, at most 10 minutes).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.side.set_wait(wait);
        self
    }

    /// The sustained rate limit Consul's docs ask of blocking clients: one query per `interval`
    /// (default 100 ms, as consul-template), after a burst of [`burst`](Self::burst) queries.
    pub fn min_interval(mut self, interval: Duration) -> Self {
        self.side.watch.min_interval = interval;
        self
    }

    /// How many queries may go out back to back before [`min_interval`](Self::min_interval)
    /// applies (default 5), so that a few changes in a row propagate without delay.
    pub fn burst(mut self, burst: u32) -> Self {
        self.side.watch.burst = burst.max(1);
        self
    }

    /// The longest pause after repeated failures (default 30 s).
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.side.watch.max_backoff = max;
        self
    }

    /// Seeds the jitter (default: OS entropy), for reproducible tests.
    pub fn seed(mut self, seed: u64) -> Self {
        self.side.watch.seed = Some(seed);
        self
    }

    /// Builds the resolver. Nothing is contacted until the stream is polled.
    pub fn build(self) -> Result<ConsulResolver, Error> {
        Ok(ConsulResolver { cfg: Arc::new(self.settings()?) })
    }
}

impl ResolverOptions {
    /// Discovery's keys of a `consul://` target: `dc`, `wait`.
    fn read_target(&mut self, target: &Target) -> Result<(), Error> {
        self.datacenter = target.param("dc").filter(|s| !s.is_empty()).map(str::to_string);
        if let Some(w) = target.param("wait") {
            self.set_wait(parse_duration("wait", w)?);
        }
        Ok(())
    }

    fn set_wait(&mut self, wait: Duration) {
        self.watch.wait = wait.clamp(Duration::from_millis(10), MAX_WAIT);
    }
}

impl Resolver for ConsulResolver {
    fn resolve(&self, service: &str) -> BoxDiscover {
        let mut query = String::from("passing");
        if let Some(dc) = &self.cfg.side.datacenter {
            query.push_str(&format!("&dc={}", encode(dc)));
        }
        if let Some(ns) = &self.cfg.namespace {
            query.push_str(&format!("&ns={}", encode(ns)));
        }
        for tag in &self.cfg.tags {
            query.push_str(&format!("&tag={}", encode(tag)));
        }
        let fetch = HealthFetch {
            client: self.cfg.client.clone(),
            base: format!("/v1/health/service/{}?{query}", encode(service)),
        };
        let token = self.cfg.client.token().map(ToString::to_string);
        Watch::new(Box::new(fetch), service, self.cfg.side.watch.clone()).with_token(token).into_stream()
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
