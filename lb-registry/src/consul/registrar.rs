//! [`ConsulRegistrar`]: agent service registration kept alive by a TTL check.
//!
//! The instance registers with a TTL check (initially passing) and passes it every `ttl/3`, so two
//! passes can be lost before Consul marks it critical; `DeregisterCriticalServiceAfter` lets Consul
//! remove an instance that died without deregistering. When a pass answers "unknown check" — the
//! agent restarted without its state, or reaped the service after a long outage — the instance
//! registers again: registration never gives up while the [`Registration`] lives (go-zero and Kitex
//! lose instances exactly there). Failures are retried with backoff, never slower than the pass
//! interval. Stopping deregisters (`PUT /v1/agent/service/deregister/<id>`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use lb_core::{BoxError, Endpoint};
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use lb_core::backoff::Backoff;

use super::builder::{ConsulBuilder, RegistrarOptions, Settings};
use super::client::{encode, Client, Reply};
use super::entries::{META_NODE, META_REGION, META_WEIGHT, META_ZONE};
use super::{go_duration, parse_duration, REREGISTRATIONS};
use crate::{Error, Registrar, Registration, Target};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Registers instances with the local Consul agent. See the [module docs](super) for the fields.
///
/// ```no_run
/// # async fn demo() -> Result<(), lb_registry::Error> {
/// use std::time::Duration;
/// use lb_core::{Endpoint, Locality};
/// use lb_registry::consul::ConsulRegistrar;
/// use lb_registry::Registrar as _;
///
/// let registrar = ConsulRegistrar::builder().address("127.0.0.1:8500").ttl(Duration::from_secs(10)).build()?;
/// let me = Endpoint::new("10.0.0.7:50051".parse().unwrap())
///     .with_weight(200)
///     .with_locality(Locality::unknown().with_zone("eu-west-1a"));
/// let registration = registrar.register("greeter", me).await?;
/// // … serve …
/// registration.deregister().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ConsulRegistrar {
    cfg: Arc<Settings<RegistrarOptions>>,
}

impl fmt::Debug for ConsulRegistrar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulRegistrar").field("client", &self.cfg.client).field("ttl", &self.cfg.side.ttl).finish()
    }
}

/// Options of a [`ConsulRegistrar`]: the agent options every Consul builder has (see
/// [`ConsulBuilder`]) and registration's own, below.
pub type ConsulRegistrarBuilder = ConsulBuilder<RegistrarOptions>;

impl ConsulRegistrar {
    /// A builder with the defaults: the agent from `CONSUL_HTTP_ADDR` or `127.0.0.1:8500`, the
    /// token from `CONSUL_HTTP_TOKEN`, a 10 s TTL, deregistration after 1 minute critical.
    pub fn builder() -> ConsulRegistrarBuilder {
        ConsulBuilder::with_side(RegistrarOptions {
            ttl: Duration::from_secs(10),
            deregister_after: Duration::from_secs(60),
        })
    }

    /// A registrar configured by a `consul://` target's authority and query (see the module docs).
    pub fn from_target(target: &Target) -> Result<Self, Error> {
        ConsulRegistrarBuilder::from_target(target)?.build()
    }
}

impl ConsulBuilder<RegistrarOptions> {
    /// The builder for a `consul://` target (see the module docs).
    pub fn from_target(target: &Target) -> Result<Self, Error> {
        ConsulRegistrar::builder().with_target(target, |side, target| {
            if let Some(v) = target.param("ttl") {
                side.set_ttl(parse_duration("ttl", v)?);
            }
            if let Some(v) = target.param("deregister_after") {
                side.deregister_after = parse_duration("deregister_after", v)?;
            }
            Ok(())
        })
    }

    /// The TTL of the check (default 10 s); it is passed every third of it.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.side.set_ttl(ttl);
        self
    }

    /// `DeregisterCriticalServiceAfter` (default 1 minute; Consul itself enforces at least that).
    pub fn deregister_critical_after(mut self, after: Duration) -> Self {
        self.side.deregister_after = after;
        self
    }

    /// Builds the registrar. Nothing is contacted until [`Registrar::register`].
    pub fn build(self) -> Result<ConsulRegistrar, Error> {
        Ok(ConsulRegistrar { cfg: Arc::new(self.settings()?) })
    }
}

impl RegistrarOptions {
    fn set_ttl(&mut self, ttl: Duration) {
        self.ttl = ttl.max(Duration::from_millis(30));
    }
}

impl Registrar for ConsulRegistrar {
    fn register(&self, service: &str, instance: Endpoint) -> Pin<Box<dyn Future<Output = Result<Registration, Error>> + Send + 'static>> {
        let this = self.clone();
        let service = service.to_string();
        Box::pin(async move {
            let agent = Agent::new(&this.cfg, &service, &instance)?;
            agent.register().await.map_err(|e| Error::registry(format!("registering `{}` with consul", agent.id), e))?;
            info!(service = %service, id = %agent.id, addr = %instance.addr(), agent = agent.client.addr(), "registered with consul");
            let description = format!("consul {service}/{} at {}", agent.id, instance.addr());
            let (stop, stopped) = oneshot::channel();
            let task = tokio::spawn(agent.keep_alive(stopped));
            Ok(Registration::from_task(description, stop, task))
        })
    }
}

/// One registered instance and the requests that keep it registered.
struct Agent {
    client: Client,
    id: String,
    check_id: String,
    body: Bytes,
    ns_query: String,
    ttl: Duration,
}

impl Agent {
    fn new(cfg: &Settings<RegistrarOptions>, service: &str, instance: &Endpoint) -> Result<Self, Error> {
        let addr = instance.addr();
        if addr.ip().is_unspecified() {
            return Err(Error::invalid_target(format!(
                "cannot register {addr} in consul: clients cannot connect to an unspecified address; register the address they should use"
            )));
        }
        let explicit_id = instance.id().as_str() != addr.to_string();
        let id = if explicit_id {
            instance.id().as_str().to_string()
        } else {
            let ip = addr.ip().to_string().replace([':', '.'], "-");
            format!("{service}-{ip}-{}", addr.port())
        };
        let check_id = format!("service:{id}");
        let mut meta = Map::new();
        for (k, v) in instance.metadata() {
            let valid = !k.is_empty()
                && k.len() <= 128
                && !k.starts_with("consul-")
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid {
                return Err(Error::invalid_target(format!(
                    "metadata key `{k}` is not a valid Consul meta key ([A-Za-z0-9_-]{{1,128}}, no `consul-` prefix)"
                )));
            }
            meta.insert(k.clone(), Value::from(v.clone()));
        }
        meta.insert(META_WEIGHT.into(), instance.weight().to_string().into());
        let l = instance.locality();
        for (key, value) in [(META_ZONE, &l.zone), (META_REGION, &l.region), (META_NODE, &l.node)] {
            if let Some(v) = value {
                meta.insert(key.into(), Value::from(&**v));
            }
        }
        let body = json!({
            "ID": id,
            "Name": service,
            "Tags": cfg.tags,
            "Address": addr.ip().to_string(),
            "Port": addr.port(),
            "Meta": meta,
            // Consul rejects a zero passing weight; `lb-weight` carries the exact value.
            "Weights": {"Passing": instance.weight().max(1), "Warning": 1},
            "Check": {
                "CheckID": check_id,
                "Name": format!("lb heartbeat ({service})"),
                "TTL": go_duration(cfg.side.ttl),
                "Status": "passing",
                "DeregisterCriticalServiceAfter": go_duration(cfg.side.deregister_after),
            },
        });
        let ns_query = cfg.namespace.as_ref().map(|ns| format!("ns={}", encode(ns))).unwrap_or_default();
        Ok(Agent {
            client: cfg.client.clone(),
            id,
            check_id,
            body: Bytes::from(body.to_string()),
            ns_query,
            ttl: cfg.side.ttl,
        })
    }

    fn path(&self, path: &str, extra: &str) -> String {
        let q: Vec<&str> = [extra, &self.ns_query].into_iter().filter(|s| !s.is_empty()).collect();
        if q.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{}", q.join("&"))
        }
    }

    async fn put(&self, path: String, body: Option<Bytes>) -> Result<Reply, BoxError> {
        self.client.send(Method::PUT, &path, body, REQUEST_TIMEOUT).await
    }

    async fn register(&self) -> Result<(), BoxError> {
        let path = self.path("/v1/agent/service/register", "replace-existing-checks=true");
        let reply = self.put(path, Some(self.body.clone())).await?;
        if reply.status == StatusCode::OK {
            Ok(())
        } else {
            Err(reply.into_error("service register"))
        }
    }

    async fn pass(&self) -> Result<Pass, BoxError> {
        let path = self.path(&format!("/v1/agent/check/pass/{}", encode(&self.check_id)), "note=lb+heartbeat");
        let reply = self.put(path, None).await?;
        if reply.status == StatusCode::OK {
            return Ok(Pass::Ok);
        }
        // Consul ≥ 1.11 answers 404 "Unknown check ID"; older agents 500 "CheckID … does not have
        // associated TTL" or "Unknown check".
        let text = reply.text().to_ascii_lowercase();
        if reply.status == StatusCode::NOT_FOUND || text.contains("unknown check") || text.contains("does not have associated ttl") {
            return Ok(Pass::Forgotten);
        }
        Err(reply.into_error("check pass"))
    }

    async fn deregister(&self) -> Result<(), BoxError> {
        let path = self.path(&format!("/v1/agent/service/deregister/{}", encode(&self.id)), "");
        let reply = self.put(path, None).await?;
        // 404: already gone, which is what we wanted.
        if reply.status == StatusCode::OK || reply.status == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(reply.into_error("service deregister"))
        }
    }

    async fn keep_alive(self, mut stop: oneshot::Receiver<()>) {
        let interval = self.ttl / 3;
        let mut next = Instant::now() + interval;
        // Retry sooner than the pass interval at first, never much later than it: the TTL runs
        // out after three intervals.
        let mut backoff = Backoff::new(Duration::from_millis(200).min(interval), interval);
        loop {
            tokio::select! {
                // Fires on `stop` and when the `Registration` (and so the sender) is dropped.
                _ = &mut stop => break,
                _ = tokio::time::sleep_until(next) => {}
            }
            let outcome = match self.pass().await {
                Ok(Pass::Ok) => Ok(()),
                Ok(Pass::Forgotten) => {
                    warn!(id = %self.id, "consul forgot this instance (agent restart or reaped while critical); registering again");
                    let r = self.register().await;
                    if r.is_ok() {
                        metrics::counter!(REREGISTRATIONS, "registry" => "consul").increment(1);
                        info!(id = %self.id, "registered with consul again");
                    }
                    r
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => {
                    if backoff.attempts() > 0 {
                        info!(id = %self.id, failures = backoff.attempts(), "consul heartbeats succeed again");
                    }
                    backoff.reset();
                    next = Instant::now() + interval;
                }
                Err(error) => {
                    let delay = backoff.next();
                    warn!(id = %self.id, %error, failures = backoff.attempts(), retry_ms = delay.as_millis() as u64, "consul heartbeat failed");
                    next = Instant::now() + delay;
                }
            }
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, self.deregister()).await {
            Ok(Ok(())) => info!(id = %self.id, "deregistered from consul"),
            Ok(Err(error)) => warn!(id = %self.id, %error, "consul deregistration failed; the TTL check will expire"),
            Err(_) => warn!(id = %self.id, "consul deregistration timed out; the TTL check will expire"),
        }
        debug!(id = %self.id, "consul keep-alive stopped");
    }
}

enum Pass {
    Ok,
    Forgotten,
}
