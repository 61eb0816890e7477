//! The blocking-query loop, written against [`Fetch`] so its timing rules are tested on a paused
//! clock without a network.
//!
//! Rules (Consul API docs, "Blocking Queries" → "Implementation Details"):
//! - reset the index to 0 when it goes backwards;
//! - never block on index 0 after the first answer: raise it to 1;
//! - rate-limit: a token bucket lets `burst` queries through at once and then one per
//!   `min_interval`, so an isolated change propagates at once while a churning service costs at
//!   most one query per `min_interval`; when an answer comes back early without advancing the index
//!   (so the server did not block), or fails, back off exponentially (lb-core's
//!   [`Backoff`], ±20% jitter) up to `max_backoff`;
//! - jitter the requested wait down by up to 1/16;
//! - an answer without `X-Consul-Index` (a proxy dropped it) is still applied, and the loop
//!   degrades to polling slowed down by the same backoff.
//!
//! And one rule of Consul's ACLs ("Results Filtered by ACLs"): a read the token may not fully see
//! is answered `200` with what it may see — often nothing — and `X-Consul-Results-Filtered-By-ACLs:
//! true`. Such an answer is an [`AclDenied`] error naming the token, never a set: applying it would
//! serve an empty or partial set with no word about the cause. Consul hides that header from
//! requests without a token, so an empty answer to one, from an agent whose default ACL policy is
//! `deny`, is the same error until a first set was delivered (after that an empty answer may be
//! a service scaled to zero, which the cache's `allow_empty` rule handles). Neither resets the
//! index: the next query blocks as usual, so a fixed token shows within one `wait`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use hyper::StatusCode;
use lb_core::backoff::Backoff;
use lb_core::discover::BoxDiscover;
use lb_core::{BoxError, Endpoint, EndpointId, Update};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::client::Reply;
use super::{entries, AUTH_ERRORS};

/// A health answer that ACLs filtered: the token (or the anonymous token) may not see the service.
#[derive(Debug)]
pub(crate) struct AclDenied {
    service: Arc<str>,
    /// How the token is named in messages (`None`: the request carried none).
    token: Option<Arc<str>>,
}

impl fmt::Display for AclDenied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.token {
            Some(token) => write!(
                f,
                "consul filtered the health answer for `{}` by ACLs (X-Consul-Results-Filtered-By-ACLs): {token} \
                 lacks service:read on `{}` or node:read on some of its nodes; the answer was not used",
                self.service, self.service
            ),
            None => write!(
                f,
                "consul answered no instance of `{}` to a request without an ACL token, and the agent's default ACL \
                 policy is deny: the anonymous token most likely may not read it; give a token with service:read \
                 (the builder's token option or CONSUL_HTTP_TOKEN)",
                self.service
            ),
        }
    }
}

impl std::error::Error for AclDenied {}

/// Why an answer was not used.
enum Rejected {
    /// A transport error, a non-200 status, a body that is not a health list.
    Failed(BoxError),
    /// A well-formed answer that ACLs emptied or cut ([`AclDenied`]).
    Denied(AclDenied),
}

/// One health query: `index` 0 means non-blocking.
pub(crate) trait Fetch: Send + Sync + 'static {
    fn fetch(&self, index: u64, wait: Duration) -> BoxFuture<'static, Result<Reply, BoxError>>;
}

#[derive(Clone, Debug)]
pub(crate) struct WatchConfig {
    pub(crate) wait: Duration,
    pub(crate) min_interval: Duration,
    pub(crate) burst: u32,
    pub(crate) max_backoff: Duration,
    pub(crate) seed: Option<u64>,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            wait: Duration::from_secs(60),
            min_interval: Duration::from_millis(100),
            burst: 5,
            max_backoff: Duration::from_secs(30),
            seed: None,
        }
    }
}

pub(crate) struct Watch {
    fetch: Box<dyn Fetch>,
    service: Arc<str>,
    /// The token as messages name it; `None` when requests carry none.
    token: Option<Arc<str>>,
    cfg: WatchConfig,
    rng: StdRng,
    index: u64,
    /// The last set emitted, by id (also the last good value of entries that turn malformed).
    current: BTreeMap<EndpointId, Endpoint>,
    emitted: bool,
    /// Set by an error: the next answer confirms the set, with `Current` if it did not change.
    stale: bool,
    /// Paces failures, and early answers that did not advance the index, in a row.
    backoff: Backoff,
    not_before: Option<Instant>,
    /// The token bucket: tokens left and when they were counted.
    tokens: f64,
    counted: Option<Instant>,
}

impl Watch {
    pub(crate) fn new(fetch: Box<dyn Fetch>, service: &str, cfg: WatchConfig) -> Self {
        let mut rng = match cfg.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        // The first strike waits two intervals: one interval is what a healthy loop waits anyway.
        let base = cfg.min_interval.max(Duration::from_millis(50));
        let backoff = Backoff::new((base * 2).min(cfg.max_backoff), cfg.max_backoff).with_seed(rng.random());
        let tokens = f64::from(cfg_burst(&cfg));
        Watch {
            fetch,
            service: Arc::from(service),
            token: None,
            cfg,
            rng,
            index: 0,
            current: BTreeMap::new(),
            emitted: false,
            stale: false,
            backoff,
            not_before: None,
            tokens,
            counted: None,
        }
    }

    /// Names the token requests carry, for [`AclDenied`] (without one, requests carry none).
    pub(crate) fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token.map(Arc::from);
        self
    }

    pub(crate) fn into_stream(self) -> BoxDiscover {
        Box::pin(futures_util::stream::unfold(self, |mut w| async move {
            let item = w.next().await;
            Some((item, w))
        }))
    }

    /// Queries until there is something to report: a changed set, or an error.
    pub(crate) async fn next(&mut self) -> Result<Update, BoxError> {
        loop {
            if let Some(at) = self.not_before.take() {
                tokio::time::sleep_until(at).await;
            }
            if let Some(at) = self.take_token() {
                tokio::time::sleep_until(at).await;
                continue;
            }
            let started = Instant::now();
            let wait = self.jittered_wait();
            let asked = self.index;
            let reply = self.fetch.fetch(asked, wait).await;
            match self.on_reply(asked, wait, started, reply) {
                Ok(Some(update)) => return Ok(update),
                Ok(None) => continue,
                Err(Rejected::Denied(denied)) => {
                    // Consul answered, with a good index: keep blocking on it (the index
                    // bookkeeping ran), and report the cause instead of the filtered set.
                    let reason = if denied.token.is_some() { "acl_filtered" } else { "anonymous_denied" };
                    metrics::counter!(AUTH_ERRORS, "registry" => "consul", "reason" => reason).increment(1);
                    self.stale = true;
                    return Err(Box::new(denied));
                }
                Err(Rejected::Failed(error)) => {
                    self.strike();
                    // A failed agent may come back restarted with a lower index: ask without
                    // blocking next time so that shows at once instead of after a full wait.
                    self.index = 0;
                    self.stale = true;
                    return Err(error);
                }
            }
        }
    }

    fn on_reply(
        &mut self,
        asked: u64,
        wait: Duration,
        started: Instant,
        reply: Result<Reply, BoxError>,
    ) -> Result<Option<Update>, Rejected> {
        let reply = reply.map_err(Rejected::Failed)?;
        if reply.status != StatusCode::OK {
            return Err(Rejected::Failed(reply.into_error(&format!("health query for `{}`", self.service))));
        }
        let list = entries::parse(&self.service, &reply.body, &self.current).map_err(Rejected::Failed)?;
        self.advance(asked, wait, started, reply.index);
        let anonymous_denied = self.token.is_none() && reply.default_deny && list.is_empty() && !self.emitted;
        if reply.acl_filtered || anonymous_denied {
            return Err(Rejected::Denied(AclDenied {
                service: Arc::clone(&self.service),
                token: if reply.acl_filtered { Some(self.token.clone().unwrap_or_else(|| Arc::from("the ACL token"))) } else { None },
            }));
        }
        Ok(self.emit(list))
    }

    /// The index bookkeeping of one answer: where the next query blocks, and whether to back off.
    fn advance(&mut self, asked: u64, wait: Duration, started: Instant, index: Option<u64>) {
        let Some(index) = index else {
            // Something between us and Consul dropped the header. The data is still good, but
            // without an index nothing blocks: degrade to polling, slowed down by the backoff.
            warn!(service = %self.service, "consul answer without a numeric X-Consul-Index; polling instead of blocking");
            self.index = 0;
            self.strike();
            return;
        };
        if index < asked {
            info!(service = %self.service, from = asked, to = index, "consul index went backwards; restarting the blocking loop");
            self.index = 0;
        } else {
            // An index of 0 would make the next query return at once, forever.
            self.index = index.max(1);
        }
        let early = started.elapsed() < wait / 2;
        if asked != 0 && index == asked && early {
            // The server did not block although nothing changed: do not spin.
            debug!(service = %self.service, index, "consul answered early without a new index; backing off");
            self.strike();
        } else {
            self.backoff.reset();
        }
    }

    /// The update to report for an answer: none when it repeats what was last reported, `Current`
    /// when it repeats it after an error.
    fn emit(&mut self, list: Vec<Endpoint>) -> Option<Update> {
        let next: BTreeMap<EndpointId, Endpoint> = list.iter().map(|e| (e.id().clone(), e.clone())).collect();
        let recovered = std::mem::take(&mut self.stale);
        if recovered {
            info!(service = %self.service, endpoints = next.len(), "consul answers again");
        }
        if self.emitted && next == self.current {
            return recovered.then_some(Update::Current);
        }
        self.emitted = true;
        self.current = next;
        Some(Update::Reset(list))
    }

    fn strike(&mut self) {
        let delay = self.backoff.next();
        if self.backoff.attempts() > 1 {
            warn!(service = %self.service, strikes = self.backoff.attempts(), delay_ms = delay.as_millis() as u64, "consul query backing off");
        }
        self.not_before = Some(Instant::now() + delay);
    }

    /// Takes a query token, or says when the next one will be there.
    fn take_token(&mut self) -> Option<Instant> {
        let interval = self.cfg.min_interval;
        if interval.is_zero() {
            return None;
        }
        let now = Instant::now();
        let burst = f64::from(cfg_burst(&self.cfg));
        if let Some(then) = self.counted {
            self.tokens = (self.tokens + (now - then).as_secs_f64() / interval.as_secs_f64()).min(burst);
        }
        self.counted = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            None
        } else {
            Some(now + interval.mul_f64(1.0 - self.tokens))
        }
    }

    fn jittered_wait(&mut self) -> Duration {
        let cut = self.rng.random_range(0.0..1.0 / 16.0);
        self.cfg.wait.mul_f64(1.0 - cut)
    }
}

fn cfg_burst(cfg: &WatchConfig) -> u32 {
    cfg.burst.max(1)
}

#[cfg(test)]
mod tests;
