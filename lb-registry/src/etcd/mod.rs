//! etcd: lease-based registration and list-then-watch discovery (cargo feature `etcd`).
//!
//! # Target
//!
//! `etcd://host:port[,host:port…]/<service>[?key=value&…]`, with these query parameters:
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `prefix` | `/lb/services` | key prefix; instances live at `<prefix>/<service>/<instance-id>` |
//! | `ttl` | `10s` | registration lease TTL (`500ms`, `10s`, `5m` or bare seconds); heartbeats every TTL/3 |
//!
//! and the [cache](crate::cache)'s keys (`snapshot`, `allow_empty`, and `resync`, which for etcd
//! defaults to 5 minutes), as every registry target; any other key is an error.
//!
//! Credentials and TLS never go in the URI: use [`EtcdBuilder`] (`credentials`, `tls_ca_file`,
//! `tls_identity_files`, …) or the environment variables in [`env`](mod@env) (`LB_ETCD_USERNAME`,
//! `LB_ETCD_PASSWORD`, `LB_ETCD_CA_FILE`, `LB_ETCD_CERT_FILE`, `LB_ETCD_KEY_FILE`,
//! `LB_ETCD_TLS_DOMAIN`), which URI-only configuration (the CLI, the C ABI, the agent) reads. Setting
//! a CA enables TLS.
//!
//! # Schema
//!
//! One key per instance, `<prefix>/<service>/<instance-id>` (e.g. `/lb/services/greeter/10.0.0.7:50051`;
//! the id is everything after `<service>/` and becomes the endpoint's id), attached to the instance's
//! lease. The value is the crate's [endpoint document](crate::document) with a schema version,
//! version 1:
//!
//! ```json
//! {"v":1,"addr":"10.0.0.7:50051","weight":100,"zone":"eu-west-1a","region":"eu-west-1",
//!  "node":"node-7","metadata":{"version":"1.4.2"},"state":"ready"}
//! ```
//!
//! | field | required | meaning |
//! |---|---|---|
//! | `v` | yes | schema version; only `1` is read, other versions are skipped |
//! | `addr` | yes | `ip:port` (IPv6 as `[::1]:50051`); no host names: resolving them is not discovery's job |
//! | `weight` | no (100) | relative weight, `0` = send nothing |
//! | `zone`, `region`, `node` | no | locality for topology-aware balancing |
//! | `metadata` | no | string → string map |
//! | `state` | no (`ready`) | `ready`, `serving` (only used when nothing is ready) or `terminating` (drain) |
//!
//! An `id` field, if present, is ignored: the key names the instance. Unknown fields are ignored,
//! so version 1 can grow optional fields. A value larger than 64 KiB
//! ([`schema::MAX_VALUE_BYTES`]), not JSON, of another version, with an unparseable address or
//! wrong field types is skipped with a `warn!` and counted in
//! `lb_registry_invalid_entries_total{registry="etcd",reason}`; the rest of the set is unaffected, and
//! an invalid value that replaces a valid one leaves the valid one in use.
//!
//! # Behaviour
//!
//! - Registration ([`EtcdRegistrar`]): heartbeats every TTL/3 and a watch on its own key; after any
//!   loss (etcd down past the TTL, restarted with empty data, lease revoked, key deleted) it
//!   registers again with backoff, for as long as the instance runs — the Go frameworks' registries
//!   stop at the first loss (go-zero #1926, #4201; kitex registry-etcd #11). Deregistration revokes
//!   the lease, which deletes the key at once.
//! - Discovery ([`EtcdResolver`]): paginated prefix get → `Reset`, watch from the next revision,
//!   resume after reconnects, relist after compaction or data loss; [`Update::Current`] once a
//!   watch is (re)established. [`lb_registry::resolve`](crate::resolve) puts it behind the
//!   [cache](crate::cache); in code, wrap it yourself (below).
//!
//! [`Update::Current`]: lb_core::Update::Current
//!
//! ```no_run
//! # async fn demo() -> Result<(), lb_registry::Error> {
//! use std::time::Duration;
//! use lb_registry::cache::Cache;
//! use lb_registry::etcd::{EtcdRegistrar, EtcdResolver};
//! use lb_registry::Registrar as _;
//!
//! let registrar = EtcdRegistrar::builder(["10.0.0.1:2379"]).ttl(Duration::from_secs(5)).build_registrar()?;
//! let reg = registrar.register("greeter", lb_core::Endpoint::new("10.0.0.7:50051".parse().expect("literal"))).await?;
//!
//! let resolver = EtcdResolver::builder(["10.0.0.1:2379"]).build_resolver()?;
//! let cached = Cache::builder()
//!     .name("etcd://10.0.0.1:2379/greeter")
//!     .snapshot("/var/cache/lb/greeter.json")
//!     .resync_every(Duration::from_secs(300))
//!     .resolve(resolver, "greeter");
//! let discover = cached.boxed(); // hand to lb_core::Pool::spawn
//! # let _ = discover;
//! reg.deregister().await; // on graceful shutdown
//! # Ok(()) }
//! ```

mod config;
mod registrar;
mod resolver;
pub mod schema;

pub use self::config::{env, EtcdBuilder, DEFAULT_PREFIX};
pub use self::registrar::EtcdRegistrar;
pub use self::resolver::{EtcdResolver, INVALID_ENTRIES};

use crate::{Error, Registration, Target};

pub(crate) fn resolver(target: &Target) -> Result<EtcdResolver, Error> {
    EtcdBuilder::from_target(target)?.build_resolver()
}

pub(crate) async fn register(target: &Target, instance: lb_core::Endpoint) -> Result<Registration, Error> {
    let registrar = EtcdBuilder::from_target(target)?.build_registrar()?;
    registrar.register_instance(target.path(), instance).await
}
