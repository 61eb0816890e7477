//! The error type at lb-hyper's public edge: opaque, with `is_*` predicates (as `hyper::Error`).

use std::fmt;
use std::time::Duration;

use lb_core::balance::error::{Overloaded, Unavailable};
use lb_core::BoxError;

/// An error from [`LbClient`](crate::LbClient) or a builder.
pub struct Error {
    kind: Kind,
    source: Option<BoxError>,
}

#[derive(Debug)]
enum Kind {
    Unavailable(Unavailable),
    Overloaded(Overloaded),
    Timeout(Duration),
    Transport {
        sent: bool,
    },
    Config(String),
    Target,
}

impl Error {
    /// The error the engine returned, as this crate's: no endpoint → unavailable; a connection's
    /// error → transport, saying whether the request may have been sent.
    pub(crate) fn from_engine(e: BoxError) -> Self {
        let e = match e.downcast::<Error>() {
            Ok(e) => return *e,
            Err(e) => e,
        };
        let e = match e.downcast::<Unavailable>() {
            Ok(u) => {
                return Error {
                    kind: Kind::Unavailable(*u),
                    source: None,
                }
            }
            Err(e) => e,
        };
        match e.downcast::<Overloaded>() {
            Ok(o) => Error {
                kind: Kind::Overloaded(*o),
                source: None,
            },
            // A per-endpoint error that says nothing of whether the request left.
            Err(e) => Error::transport(e, true),
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

    /// No endpoint could take the request: none within the endpoint wait, or every endpoint
    /// failing to connect (HTTP 503, gRPC `UNAVAILABLE`).
    pub fn is_unavailable(&self) -> bool {
        matches!(self.kind, Kind::Unavailable(_))
    }

    /// A circuit-breaker bound refused the request at once, without sending it (HTTP 503, gRPC
    /// `RESOURCE_EXHAUSTED`); see `lb_core::balance::Limits`.
    pub fn is_overloaded(&self) -> bool {
        matches!(self.kind, Kind::Overloaded(_))
    }

    /// For an overloaded error: which bound refused the request.
    pub fn overloaded(&self) -> Option<&Overloaded> {
        match &self.kind {
            Kind::Overloaded(o) => Some(o),
            _ => None,
        }
    }

    /// For an unavailable error: why no endpoint could take the request (the target, how long it
    /// waited, the last connection error).
    pub fn unavailable(&self) -> Option<&Unavailable> {
        match &self.kind {
            Kind::Unavailable(u) => Some(u),
            _ => None,
        }
    }

    /// The request timeout expired before the response headers arrived.
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, Kind::Timeout(_))
    }

    /// The connection failed (see [`Error::is_sent`]).
    pub fn is_transport(&self) -> bool {
        matches!(self.kind, Kind::Transport { .. })
    }

    /// For a transport error: whether the backend may have processed the request. `false` means it
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
        self.unavailable().map(Unavailable::target)
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
            Kind::Unavailable(u) => fmt::Display::fmt(u, f),
            Kind::Overloaded(o) => fmt::Display::fmt(o, f),
            Kind::Timeout(after) => write!(f, "request timed out after {after:?}"),
            Kind::Transport { sent: true } => f.write_str("connection failed after the request was sent"),
            Kind::Transport { sent: false } => f.write_str("connection failed before the request was processed"),
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
