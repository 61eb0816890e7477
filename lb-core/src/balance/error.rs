//! Errors of the balanced service.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::pool::Snapshot;

/// No endpoint could take the request.
///
/// Either the wait for one ran out ([`Wait::timeout`](super::Wait)), or every known endpoint's last
/// connection attempt had failed, in which case the request fails at once (gRPC's
/// `TRANSIENT_FAILURE` for calls that are not wait-for-ready) and says why. Protocol crates map it
/// to gRPC `UNAVAILABLE` or HTTP 503.
#[derive(Debug)]
pub struct Unavailable {
    target: Arc<str>,
    waited: Duration,
    initialized: bool,
    known: usize,
    connect_failing: bool,
    last_connect_error: Option<Arc<str>>,
    discovery_error: Option<Arc<str>>,
    all_tried: bool,
}

impl Unavailable {
    pub(crate) fn new<C>(target: Arc<str>, waited: Duration, snapshot: &Snapshot<C>) -> Self {
        Unavailable {
            target,
            waited,
            initialized: snapshot.is_initialized(),
            known: snapshot.entries().len(),
            connect_failing: snapshot.is_connect_failing(),
            last_connect_error: snapshot.last_connect_error().cloned(),
            discovery_error: snapshot.discovery_error().cloned(),
            all_tried: false,
        }
    }

    /// A hedge found no endpoint its call had not tried already.
    pub(crate) fn all_tried<C>(target: Arc<str>, snapshot: &Snapshot<C>) -> Self {
        Unavailable {
            all_tried: true,
            ..Unavailable::new(target, Duration::ZERO, snapshot)
        }
    }

    /// True when the request needed an endpoint its call had not tried (a hedge, see
    /// [`Avoid`](super::Avoid)) and every one the policy offered was tried.
    pub fn is_all_tried(&self) -> bool {
        self.all_tried
    }

    /// The target whose pool had no endpoint.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// How long the request waited (zero when it failed at once).
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Whether discovery had delivered a full set at all (false: the registry never answered).
    pub fn discovery_initialized(&self) -> bool {
        self.initialized
    }

    /// How many endpoints discovery listed when the request gave up.
    pub fn endpoints_known(&self) -> usize {
        self.known
    }

    /// True when the request failed because every endpoint's last connection attempt had failed.
    pub fn is_connect_failure(&self) -> bool {
        self.connect_failing
    }

    /// The most recent connection error of the target's endpoints, e.g. `connection refused`.
    pub fn last_connect_error(&self) -> Option<&str> {
        self.last_connect_error.as_deref()
    }

    /// The error discovery reported last, when it has delivered nothing since: why the endpoint
    /// set is empty or old (an unreachable registry, credentials it refused, ACLs that filtered
    /// the answer).
    pub fn discovery_error(&self) -> Option<&str> {
        self.discovery_error.as_deref()
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.all_tried {
            return write!(f, "every endpoint of `{}` was already tried by this call", self.target);
        }
        write!(f, "no endpoint of `{}` available", self.target)?;
        if self.connect_failing {
            write!(f, ": every endpoint ({}) failed to connect", self.known)?;
            if let Some(e) = &self.last_connect_error {
                write!(f, "; last error: {e}")?;
            }
            return Ok(());
        }
        write!(f, " after {:?}", self.waited)?;
        if !self.initialized {
            f.write_str(": discovery has not delivered an endpoint set yet")?;
        } else if self.known == 0 {
            f.write_str(": discovery lists no endpoint")?;
        } else {
            write!(f, ": {} known, none ready", self.known)?;
            if let Some(e) = &self.last_connect_error {
                write!(f, "; last connect error: {e}")?;
            }
        }
        if let Some(e) = &self.discovery_error {
            write!(f, "; discovery error: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Unavailable {}

/// A request over one of the target's circuit-breaker [`Limits`](super::Limits): refused at once,
/// never queued. Protocol crates map it to gRPC `RESOURCE_EXHAUSTED` or HTTP 503.
#[derive(Debug)]
pub struct Overloaded {
    target: Arc<str>,
    limit: super::Limit,
    bound: usize,
}

impl Overloaded {
    pub(crate) fn new(target: Arc<str>, limit: super::Limit, bound: usize) -> Self {
        crate::metrics::overflow(&target, limit.as_str());
        Overloaded { target, limit, bound }
    }

    /// The target.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Which bound the request met.
    pub fn limit(&self) -> super::Limit {
        self.limit
    }
}

impl fmt::Display for Overloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.limit {
            super::Limit::InFlight => write!(f, "`{}` has {} requests in flight, its bound ({})", self.target, self.bound, self.limit.as_str()),
            super::Limit::InFlightPerEndpoint => write!(
                f,
                "every endpoint of `{}` the pick tried has {} requests in flight, the bound per endpoint ({})",
                self.target,
                self.bound,
                self.limit.as_str()
            ),
            super::Limit::Waiting => write!(f, "`{}` has {} requests waiting for an endpoint, its bound ({})", self.target, self.bound, self.limit.as_str()),
        }
    }
}

impl std::error::Error for Overloaded {}

/// Why a pick gave no endpoint.
#[derive(Debug)]
pub enum PickError {
    /// None could take the request in time (or every endpoint fails to connect).
    Unavailable(Unavailable),
    /// A circuit-breaker bound refused it.
    Overloaded(Overloaded),
}

impl PickError {
    /// The error as the engine returns it: the [`Unavailable`] or [`Overloaded`] inside, boxed, so
    /// callers downcast to either.
    pub fn into_error(self) -> crate::BoxError {
        match self {
            PickError::Unavailable(e) => Box::new(e),
            PickError::Overloaded(e) => Box::new(e),
        }
    }
}

impl fmt::Display for PickError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PickError::Unavailable(e) => fmt::Display::fmt(e, f),
            PickError::Overloaded(e) => fmt::Display::fmt(e, f),
        }
    }
}

