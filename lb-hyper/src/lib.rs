//! Per-request load balancing for hyper 1.x over HTTP/1.1 and HTTP/2.
//!
//! Two layers:
//!
//! - [`HttpConnector`] implements [`lb_core::pool::Connect`]: it is how lb's pool opens connections
//!   to endpoints (TCP with `TCP_NODELAY`, optional rustls TLS, hyper's handshake; extra HTTP/2
//!   connections under stream pressure, a small HTTP/1.1 pool). `lb-tonic` builds on it.
//! - [`LbClient`] is a hyper client over a target URI: each request picks an endpoint from the pool's
//!   lock-free snapshot (P2C PeakEWMA by default), and its load is counted until the *end of the
//!   response body* ([`TrackedBody`]), with the outcome taken from the status ([`Classify`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use http_body_util::{BodyExt, Empty};
//! use bytes::Bytes;
//!
//! let client = lb_hyper::LbClient::builder()
//!     .failfast(std::time::Duration::from_secs(1))
//!     .build_from_target::<Empty<Bytes>>("static:///127.0.0.1:8080,127.0.0.1:8081")?;
//! let req = http::Request::get("http://orders.internal/health").body(Empty::new())?;
//! let rsp = client.request(req).await?;
//! let body = rsp.into_body().collect().await?.to_bytes();
//! # let _ = body; Ok(()) }
//! ```

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms, unreachable_pub)]
#![forbid(unsafe_code)]

pub mod balancer;
pub mod body;
pub mod classify;
mod client;
pub mod connect;
mod error;
pub mod health;

pub use self::balancer::{Balancer, EndpointStatus};
pub use self::body::TrackedBody;
pub use self::classify::Classify;
pub use self::client::{spawn_pool, Builder, ConnectorParts, LbClient};
pub use self::connect::{HttpConnection, HttpConnector, Protocol};
pub use self::error::Error;
