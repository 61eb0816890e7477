//! The error type at lb-hyper's public edge: opaque, with `is_*` predicates (as `hyper::Error`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lb_core::BoxError;

/// An error from [`LbClient`](crate::LbClient), the [`Balancer`](crate::Balancer) or a builder.
pub struct Error {
    kind: Kind,
    source: Option<BoxError>,
}

#[derive(Debug)]
enum Kind {
    Unavailable {
        target: Arc<str>,
        waited: Duration,
        initialized: bool,
    },
    Timeout(Duration),
    Transport {
        sent: bool,
    },
    Config(String),
    Target,
}

impl Error {
    pub(crate) fn unavailable(target: Arc<str>, waited: Duration, initialized: bool) -> Self {
        Error {
            kind: Kind::Unavailable {
                target,
                waited,
                initialized,
            },
            source: None,
        }
    }

    pub(crate) fn timeout(after: Duration) -> Self {
        Error {
            kind: Kind::Timeout(after),
            source: None,
        }
    }

    pub(crate) fn transport(source: BoxError, sent: bool) -> Self {
        Error {
            kind: Kind::Transport { sent },
            source: Some(source),
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error {
            kind: Kind::Config(message.into()),
            source: None,
        }
    }

    pub(crate) fn target(source: lb_registry::Error) -> Self {
        Error {
            kind: Kind::Target,
            source: Some(Box::new(source)),
        }
    }

    /// No endpoint could take the request within the failfast time (HTTP 503, gRPC `UNAVAILABLE`).
    pub fn is_unavailable(&self) -> bool {
        matches!(self.kind, Kind::Unavailable { .. })
    }

    /// The request timeout expired before the response headers arrived.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, Kind::Timeout(_))
    }

    /// The connection failed (see [`Error::is_sent`]).
    pub fn is_transport(&self) -> bool {
        matches!(self.kind, Kind::Transport { .. })
    }

    /// For a transport error: whether the request may have reached the backend. `false` means it
    /// certainly did not (it was re-sent elsewhere as often as allowed, then gave up).
    pub fn is_sent(&self) -> bool {
        matches!(self.kind, Kind::Transport { sent: true })
    }

    /// A builder option was invalid.
    pub fn is_config(&self) -> bool {
        matches!(self.kind, Kind::Config(_))
    }

    /// The target URI was malformed or names a registry this build does not support.
    pub fn is_invalid_target(&self) -> bool {
        matches!(self.kind, Kind::Target)
    }

    /// For an unavailable error: the target that had no endpoint.
    pub fn target_name(&self) -> Option<&str> {
        match &self.kind {
            Kind::Unavailable { target, .. } => Some(target),
            _ => None,
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("lb_hyper::Error");
        d.field("kind", &self.kind);
        if let Some(s) = &self.source {
            d.field("source", s);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Unavailable {
                target,
                waited,
                initialized: true,
            } => write!(f, "no endpoint of `{target}` available after {waited:?}"),
            Kind::Unavailable { target, waited, .. } => write!(
                f,
                "no endpoint of `{target}` available after {waited:?}: discovery has not delivered an endpoint set yet"
            ),
            Kind::Timeout(after) => write!(f, "request timed out after {after:?}"),
            Kind::Transport { sent: true } => f.write_str("connection failed after the request was sent"),
            Kind::Transport { sent: false } => f.write_str("connection failed before the request was sent"),
            Kind::Config(m) => write!(f, "invalid configuration: {m}"),
            Kind::Target => f.write_str("invalid target"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|s| &**s as &(dyn std::error::Error + 'static))
    }
}
