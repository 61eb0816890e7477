//! DNS: discovery by periodic A/AAAA re-resolution, as gRPC's DNS resolver and the `ginepro` crate
//! do — for headless Kubernetes Services, docker-compose service names, or any name whose address
//! records list the instances.
//!
//! # Target URI
//!
//! ```text
//! dns:///greeter.default.svc.cluster.local:50051
//! dns:///a.example:443,b.example:443?refresh=10s&family=ipv4
//! dns:///localhost:50051,10.0.0.7:50051,[::1]:50051
//! ```
//!
//! The path lists one or more `host:port`, comma-separated; a port is required (there is no
//! default port). A host may be an IP literal (IPv6 in brackets), used as is without a lookup. The
//! authority must be empty: names go to the system resolver (`getaddrinfo`, so `/etc/hosts`,
//! `/etc/resolv.conf` and nsswitch apply), and a DNS server in the authority, as grpc-go's
//! `dns://8.8.8.8/name:port`, is refused with an error saying so.
//!
//! | query key | meaning (default) |
//! |---|---|
//! | `refresh` | re-resolution interval, a duration such as `30s` or `5m` (`30s`, gRPC's minimum re-resolution interval; at least `1s`) |
//! | `family` | `ipv4`, `ipv6` or `any`: which addresses of an answer are kept (`any`) |
//!
//! and the [cache](crate::cache)'s keys (`allow_empty`, `snapshot`, `resync`), as every registry
//! target; any other key is an error.
//!
//! # What is re-resolved, and when
//!
//! Every name is looked up at start, then again `refresh` (±10 % jitter, so that many clients
//! started together do not query in lockstep) after the previous round finished. Names of one
//! round are looked up concurrently, each bounded by a timeout (5 s,
//! [`DnsResolverBuilder::lookup_timeout`]). The union of every name's addresses — deduplicated and
//! sorted — is one [`Update::Reset`](lb_core::Update), emitted the first time and then only when
//! the union changed; the pool diffs it against what it serves.
//!
//! Endpoints are identified by their socket address (`10.0.0.7:50051`, `[fd00::7]:50051`), as
//! [`Endpoint::new`](lb_core::Endpoint::new) does: an address that stays in the answers keeps its
//! connections and load history across rounds, and an address that two names resolve to is one
//! endpoint, not two. Locality is unknown and the weight is the default: address records carry
//! neither.
//!
//! # Failures
//!
//! A lookup that fails or times out leaves that name's last addresses in place (other names still
//! update), is logged with `warn!` and counted in
//! `lb_registry_lookup_failures_total{registry="dns", reason="error"|"timeout"}`. When every name
//! fails in a round, an error goes on the stream instead of an update: at start that leaves the pool
//! uninitialized rather than empty, later it keeps the last set and starts the
//! [cache](crate::cache)'s staleness clock; the next successful round then confirms the set: a
//! [`Reset`](lb_core::Update::Reset) if it changed, else [`Current`](lb_core::Update::Current). `getaddrinfo` does not tell a name that no longer exists from a
//! resolver outage, so both count as failures: a name that stops resolving keeps its last
//! addresses until it resolves again (an answer with no address of the wanted family, by contrast,
//! is an empty answer).
//!
//! [`lb_registry::resolve`](crate::resolve) puts the stream behind the crate's
//! [cache](crate::cache), where an answer that would empty a non-empty set is refused unless
//! `allow_empty` is set; [`DnsResolver`] itself yields the raw answers. Dropping the stream stops the
//! re-resolution (a `getaddrinfo` call already running on tokio's blocking pool finishes, and its
//! answer is discarded).
//!
//! # Compared with gRPC's DNS resolver
//!
//! Like gRPC's: A/AAAA records through the system resolver, a 30 s minimum between resolutions, a
//! `dns:///host:port` syntax. Unlike it: no SRV records (grpclb), no service config from TXT
//! records, no custom DNS server in the authority, and re-resolution runs on a timer rather than
//! being triggered by connection failures — the pool's own health handling deals with an instance
//! that went away before the next round notices.
//!
//! ```no_run
//! # async fn demo() -> Result<(), lb_registry::Error> {
//! use std::time::Duration;
//! use lb_registry::dns::DnsResolver;
//! use lb_registry::Resolver as _;
//!
//! let resolver = DnsResolver::builder().refresh(Duration::from_secs(10)).build();
//! let updates = resolver.resolve("greeter.default.svc.cluster.local:50051"); // hand it to lb_core::Pool::spawn
//! # let _ = updates; Ok(()) }
//! ```

use std::collections::BTreeSet;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{join_all, BoxFuture};
use futures_util::StreamExt as _;
use lb_core::discover::BoxDiscover;
use lb_core::{BoxError, Endpoint, Update};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::options::parse_duration;
use crate::{scheme, Error, Resolver, Target};

/// Counter: failed or timed-out lookups, labels `registry="dns"`, `reason` (`error`, `timeout`).
pub const LOOKUP_FAILURES: &str = "lb_registry_lookup_failures_total";

/// gRPC's minimum re-resolution interval, used as the default refresh.
const DEFAULT_REFRESH: Duration = Duration::from_secs(30);
const MIN_REFRESH: Duration = Duration::from_secs(1);
// Periods are added to `Instant`s; a year keeps that far from overflowing.
const MAX_PERIOD: Duration = Duration::from_secs(365 * 86_400);
const DEFAULT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// The refresh interval varies by up to this fraction either way.
const JITTER: f64 = 0.1;

/// Which addresses of an answer are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Family {
    /// IPv4 and IPv6 (the default).
    #[default]
    Any,
    /// IPv4 only (A records).
    Ipv4,
    /// IPv6 only (AAAA records).
    Ipv6,
}

impl Family {
    fn keeps(self, ip: IpAddr) -> bool {
        match self {
            Family::Any => true,
            Family::Ipv4 => ip.is_ipv4(),
            Family::Ipv6 => ip.is_ipv6(),
        }
    }
}

/// A name lookup: the system resolver, or a double in tests.
pub(crate) trait Lookup: Send + Sync + 'static {
    fn lookup(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>>;
}

/// `tokio::net::lookup_host`: `getaddrinfo` on tokio's blocking pool.
struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        let host = host.to_string();
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), port)).await?.collect()) })
    }
}

/// Discovery by periodic DNS re-resolution. See the [module docs](self) for the target syntax and the
/// failure rules.
#[derive(Clone, Debug)]
pub struct DnsResolver {
    cfg: Arc<Config>,
}

struct Config {
    refresh: Duration,
    lookup_timeout: Duration,
    family: Family,
    lookup: Arc<dyn Lookup>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("refresh", &self.refresh)
            .field("lookup_timeout", &self.lookup_timeout)
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

/// Options of a [`DnsResolver`].
#[derive(Clone)]
pub struct DnsResolverBuilder {
    refresh: Duration,
    lookup_timeout: Duration,
    family: Family,
    lookup: Option<Arc<dyn Lookup>>,
}

impl fmt::Debug for DnsResolverBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsResolverBuilder")
            .field("refresh", &self.refresh)
            .field("lookup_timeout", &self.lookup_timeout)
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

impl DnsResolver {
    /// A builder with the defaults: the system resolver, a 30 s refresh, 5 s lookup timeout, both
    /// address families.
    pub fn builder() -> DnsResolverBuilder {
        DnsResolverBuilder {
            refresh: DEFAULT_REFRESH,
            lookup_timeout: DEFAULT_LOOKUP_TIMEOUT,
            family: Family::Any,
            lookup: None,
        }
    }

    /// A resolver configured by a `dns:///` target's query (see the module docs); the cache keys are
    /// checked but left to [`lb_registry::resolve`](crate::resolve).
    pub fn from_target(target: &Target) -> Result<Self, Error> {
        Ok(DnsResolverBuilder::from_target(target)?.build())
    }

    /// Watches `names` (`host:port[,host:port…]`, the path of a `dns:///` target), validating it
    /// first.
    pub fn watch(&self, names: &str) -> Result<BoxDiscover, Error> {
        let parsed = parse_names(names, self.cfg.family)?;
        let label = format!("dns:///{names}");
        Ok(Rounds::new(Arc::clone(&self.cfg), parsed, Arc::from(label.as_str())).into_stream())
    }
}

impl Resolver for DnsResolver {
    fn resolve(&self, service: &str) -> BoxDiscover {
        match self.watch(service) {
            Ok(d) => d,
            // The trait cannot fail: report the mistake on the stream, where the pool logs it.
            Err(e) => Box::pin(
                futures_util::stream::iter([Err(BoxError::from(e))]).chain(futures_util::stream::pending()),
            ),
        }
    }
}

impl DnsResolverBuilder {
    /// The builder for a `dns:///` target's query (see the module docs). A non-empty authority (a
    /// DNS server) is an error: only the system resolver is used.
    pub fn from_target(target: &Target) -> Result<Self, Error> {
        if !target.authority().is_empty() {
            return Err(Error::invalid_target(format!(
                "dns target `{target}` names a DNS server (`{}`); only the system resolver is used, write dns:///{}",
                target.authority(),
                target.path()
            )));
        }
        scheme::DNS.check(target)?;
        let mut b = DnsResolver::builder();
        if let Some(r) = target.param("refresh") {
            let refresh = parse_duration("refresh", r)?;
            if refresh < MIN_REFRESH {
                return Err(Error::invalid_target(format!(
                    "`refresh={r}` is below the 1s minimum of dns targets"
                )));
            }
            b = b.refresh(refresh);
        }
        if let Some(f) = target.param("family") {
            b = b.family(match f {
                "any" => Family::Any,
                "ipv4" => Family::Ipv4,
                "ipv6" => Family::Ipv6,
                _ => return Err(Error::invalid_target(format!("`family={f}` is not ipv4, ipv6 or any"))),
            });
        }
        Ok(b)
    }

    /// The re-resolution interval (default 30 s; at least 1 s). Each wait is jittered by ±10 %.
    pub fn refresh(mut self, refresh: Duration) -> Self {
        self.refresh = refresh.clamp(MIN_REFRESH, MAX_PERIOD);
        self
    }

    /// The longest one lookup may take before it counts as failed (default 5 s).
    pub fn lookup_timeout(mut self, timeout: Duration) -> Self {
        self.lookup_timeout = timeout.clamp(Duration::from_millis(1), MAX_PERIOD);
        self
    }

    /// Which addresses of an answer are kept (default [`Family::Any`]).
    pub fn family(mut self, family: Family) -> Self {
        self.family = family;
        self
    }

    /// Replaces the system resolver (tests).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn lookup(mut self, lookup: Arc<dyn Lookup>) -> Self {
        self.lookup = Some(lookup);
        self
    }

    /// Builds the resolver. Nothing is looked up until a stream is polled.
    pub fn build(self) -> DnsResolver {
        DnsResolver {
            cfg: Arc::new(Config {
                refresh: self.refresh,
                lookup_timeout: self.lookup_timeout,
                family: self.family,
                lookup: self.lookup.unwrap_or_else(|| Arc::new(SystemLookup)),
            }),
        }
    }
}

/// The resolver of a `dns:///host:port[,…]` target, its names validated.
pub(crate) fn resolver(target: &Target) -> Result<DnsResolver, Error> {
    let resolver = DnsResolver::from_target(target)?;
    parse_names(target.path(), resolver.cfg.family)?;
    Ok(resolver)
}

/// One `host:port` of a target.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Name {
    host: Host,
    port: u16,
    /// As written, for logs and errors.
    label: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Host {
    Dns(String),
    Ip(IpAddr),
}

fn parse_names(list: &str, family: Family) -> Result<Vec<Name>, Error> {
    let mut out: Vec<Name> = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let name = parse_name(entry)?;
        if let Host::Ip(ip) = name.host {
            if !family.keeps(ip) {
                return Err(Error::invalid_target(format!(
                    "`{entry}` is an address of the family excluded by family={}",
                    match family {
                        Family::Ipv4 => "ipv4",
                        Family::Ipv6 => "ipv6",
                        Family::Any => "any",
                    }
                )));
            }
        }
        if !out.iter().any(|n| n.host == name.host && n.port == name.port) {
            out.push(name);
        }
    }
    if out.is_empty() {
        return Err(Error::invalid_target(
            "a dns target needs at least one host:port, e.g. dns:///greeter.default.svc.cluster.local:50051",
        ));
    }
    Ok(out)
}

fn parse_name(entry: &str) -> Result<Name, Error> {
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (ip, port) = rest
            .split_once("]:")
            .ok_or_else(|| Error::invalid_target(format!("`{entry}` has no port (expected [ipv6]:port)")))?;
        let ip: Ipv6Addr = ip
            .parse()
            .map_err(|_| Error::invalid_target(format!("`{entry}` is not a bracketed IPv6 address and port")))?;
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        let (host, port) = entry
            .rsplit_once(':')
            .ok_or_else(|| Error::invalid_target(format!("`{entry}` has no port (expected host:port)")))?;
        if host.contains(':') {
            return Err(Error::invalid_target(format!(
                "`{entry}` looks like an IPv6 address: write it in brackets, e.g. [::1]:50051"
            )));
        }
        let host = match host.parse::<Ipv4Addr>() {
            Ok(ip) => Host::Ip(IpAddr::V4(ip)),
            Err(_) if is_host_name(host) => Host::Dns(host.to_string()),
            Err(_) => return Err(Error::invalid_target(format!("`{host}` of `{entry}` is not a host name"))),
        };
        (host, port)
    };
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| Error::invalid_target(format!("port `{port}` of `{entry}` is not a port number (1-65535)")))?;
    Ok(Name {
        host,
        port,
        label: entry.to_string(),
    })
}

/// Letters, digits, `-` and `_` in dot-separated labels, an optional final dot (a fully qualified
/// name), at most 253 characters.
fn is_host_name(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The resolution loop of one target: rounds of lookups, reporting what changed.
struct Rounds {
    cfg: Arc<Config>,
    names: Vec<Name>,
    target: Arc<str>,
    /// Each name's last good answer (`None` until it first resolves).
    last: Vec<Option<BTreeSet<SocketAddr>>>,
    /// The union last emitted.
    emitted: Option<BTreeSet<SocketAddr>>,
    /// Set by a round where every name failed: the next good round confirms the set, with
    /// `Current` if it did not change.
    stale: bool,
    next_round: Option<Instant>,
    rng: u64,
}

impl Rounds {
    fn new(cfg: Arc<Config>, names: Vec<Name>, target: Arc<str>) -> Self {
        let last = vec![None; names.len()];
        Rounds {
            cfg,
            names,
            target,
            last,
            emitted: None,
            stale: false,
            next_round: None,
            rng: RandomState::new().hash_one(0u8),
        }
    }

    fn into_stream(self) -> BoxDiscover {
        Box::pin(futures_util::stream::unfold(self, |mut r| async move {
            let item = r.next().await;
            Some((item, r))
        }))
    }

    /// Resolves until there is something to report: a changed set, or every name failing.
    async fn next(&mut self) -> Result<Update, BoxError> {
        loop {
            if let Some(at) = self.next_round.take() {
                tokio::time::sleep_until(at).await;
            }
            let outcome = self.round().await;
            let wait = self.jittered_refresh();
            self.next_round = Some(Instant::now() + wait);
            if let Some(item) = outcome {
                return item;
            }
        }
    }

    async fn round(&mut self) -> Option<Result<Update, BoxError>> {
        let cfg = Arc::clone(&self.cfg);
        let answers = join_all(self.names.iter().map(|n| lookup(&cfg, n))).await;
        let mut failures = Vec::new();
        for (i, answer) in answers.into_iter().enumerate() {
            let name = &self.names[i];
            match answer {
                Ok(addrs) => {
                    let kept: BTreeSet<SocketAddr> = addrs.into_iter().filter(|a| cfg.family.keeps(a.ip())).collect();
                    debug!(target_uri = %self.target, name = %name.label, addresses = kept.len(), "dns answer");
                    self.last[i] = Some(kept);
                }
                Err(failure) => {
                    let reason = if failure.kind() == io::ErrorKind::TimedOut { "timeout" } else { "error" };
                    metrics::counter!(LOOKUP_FAILURES, "registry" => "dns", "reason" => reason).increment(1);
                    warn!(
                        target_uri = %self.target,
                        name = %name.label,
                        error = %failure,
                        kept = self.last[i].as_ref().map_or(0, BTreeSet::len),
                        "dns lookup failed; keeping the name's last addresses"
                    );
                    failures.push(format!("{}: {failure}", name.label));
                }
            }
        }
        if failures.len() == self.names.len() {
            self.stale = true;
            let message = if self.emitted.is_none() {
                format!("no name of {} resolved yet ({})", self.target, failures.join("; "))
            } else {
                format!("no name of {} resolved; keeping the last addresses ({})", self.target, failures.join("; "))
            };
            return Some(Err(BoxError::from(DnsError(message))));
        }
        let union: BTreeSet<SocketAddr> = self.last.iter().flatten().flatten().copied().collect();
        let unchanged = self.emitted.as_ref() == Some(&union);
        let recovered = std::mem::take(&mut self.stale);
        if recovered {
            info!(target_uri = %self.target, endpoints = union.len(), "dns names resolve again");
        }
        if unchanged {
            return recovered.then_some(Ok(Update::Current));
        }
        let update = Update::Reset(union.iter().copied().map(Endpoint::new).collect());
        self.emitted = Some(union);
        Some(Ok(update))
    }

    /// `refresh` scaled by a uniform factor in [1 - JITTER, 1 + JITTER).
    fn jittered_refresh(&mut self) -> Duration {
        // splitmix64: enough to spread clients apart, no dependency needed.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
        self.cfg.refresh.mul_f64(1.0 - JITTER + 2.0 * JITTER * unit)
    }
}

/// One name's addresses: IP literals as they are, names through the lookup, bounded by the timeout.
async fn lookup(cfg: &Config, name: &Name) -> io::Result<Vec<SocketAddr>> {
    match &name.host {
        Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, name.port)]),
        Host::Dns(host) => match tokio::time::timeout(cfg.lookup_timeout, cfg.lookup.lookup(host, name.port)).await {
            Ok(answer) => answer,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {} ms", cfg.lookup_timeout.as_millis()),
            )),
        },
    }
}

/// Every name of a target failed to resolve in one round.
#[derive(Debug)]
struct DnsError(String);

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DnsError {}

#[cfg(test)]
mod tests;
