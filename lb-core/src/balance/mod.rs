//! The balanced service: per-request picking as a cloneable `tower::Service`.
//!
//! [`Balance`] wraps a [`Pool`](crate::Pool) whose connections are themselves `tower::Service`s. Each
//! `call` picks an endpoint from the pool's current snapshot (lock-free), clones that endpoint's
//! connection, drives it to readiness and sends the request. There is no worker task on the request
//! path — tonic's balanced channel funnels every request through one `Buffer` task, which caps its
//! throughput — so clones of a `Balance` scale with the callers.
//!
//! Readiness is per request, not per service: `poll_ready` always succeeds, because which endpoint
//! (and so whose readiness) matters is only known once the request is picked. When no endpoint can
//! take the request, the response future waits for the pool to publish one, at most the *failfast*
//! time, then fails with [`error::Unavailable`]. It never hangs.
//!
//! A connection that fails to become ready has not received the request, so the request is re-picked
//! (at most [`Balance::with_max_reroutes`] times). Once sent, a request is never retried here.
//!
//! The load guard is handed to a [`TrackCompletion`] with the response; the default
//! ([`CompleteOnResponse`]) ends the request when the response arrives, and protocol crates supply
//! one that ends it with the response body.

pub mod error;
pub mod future;
mod layer;
mod service;

pub use self::layer::BalanceLayer;
pub use self::service::{Balance, CompleteOnResponse, TrackCompletion};
