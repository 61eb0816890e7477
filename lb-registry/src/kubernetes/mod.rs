//! Kubernetes discovery: `kubernetes:///<service>.<namespace>:<port-name>` from EndpointSlices.
//!
//! A [`KubernetesResolver`] watches the `discovery.k8s.io/v1` EndpointSlices labelled
//! `kubernetes.io/service-name=<service>` in the namespace with `kube-runtime`'s
//! [`watcher`](kube::runtime::watcher()), which owns list/watch, `resourceVersion` bookkeeping,
//! bookmarks and the relist after `410 Gone`. On top of it this module:
//!
//! - merges all slices of the service and resolves the port per slice (see [`slices`] for the
//!   rules on ports, conditions, locality and zone hints);
//! - emits a full [`Update::Reset`](lb_core::Update::Reset) after every (re)list — the pool diffs
//!   it, so endpoints that did not change keep their connections and load — or
//!   [`Update::Current`](lb_core::Update::Current) when a relist found nothing new, and
//!   [`Update::Add`](lb_core::Update::Add) / [`Update::Remove`](lb_core::Update::Remove) for watch
//!   events in between;
//! - keeps the last-known-good set across API errors: an error is reported on the stream (the
//!   pool logs and counts it and keeps its set) and a relist that fails half-way emits nothing.
//!   Only a relist that *completes* replaces the set, even when it is empty (a service scaled to
//!   zero really has no endpoints);
//! - says what to fix when the API server refuses the watch: a `401` (credentials missing, expired
//!   or for another cluster) or a `403` (RBAC: `list` and `watch` on `endpointslices.discovery.k8s.io`
//!   in the namespace) is an error of its own, counted in [`AUTH_ERRORS`], that a request finding no
//!   endpoint quotes (`Unavailable`, the C ABI's last error).
//!
//! # Target
//!
//! `kubernetes:///greeter.default:grpc` — service `greeter`, namespace `default`, the service port
//! named `grpc`. The namespace may be left out (`greeter:grpc`: the client's default namespace);
//! the port may be a number (`greeter.default:8080`) or left out for a single unnamed port
//! (`greeter.default`). The authority must be empty: the API server comes from `KUBECONFIG` (or
//! `~/.kube/config`) when set, else from the in-cluster service account
//! (as [`kube::Client::try_default`] finds them, but with kube's own retry layer off, so every
//! failed request reaches the watcher's backoff and is reported). The client is created lazily,
//! inside the stream, and retried with backoff while it cannot be.
//!
//! Query parameters (so the URI alone configures the CLI, the C ABI and the agent): `node`, `zone`,
//! `region` override the caller's locality, `hints=off` ignores zone hints; and the
//! [cache](crate::cache)'s keys, as every registry target: with `snapshot=PATH`, a pod restarted
//! while the API server is unreachable starts with the endpoints it last saw. Any other key is an
//! error.
//!
//! [`lb_registry::resolve`](crate::resolve) puts the stream behind that cache; a
//! [`KubernetesResolver`] itself yields the API server's word, uncached.
//!
//! # The caller's locality
//!
//! Zone hints are relative to the caller's zone, and the
//! [`Topology`](lb_core::policy::Topology) policy needs the caller's node, zone and region. They
//! come, in order, from the builder ([`KubernetesResolverBuilder::node`] …), from the target's
//! query, or from these environment variables, which the pod spec fills through the downward API:
//!
//! | field | variables (first set wins) | downward API |
//! |---|---|---|
//! | node | `LB_NODE`, `NODE_NAME` | `valueFrom.fieldRef.fieldPath: spec.nodeName` |
//! | zone | `LB_ZONE`, `POD_ZONE` | `metadata.labels['topology.kubernetes.io/zone']` of the pod (the downward API cannot read node labels: copy the node's zone label onto the pod, e.g. with an admission webhook or Kubernetes ≥ 1.33's pod topology labels) |
//! | region | `LB_REGION`, `POD_REGION` | likewise with `topology.kubernetes.io/region` |
//!
//! [`KubernetesResolver::caller`] returns the result, ready to hand to the topology policy.
//!
//! # Region
//!
//! EndpointSlices carry `zone` and `nodeName` but no region. An endpoint's region comes from the
//! zone → region map ([`KubernetesResolverBuilder::zone_region`]), else from its
//! `deprecatedTopology["topology.kubernetes.io/region"]` (set by the mirroring controller for
//! hand-made Endpoints), else it is unknown — and an unknown region never matches, so the region
//! tier of a topology list is empty unless one of those is configured.
//!
//! # Zone hints
//!
//! Honoured by default, by rewriting the endpoint's effective zone (details in [`slices`]): an
//! endpoint hinted for the caller's zone is same-zone for the topology policy, one in the caller's
//! zone but hinted elsewhere is not. The reported zone stays in metadata ([`slices::META_ZONE`]),
//! the hinted zones in [`slices::META_HINT_ZONES`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use lb_core::discover::BoxDiscover;
use lb_core::Locality;

use crate::{scheme, Error, Target};

pub mod slices;
mod view;
mod watch;

use self::slices::PortSpec;

/// Counter: EndpointSlice endpoints skipped because their address is not an IP (FQDN slices,
/// garbage), labels `registry="kubernetes"`, `reason="address"`. The same name as the other
/// registries' invalid-entry counters.
pub const INVALID_ENTRIES: &str = "lb_registry_invalid_entries_total";

/// Counter: watches the API server refused, labels `registry="kubernetes"` and `reason`
/// (`unauthorized`: a 401, the credentials; `forbidden`: a 403, RBAC). The same name as Consul's
/// ACL counter.
pub const AUTH_ERRORS: &str = "lb_registry_auth_errors_total";

/// Environment variables read for the caller's node, first set wins.
pub const NODE_ENV: [&str; 2] = ["LB_NODE", "NODE_NAME"];
/// Environment variables read for the caller's zone, first set wins.
pub const ZONE_ENV: [&str; 2] = ["LB_ZONE", "POD_ZONE"];
/// Environment variables read for the caller's region, first set wins.
pub const REGION_ENV: [&str; 2] = ["LB_REGION", "POD_REGION"];

/// Discovery from Kubernetes EndpointSlices.
///
/// ```no_run
/// # async fn demo() -> Result<(), lb_registry::Error> {
/// use lb_core::policy::{P2c, Topology};
/// use lb_registry::kubernetes::KubernetesResolver;
///
/// let resolver = KubernetesResolver::builder().zone_region("eu-west-1a", "eu-west-1").build();
/// let discover = resolver.watch("greeter.default:grpc")?;
/// let policy = Topology::from_topology_keys(
///     P2c::peak_ewma(),
///     resolver.caller().clone(),
///     &["kubernetes.io/hostname", "topology.kubernetes.io/zone", "*"],
/// )
/// .map_err(|e| lb_registry::Error::invalid_target(e.to_string()))?;
/// # let _ = (discover, policy);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct KubernetesResolver {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    client: Option<kube::Client>,
    caller: Locality,
    opts: slices::Options,
    backoff: Option<(Duration, Duration)>,
}

impl fmt::Debug for KubernetesResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubernetesResolver")
            .field("client", &self.inner.client.as_ref().map(|_| "injected").unwrap_or("inferred"))
            .field("caller", &self.inner.caller)
            .field("hints", &self.inner.opts.hints)
            .field("zone_regions", &self.inner.opts.zone_regions)
            .finish()
    }
}

impl Default for KubernetesResolver {
    fn default() -> Self {
        Self::new()
    }
}

impl KubernetesResolver {
    /// A resolver with the inferred client (KUBECONFIG or in-cluster) and the caller's locality from
    /// the environment.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Starts a builder.
    pub fn builder() -> KubernetesResolverBuilder {
        KubernetesResolverBuilder::default()
    }

    /// The caller's locality (from the builder or the environment), for
    /// [`Topology`](lb_core::policy::Topology).
    pub fn caller(&self) -> &Locality {
        &self.inner.caller
    }

    /// Watches `service` (`<service>[.<namespace>][:<port>]`), validating it first.
    pub fn watch(&self, service: &str) -> Result<BoxDiscover, Error> {
        let svc = ServiceRef::parse(service)?;
        Ok(watch::discover(Arc::clone(&self.inner), svc))
    }
}

impl crate::Resolver for KubernetesResolver {
    fn resolve(&self, service: &str) -> BoxDiscover {
        match self.watch(service) {
            Ok(d) => d,
            // The trait cannot fail: report the mistake on the stream, where the pool logs it.
            Err(e) => Box::pin(
                futures_util::stream::iter([Err(lb_core::BoxError::from(e))]).chain(futures_util::stream::pending()),
            ),
        }
    }
}

/// Builds a [`KubernetesResolver`].
#[derive(Clone, Default)]
pub struct KubernetesResolverBuilder {
    client: Option<kube::Client>,
    node: Option<String>,
    zone: Option<String>,
    region: Option<String>,
    no_env: bool,
    no_hints: bool,
    zone_regions: BTreeMap<String, String>,
    backoff: Option<(Duration, Duration)>,
}

impl fmt::Debug for KubernetesResolverBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubernetesResolverBuilder")
            .field("client", &self.client.is_some())
            .field("node", &self.node)
            .field("zone", &self.zone)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl KubernetesResolverBuilder {
    /// Uses this client instead of inferring one (KUBECONFIG, then in-cluster). Tests point it at
    /// an API server double with a `kube::Config::new(url)`.
    ///
    /// Build it with `Config::default_retry` off, as the inferred client is: kube's retry layer
    /// retries 429/503/504 answers up to 15 times, for minutes, before the watch hears of them,
    /// so an API server outage would neither be reported nor counted as staleness.
    pub fn client(mut self, client: kube::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// The caller's node (`kubernetes.io/hostname`); overrides the environment.
    pub fn node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    /// The caller's zone (`topology.kubernetes.io/zone`); overrides the environment.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into());
        self
    }

    /// The caller's region (`topology.kubernetes.io/region`); overrides the environment.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Does not read the caller's locality from the environment (tests, or a caller outside the
    /// cluster).
    pub fn ignore_env(mut self) -> Self {
        self.no_env = true;
        self
    }

    /// Whether to honour EndpointSlice zone hints (default: yes).
    pub fn hints(mut self, honour: bool) -> Self {
        self.no_hints = !honour;
        self
    }

    /// Declares that `zone` lies in `region`: endpoints in that zone get that region, and so does
    /// the caller when its zone is that one and its region is not set otherwise.
    pub fn zone_region(mut self, zone: impl Into<String>, region: impl Into<String>) -> Self {
        self.zone_regions.insert(zone.into(), region.into());
        self
    }

    /// The watch's retry backoff after an API error: from `initial`, doubling up to `max`, ±20 %
    /// jitter. By default `kube-runtime`'s (800 ms doubling to 30 s, with jitter).
    pub fn watch_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = Some((initial, max.max(initial)));
        self
    }

    /// Builds the resolver.
    pub fn build(self) -> KubernetesResolver {
        let env = |names: [&str; 2]| -> Option<String> {
            if self.no_env {
                return None;
            }
            names.iter().find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
        };
        let node = self.node.clone().or_else(|| env(NODE_ENV));
        let zone = self.zone.clone().or_else(|| env(ZONE_ENV));
        let region = self
            .region
            .clone()
            .or_else(|| env(REGION_ENV))
            .or_else(|| zone.as_ref().and_then(|z| self.zone_regions.get(z).cloned()));
        let mut caller = Locality::unknown();
        if let Some(n) = node {
            caller = caller.with_node(n);
        }
        if let Some(z) = zone {
            caller = caller.with_zone(z);
        }
        if let Some(r) = region {
            caller = caller.with_region(r);
        }
        let opts = slices::Options {
            caller_zone: caller.zone.clone(),
            hints: !self.no_hints,
            zone_regions: self.zone_regions,
        };
        KubernetesResolver {
            inner: Arc::new(Inner {
                client: self.client,
                caller,
                opts,
                backoff: self.backoff,
            }),
        }
    }
}

/// A parsed `<service>[.<namespace>][:<port>]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServiceRef {
    pub(crate) name: String,
    pub(crate) namespace: Option<String>,
    pub(crate) port: PortSpec,
}

impl ServiceRef {
    pub(crate) fn parse(s: &str) -> Result<Self, Error> {
        let bad = |why: &str| {
            Error::invalid_target(format!(
                "kubernetes service `{s}` {why} (expected <service>.<namespace>:<port-name>, e.g. greeter.default:grpc)"
            ))
        };
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        let (name, namespace) = match host.split_once('.') {
            Some((n, ns)) => (n, Some(ns)),
            None => (host, None),
        };
        if !is_dns_label(name, true) {
            return Err(bad("has an invalid service name (a DNS-1035 label: lower-case letters, digits, '-')"));
        }
        if let Some(ns) = namespace {
            if !is_dns_label(ns, false) {
                return Err(bad("has an invalid namespace (a DNS-1123 label)"));
            }
        }
        let port = match port {
            None => PortSpec::Unnamed,
            Some("") => return Err(bad("has an empty port after ':'")),
            Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => match p.parse::<u16>() {
                Ok(n) if n > 0 => PortSpec::Number(n),
                _ => return Err(bad("has a port number out of range")),
            },
            Some(p) if p.len() <= 15 && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') => {
                PortSpec::Named(p.to_string())
            }
            Some(_) => return Err(bad("has an invalid port name (an IANA service name: ≤ 15 of a-z, 0-9, '-')")),
        };
        Ok(ServiceRef {
            name: name.to_string(),
            namespace: namespace.map(str::to_string),
            port,
        })
    }
}

fn is_dns_label(s: &str, letter_first: bool) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && (!letter_first || b[0].is_ascii_lowercase())
}

/// The resolver of a `kubernetes:///<service>.<namespace>:<port>` target (default options plus
/// the query's), its service validated.
pub(crate) fn resolver(target: &Target) -> Result<KubernetesResolver, Error> {
    if !target.authority().is_empty() {
        return Err(Error::invalid_target(format!(
            "kubernetes target `{target}` has an authority; the API server comes from KUBECONFIG or the in-cluster config (write kubernetes:///{})",
            target.path()
        )));
    }
    scheme::KUBERNETES.check(target)?;
    ServiceRef::parse(target.path())?;
    let mut b = KubernetesResolver::builder();
    if let Some(n) = target.param("node") {
        b = b.node(n);
    }
    if let Some(z) = target.param("zone") {
        b = b.zone(z);
    }
    if let Some(r) = target.param("region") {
        b = b.region(r);
    }
    match target.param("hints") {
        None | Some("on") | Some("true") => {}
        Some("off") | Some("false") => b = b.hints(false),
        Some(other) => {
            return Err(Error::invalid_target(format!("kubernetes target `{target}`: hints=`{other}` is not on or off")))
        }
    }
    Ok(b.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_refs() {
        let r = ServiceRef::parse("greeter.default:grpc").expect("valid");
        assert_eq!(r.name, "greeter");
        assert_eq!(r.namespace.as_deref(), Some("default"));
        assert_eq!(r.port, PortSpec::Named("grpc".into()));
        assert_eq!(ServiceRef::parse("greeter").expect("valid").port, PortSpec::Unnamed);
        assert_eq!(ServiceRef::parse("greeter:8080").expect("valid").port, PortSpec::Number(8080));
        assert_eq!(ServiceRef::parse("greeter:8080").expect("valid").namespace, None);
        for bad in ["", "Greeter.default:grpc", "greeter.default:", "greeter.default:99999", "1abc.default", "a.b.c:grpc", "a.default:GRPC"] {
            let err = ServiceRef::parse(bad).expect_err(bad);
            assert!(err.is_invalid_target(), "{bad}: {err}");
        }
    }

    #[test]
    fn targets_with_an_authority_or_bad_options_are_rejected() {
        let t = Target::parse("kubernetes://10.0.0.1/greeter.default:grpc").expect("parses");
        assert!(resolver(&t).expect_err("authority").is_invalid_target());
        let t = Target::parse("kubernetes:///greeter.default:grpc?hints=maybe").expect("parses");
        assert!(resolver(&t).expect_err("bad hints").to_string().contains("hints"));
        let t = Target::parse("kubernetes:///Greeter.default:grpc").expect("parses");
        assert!(resolver(&t).expect_err("bad service").to_string().contains("Greeter"));
        let t = Target::parse("kubernetes:///greeter.default:grpc?snapshott=/tmp/x").expect("parses");
        assert!(resolver(&t).expect_err("a typo").to_string().contains("`snapshott`"));
    }

    #[tokio::test]
    async fn the_resolver_trait_reports_a_bad_service_on_the_stream() {
        use crate::Resolver as _;
        let r = KubernetesResolver::builder().ignore_env().build();
        let mut s = r.resolve("Not A Service");
        let first = s.next().await.expect("an item");
        assert!(first.expect_err("invalid").to_string().contains("Not A Service"));
    }

    #[test]
    fn caller_locality_from_builder_and_zone_map() {
        let r = KubernetesResolver::builder()
            .ignore_env()
            .node("n1")
            .zone("z1")
            .zone_region("z1", "r1")
            .build();
        assert_eq!(r.caller(), &Locality::unknown().with_node("n1").with_zone("z1").with_region("r1"));
        let r = KubernetesResolver::builder().ignore_env().build();
        assert_eq!(r.caller(), &Locality::unknown());
    }
}
