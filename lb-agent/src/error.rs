//! The agent's error type: opaque, with predicates for the kinds a caller acts on.

use std::fmt;

/// An error of the agent.
pub struct Error {
    kind: Kind,
    message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Config,
    Kernel,
    Io,
}

impl Error {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error { kind: Kind::Config, message: message.into() }
    }

    pub(crate) fn kernel(message: impl Into<String>) -> Self {
        Error { kind: Kind::Kernel, message: message.into() }
    }

    pub(crate) fn io(message: impl Into<String>) -> Self {
        Error { kind: Kind::Io, message: message.into() }
    }

    /// The configuration file is unreadable or invalid.
    pub fn is_config(&self) -> bool {
        self.kind == Kind::Config
    }

    /// The kernel (through `nft`, `iptables-restore`, `ipvsadm`) refused a transaction or a read.
    pub fn is_kernel(&self) -> bool {
        self.kind == Kind::Kernel
    }

    /// A helper program could not be started or its output not read.
    pub fn is_io(&self) -> bool {
        self.kind == Kind::Io
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error").field("kind", &self.kind).field("message", &self.message).finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}
