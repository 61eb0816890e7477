//! The error type at lb-tonic's public edge: opaque, `is_*` predicates, a `tonic::Status` inside.
//!
//! tonic's generated clients turn a channel error into a `Status` with `Status::from_error`, which
//! walks the error's source chain for a `Status`. So every [`Error`] carries one as its source:
//! no endpoint within the failfast time → `UNAVAILABLE` naming the target; a broken connection →
//! `UNAVAILABLE` (gRPC's mapping for transport failures); the request timeout →
//! `DEADLINE_EXCEEDED`. The chain goes on to the `lb_hyper::Error` and, below it, hyper's.

use std::fmt;
use std::sync::Arc;

use tonic::{Code, Status};

/// An error from [`LbChannel`](crate::LbChannel) or its builder.
pub struct Error {
    kind: Kind,
    status: Status,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Unavailable,
    Overloaded,
    Timeout,
    Transport,
    Config,
    InvalidTarget,
}

impl Error {
    pub(crate) fn from_hyper(e: lb_hyper::Error) -> Self {
        let (kind, code) = if e.is_unavailable() {
            (Kind::Unavailable, Code::Unavailable)
        } else if e.is_overloaded() {
            (Kind::Overloaded, Code::ResourceExhausted)
        } else if e.is_timeout() {
            (Kind::Timeout, Code::DeadlineExceeded)
        } else if e.is_transport() {
            (Kind::Transport, Code::Unavailable)
        } else if e.is_invalid_target() {
            (Kind::InvalidTarget, Code::InvalidArgument)
        } else {
            (Kind::Config, Code::Internal)
        };
        let message = match std::error::Error::source(&e).map(|s| s.to_string()) {
            Some(inner) => format!("{e}: {inner}"),
            None => e.to_string(),
        };
        let mut status = Status::new(code, message);
        status.set_source(Arc::new(e));
        Error { kind, status }
    }

    /// No endpoint could take the request within the failfast time (`UNAVAILABLE`).
    pub fn is_unavailable(&self) -> bool {
        self.kind == Kind::Unavailable
    }

    /// A circuit-breaker bound refused the call at once, without sending it
    /// (`RESOURCE_EXHAUSTED`).
    pub fn is_overloaded(&self) -> bool {
        self.kind == Kind::Overloaded
    }

    /// The request timeout expired (`DEADLINE_EXCEEDED`).
    pub fn is_timeout(&self) -> bool {
        self.kind == Kind::Timeout
    }

    /// The connection to the chosen endpoint failed (`UNAVAILABLE`).
    pub fn is_transport(&self) -> bool {
        self.kind == Kind::Transport
    }

    /// A builder option was invalid.
    pub fn is_config(&self) -> bool {
        self.kind == Kind::Config
    }

    /// The target URI was malformed or names a registry this build does not support.
    pub fn is_invalid_target(&self) -> bool {
        self.kind == Kind::InvalidTarget
    }

    /// The gRPC status this error stands for.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// The gRPC code this error stands for.
    pub fn code(&self) -> Code {
        self.status.code()
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("lb_tonic::Error")
            .field("kind", &self.kind)
            .field("status", &self.status)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.status.message())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.status)
    }
}

impl Error {
    pub(crate) fn invalid_target(target: &str, e: lb_registry::Error) -> Self {
        let mut status = Status::invalid_argument(format!("invalid target `{target}`: {e}"));
        status.set_source(Arc::new(e));
        Error {
            kind: Kind::InvalidTarget,
            status,
        }
    }
}
