//! etcd outages against a real etcd: down longer than the TTL under client load, restarted with an
//! empty data dir, and a client that starts while etcd is down (served from the disk snapshot).

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lb_core::policy::RoundRobin;
use lb_core::test_util::TestConnector;
use lb_core::{Endpoint, PickContext, Pool, PoolConfig};
use lb_registry::cache::Cache;
use lb_registry::etcd::{EtcdRegistrar, EtcdResolver};
use lb_registry::{Registrar as _, Registration, Target};
use support::{echo_request, eventually, lease_ttls, stays_registered, Echo, Etcd, EtcdCluster, SetWatcher, TempDir};

const TTL: Duration = Duration::from_secs(3);

async fn register_all(etcd: &Etcd, service: &str, backends: &[Echo]) -> Vec<Registration> {
    let reg = EtcdRegistrar::builder([etcd.endpoint()])
        .ttl(TTL)
        .backoff(Duration::from_millis(100), Duration::from_secs(1))
        .build_registrar()
        .expect("valid options");
    let mut out = Vec::new();
    for (i, b) in backends.iter().enumerate() {
        let ep = Endpoint::new(b.addr).with_id(format!("i{i}"));
        out.push(reg.register(service, ep).await.expect("register"));
    }
    out
}

/// Every key of `service` exists and is attached to a lease etcd considers alive.
async fn all_registered(etcd: &Etcd, service: &str, n: usize) -> bool {
    let Ok(mut c) = etcd.client().await else { return false };
    let Ok(Ok(r)) = tokio::time::timeout(
        Duration::from_secs(5),
        c.get(format!("/lb/services/{service}/"), Some(etcd_client::GetOptions::new().with_prefix())),
    )
    .await
    else {
        return false;
    };
    if r.kvs().len() != n {
        return false;
    }
    for kv in r.kvs() {
        match c.lease_time_to_live(kv.lease(), None).await {
            Ok(t) if t.ttl() > 0 => {}
            _ => return false,
        }
    }
    true
}

/// Sends echo requests through the pool until stopped; counts successes and failures.
struct Load {
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(pool: Pool<std::net::SocketAddr>) -> Load {
        let (ok, failed, stop) = (Arc::<AtomicUsize>::default(), Arc::<AtomicUsize>::default(), Arc::<AtomicBool>::default());
        let (o, f, s) = (Arc::clone(&ok), Arc::clone(&failed), Arc::clone(&stop));
        let task = tokio::spawn(async move {
            // Bounded: stops when told, or after 5 minutes at the latest.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
            while !s.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
                let picked = pool.pick(&PickContext::default());
                let result = match picked {
                    Some(p) => echo_request(p.connection).await.map_err(|e| e.to_string()),
                    None => Err("no endpoint".to_string()),
                };
                match result {
                    Ok(()) => o.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        eprintln!("request failed: {e}");
                        f.fetch_add(1, Ordering::SeqCst)
                    }
                };
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        Load { ok, failed, stop, task }
    }

    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        (self.ok.load(Ordering::SeqCst), self.failed.load(Ordering::SeqCst))
    }
}

fn pool_over(etcd: &Etcd, service: &str) -> Pool<std::net::SocketAddr> {
    let target = Target::parse(&format!("etcd://{}/{service}", etcd.endpoint())).expect("valid target");
    let discover = lb_registry::resolve(&target).expect("resolves");
    Pool::spawn(discover, TestConnector::new().over_tcp(), RoundRobin::new(), PoolConfig::new(service))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_longer_than_ttl_under_load_fails_no_request_and_everyone_registers_again() {
    support::init_tracing();
    let mut etcd = Etcd::start().await;
    let backends = [Echo::start().await, Echo::start().await, Echo::start().await];
    let _regs = register_all(&etcd, "outage", &backends).await;
    let pool = pool_over(&etcd, "outage");
    assert!(pool.ready_timeout(Duration::from_secs(10)).await, "pool ready");
    eventually("three endpoints connected", Duration::from_secs(10), || async { pool.snapshot().healthy() == 3 }).await;
    let load = Load::start(pool.clone());

    etcd.kill();
    // The client notices the outage (its discovery reports an error)...
    eventually("the client notices etcd is gone", Duration::from_secs(30), || async { pool.snapshot().discovery_error().is_some() }).await;
    // ... which lasts twice the TTL, so every lease would have expired without heartbeats.
    tokio::time::sleep(TTL * 2).await;
    let snapshot = pool.snapshot();
    assert!(snapshot.discovery_error().is_some(), "still no answer from etcd, and the client knows it");
    assert_eq!(snapshot.healthy(), 3, "the last known set is kept while etcd is down");
    drop(snapshot);
    etcd.restart().await;

    let took = eventually("all instances registered again", Duration::from_secs(30), || all_registered(&etcd, "outage", 3)).await;
    // Heartbeats, not just restored leases: etcd restores leases with a fresh TTL at restart, so
    // keys that stay on live leases for two TTLs prove the registrars are heartbeating again.
    stays_registered(&etcd, "/lb/services/outage/", 3, TTL * 2).await.expect("registrars heartbeat again");
    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "{failed} failed requests during the outage ({ok} succeeded)");
    assert!(ok > 100, "the load ran ({ok} requests)");
    assert_eq!(pool.snapshot().healthy(), 3);
    eprintln!("re-registered {took:?} after etcd came back; {ok} requests, 0 failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restarted_with_empty_data_gets_every_instance_back_within_seconds() {
    support::init_tracing();
    let mut etcd = Etcd::start().await;
    let backends = [Echo::start().await, Echo::start().await, Echo::start().await];
    let _regs = register_all(&etcd, "amnesia", &backends).await;
    let w = SetWatcher::new(
        lb_registry::resolve(&Target::parse(&format!("etcd://{}/amnesia", etcd.endpoint())).expect("valid"))
            .expect("resolves"),
    );
    w.wait("three discovered", Duration::from_secs(10), |s| s.len() == 3).await;

    let old_leases: Vec<i64> = lease_ttls(&etcd, "/lb/services/amnesia/").await.expect("etcd answers").into_iter().map(|(lease, _)| lease).collect();
    assert_eq!(old_leases.len(), 3, "{old_leases:?}");
    etcd.restart_empty().await;
    // The registrars may be back already (they notice within a heartbeat), so counting keys says
    // nothing; that the restart lost the data shows in the leases: none of the old ones exists.
    let mut client = etcd.client().await.expect("etcd answers after the restart");
    for lease in old_leases {
        match client.lease_time_to_live(lease, None).await {
            Ok(t) => assert_eq!(t.ttl(), -1, "lease {lease} survived the restart"),
            Err(e) => assert!(e.to_string().contains("not found"), "lease {lease}: {e}"),
        }
    }
    let took = eventually("all instances back in the emptied etcd", Duration::from_secs(30), || {
        all_registered(&etcd, "amnesia", 3)
    })
    .await;
    // Registrars notice within a heartbeat (TTL / 3) and back off up to 1 s: five times that.
    assert!(took <= Duration::from_secs(10), "instances re-registered {took:?} after etcd came back empty");
    stays_registered(&etcd, "/lb/services/amnesia/", 3, TTL * 2).await.expect("and they stay registered");
    assert_eq!(w.ids(), vec!["i0", "i1", "i2"], "discovery never lost them");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_started_while_etcd_is_down_serves_from_the_snapshot() {
    support::init_tracing();
    let mut etcd = Etcd::start().await;
    let backends = [Echo::start().await, Echo::start().await];
    let _regs = register_all(&etcd, "cold", &backends).await;
    let dir = TempDir::new("snapshot");
    let path = dir.path().join("cold.json");

    // A first client run writes the snapshot (the documented URI parameter).
    {
        let target = Target::parse(&format!("etcd://{}/cold?snapshot={}", etcd.endpoint(), path.display())).expect("valid");
        let w = SetWatcher::new(lb_registry::resolve(&target).expect("resolves"));
        w.wait("two discovered", Duration::from_secs(10), |s| s.len() == 2).await;
        let p = path.clone();
        eventually("snapshot written", Duration::from_secs(10), || {
            let p = p.clone();
            async move {
                std::fs::read(&p)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .and_then(|v| v["endpoints"].as_array().map(|a| a.len() == 2))
                    .unwrap_or(false)
            }
        })
        .await;
    }

    etcd.kill();
    // The same cache options in code: around any resolver, here with its handle kept.
    let resolver = EtcdResolver::builder([etcd.endpoint()]).build_resolver().expect("valid");
    let cached = Cache::builder()
        .name(format!("etcd://{}/cold", etcd.endpoint()))
        .snapshot(&path)
        .resolve(resolver, "cold");
    let handle = cached.handle();
    let pool = Pool::spawn(cached.boxed(), TestConnector::new().over_tcp(), RoundRobin::new(), PoolConfig::new("cold"));
    assert!(pool.ready_timeout(Duration::from_secs(5)).await, "served from the snapshot while etcd is down");
    eventually("both endpoints connected", Duration::from_secs(10), || async { pool.snapshot().healthy() == 2 }).await;
    for _ in 0..20 {
        let p = pool.pick(&PickContext::default()).expect("an endpoint from the snapshot");
        echo_request(p.connection).await.expect("the snapshot's endpoints serve");
    }
    assert!(handle.is_from_snapshot());
    assert!(handle.staleness().expect("has data") > Duration::ZERO, "staleness is exposed");

    etcd.restart().await;
    eventually("fresh data once etcd is back", Duration::from_secs(20), || async { handle.is_fresh() && !handle.is_from_snapshot() })
        .await;
    assert_eq!(pool.snapshot().healthy(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_etcd_member_in_use_fails_over_without_losing_anything() {
    support::init_tracing();
    let mut cluster = EtcdCluster::start(3).await;
    let target = Target::parse(&format!("etcd://{}/failover?ttl=3s", cluster.endpoints())).expect("valid");
    let (a, b) = (Echo::start().await, Echo::start().await);
    let _ra = lb_registry::register(&target, Endpoint::new(a.addr).with_id("a")).await.expect("register a");
    let pool = Pool::spawn(lb_registry::resolve(&target).expect("resolves"), TestConnector::new().over_tcp(), RoundRobin::new(), PoolConfig::new("failover"));
    assert!(pool.ready_timeout(Duration::from_secs(10)).await, "pool ready");
    let load = Load::start(pool.clone());

    // Clients start with the first member listed; it goes away for good.
    cluster.members[0].kill();
    let survivor = &cluster.members[1];
    // A change made after the failure reaches the client through another member's watch.
    let _rb = lb_registry::register(&target, Endpoint::new(b.addr).with_id("b")).await.expect("register b");
    eventually("the new instance discovered after failover", Duration::from_secs(20), || async { pool.snapshot().healthy() == 2 }).await;
    // The first registration outlives two TTLs without its original member: heartbeats moved too.
    stays_registered(survivor, "/lb/services/failover/", 2, TTL * 2).await.expect("both registrations alive on the surviving members");
    let (ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "{failed} failed requests across the failover ({ok} succeeded)");
    assert_eq!(pool.snapshot().healthy(), 2);
}
