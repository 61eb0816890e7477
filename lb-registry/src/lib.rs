//! Service discovery and registration for lb.
//!
//! - [`Target`]: the one target-URI syntax used everywhere (Rust API, CLI, C ABI, agent config).
//! - [`Resolver`]: discovery — a stream of [`lb_core::Update`]s, full set first, then changes.
//! - [`Registrar`]: registration with heartbeats, returning a [`Registration`] that deregisters on
//!   [`Registration::deregister`] (graceful shutdown) or drop.
//! - Providers: [`fixed`] (`static:///`) and [`dns`] (`dns:///`, periodic A/AAAA re-resolution)
//!   always; etcd, Consul and Kubernetes behind the cargo features of the same names (each feature
//!   only adds a provider).
//! - [`cache`]: the last-known-good cache every registry's discovery runs behind.
//! - [`document`]: the JSON document of one endpoint (etcd values, snapshot files).
//!
//! [`resolve`] turns any target URI into a discovery stream, and [`register`] registers an instance
//! in the registry a target names.
//!
//! # Target options
//!
//! Options go in the target's query (`etcd://127.0.0.1:2379/greeter?ttl=5s&snapshot=/var/cache/lb/greeter.json`),
//! so one string configures the CLI, the C ABI and the agent alike. Each scheme reads the keys
//! below, for discovery and registration alike (one target usually serves both sides); every
//! scheme with a registry also reads the [`cache`]'s keys, the same way for all. Any
//! other key is an error that names it and lists the known ones. Credentials never go in a URI.
//!
//! | scheme | its own keys (documented by the provider) | [cache](crate::cache#target-options) keys: `allow_empty`, `snapshot`, `resync` |
//! |---|---|---|
//! | `static` | none ([`fixed`]) | refused: a fixed list has no registry to lose |
//! | `dns` | `refresh`, `family` ([`dns`]) | yes |
//! | `etcd` | `prefix`, `ttl` (`etcd`) | yes; `resync` defaults to 5 min |
//! | `consul` | `dc`, `ns`, `tag`, `wait`, `ttl`, `deregister_after` (`consul`) | yes |
//! | `kubernetes` | `node`, `zone`, `region`, `hints` (`kubernetes`) | yes |

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms, unreachable_pub)]
#![forbid(unsafe_code)]

pub mod cache;
mod discovery;
pub mod dns;
pub mod document;
mod error;
pub mod fixed;
mod options;
mod scheme;

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
///
/// A resolver yields what its registry says, uncached; [`resolve`] and
/// [`CacheBuilder::resolve`](cache::CacheBuilder::resolve) put it behind the cache, which may call
/// `resolve` again to restart it (a resync, or after the stream ended).
pub trait Resolver: Send + Sync + 'static {
    /// Watches `service` (its meaning is the provider's: an etcd service name, a Consul service, a
    /// Kubernetes `service.namespace:port`). The stream yields a full set first, then changes, and
    /// [`Update::Current`](lb_core::Update::Current) when the registry confirms the set without
    /// changing it; errors on it are transient (consumers keep their last-known-good set).
    fn resolve(&self, service: &str) -> BoxDiscover;
}

/// Builds a discovery stream for a target URI: the scheme's provider configured by the target,
/// behind the [`cache`] the target's query configures (for every scheme but `static`).
///
/// Schemes: `static` and `dns` always; `etcd`, `consul`, `kubernetes` when the crate is built with the
/// feature of that name. An unknown or disabled scheme is an error naming the feature to enable; an
/// option the scheme does not read is an error naming it (see the [crate docs](crate#target-options)).
pub fn resolve(target: &Target) -> Result<BoxDiscover, Error> {
    match target.scheme() {
        "static" => fixed::resolve(target),
        "dns" => cached(target, dns::resolver(target)?),
        #[cfg(feature = "etcd")]
        "etcd" => cached(target, etcd::resolver(target)?),
        #[cfg(feature = "consul")]
        "consul" => cached(target, consul::resolver(target)?),
        #[cfg(feature = "kubernetes")]
        "kubernetes" => cached(target, kubernetes::resolver(target)?),
        other => Err(Error::unsupported_scheme(other)),
    }
}

/// The one place a target's discovery is put behind its cache: every registry scheme goes
/// through here, so the cache keys mean the same for all of them.
pub(crate) fn cached(target: &Target, resolver: impl Resolver) -> Result<BoxDiscover, Error> {
    Ok(cache::CacheBuilder::from_target(target)?.resolve(resolver, target.path()).boxed())
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
