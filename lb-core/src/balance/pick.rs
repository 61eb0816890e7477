//! Picking an endpoint, and waiting for one when none can take the request.
//!
//! The fast path is one lock-free read of the pool's snapshot. When it yields nothing the request
//! subscribes to the pool's snapshot signal *before* looking once more (so a snapshot published in
//! between is not missed), then sleeps until the next snapshot or the end of its [`Wait`] —
//! linkerd's failfast: never a hang. A request does not wait at all when every known endpoint's
//! last connection attempt failed (gRPC's `TRANSIENT_FAILURE` for calls that are not
//! wait-for-ready): it fails at once, saying why.
//!
//! [`PickFuture`] is this logic on its own, for callers that send requests themselves (the C ABI
//! blocks on it); the [`Balance`](super::Balance) service runs the same code inside its response
//! future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::attempts::Avoid;
use super::error::{Overloaded, PickError, Unavailable};
use super::limits::{Gate, Limit, Permit};
use crate::endpoint::Endpoint;
use crate::policy::PickContext;
use crate::pool::{Picked, Pool, Snapshot};

/// Picks of an excluded endpoint repeated before waiting for a new snapshot.
const PICK_ATTEMPTS: usize = 4;

/// How long a request waits for an endpoint, and whether it waits when every endpoint is failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wait {
    /// The longest a request waits for an endpoint that can take it (default 3 s, linkerd's
    /// failfast timeout). After it the request fails with [`Unavailable`].
    pub timeout: Duration,
    /// Whether a request waits even while every endpoint's last connection attempt has failed
    /// (default `false`: it fails at once, as gRPC calls that are not wait-for-ready do).
    pub wait_for_ready: bool,
}

impl Wait {
    /// The default wait for an endpoint.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

    /// Waits at most `timeout`, and not at all while every endpoint is failing to connect.
    pub const fn at_most(timeout: Duration) -> Self {
        Wait {
            timeout,
            wait_for_ready: false,
        }
    }
}

impl Default for Wait {
    fn default() -> Self {
        Wait {
            timeout: Wait::DEFAULT_TIMEOUT,
            wait_for_ready: false,
        }
    }
}

enum Miss {
    /// Nothing usable now; a later snapshot may bring one.
    Wait,
    /// Every endpoint is failing to connect.
    Failing,
    /// Every endpoint the policy offered is at its in-flight bound.
    Full,
    /// Every endpoint the policy offered was tried by the call, and it needs an untried one.
    Tried,
}

/// What a pick passes over.
#[derive(Clone, Copy)]
struct Filter<'a> {
    /// An endpoint that just failed this request before sending.
    excluded: Option<&'a Endpoint>,
    gate: Option<&'a Gate>,
    avoid: Option<&'a Avoid>,
}

/// One look at a snapshot: an endpoint other than `excluded`, under its bound and untried by the
/// call, if the policy offers one; a tried one when the call only prefers untried ones.
fn try_pick<C: Clone>(snapshot: &Snapshot<C>, ctx: &PickContext, filter: Filter<'_>) -> Result<Picked<C>, Miss> {
    let mut full = false;
    let mut tried = None;
    // A call with attempts behind it may need a pick per tried endpoint to find an untried one.
    let attempts = PICK_ATTEMPTS + filter.avoid.map_or(0, |a| 2 * a.attempted.len());
    for _ in 0..attempts {
        match snapshot.pick(ctx) {
            Some(p) if filter.excluded.is_some_and(|e| e.id() == p.endpoint.id()) => continue,
            // Dropping the pick's guard un-counts it without recording an outcome.
            Some(p) if filter.gate.is_some_and(|g| g.endpoint_full(p.guard.load().in_flight())) => full = true,
            Some(p) if filter.avoid.is_some_and(|a| a.attempted.contains(p.endpoint.id())) => tried = Some(p),
            Some(p) => return Ok(p),
            None => break,
        }
    }
    match (tried, filter.avoid) {
        (Some(p), Some(avoid)) if !avoid.strict => Ok(p),
        (Some(_), _) if !full => Err(Miss::Tried),
        _ if full => Err(Miss::Full),
        _ if snapshot.is_connect_failing() => Err(Miss::Failing),
        _ => Err(Miss::Wait),
    }
}

type Changed = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The state of one request's search for an endpoint: what it excludes and, once it has had to
/// wait, its subscription and deadline (allocated on that slow path only).
#[derive(Default)]
pub(crate) struct Waiter {
    excluded: Option<Arc<Endpoint>>,
    started: Option<Instant>,
    changed: Option<Changed>,
    deadline: Option<Pin<Box<Sleep>>>,
    gate: Option<Arc<Gate>>,
    waiting: Option<Permit>,
    avoid: Option<Avoid>,
}

impl fmt::Debug for Waiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiter")
            .field("excluded", &self.excluded.as_ref().map(|e| e.addr()))
            .field("waiting", &self.changed.is_some())
            .finish()
    }
}

impl Waiter {
    pub(crate) fn new(gate: Option<Arc<Gate>>, avoid: Option<Avoid>) -> Self {
        Waiter {
            gate,
            avoid,
            ..Waiter::default()
        }
    }

    /// The endpoints the call tried, when it keeps count.
    pub(crate) fn avoid(&self) -> Option<&Avoid> {
        self.avoid.as_ref()
    }

    fn filter(&self) -> Filter<'_> {
        Filter {
            excluded: self.excluded.as_deref(),
            gate: self.gate.as_deref(),
            avoid: self.avoid.as_ref(),
        }
    }

    /// Skips `endpoint` until the pool publishes a new snapshot (it failed this request before
    /// sending; the next snapshot reflects why, or a closed connection is still refused by its
    /// service's readiness).
    pub(crate) fn exclude(&mut self, endpoint: Arc<Endpoint>) {
        self.excluded = Some(endpoint);
    }

    /// When the request began to wait for an endpoint, if it had to.
    pub(crate) fn waited_since(&self) -> Option<Instant> {
        self.started
    }

    pub(crate) fn poll_pick<C: Clone>(
        &mut self,
        pool: &Pool<C>,
        ctx: &PickContext,
        wait: Wait,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Picked<C>, PickError>> {
        loop {
            if self.changed.is_none() {
                match try_pick(&pool.snapshot(), ctx, self.filter()) {
                    Ok(p) => return Poll::Ready(self.admit(p)),
                    Err(Miss::Failing) if !wait.wait_for_ready => return Poll::Ready(Err(self.unavailable(pool))),
                    Err(Miss::Full) => return Poll::Ready(Err(self.overloaded(pool, Limit::InFlightPerEndpoint))),
                    Err(Miss::Tried) => return Poll::Ready(Err(self.all_tried(pool))),
                    Err(_) => {}
                }
                let mut rx = pool.subscribe();
                match try_pick(&pool.snapshot(), ctx, self.filter()) {
                    Ok(p) => return Poll::Ready(self.admit(p)),
                    Err(Miss::Failing) if !wait.wait_for_ready => return Poll::Ready(Err(self.unavailable(pool))),
                    Err(Miss::Full) => return Poll::Ready(Err(self.overloaded(pool, Limit::InFlightPerEndpoint))),
                    Err(Miss::Tried) => return Poll::Ready(Err(self.all_tried(pool))),
                    Err(_) => {}
                }
                if self.waiting.is_none() {
                    if let Some(gate) = &self.gate {
                        match gate.start_waiting() {
                            Some(permit) => self.waiting = Some(permit),
                            None => return Poll::Ready(Err(self.overloaded(pool, Limit::Waiting))),
                        }
                    }
                }
                self.started.get_or_insert_with(Instant::now);
                self.changed = Some(Box::pin(async move {
                    if rx.changed().await.is_err() {
                        // The pool task is gone; only the deadline can end this wait.
                        std::future::pending::<()>().await;
                    }
                }));
            }
            if let Some(changed) = self.changed.as_mut() {
                if changed.as_mut().poll(cx).is_ready() {
                    self.changed = None;
                    self.excluded = None;
                    if let Ok(p) = try_pick(&pool.snapshot(), ctx, self.filter()) {
                        tracing::debug!(
                            target_uri = %pool.target(),
                            endpoint = %p.endpoint.addr(),
                            waited = ?self.started.map(|s| s.elapsed()).unwrap_or_default(),
                            "picked after waiting for an endpoint"
                        );
                        return Poll::Ready(self.admit(p));
                    }
                    continue;
                }
            }
            let started = *self.started.get_or_insert_with(Instant::now);
            let deadline = self
                .deadline
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(started + wait.timeout)));
            ready!(deadline.as_mut().poll(cx));
            return Poll::Ready(Err(self.unavailable(pool)));
        }
    }

    /// A pick is made: the wait (if any) is over.
    fn admit<C>(&mut self, picked: Picked<C>) -> Result<Picked<C>, PickError> {
        self.waiting = None;
        Ok(picked)
    }

    #[cold]
    fn unavailable<C>(&mut self, pool: &Pool<C>) -> PickError {
        crate::metrics::no_endpoint(pool.target());
        let waited = self.started.map(|s| s.elapsed()).unwrap_or_default();
        let err = Unavailable::new(Arc::clone(pool.target()), waited, &pool.snapshot());
        tracing::debug!(target_uri = %pool.target(), error = %err, "no endpoint");
        self.changed = None;
        self.deadline = None;
        self.waiting = None;
        PickError::Unavailable(err)
    }

    #[cold]
    fn all_tried<C>(&mut self, pool: &Pool<C>) -> PickError {
        self.changed = None;
        self.deadline = None;
        self.waiting = None;
        PickError::Unavailable(Unavailable::all_tried(Arc::clone(pool.target()), &pool.snapshot()))
    }

    #[cold]
    fn overloaded<C>(&mut self, pool: &Pool<C>, limit: Limit) -> PickError {
        let limits = self.gate.as_ref().map(|g| g.limits()).unwrap_or_default();
        let bound = match limit {
            Limit::InFlight => limits.max_in_flight.unwrap_or(0),
            Limit::InFlightPerEndpoint => limits.max_in_flight_per_endpoint.unwrap_or(0) as usize,
            Limit::Waiting => limits.max_waiting.unwrap_or(0),
        };
        self.changed = None;
        self.deadline = None;
        self.waiting = None;
        PickError::Overloaded(Overloaded::new(Arc::clone(pool.target()), limit, bound))
    }
}

/// Picks an endpoint of a pool, waiting for one as the [`Balance`](super::Balance) service does;
/// see [`Pool::pick_or_wait`], which returns it.
#[must_use = "futures do nothing unless polled"]
pub struct PickFuture<C> {
    pool: Pool<C>,
    ctx: PickContext,
    wait: Wait,
    waiter: Waiter,
}

impl<C> fmt::Debug for PickFuture<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PickFuture")
            .field("target", self.pool.target())
            .field("ctx", &self.ctx)
            .field("wait", &self.wait)
            .field("waiter", &self.waiter)
            .finish()
    }
}

impl<C> PickFuture<C> {
    /// Applies a circuit breaker's bounds to this pick: an endpoint at its in-flight bound is
    /// passed over, and the pick fails at once rather than wait beyond `max_waiting`.
    pub fn gated(mut self, gate: Arc<Gate>) -> Self {
        self.waiter.gate = Some(gate);
        self
    }
}

impl<C: Clone> Future for PickFuture<C> {
    type Output = Result<Picked<C>, PickError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Every field is `Unpin` (the waiter's futures are boxed).
        let this = self.get_mut();
        this.waiter.poll_pick(&this.pool, &this.ctx, this.wait, cx)
    }
}

impl<C: Clone> Pool<C> {
    /// Picks an endpoint, waiting for one as the [`Balance`](super::Balance) service does: at most
    /// `wait.timeout`, and not at all while every endpoint is failing to connect (unless
    /// `wait.wait_for_ready`). For callers that send requests themselves; the pick's guard counts
    /// the request until dropped.
    pub fn pick_or_wait(&self, ctx: PickContext, wait: Wait) -> PickFuture<C> {
        PickFuture {
            pool: self.clone(),
            ctx,
            wait,
            waiter: Waiter::default(),
        }
    }
}
