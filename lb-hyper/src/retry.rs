//! Retries and hedged requests: the attempts of one call beyond its first, bounded by a budget.
//!
//! The engine already re-sends, without any policy, a request that never reached a backend (an
//! unready connection, a stream refused unprocessed). What this module adds is for requests that
//! *did* reach one, following gRPC's retry design (gRFC A6), for [`LbClient`](crate::LbClient)
//! and `lb_tonic::LbChannel` alike:
//!
//! - a [`RetryPolicy`] re-sends a call whose answer is retryable ([`RetryOn`]: gRPC codes in a
//!   trailers-only answer, HTTP statuses, a connection that broke after the send), up to its
//!   attempt count, after an exponential backoff with jitter — or after the server's
//!   `grpc-retry-pushback-ms` (HTTP: `Retry-After`); a negative or malformed pushback stops
//!   retrying (A6). Each retry prefers an endpoint the call has not tried.
//! - a [`HedgePolicy`] sends the call again while earlier attempts are still in flight, after a
//!   fixed delay or the target's recent latency percentile ([`HedgeDelay`]): each hedge goes to an
//!   endpoint no earlier attempt used, the first answer that is not a non-fatal failure wins, and
//!   the other attempts are cancelled (their streams reset, their load released at once). A
//!   non-fatal failure sends the next hedge at once. Only calls marked [`Hedgeable`] are hedged,
//!   unless the policy says [`HedgePolicy::every_call`]: hedging a call that is not idempotent
//!   runs it twice.
//! - both draw on one [`RetryBudget`](lb_core::retry::RetryBudget) per client (default: 0.2 of
//!   recent calls plus 10 per second): a spent budget sends nothing more and the call ends with
//!   the answer it has.
//!
//! Only a request that can be rebuilt is retried or hedged: one carrying a [`Replay`]
//! (`LbChannel` adds one to every call whose body is complete at once — every unary call;
//! [`LbClient::request_replayable`](crate::LbClient::request_replayable) to any `Clone` body).
//! An answer whose head arrived without a final status (a gRPC response with a body to come, an
//! HTTP status not listed) commits the call: it is never retried. gRPC attempts after the first
//! carry `grpc-previous-rpc-attempts`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use lb_core::balance::{Attempted, Avoid};
use lb_core::retry::{Budget, Extra, LatencyQuantile};
use lb_core::BoxError;
use tokio::time::Instant;

use crate::client::{LbClient, ResponseBody};
use crate::connect::Replay;
use crate::Error;

/// gRFC A6 caps a call's attempts at 5; so does lb.
pub const MAX_ATTEMPTS: u32 = 5;

/// Which failed attempts may be retried (for a [`RetryPolicy`]), or are not fatal to a hedged
/// call (for a [`HedgePolicy`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryOn {
    grpc_codes: Vec<i32>,
    http_statuses: Vec<u16>,
    connection_errors: bool,
}

impl RetryOn {
    /// gRPC answers with these codes (a trailers-only response); `UNAVAILABLE` (14) among them
    /// also covers a connection that broke after the send, as gRPC reports that.
    pub fn grpc_codes(codes: impl IntoIterator<Item = i32>) -> Self {
        let grpc_codes: Vec<i32> = codes.into_iter().collect();
        RetryOn {
            connection_errors: grpc_codes.contains(&UNAVAILABLE),
            grpc_codes,
            http_statuses: Vec::new(),
        }
    }

    /// HTTP answers with these statuses (502, 503, 504 are the usual ones).
    pub fn http_statuses(statuses: impl IntoIterator<Item = u16>) -> Self {
        RetryOn {
            http_statuses: statuses.into_iter().collect(),
            ..RetryOn::default()
        }
    }

    /// A connection that broke after the request was sent (an HTTP/2 stream reset, a closed
    /// HTTP/1.1 connection).
    pub fn connection_errors(mut self, on: bool) -> Self {
        self.connection_errors = on;
        self
    }

    fn grpc(&self, code: i32) -> bool {
        self.grpc_codes.contains(&code)
    }

    fn http(&self, status: StatusCode) -> bool {
        self.http_statuses.contains(&status.as_u16())
    }
}

/// gRPC `UNAVAILABLE`.
const UNAVAILABLE: i32 = 14;

/// When and how often a call that reached a backend is re-sent; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    max_attempts: u32,
    on: RetryOn,
    backoff: Duration,
    max_backoff: Duration,
    multiplier: f64,
}

impl RetryPolicy {
    /// At most `max_attempts` attempts in all, the first included (at most 5, as A6 caps it), on
    /// broken connections only until [`RetryPolicy::on`] says more; backoff from 10 ms, ×2 per
    /// attempt, at most 1 s, each delay drawn at random below its bound (A6's jitter).
    pub fn new(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts: max_attempts.clamp(1, MAX_ATTEMPTS),
            on: RetryOn::default().connection_errors(true),
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
            multiplier: 2.0,
        }
    }

    /// Which answers are retried.
    pub fn on(mut self, on: RetryOn) -> Self {
        self.on = on;
        self
    }

    /// The bound of the first delay; later ones grow by [`RetryPolicy::multiplier`].
    pub fn backoff(mut self, initial: Duration) -> Self {
        self.backoff = initial;
        self
    }

    /// The largest delay bound.
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max;
        self
    }

    /// How much the delay bound grows per attempt (at least 1).
    pub fn multiplier(mut self, m: f64) -> Self {
        self.multiplier = if m.is_finite() { m.max(1.0) } else { 1.0 };
        self
    }

    /// Attempts in all, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The answers retried.
    pub fn retry_on(&self) -> &RetryOn {
        &self.on
    }

    /// A6's delay before retry `n` (1 for the first retry): uniform in [0, min(initial ×
    /// multiplier^(n-1), max)).
    fn delay(&self, n: u32) -> Duration {
        let bound = self.backoff.as_secs_f64() * self.multiplier.powi(n.saturating_sub(1) as i32);
        let bound = bound.min(self.max_backoff.as_secs_f64());
        Duration::from_secs_f64(bound * rand::random::<f64>())
    }
}

/// How long a hedged call waits before its next attempt.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HedgeDelay {
    /// A fixed delay.
    Fixed(Duration),
    /// The target's recent latency at this quantile (0.95: p95) — measured from the send to the
    /// response head of first attempts, over the last 10–20 s — but at least `min`. A target
    /// with fewer than 50 such latencies yet is not hedged.
    Percentile {
        /// The quantile, within 0 and 1.
        quantile: f64,
        /// The shortest delay.
        min: Duration,
    },
}

impl HedgeDelay {
    /// After the target's recent `quantile` latency (at least 1 ms).
    pub fn percentile(quantile: f64) -> Self {
        HedgeDelay::Percentile {
            quantile,
            min: Duration::from_millis(1),
        }
    }
}

/// Hedging: more attempts of a call while earlier ones are in flight; see the
/// [module docs](self).
#[derive(Clone, Debug)]
pub struct HedgePolicy {
    max_attempts: u32,
    delay: HedgeDelay,
    non_fatal: RetryOn,
    every_call: bool,
}

impl HedgePolicy {
    /// At most `max_attempts` attempts in all, the first included (at most 5, as A6 caps it),
    /// `delay` apart; every failure is fatal until [`HedgePolicy::non_fatal`] says otherwise.
    pub fn new(max_attempts: u32, delay: HedgeDelay) -> Self {
        HedgePolicy {
            max_attempts: max_attempts.clamp(1, MAX_ATTEMPTS),
            delay,
            non_fatal: RetryOn::default(),
            every_call: false,
        }
    }

    /// Failures that do not end the call: it waits for the other attempts, and sends the next
    /// hedge at once.
    pub fn non_fatal(mut self, on: RetryOn) -> Self {
        self.non_fatal = on;
        self
    }

    /// Hedges every call that can be rebuilt, not only those marked [`Hedgeable`]: for targets
    /// whose every method is idempotent.
    pub fn every_call(mut self) -> Self {
        self.every_call = true;
        self
    }

    /// Attempts in all, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delay between attempts.
    pub fn delay(&self) -> HedgeDelay {
        self.delay
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        match self.delay {
            HedgeDelay::Percentile { quantile, .. } if !(0.0..=1.0).contains(&quantile) => {
                Err(format!("the hedging percentile must be within 0 and 1, got {quantile}"))
            }
            _ => Ok(()),
        }
    }
}

/// Marks a request as safe to hedge (an extension of the request; for tonic, of the
/// `tonic::Request`): a [`HedgePolicy`] hedges only marked calls unless it hedges
/// [`every_call`](HedgePolicy::every_call).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hedgeable;

/// A client's retry and hedging policies and the budget their attempts share.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) hedge: Option<HedgePolicy>,
    pub(crate) budget: Arc<Budget>,
    /// First attempts' latencies, for [`HedgeDelay::Percentile`].
    pub(crate) latency: Option<LatencyQuantile>,
    /// gRPC statuses are read from the answers, and attempts carry `grpc-previous-rpc-attempts`.
    pub(crate) grpc: bool,
}

impl Plan {
    pub(crate) fn new(
        retry: Option<RetryPolicy>,
        hedge: Option<HedgePolicy>,
        budget: Arc<Budget>,
        grpc: bool,
    ) -> Option<Arc<Plan>> {
        if retry.is_none() && hedge.is_none() {
            return None;
        }
        let latency = match hedge.as_ref().map(|h| h.delay) {
            Some(HedgeDelay::Percentile { quantile, .. }) => {
                Some(LatencyQuantile::new(quantile, Duration::from_secs(10), 50))
            }
            _ => None,
        };
        Some(Arc::new(Plan {
            retry,
            hedge,
            budget,
            latency,
            grpc,
        }))
    }

    /// Whether this request is driven here (rather than sent once).
    pub(crate) fn applies<B>(&self, req: &Request<B>) -> bool {
        self.hedge_applies(req) || self.retry.as_ref().is_some_and(|r| r.max_attempts > 1)
    }

    fn hedge_applies<B>(&self, req: &Request<B>) -> bool {
        self.hedge
            .as_ref()
            .is_some_and(|h| h.max_attempts > 1 && (h.every_call || req.extensions().get::<Hedgeable>().is_some()))
    }
}

/// How an attempt ended, for the call.
enum Verdict {
    /// The call ends with this answer.
    Commit,
    /// A retryable (or non-fatal) failure; the server's pushback, if it gave one.
    Failed(Pushback),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pushback {
    None,
    After(Duration),
    /// A6: a negative or malformed pushback means "do not retry".
    Stop,
}

type Attempt = Result<Response<ResponseBody>, Error>;

fn verdict(plan: &Plan, on: &RetryOn, result: &Attempt) -> Verdict {
    match result {
        Ok(rsp) => {
            let failed = if plan.grpc {
                if rsp.status().is_success() {
                    // A trailers-only answer carries its status in the head: nothing is committed yet.
                    crate::classify::grpc_status(rsp.headers()).is_some_and(|c| on.grpc(c))
                } else {
                    // Not a gRPC answer (a proxy's 502, a draining server's 503): read as gRPC does.
                    on.grpc(grpc_code_of_http(rsp.status()))
                }
            } else {
                on.http(rsp.status())
            };
            if failed {
                Verdict::Failed(pushback(plan.grpc, rsp.headers()))
            } else {
                Verdict::Commit
            }
        }
        // No endpoint (the engine waited already), a circuit breaker, a timeout: final.
        Err(e) if e.is_unavailable() || e.is_overloaded() || e.is_timeout() || e.is_config() => Verdict::Commit,
        Err(e) if e.is_transport() && on.connection_errors => Verdict::Failed(Pushback::None),
        Err(_) => Verdict::Commit,
    }
}

/// gRPC's mapping of an HTTP status that is not 200 to a code.
fn grpc_code_of_http(status: StatusCode) -> i32 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => UNAVAILABLE,
        _ => 2,
    }
}

fn pushback(grpc: bool, headers: &HeaderMap) -> Pushback {
    if grpc {
        return match headers.get("grpc-retry-pushback-ms") {
            None => Pushback::None,
            Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<i64>().ok()) {
                Some(ms) if ms >= 0 => Pushback::After(Duration::from_millis(ms as u64)),
                _ => Pushback::Stop,
            },
        };
    }
    match headers.get(http::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::trim) {
        None => Pushback::None,
        Some(v) => match v.parse::<u64>() {
            Ok(secs) => Pushback::After(Duration::from_secs(secs)),
            Err(_) => Pushback::None,
        },
    }
}

/// The boxed future of a driven call.
pub(crate) type Driven = Pin<Box<dyn Future<Output = Attempt> + Send>>;

/// Drives `first` under `plan`: hedged if the policy applies to it, else retried.
pub(crate) fn drive<B>(client: LbClient<B>, plan: Arc<Plan>, first: Request<B>, replay: Replay<B>) -> Driven
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    plan.budget.deposit();
    if plan.hedge_applies(&first) {
        Box::pin(hedged(client, plan, first, replay))
    } else {
        Box::pin(retried(client, plan, first, replay))
    }
}

/// Attempt `n` (0 for the first) of a call, avoiding what `attempted` lists.
fn attempt<B: 'static>(plan: &Plan, replay: &Replay<B>, n: u32, avoid: Avoid) -> Request<B> {
    let mut req = replay.rebuild();
    if plan.grpc && n > 0 {
        req.headers_mut().insert("grpc-previous-rpc-attempts", HeaderValue::from(n));
    }
    req.extensions_mut().insert(avoid);
    req
}

async fn retried<B>(client: LbClient<B>, plan: Arc<Plan>, mut first: Request<B>, replay: Replay<B>) -> Attempt
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let Some(policy) = plan.retry.as_ref() else {
        return client.send_once(first).await;
    };
    let attempted = Attempted::new();
    first.extensions_mut().insert(Avoid::prefer(attempted.clone()));
    let mut req = first;
    let mut n = 0;
    loop {
        let result = client.send_once(req).await;
        n += 1;
        let pushback = match verdict(&plan, &policy.on, &result) {
            Verdict::Commit => {
                plan.budget.record(false);
                return result;
            }
            Verdict::Failed(pushback) => {
                plan.budget.record(true);
                pushback
            }
        };
        let delay = match pushback {
            Pushback::Stop => return result,
            Pushback::After(d) => d,
            Pushback::None => policy.delay(n),
        };
        if n >= policy.max_attempts || !plan.budget.withdraw(Extra::Retry) {
            return result;
        }
        tracing::debug!(target_uri = %client.target(), attempt = n + 1, ?delay, "retrying call");
        drop(result);
        tokio::time::sleep(delay).await;
        req = attempt(&plan, &replay, n, Avoid::prefer(attempted.clone()));
    }
}

async fn hedged<B>(client: LbClient<B>, plan: Arc<Plan>, mut first: Request<B>, replay: Replay<B>) -> Attempt
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let Some(policy) = plan.hedge.as_ref() else {
        return client.send_once(first).await;
    };
    let attempted = Attempted::new();
    first.extensions_mut().insert(Avoid::require(attempted.clone()));
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let send = |req: Request<B>, n: u32| {
        let fut = client.send_once(req);
        async move { (n, fut.await) }
    };
    in_flight.push(send(first, 0));
    let mut sent = 1u32;
    // The first attempt's latency feeds the percentile, even when a hedge wins (as the time it had
    // taken when cancelled: a lower bound that lies above the percentile, which keeps it true).
    let mut first_done = false;
    let mut next = hedge_delay(&plan, policy).map(|d| started + d);
    let mut last: Option<Attempt> = None;
    let result = loop {
        let due = next.filter(|_| sent < policy.max_attempts);
        let hedge_due = async move {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some((n, result)) = in_flight.next() => {
                if n == 0 {
                    first_done = true;
                    if let Some(q) = &plan.latency {
                        q.record(started.elapsed());
                    }
                }
                // A hedge that found every endpoint tried was never sent: hedging is over.
                if matches!(&result, Err(e) if e.unavailable().is_some_and(|u| u.is_all_tried())) {
                    next = None;
                    last.get_or_insert(result);
                } else {
                    match verdict(&plan, &policy.non_fatal, &result) {
                        Verdict::Commit => {
                            plan.budget.record(false);
                            break result;
                        }
                        Verdict::Failed(pushback) => {
                            plan.budget.record(true);
                            next = match pushback {
                                Pushback::Stop => None,
                                Pushback::After(d) => Some(Instant::now() + d),
                                // A6: a non-fatal failure sends the next hedge at once.
                                Pushback::None => Some(Instant::now()),
                            };
                            // The latest failure is the call's answer if nothing better comes.
                            last = Some(result);
                        }
                    }
                }
                if in_flight.is_empty() && (next.is_none() || sent >= policy.max_attempts) {
                    break last.take().unwrap_or_else(|| Err(Error::config("hedged call ended without an answer")));
                }
            }
            () = hedge_due => {
                // No endpoint left untried: no hedge (and nothing taken from the budget).
                let healthy = client.pool().snapshot().healthy();
                if attempted.len() >= healthy || !plan.budget.withdraw(Extra::Hedge) {
                    next = None;
                    if in_flight.is_empty() {
                        break match last.take() {
                            Some(r) => r,
                            None => Err(Error::config("hedged call ended without an attempt")),
                        };
                    }
                    continue;
                }
                tracing::debug!(target_uri = %client.target(), attempt = sent + 1, "hedging call");
                in_flight.push(send(attempt(&plan, &replay, sent, Avoid::require(attempted.clone())), sent));
                sent += 1;
                next = hedge_delay(&plan, policy).map(|d| Instant::now() + d);
            }
            else => break match last.take() {
                Some(r) => r,
                None => Err(Error::config("hedged call ended without an attempt")),
            },
        }
    };
    if !first_done {
        if let Some(q) = &plan.latency {
            q.record(started.elapsed());
        }
    }
    // Dropping the attempts still in flight cancels them: their streams are reset and their load
    // released now.
    drop(in_flight);
    result
}

fn hedge_delay(plan: &Plan, policy: &HedgePolicy) -> Option<Duration> {
    match policy.delay {
        HedgeDelay::Fixed(d) => Some(d),
        HedgeDelay::Percentile { min, .. } => plan.latency.as_ref()?.get().map(|d| d.max(min)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushback_follows_a6() {
        let mut h = HeaderMap::new();
        assert_eq!(pushback(true, &h), Pushback::None);
        h.insert("grpc-retry-pushback-ms", HeaderValue::from_static("250"));
        assert_eq!(pushback(true, &h), Pushback::After(Duration::from_millis(250)));
        h.insert("grpc-retry-pushback-ms", HeaderValue::from_static("-1"));
        assert_eq!(pushback(true, &h), Pushback::Stop, "negative: do not retry");
        h.insert("grpc-retry-pushback-ms", HeaderValue::from_static("soon"));
        assert_eq!(pushback(true, &h), Pushback::Stop, "malformed: do not retry");
        let mut h = HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(pushback(false, &h), Pushback::After(Duration::from_secs(2)));
    }

    #[test]
    fn backoff_stays_under_its_bound() {
        let p = RetryPolicy::new(5).backoff(Duration::from_millis(100)).max_backoff(Duration::from_millis(300));
        for _ in 0..200 {
            assert!(p.delay(1) < Duration::from_millis(100));
            assert!(p.delay(2) < Duration::from_millis(200));
            assert!(p.delay(4) < Duration::from_millis(300), "capped");
        }
        assert_eq!(RetryPolicy::new(9).max_attempts(), MAX_ATTEMPTS, "A6's cap");
        assert_eq!(RetryPolicy::new(0).max_attempts(), 1);
    }
}
