use std::fmt;

/// An error of this crate: a malformed target, an unsupported scheme, or a registry failure.
#[derive(Debug)]
pub struct Error {
    kind: Kind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    InvalidTarget,
    UnsupportedScheme,
    Registry,
}

impl Error {
    /// A malformed target URI or option.
    pub fn invalid_target(message: impl Into<String>) -> Self {
        Error {
            kind: Kind::InvalidTarget,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn unsupported_scheme(scheme: &str) -> Self {
        let message = match scheme {
            "etcd" | "consul" | "kubernetes" => {
                format!("target scheme `{scheme}` needs lb-registry's `{scheme}` feature")
            }
            _ => format!("unknown target scheme `{scheme}` (expected static, dns, etcd, consul or kubernetes)"),
        };
        Error {
            kind: Kind::UnsupportedScheme,
            message,
            source: None,
        }
    }

    /// A registry failure (connection, protocol, authentication).
    pub fn registry(message: impl Into<String>, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error {
            kind: Kind::Registry,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// True for a malformed target URI or option.
    pub fn is_invalid_target(&self) -> bool {
        self.kind == Kind::InvalidTarget
    }

    /// True when the scheme is unknown or its feature is disabled.
    pub fn is_unsupported_scheme(&self) -> bool {
        self.kind == Kind::UnsupportedScheme
    }

    /// True for a registry failure.
    pub fn is_registry(&self) -> bool {
        self.kind == Kind::Registry
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}
