//! The balancing engine of lb: endpoints, discovery updates, policies, load tracking, the pool and the
//! balanced `tower::Service`.
//!
//! `lb-core` knows nothing of registries or protocols. Registries (in `lb-registry`) produce a stream
//! of [`discover::Update`]s; protocol crates (`lb-tonic`, `lb-hyper`) implement [`pool::Connect`] to
//! open connections. In between, this crate:
//!
//! 1. keeps one [`pool::Pool`] per target, driven by a background task that applies discovery even
//!    when no request flows, runs each endpoint through
//!    `Idle → Connecting → Ready → Ejected(backoff) → Draining`, and ejects outliers;
//! 2. publishes, on every change, an immutable snapshot with a [`policy::Picker`] that request paths
//!    read without taking a lock;
//! 3. picks per request in [`balance::Balance`], a cloneable `tower::Service` with no worker task on
//!    the request path — the one request engine every face (tonic, hyper, C) runs — and tracks each
//!    request's load with an RAII [`load::LoadGuard`] until the end of its response.
//!
//! [`Options`] is the one set of balancing options the faces read. [`pool::PoolLayer`] and
//! [`balance::BalanceLayer`] compose the same engine over any per-endpoint `tower::Service` with
//! `tower::ServiceBuilder` (see [`balance`]).
//!
//! ```
//! use lb_core::policy::{P2c, Topology};
//! use lb_core::endpoint::Locality;
//!
//! // Prefer the caller's node, then zone, then region; PeakEWMA inside each tier.
//! let caller = Locality::unknown().with_region("eu-west-1").with_zone("eu-west-1a");
//! let policy = Topology::new(P2c::peak_ewma(), caller);
//! # let _ = policy;
//! ```
//!
//! Metrics go through the [`metrics`] facade: the library only emits, the application installs
//! whichever exporter it already uses (Prometheus, StatsD, OpenTelemetry). A library cannot know
//! the application's registry, which is what `prometheus-client` would need passed in; with the
//! facade nothing is recorded, at the cost of one atomic load, until an exporter is installed.
//! Names are listed in [`metrics`].

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms, unreachable_pub)]
#![forbid(unsafe_code)]

pub mod backoff;
pub mod balance;
pub mod discover;
pub mod endpoint;
pub mod load;
pub mod metrics;
pub mod options;
pub mod policy;
pub mod pool;
pub mod retry;
#[cfg(feature = "test-util")]
pub mod test_recorder;
#[cfg(feature = "test-util")]
pub mod test_util;

/// The boxed error type used inside the engine (tower's convention).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

pub use crate::balance::{Balance, BalanceLayer};
pub use crate::discover::{EndpointSet, Update};
pub use crate::endpoint::{Endpoint, EndpointId, EndpointState, Locality};
pub use crate::load::{Load, LoadGuard, LoadReport, Outcome};
pub use crate::options::Options;
pub use crate::policy::{PickContext, Picker, Policy};
pub use crate::pool::{Connect, Pool, PoolConfig};
