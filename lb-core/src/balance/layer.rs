use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use tower_layer::Layer;

use super::service::{Balance, CompleteOnResponse};
use crate::pool::Pool;

/// Builds a [`Balance`] over a [`Pool`]: holds configuration only.
pub struct BalanceLayer<Req, T = CompleteOnResponse> {
    failfast: Duration,
    track: T,
    _req: PhantomData<fn(Req)>,
}

impl<Req> BalanceLayer<Req> {
    /// A layer with the default failfast time ([`Balance::DEFAULT_FAILFAST`]).
    pub fn new() -> Self {
        BalanceLayer {
            failfast: Balance::<(), Req>::DEFAULT_FAILFAST,
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
    /// Sets how long a request waits for an endpoint before failing.
    pub fn failfast(mut self, failfast: Duration) -> Self {
        self.failfast = failfast;
        self
    }

    /// Sets how the end of a request is detected.
    pub fn track<T2>(self, track: T2) -> BalanceLayer<Req, T2> {
        BalanceLayer {
            failfast: self.failfast,
            track,
            _req: PhantomData,
        }
    }
}

impl<Req, T: Clone> Clone for BalanceLayer<Req, T> {
    fn clone(&self) -> Self {
        BalanceLayer {
            failfast: self.failfast,
            track: self.track.clone(),
            _req: PhantomData,
        }
    }
}

impl<Req, T: fmt::Debug> fmt::Debug for BalanceLayer<Req, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalanceLayer")
            .field("failfast", &self.failfast)
            .field("track", &self.track)
            .finish()
    }
}

impl<C, Req, T: Clone> Layer<Pool<C>> for BalanceLayer<Req, T> {
    type Service = Balance<C, Req, T>;

    fn layer(&self, pool: Pool<C>) -> Self::Service {
        Balance::new(pool).failfast(self.failfast).track(self.track.clone())
    }
}
