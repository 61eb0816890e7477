//! Errors of the balanced service.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// No endpoint could take the request within the failfast time.
///
/// Protocol crates map it to gRPC `UNAVAILABLE` or HTTP 503.
#[derive(Debug)]
pub struct Unavailable {
    target: Arc<str>,
    waited: Duration,
    initialized: bool,
}

impl Unavailable {
    pub(crate) fn new(target: Arc<str>, waited: Duration, initialized: bool) -> Self {
        Unavailable {
            target,
            waited,
            initialized,
        }
    }

    /// The target whose pool had no endpoint.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// How long the request waited.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Whether discovery had delivered a full set at all (false: the registry never answered).
    pub fn discovery_initialized(&self) -> bool {
        self.initialized
    }
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.initialized {
            write!(f, "no endpoint of `{}` available after {:?}", self.target, self.waited)
        } else {
            write!(
                f,
                "no endpoint of `{}` available after {:?}: discovery has not delivered an endpoint set yet",
                self.target, self.waited
            )
        }
    }
}

impl std::error::Error for Unavailable {}
