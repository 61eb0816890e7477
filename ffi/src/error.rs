//! Status codes, the thread-local last-error message, and the panic guard every export runs in.
//!
//! hyper's C API (`hyper/src/ffi/`) is the model: every exported function returns a `#[repr(C)]`
//! code, never unwinds into C, and leaves details in a readable message. Unlike hyper, which hands out
//! an error object the caller must free, the message lives in thread-local storage (the `errno` /
//! `dlerror` convention): nothing to leak, and each thread sees its own last failure.

use std::cell::RefCell;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The result of every fallible `lb_*` call. `LB_OK` is zero; every other value is an error whose
/// message `lb_last_error_message` returns on the same thread.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum lb_status {
    /// Success.
    LB_OK = 0,
    /// A required pointer argument was NULL.
    LB_ERR_NULL_ARGUMENT = 1,
    /// A string argument was not valid UTF-8.
    LB_ERR_INVALID_UTF8 = 2,
    /// The target URI is malformed (or a static list names a bad address).
    LB_ERR_INVALID_TARGET = 3,
    /// The target's scheme is unknown, or this library was built without its registry feature.
    LB_ERR_UNSUPPORTED_SCHEME = 4,
    /// The options or instance JSON is malformed, or holds an unknown key or a bad value.
    LB_ERR_INVALID_OPTIONS = 5,
    /// Another argument is out of range (e.g. an outcome that is not an `lb_outcome`).
    LB_ERR_INVALID_ARGUMENT = 6,
    /// `lb_balancer_wait_ready` timed out before any endpoint could take requests.
    LB_ERR_TIMEOUT = 7,
    /// No endpoint could take the request within the balancer's failfast time.
    LB_ERR_UNAVAILABLE = 8,
    /// The token was never issued by this balancer.
    LB_ERR_UNKNOWN_TOKEN = 9,
    /// The token was issued by this balancer but is no longer pending: it was already reported, or
    /// it expired unreported (see `report_timeout_ms`).
    LB_ERR_TOKEN_SPENT = 10,
    /// The registry refused or failed the operation.
    LB_ERR_REGISTRY = 11,
    /// The library could not start its internal threads.
    LB_ERR_RUNTIME = 12,
    /// A bug inside the library: a Rust panic was caught at the boundary. The object involved is
    /// still safe to free.
    LB_ERR_PANIC = 13,
}

/// An error on its way to the C caller: a status and a message.
#[derive(Debug)]
pub(crate) struct Error {
    pub(crate) status: lb_status,
    message: String,
}

impl Error {
    pub(crate) fn new(status: lb_status, message: impl Into<String>) -> Self {
        Error {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn null(arg: &str) -> Self {
        Error::new(
            lb_status::LB_ERR_NULL_ARGUMENT,
            format!("`{arg}` must not be NULL"),
        )
    }

    pub(crate) fn options(message: impl fmt::Display) -> Self {
        Error::new(lb_status::LB_ERR_INVALID_OPTIONS, message.to_string())
    }

    pub(crate) fn registry(err: lb_registry::Error) -> Self {
        let status = if err.is_invalid_target() {
            lb_status::LB_ERR_INVALID_TARGET
        } else if err.is_unsupported_scheme() {
            lb_status::LB_ERR_UNSUPPORTED_SCHEME
        } else {
            lb_status::LB_ERR_REGISTRY
        };
        let mut message = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        Error::new(status, message)
    }
}

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

pub(crate) fn set_last_error(message: &str) {
    LAST_ERROR.with(|e| {
        let mut e = e.borrow_mut();
        e.clear();
        e.push_str(message);
    });
}

/// Runs `f` with the last error message of this thread.
pub(crate) fn with_last_error<R>(f: impl FnOnce(&str) -> R) -> R {
    LAST_ERROR.with(|e| f(&e.borrow()))
}

/// Runs an export's body: maps its error to a status (recording the message) and turns a panic into
/// `LB_ERR_PANIC` instead of unwinding into C, which would be undefined behaviour.
pub(crate) fn guard(f: impl FnOnce() -> Result<(), Error>) -> lb_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => lb_status::LB_OK,
        Ok(Err(e)) => {
            set_last_error(&e.message);
            e.status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".to_string());
            set_last_error(&format!(
                "internal error (panic caught at the C boundary): {what}"
            ));
            lb_status::LB_ERR_PANIC
        }
    }
}

/// Like [`guard`] for exports that return nothing: a panic is swallowed (and recorded).
pub(crate) fn guard_void(f: impl FnOnce()) {
    let _ = guard(|| {
        f();
        Ok(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let s = guard(|| panic!("boom {}", 42));
        assert_eq!(s, lb_status::LB_ERR_PANIC);
        with_last_error(|m| assert!(m.contains("boom 42"), "{m}"));
        guard_void(|| panic!("also caught"));
        with_last_error(|m| assert!(m.contains("also caught"), "{m}"));
        assert_eq!(guard(|| Ok(())), lb_status::LB_OK);
        with_last_error(|m| {
            assert!(
                m.contains("also caught"),
                "success leaves the last error: {m}"
            )
        });
    }
}
