//! The request engine: per-request picking as a cloneable `tower::Service`.
//!
//! Every face of lb runs this one engine — `lb_tonic::LbChannel`, `lb_hyper::LbClient`, and (its
//! wait, blocking) the C ABI's `lb_balancer_pick`. For each request, [`Balance`]:
//!
//! 1. **picks** an endpoint from the pool's current snapshot — lock-free, no worker task between the
//!    caller and the connection (tonic's balanced channel funnels every request through one `Buffer`
//!    task, which caps its throughput, tonic #607), so clones of a `Balance` scale with the callers;
//! 2. when no endpoint can take the request, **waits** for the pool to publish one, at most
//!    [`Wait::timeout`], then fails with [`error::Unavailable`] — never a hang. While every endpoint's
//!    last connection attempt has failed it does not wait at all (gRPC's `TRANSIENT_FAILURE`) and the
//!    error carries the last connection error;
//! 3. drives that endpoint's service to readiness and **sends**; an endpoint that fails to become
//!    ready, or hands the request back unsent ([`EndpointError::take_unsent`]), is skipped and the
//!    request **re-picked** elsewhere, at most [`Balance::max_reroutes`] times. A request that may
//!    have reached a backend is never re-sent here (that is a retry policy's decision, in the faces);
//! 4. **tracks** the request's load with a [`LoadGuard`](crate::LoadGuard) handed to a
//!    [`TrackCompletion`] with the response: [`CompleteOnResponse`] ends it at the response,
//!    `lb_hyper::TrackBody` at the end of the response body.
//!
//! Readiness is per request, not per service: `poll_ready` always succeeds, because which endpoint
//! (and so whose readiness) matters is only known once the request is picked.
//!
//! # Layers
//!
//! Discovery → pool → balance compose with `tower::ServiceBuilder` over any per-endpoint service,
//! with other tower layers around the balancer or inside each endpoint:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), lb_core::BoxError> {
//! use std::time::Duration;
//! use lb_core::balance::{BalanceLayer, Wait};
//! use lb_core::pool::{connect_fn, Connected, PoolLayer};
//! use lb_core::{discover, Endpoint, Options};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! // Each endpoint's own service, with per-endpoint layers inside (here a timeout).
//! let connector = connect_fn(|endpoint: &Endpoint| {
//!     let addr = endpoint.addr();
//!     async move {
//!         let svc = ServiceBuilder::new()
//!             .timeout(Duration::from_secs(1))
//!             .service_fn(move |req: String| async move { Ok::<_, lb_core::BoxError>(format!("{addr}: {req}")) });
//!         Ok::<_, std::io::Error>(Connected::without_close_signal(svc))
//!     }
//! });
//! let backends = vec![Endpoint::new("127.0.0.1:8080".parse()?), Endpoint::new("127.0.0.1:8081".parse()?)];
//! let mut client = ServiceBuilder::new()
//!     .concurrency_limit(64) // around the balancer: at most 64 requests in flight
//!     .layer(BalanceLayer::new().wait(Wait::at_most(Duration::from_secs(1))))
//!     .layer(PoolLayer::new("backends", move || discover::fixed(backends.clone()), Options::new())?)
//!     .service(connector);
//! let answer = client.ready().await?.call("hello".to_string()).await?;
//! assert!(answer.ends_with(": hello"));
//! # Ok(()) }
//! ```
//!
//! A per-endpoint service's error must say whether the request was sent ([`EndpointError`]):
//! [`BoxError`](crate::BoxError), what most tower layers return, says "maybe".

mod attempts;
pub mod error;
pub mod future;
mod layer;
mod limits;
mod pick;
mod service;
mod track;

pub use self::attempts::{Attempted, Avoid};
pub use self::layer::BalanceLayer;
pub use self::limits::{Gate, Limit, Limits, Permit};
pub use self::pick::{PickFuture, Wait};
pub use self::service::Balance;
pub use self::track::{CompleteOnResponse, EndpointError, TrackCompletion};
