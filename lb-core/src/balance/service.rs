use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower_service::Service;

use super::future::ResponseFuture;
use crate::load::{LoadGuard, Outcome};
use crate::policy::PickContext;
use crate::pool::Pool;
use crate::BoxError;

/// Decides when a request is over: receives the load guard together with the response.
///
/// tower's `load::TrackCompletion` in spirit: an HTTP implementation moves the guard into the
/// response body so the request counts as in flight until the body's last frame.
pub trait TrackCompletion<Rsp>: Clone {
    /// The response handed to the caller.
    type Output;

    /// Attaches (or drops) the guard.
    fn track_completion(&self, guard: LoadGuard, response: Rsp) -> Self::Output;
}

/// Ends the request when its response arrives, recording a success.
#[derive(Clone, Copy, Debug, Default)]
pub struct CompleteOnResponse {
    _priv: (),
}

impl<Rsp> TrackCompletion<Rsp> for CompleteOnResponse {
    type Output = Rsp;

    fn track_completion(&self, mut guard: LoadGuard, response: Rsp) -> Rsp {
        guard.set_outcome(Outcome::Success);
        response
    }
}

type KeyFn<Req> = Arc<dyn Fn(&Req) -> Option<u64> + Send + Sync>;

/// Per-request load balancing over a [`Pool`] of connections that are `tower::Service`s.
///
/// See the [module docs](crate::balance).
pub struct Balance<C, Req, T = CompleteOnResponse> {
    pool: Pool<C>,
    failfast: Duration,
    max_reroutes: u8,
    track: T,
    key: Option<KeyFn<Req>>,
    _req: PhantomData<fn(Req)>,
}

impl<C, Req> Balance<C, Req> {
    /// How long a request waits for an endpoint by default (linkerd's failfast timeout).
    pub const DEFAULT_FAILFAST: Duration = Duration::from_secs(3);

    /// Balances over `pool` with the defaults.
    pub fn new(pool: Pool<C>) -> Self {
        Balance {
            pool,
            failfast: Self::DEFAULT_FAILFAST,
            max_reroutes: 2,
            track: CompleteOnResponse::default(),
            key: None,
            _req: PhantomData,
        }
    }
}

impl<C, Req, T> Balance<C, Req, T> {
    /// Sets how long a request waits for an endpoint before failing with
    /// [`Unavailable`](super::error::Unavailable).
    pub fn failfast(mut self, failfast: Duration) -> Self {
        self.failfast = failfast;
        self
    }

    /// Sets how many times a request whose connection failed before sending is re-picked.
    pub fn with_max_reroutes(mut self, n: u8) -> Self {
        self.max_reroutes = n;
        self
    }

    /// Extracts an affinity key from each request, for hashing policies.
    pub fn with_key(mut self, key: impl Fn(&Req) -> Option<u64> + Send + Sync + 'static) -> Self {
        self.key = Some(Arc::new(key));
        self
    }

    /// Sets how the end of a request is detected.
    pub fn track<T2>(self, track: T2) -> Balance<C, Req, T2> {
        Balance {
            pool: self.pool,
            failfast: self.failfast,
            max_reroutes: self.max_reroutes,
            track,
            key: self.key,
            _req: PhantomData,
        }
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

impl<C, Req, T: Clone> Clone for Balance<C, Req, T> {
    fn clone(&self) -> Self {
        Balance {
            pool: self.pool.clone(),
            failfast: self.failfast,
            max_reroutes: self.max_reroutes,
            track: self.track.clone(),
            key: self.key.clone(),
            _req: PhantomData,
        }
    }
}

impl<C, Req, T: fmt::Debug> fmt::Debug for Balance<C, Req, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balance")
            .field("pool", &self.pool)
            .field("failfast", &self.failfast)
            .field("track", &self.track)
            .finish()
    }
}

impl<C, Req, T> Service<Req> for Balance<C, Req, T>
where
    C: Service<Req> + Clone + Send + Sync + 'static,
    C::Error: Into<BoxError>,
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
        let ctx = PickContext {
            hash: self.key.as_ref().and_then(|k| k(&req)),
        };
        ResponseFuture::new(
            self.pool.clone(),
            req,
            ctx,
            self.track.clone(),
            self.failfast,
            self.max_reroutes,
        )
    }
}
