use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_service::Service;

use super::attempts::Avoid;
use super::future::{Admit, ResponseFuture};
use super::limits::{Gate, Limits};
use super::pick::Wait;
use super::track::{CompleteOnResponse, EndpointError, TrackCompletion};
use crate::policy::PickContext;
use crate::pool::Pool;
use crate::BoxError;

type KeyFn<Req> = Arc<dyn Fn(&Req) -> Option<u64> + Send + Sync>;
type AvoidFn<Req> = Arc<dyn Fn(&Req) -> Option<Avoid> + Send + Sync>;

/// Per-request load balancing over a [`Pool`] of endpoint services; see the
/// [module docs](crate::balance).
pub struct Balance<C, Req, T = CompleteOnResponse> {
    pool: Pool<C>,
    wait: Wait,
    max_reroutes: u8,
    track: T,
    key: Option<KeyFn<Req>>,
    gate: Option<Arc<Gate>>,
    avoid: Option<AvoidFn<Req>>,
    _req: PhantomData<fn(Req)>,
}

impl<C, Req> Balance<C, Req> {
    /// How long a request waits for an endpoint by default (linkerd's failfast timeout).
    pub const DEFAULT_ENDPOINT_WAIT: Duration = Wait::DEFAULT_TIMEOUT;
    /// How many times a request its endpoint handed back unsent is sent elsewhere, by default.
    pub const DEFAULT_MAX_REROUTES: u8 = 3;

    /// Balances over `pool` with the defaults.
    pub fn new(pool: Pool<C>) -> Self {
        Balance {
            pool,
            wait: Wait::default(),
            max_reroutes: Self::DEFAULT_MAX_REROUTES,
            track: CompleteOnResponse::default(),
            key: None,
            gate: None,
            avoid: None,
            _req: PhantomData,
        }
    }
}

impl<C, Req, T> Balance<C, Req, T> {
    /// How a request waits for an endpoint (see [`Wait`]): at most `timeout`, then it fails with
    /// [`Unavailable`](super::error::Unavailable).
    pub fn wait(mut self, wait: Wait) -> Self {
        self.wait = wait;
        self
    }

    /// The longest wait for an endpoint: `wait(Wait { timeout, .. })`.
    #[deprecated(note = "use `wait(Wait { timeout, .. })`: the timeout is the longest wait for an endpoint")]
    pub fn failfast(self, timeout: Duration) -> Self {
        let wait = Wait { timeout, ..self.wait };
        self.wait(wait)
    }

    /// How many times a request its endpoint handed back unsent (or whose endpoint failed to become
    /// ready) is sent to another endpoint before its error is returned.
    pub fn max_reroutes(mut self, n: u8) -> Self {
        self.max_reroutes = n;
        self
    }

    /// Renamed [`Balance::max_reroutes`].
    #[deprecated(note = "renamed `max_reroutes`")]
    pub fn with_max_reroutes(self, n: u8) -> Self {
        self.max_reroutes(n)
    }

    /// Circuit breaking (see [`Limits`]): requests over a bound fail at once with
    /// [`Overloaded`](super::error::Overloaded). Clones share the counters.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.gate = (limits != Limits::default()).then(|| Gate::new(limits));
        self
    }

    /// The circuit breaker's counters, when bounds are set.
    pub fn gate(&self) -> Option<&Arc<Gate>> {
        self.gate.as_ref()
    }

    /// Extracts an affinity key from each request, for hashing policies.
    pub fn with_key(mut self, key: impl Fn(&Req) -> Option<u64> + Send + Sync + 'static) -> Self {
        self.key = Some(Arc::new(key));
        self
    }

    /// Finds the endpoints a request's call already tried (see [`Avoid`]): the engine passes them
    /// over and records the endpoint it sends to. Faces that retry or hedge carry it in the request.
    pub fn with_avoid(mut self, avoid: impl Fn(&Req) -> Option<Avoid> + Send + Sync + 'static) -> Self {
        self.avoid = Some(Arc::new(avoid));
        self
    }

    /// Sets how the end of a request is detected.
    pub fn track<T2>(self, track: T2) -> Balance<C, Req, T2> {
        Balance {
            pool: self.pool,
            wait: self.wait,
            max_reroutes: self.max_reroutes,
            track,
            key: self.key,
            gate: self.gate,
            avoid: self.avoid,
            _req: PhantomData,
        }
    }

    /// The wait configuration.
    pub fn wait_config(&self) -> Wait {
        self.wait
    }

    /// The pool.
    pub fn get_ref(&self) -> &Pool<C> {
        &self.pool
    }

    /// The pool, mutably.
    pub fn get_mut(&mut self) -> &mut Pool<C> {
        &mut self.pool
    }

    /// Unwraps the pool.
    pub fn into_inner(self) -> Pool<C> {
        self.pool
    }
}

impl<C, Req, T> Balance<C, Req, T>
where
    C: Service<Req> + Clone,
    C::Error: EndpointError<Req>,
    T: TrackCompletion<C::Response>,
{
    /// Like [`Service::call`], through a shared reference: a `Balance` is always ready (see the
    /// [module docs](crate::balance)), so faces that own one call it without cloning it first.
    pub fn send(&self, req: Req) -> ResponseFuture<C, Req, T> {
        let ctx = PickContext {
            hash: self.key.as_ref().and_then(|k| k(&req)),
        };
        let avoid = self.avoid.as_ref().and_then(|a| a(&req));
        let admit = Admit {
            wait: self.wait,
            reroutes: self.max_reroutes,
            gate: self.gate.as_ref(),
            avoid,
        };
        ResponseFuture::new(self.pool.clone(), req, ctx, self.track.clone(), admit)
    }
}

impl<C, Req, T: Clone> Clone for Balance<C, Req, T> {
    fn clone(&self) -> Self {
        Balance {
            pool: self.pool.clone(),
            wait: self.wait,
            max_reroutes: self.max_reroutes,
            track: self.track.clone(),
            key: self.key.clone(),
            gate: self.gate.clone(),
            avoid: self.avoid.clone(),
            _req: PhantomData,
        }
    }
}

impl<C, Req, T: fmt::Debug> fmt::Debug for Balance<C, Req, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balance")
            .field("pool", &self.pool)
            .field("wait", &self.wait)
            .field("max_reroutes", &self.max_reroutes)
            .field("track", &self.track)
            .finish()
    }
}

impl<C, Req, T> Service<Req> for Balance<C, Req, T>
where
    C: Service<Req> + Clone,
    C::Error: EndpointError<Req>,
    T: TrackCompletion<C::Response>,
{
    type Response = T::Output;
    type Error = BoxError;
    type Future = ResponseFuture<C, Req, T>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness depends on the endpoint, which is only chosen per request (see module docs).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.send(req)
    }
}
