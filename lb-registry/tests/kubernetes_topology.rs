//! Service topology through the whole path: API server double → `KubernetesResolver` →
//! `lb_core::Pool` with `Topology::from_topology_keys` → picks. Each `topologyKeys` list from the
//! issue, and EndpointSlice zone hints.


mod kubernetes_support;

use std::collections::BTreeMap;

use kubernetes_support::*;
use lb_core::policy::{RoundRobin, Topology};
use lb_core::PickContext;
use lb_doubles::kube::{endpoint, endpoint_slice, EndpointBuilder, KubeDouble};

const HOST: &str = "kubernetes.io/hostname";
const ZONE: &str = "topology.kubernetes.io/zone";
const REGION: &str = "topology.kubernetes.io/region";

/// Where backend `i` runs: 0 on the caller's node n1; 1 on n2 in the caller's zone z1; 2 in z2 of
/// the caller's region r1; 3 in z3 of region r2.
const PLACES: [(&str, &str); 4] = [("n1", "z1"), ("n2", "z1"), ("n3", "z2"), ("n4", "z3")];

struct Fleet {
    double: KubeDouble,
    b: Backends,
}

impl Fleet {
    async fn start() -> Fleet {
        let double = KubeDouble::start().await.expect("double");
        let b = Backends::start(4).await;
        let fleet = Fleet { double, b };
        fleet.publish(&[]);
        fleet
    }

    fn ep(&self, i: usize) -> EndpointBuilder {
        endpoint(self.b.ip(i)).node(PLACES[i].0).zone(PLACES[i].1)
    }

    /// Publishes the fleet with the backends in `down` not ready.
    fn publish(&self, down: &[usize]) {
        let mut s = endpoint_slice("greeter-abc", "greeter").port(Some("grpc"), self.b.port);
        for i in 0..4 {
            let e = self.ep(i);
            s = s.endpoint(if down.contains(&i) { e.not_ready() } else { e });
        }
        self.double.apply(s.build());
    }

    fn resolver(&self) -> lb_registry::kubernetes::KubernetesResolver {
        resolver(&self.double)
            .node("n1")
            .zone("z1")
            .zone_region("z1", "r1")
            .zone_region("z2", "r1")
            .zone_region("z3", "r2")
            .build()
    }
}

/// Which backends 400 picks went to, by index.
fn spread(fleet: &Fleet, pool: &lb_core::Pool<std::net::SocketAddr>) -> BTreeMap<usize, usize> {
    picks(pool, 400)
        .into_iter()
        .map(|(addr, n)| ((0..4).find(|&i| fleet.b.addr(i) == addr).expect("a fleet address"), n))
        .collect()
}

async fn wait_up(fleet: &Fleet, pool: &lb_core::Pool<std::net::SocketAddr>, down: &[usize]) {
    let up: Vec<_> = (0..4).filter(|i| !down.contains(i)).map(|i| fleet.b.addr(i)).collect();
    wait_healthy(pool, &up).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_then_zone_then_region_then_anywhere() {
    let fleet = Fleet::start().await;
    let resolver = fleet.resolver();
    let policy = Topology::from_topology_keys(RoundRobin::new(), resolver.caller().clone(), &[HOST, ZONE, REGION, "*"])
        .expect("valid keys");
    let connector = tcp_connector();
    let pool = pool(&resolver, SERVICE, &connector, policy);

    for (down, only) in [(&[][..], 0), (&[0][..], 1), (&[0, 1][..], 2), (&[0, 1, 2][..], 3)] {
        fleet.publish(down);
        wait_up(&fleet, &pool, down).await;
        assert_eq!(spread(&fleet, &pool), BTreeMap::from([(only, 400)]), "down: {down:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostname_alone_is_strict_node_local() {
    let fleet = Fleet::start().await;
    let resolver = fleet.resolver();
    let policy = Topology::from_topology_keys(RoundRobin::new(), resolver.caller().clone(), &[HOST]).expect("valid keys");
    let connector = tcp_connector();
    let pool = pool(&resolver, SERVICE, &connector, policy);
    wait_up(&fleet, &pool, &[]).await;
    assert_eq!(spread(&fleet, &pool), BTreeMap::from([(0, 400)]));

    // The node-local pod goes: requests fail rather than leave the node, though 3 others are up.
    fleet.publish(&[0]);
    wait_up(&fleet, &pool, &[0]).await;
    assert!(pool.pick(&PickContext::default()).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_without_star_never_goes_past_its_last_key() {
    let fleet = Fleet::start().await;
    let resolver = fleet.resolver();
    let policy = Topology::from_topology_keys(RoundRobin::new(), resolver.caller().clone(), &[HOST, ZONE, REGION])
        .expect("valid keys");
    let connector = tcp_connector();
    let pool = pool(&resolver, SERVICE, &connector, policy);

    fleet.publish(&[0, 1]);
    wait_up(&fleet, &pool, &[0, 1]).await;
    assert_eq!(spread(&fleet, &pool), BTreeMap::from([(2, 400)]), "same region next");

    // Only backend 3, in another region, is left: the list ends at region, so nothing is picked.
    fleet.publish(&[0, 1, 2]);
    wait_up(&fleet, &pool, &[0, 1, 2]).await;
    assert!(pool.pick(&PickContext::default()).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_hints_are_honoured() {
    let double = KubeDouble::start().await.expect("double");
    let b = Backends::start(4).await;
    // The controller hinted backend 1 (in z1) for z2, and backend 2 (in z2) for z1, to even out
    // per-zone capacity.
    double.apply(
        endpoint_slice("greeter-abc", "greeter")
            .port(Some("grpc"), b.port)
            .endpoint(endpoint(b.ip(0)).node("n1").zone("z1").hints(&["z1"]))
            .endpoint(endpoint(b.ip(1)).node("n2").zone("z1").hints(&["z2"]))
            .endpoint(endpoint(b.ip(2)).node("n3").zone("z2").hints(&["z1"]))
            .endpoint(endpoint(b.ip(3)).node("n4").zone("z2").hints(&["z2"]))
            .build(),
    );
    let zone_first = |resolver: &lb_registry::kubernetes::KubernetesResolver| {
        Topology::from_topology_keys(RoundRobin::new(), resolver.caller().clone(), &[ZONE, "*"]).expect("valid keys")
    };
    let all: Vec<_> = (0..4).map(|i| b.addr(i)).collect();
    let index = |addr| (0..4).find(|&i| b.addr(i) == addr).expect("a fleet address");

    let resolver = resolver(&double).node("n9").zone("z1").build();
    let connector = tcp_connector();
    let hinted = pool(&resolver, SERVICE, &connector, zone_first(&resolver));
    wait_healthy(&hinted, &all).await;
    let n: BTreeMap<usize, usize> = picks(&hinted, 400).into_iter().map(|(a, n)| (index(a), n)).collect();
    assert_eq!(n, BTreeMap::from([(0, 200), (2, 200)]), "the endpoints hinted for z1");

    // The same caller ignoring hints keeps to the zone the slices report.
    let resolver = crate::resolver(&double).node("n9").zone("z1").hints(false).build();
    let plain = pool(&resolver, SERVICE, &connector, zone_first(&resolver));
    wait_healthy(&plain, &all).await;
    let n: BTreeMap<usize, usize> = picks(&plain, 400).into_iter().map(|(a, n)| (index(a), n)).collect();
    assert_eq!(n, BTreeMap::from([(0, 200), (1, 200)]), "the endpoints in z1");
}
