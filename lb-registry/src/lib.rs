//! Service discovery and registration for lb.
//!
//! - [`Target`]: the one target-URI syntax used everywhere (Rust API, CLI, C ABI, agent config).
//! - [`Resolver`]: discovery — a stream of [`lb_core::Update`]s, full set first, then changes.
//! - [`Registrar`]: registration with heartbeats, returning a [`Registration`] that deregisters on
//!   [`Registration::deregister`] (graceful shutdown) or drop.
//! - Providers: [`fixed`] (`static:///`) and [`dns`] (`dns:///`, periodic A/AAAA re-resolution)
//!   always; etcd, Consul and Kubernetes behind the cargo features of the same names (each feature
//!   only adds a provider).
//!
//! [`resolve`] turns any target URI into a discovery stream.

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms, unreachable_pub)]
#![forbid(unsafe_code)]

pub mod cache;
mod discovery;
pub mod dns;
mod error;
pub mod fixed;
mod options;

#[cfg(feature = "consul")]
pub mod consul;
#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
mod registration;
mod target;

pub use self::discovery::Discovery;
pub use self::error::Error;
pub use self::registration::{Registrar, Registration};
pub use self::target::Target;

use lb_core::discover::BoxDiscover;
use lb_core::Endpoint;

/// Discovery for one kind of registry.
pub trait Resolver: Send + Sync + 'static {
    /// Watches `service` (its meaning is the provider's: an etcd service name, a Consul service, a
    /// Kubernetes `service.namespace:port`). The stream yields a full set first, then changes; errors
    /// on it are transient (consumers keep their last-known-good set).
    fn resolve(&self, service: &str) -> BoxDiscover;
}

/// Builds a discovery stream for a target URI, with the provider's default options.
///
/// Schemes: `static` and `dns` always; `etcd`, `consul`, `kubernetes` when the crate is built with the
/// feature of that name. An unknown or disabled scheme is an error naming the feature to enable.
pub fn resolve(target: &Target) -> Result<BoxDiscover, Error> {
    match target.scheme() {
        "static" => Ok(lb_core::discover::fixed(fixed::parse_list(target.path())?)),
        "dns" => dns::resolve(target),
        #[cfg(feature = "etcd")]
        "etcd" => etcd::resolve(target),
        #[cfg(feature = "consul")]
        "consul" => consul::resolve(target),
        #[cfg(feature = "kubernetes")]
        "kubernetes" => kubernetes::resolve(target),
        other => Err(Error::unsupported_scheme(other)),
    }
}

/// Registers `instance` in the registry a target URI names (`etcd://…/<service>`,
/// `consul://…/<service>`), with that provider's default options plus those in the URI's query.
///
/// `static`, `dns` and `kubernetes` targets cannot register: a static list is fixed, DNS records are
/// published by whoever owns the zone, and Kubernetes lists pods through its own readiness probes.
pub async fn register(target: &Target, instance: Endpoint) -> Result<Registration, Error> {
    match target.scheme() {
        #[cfg(feature = "etcd")]
        "etcd" => etcd::register(target, instance).await,
        #[cfg(feature = "consul")]
        "consul" => consul::register(target, instance).await,
        "static" | "dns" | "kubernetes" => {
            let _ = instance;
            Err(Error::invalid_target(format!(
                "`{}` targets cannot register instances (only etcd and consul can)",
                target.scheme()
            )))
        }
        other => {
            let _ = instance;
            Err(Error::unsupported_scheme(other))
        }
    }
}
