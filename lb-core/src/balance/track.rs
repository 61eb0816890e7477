//! What the balancer learns from an endpoint's service: how its errors read, when its responses end.

use std::convert::Infallible;

use crate::load::{LoadGuard, Outcome};
use crate::metrics::Dialect;
use crate::BoxError;

/// How [`Balance`](super::Balance) reads the error of an endpoint's service.
///
/// A request that never reached the backend — its connection closed before it was written, the
/// server refused the stream unprocessed — can go to another endpoint without risk, and must not
/// count against the endpoint. Services that know this (lb-hyper's connections, whose errors carry
/// an unsent request back as hyper's `try_send_request` does) say so here; for any other error type
/// the defaults hold: the request may have been processed, so it is never re-sent and counts as a
/// failure of the endpoint.
///
/// Implemented for [`BoxError`] (the error of most tower stacks: `tower::timeout`, `tower::util`)
/// and [`Infallible`]; map other errors into a [`BoxError`] with `map_err(Into::into)`.
pub trait EndpointError<Req>: Sized {
    /// Takes back the request when it never reached the backend, so the balancer can send it
    /// elsewhere. Called at most once.
    fn take_unsent(&mut self) -> Option<Req> {
        None
    }

    /// True when the backend certainly did not process the request, even if it cannot be handed
    /// back (e.g. HTTP/2 `REFUSED_STREAM` after the body was consumed): the endpoint is not blamed.
    fn is_unprocessed(&self) -> bool {
        false
    }

    /// The error to give the caller.
    fn into_error(self) -> BoxError;
}

impl<Req> EndpointError<Req> for BoxError {
    fn into_error(self) -> BoxError {
        self
    }
}

impl<Req> EndpointError<Req> for Infallible {
    fn into_error(self) -> BoxError {
        match self {}
    }
}

/// Decides when a request is over: receives the load guard together with the response.
///
/// tower's `load::TrackCompletion` in spirit: an HTTP implementation moves the guard into the
/// response body so the request counts as in flight until the body's last frame (lb-hyper's
/// `TrackBody`).
pub trait TrackCompletion<Rsp>: Clone {
    /// The response handed to the caller.
    type Output;

    /// Attaches (or drops) the guard.
    fn track_completion(&self, guard: LoadGuard, response: Rsp) -> Self::Output;

    /// The words the engine's own metrics use for this face's failures (see
    /// [`crate::metrics::Status`]): gRPC's codes, or lb's plain words (the default).
    fn dialect(&self) -> Dialect {
        Dialect::Plain
    }
}

/// Ends the request when its response arrives, recording a success.
#[derive(Clone, Copy, Debug, Default)]
pub struct CompleteOnResponse {
    _priv: (),
}

impl<Rsp> TrackCompletion<Rsp> for CompleteOnResponse {
    type Output = Rsp;

    fn track_completion(&self, mut guard: LoadGuard, response: Rsp) -> Rsp {
        guard.set_outcome(Outcome::Success);
        response
    }
}
