use std::fmt;
use std::marker::PhantomData;

use tower_layer::Layer;

use super::pick::Wait;
use super::service::Balance;
use super::track::CompleteOnResponse;
use crate::pool::Pool;

/// Builds a [`Balance`] over a [`Pool`]: holds configuration only.
pub struct BalanceLayer<Req, T = CompleteOnResponse> {
    wait: Wait,
    max_reroutes: u8,
    track: T,
    _req: PhantomData<fn(Req)>,
}

impl<Req> BalanceLayer<Req> {
    /// A layer with the defaults ([`Wait::default`], [`Balance::DEFAULT_MAX_REROUTES`]).
    pub fn new() -> Self {
        BalanceLayer {
            wait: Wait::default(),
            max_reroutes: Balance::<(), Req>::DEFAULT_MAX_REROUTES,
            track: CompleteOnResponse::default(),
            _req: PhantomData,
        }
    }
}

impl<Req> Default for BalanceLayer<Req> {
    fn default() -> Self {
        Self::new()
    }
}

impl<Req, T> BalanceLayer<Req, T> {
    /// How a request waits for an endpoint (see [`Wait`]).
    pub fn wait(mut self, wait: Wait) -> Self {
        self.wait = wait;
        self
    }

    /// How many times a request handed back unsent is sent to another endpoint.
    pub fn max_reroutes(mut self, n: u8) -> Self {
        self.max_reroutes = n;
        self
    }

    /// Sets how the end of a request is detected.
    pub fn track<T2>(self, track: T2) -> BalanceLayer<Req, T2> {
        BalanceLayer {
            wait: self.wait,
            max_reroutes: self.max_reroutes,
            track,
            _req: PhantomData,
        }
    }
}

impl<Req, T: Clone> Clone for BalanceLayer<Req, T> {
    fn clone(&self) -> Self {
        BalanceLayer {
            wait: self.wait,
            max_reroutes: self.max_reroutes,
            track: self.track.clone(),
            _req: PhantomData,
        }
    }
}

impl<Req, T: fmt::Debug> fmt::Debug for BalanceLayer<Req, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalanceLayer")
            .field("wait", &self.wait)
            .field("max_reroutes", &self.max_reroutes)
            .field("track", &self.track)
            .finish()
    }
}

impl<C, Req, T: Clone> Layer<Pool<C>> for BalanceLayer<Req, T> {
    type Service = Balance<C, Req, T>;

    fn layer(&self, pool: Pool<C>) -> Self::Service {
        Balance::new(pool)
            .wait(self.wait)
            .max_reroutes(self.max_reroutes)
            .track(self.track.clone())
    }
}
