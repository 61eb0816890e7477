//! etcd registration and discovery against a real etcd: visibility, graceful and crash removal,
//! lost registrations, malformed values, and a watch resumed across a compaction.

mod support;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use lb_core::policy::RoundRobin;
use lb_core::test_util::TestConnector;
use lb_core::{Endpoint, Locality, Pool, PoolConfig};
use lb_registry::etcd::{EtcdRegistrar, EtcdResolver};
use lb_registry::{Registrar as _, Resolver as _, Target};
use support::{eventually, keys, Echo, Etcd, Proxy, SetWatcher};

const TTL: Duration = Duration::from_secs(3);

fn instance(id: &str, port: u16) -> Endpoint {
    Endpoint::new(([127, 0, 0, 1], port).into()).with_id(id)
}

fn registrar(etcd: &Etcd) -> EtcdRegistrar {
    EtcdRegistrar::builder([etcd.endpoint()])
        .ttl(TTL)
        .backoff(Duration::from_millis(100), Duration::from_secs(1))
        .build_registrar()
        .expect("valid options")
}

fn watcher(uri: &str) -> SetWatcher {
    let target = Target::parse(uri).expect("valid target");
    SetWatcher::new(lb_registry::resolve(&target).expect("etcd target resolves"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_is_visible_and_graceful_deregistration_is_immediate() {
    support::init_tracing();
    let etcd = Etcd::start().await;
    let reg = registrar(&etcd);
    let a = reg
        .register(
            "greeter",
            instance("a", 7001)
                .with_weight(30)
                .with_locality(Locality::unknown().with_zone("z1").with_region("r1").with_node("n1"))
                .with_metadata("version", "1.2"),
        )
        .await
        .expect("first registration");
    let b = reg.register("greeter", instance("b", 7002)).await.expect("second registration");

    // A plain etcd client sees the documented key and schema.
    let mut client = etcd.client().await.expect("connect");
    let got = client.get("/lb/services/greeter/a", None).await.expect("get");
    let kv = got.kvs().first().expect("key /lb/services/greeter/a exists");
    assert!(kv.lease() != 0, "the key is attached to a lease");
    let doc: serde_json::Value = serde_json::from_slice(kv.value()).expect("the value is JSON");
    assert_eq!(doc["v"], 1);
    assert_eq!(doc["addr"], "127.0.0.1:7001");
    assert_eq!(doc["zone"], "z1");
    assert_eq!(doc["metadata"]["version"], "1.2");

    // And so does the resolver, with every attribute.
    let w = watcher(&format!("etcd://{}/greeter", etcd.endpoint()));
    w.wait("both instances discovered", Duration::from_secs(10), |s| s.len() == 2).await;
    let ep = w.get("a").expect("a discovered");
    assert_eq!((ep.weight(), ep.locality().node.as_deref()), (30, Some("n1")));

    // Deregistration revokes the lease: the key is gone when `deregister` returns.
    a.deregister().await;
    assert_eq!(keys(&etcd, "/lb/services/greeter/").await, Ok(vec!["/lb/services/greeter/b".to_string()]));
    w.wait("a removed from discovery", Duration::from_secs(30), |s| s.len() == 1).await;
    drop(b);
}

/// Runs in a child process (spawned by `sigkilled_instance_disappears_within_ttl`): registers one
/// instance, prints REGISTERED, and waits to be killed (bounded at 120 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process for sigkilled_instance_disappears_within_ttl"]
async fn child_registrar() {
    let (Ok(endpoint), Ok(id)) = (std::env::var("LB_CHILD_ETCD"), std::env::var("LB_CHILD_ID")) else {
        panic!("child_registrar runs only as the child of sigkilled_instance_disappears_within_ttl");
    };
    let reg = EtcdRegistrar::builder([endpoint]).ttl(TTL).build_registrar().expect("valid options");
    let _r = reg.register("crashy", instance(&id, 7100)).await.expect("child registers");
    println!("REGISTERED");
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_instance_disappears_within_ttl() {
    support::init_tracing();
    let etcd = Etcd::start().await;
    let w = watcher(&format!("etcd://{}/crashy?allow_empty=true", etcd.endpoint()));
    let mut child = Command::new(std::env::current_exe().expect("own test binary"))
        .args(["--ignored", "--exact", "child_registrar", "--nocapture", "--test-threads=1"])
        .env("LB_CHILD_ETCD", etcd.endpoint())
        .env("LB_CHILD_ID", "victim")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child registrar");
    let stdout = child.stdout.take().expect("piped stdout");
    let registered = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout).lines().map_while(Result::ok).any(|l| l.contains("REGISTERED"))
    });
    let registered = tokio::time::timeout(Duration::from_secs(60), registered).await;
    if !matches!(registered, Ok(Ok(true))) {
        let _ = child.kill();
        panic!("the child never registered");
    }
    w.wait("child discovered", Duration::from_secs(10), |s| s.len() == 1).await;

    child.kill().expect("SIGKILL the child");
    let _ = child.wait();
    let took = w.wait("killed instance removed", Duration::from_secs(30), |s| s.is_empty()).await;
    eprintln!("SIGKILLed instance removed after {took:?} (TTL {TTL:?})");
    // The lease's expiry removes it: within a few TTLs (five, for a loaded machine), far sooner
    // than anything else would (the cache's 5-minute resync).
    assert!(took <= TTL * 5, "a SIGKILLed instance disappeared after {took:?} (TTL {TTL:?})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_registrations_come_back() {
    support::init_tracing();
    let etcd = Etcd::start().await;
    let _a = registrar(&etcd).register("svc", instance("a", 7201)).await.expect("register");
    let mut client = etcd.client().await.expect("connect");
    let key = "/lb/services/svc/a";
    let lease_of = |r: &etcd_client::GetResponse| r.kvs().first().map(|kv| kv.lease());

    // Someone deletes the key: it is put back (under the same, still valid lease).
    let before = lease_of(&client.get(key, None).await.expect("get")).expect("registered");
    client.delete(key, None).await.expect("delete");
    eventually("key put back after deletion", Duration::from_secs(30), || async {
        keys(&etcd, key).await.expect("etcd answers").len() == 1
    })
    .await;

    // Someone revokes the lease (the key goes with it): a new lease, the key again.
    client.lease_revoke(before).await.expect("revoke");
    let etcd = &etcd;
    let took = eventually("key back after lease revocation", Duration::from_secs(30), || async move {
        let Ok(mut c) = etcd.client().await else { return false };
        matches!(c.get(key, None).await.map(|r| lease_of(&r)), Ok(Some(l)) if l != before)
    })
    .await;
    assert!(took < Duration::from_secs(5), "re-registered after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_values_are_skipped_and_never_wipe_the_set() {
    support::init_tracing();
    let etcd = Etcd::start().await;
    let mut c = etcd.client().await.expect("connect");
    let p = "/lb/services/mixed/";
    c.put(format!("{p}good"), r#"{"v":1,"addr":"127.0.0.1:7301"}"#, None).await.expect("put");
    c.put(format!("{p}notjson"), "hello", None).await.expect("put");
    c.put(format!("{p}future"), r#"{"v":2,"endpoint":{"ip":"127.0.0.1"}}"#, None).await.expect("put");
    c.put(format!("{p}hostname"), r#"{"v":1,"addr":"db.internal:80"}"#, None).await.expect("put");
    let huge = format!(r#"{{"v":1,"addr":"127.0.0.1:7302","metadata":{{"pad":"{}"}}}}"#, "x".repeat(70 * 1024));
    c.put(format!("{p}huge"), huge.clone(), None).await.expect("put");

    let w = watcher(&format!("etcd://{}/mixed", etcd.endpoint()));
    w.wait("the valid entry listed", Duration::from_secs(10), |s| s.len() == 1).await;
    assert_eq!(w.ids(), vec!["good"]);

    // Through the watch: a new valid entry arrives; more garbage does not; garbage over a valid value
    // leaves the valid value in place.
    c.put(format!("{p}late"), r#"{"v":1,"addr":"127.0.0.1:7303"}"#, None).await.expect("put");
    c.put(format!("{p}late-bad"), "{", None).await.expect("put");
    c.put(format!("{p}good"), "garbage", None).await.expect("put");
    c.put(format!("{p}huge2"), huge, None).await.expect("put");
    c.put(format!("{p}marker"), r#"{"v":1,"addr":"127.0.0.1:7304"}"#, None).await.expect("put");
    w.wait("watch caught up", Duration::from_secs(10), |s| s.len() == 3).await;
    assert_eq!(w.ids(), vec!["good", "late", "marker"]);
    assert_eq!(w.get("good").expect("kept").addr().port(), 7301);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_across_a_compaction_and_keeps_unchanged_connections() {
    support::init_tracing();
    let etcd = Etcd::start().await;
    let proxy = Proxy::start(etcd.client_addr()).await;
    let (a, b, c) = (Echo::start().await, Echo::start().await, Echo::start().await);
    let mut client = etcd.client().await.expect("connect");
    let put = |id: &str, addr: std::net::SocketAddr| (format!("/lb/services/comp/{id}"), format!(r#"{{"v":1,"addr":"{addr}"}}"#));
    for (id, e) in [("a", &a), ("b", &b)] {
        let (k, v) = put(id, e.addr);
        client.put(k, v, None).await.expect("put");
    }

    let resolver = EtcdResolver::builder([proxy.endpoint()])
        .backoff(Duration::from_millis(100), Duration::from_millis(500))
        .build_resolver()
        .expect("valid options");
    let connector = TestConnector::new().over_tcp();
    let pool = Pool::spawn(resolver.resolve("comp"), connector.clone(), RoundRobin::new(), PoolConfig::new("comp"));
    assert!(pool.ready_timeout(Duration::from_secs(10)).await, "pool ready");
    eventually("both endpoints connected", Duration::from_secs(10), || async { pool.snapshot().healthy() == 2 }).await;

    // While the client is cut off: c joins, b leaves, more churn, and history is compacted away.
    proxy.cut();
    let (k, v) = put("c", c.addr);
    client.put(k, v, None).await.expect("put");
    client.delete("/lb/services/comp/b", None).await.expect("delete");
    for i in 0..20 {
        client.put("/unrelated/churn", format!("{i}"), None).await.expect("put");
    }
    let rev = client.get("/", None).await.expect("get").header().expect("header").revision();
    client.compact(rev, None).await.expect("compact");
    proxy.resume();

    let addrs = || {
        let mut v: Vec<_> = pool.snapshot().entries().iter().map(|e| e.endpoint.addr()).collect();
        v.sort();
        v
    };
    let mut want = vec![a.addr, c.addr];
    want.sort();
    eventually("relisted after compaction", Duration::from_secs(15), || {
        let got = addrs();
        let want = want.clone();
        async move { got == want }
    })
    .await;
    assert_eq!(connector.attempts(a.addr), 1, "the unchanged endpoint kept its connection: {connector:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_etcd_endpoints_tolerate_a_dead_one() {
    support::init_tracing();
    let etcd = Etcd::start().await;
    // Nothing listens on the first address.
    let hosts = format!("127.0.0.1:{},{}", support::free_port(), etcd.endpoint());
    let target = Target::parse(&format!("etcd://{hosts}/multi?ttl=3s")).expect("valid target");
    let _r = lb_registry::register(&target, instance("a", 7801)).await.expect("registers through the live endpoint");
    let w = SetWatcher::new(lb_registry::resolve(&target).expect("resolves"));
    w.wait("discovered through the live endpoint", Duration::from_secs(10), |s| s.len() == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_registration_deregisters_in_the_background() {
    support::init_tracing();
    let etcd = Etcd::start().await;
    let reg = EtcdRegistrar::builder([etcd.endpoint()])
        .ttl(Duration::from_secs(30))
        .build_registrar()
        .expect("valid options")
        .register("dropped", instance("a", 7901))
        .await
        .expect("register");
    assert_eq!(keys(&etcd, "/lb/services/dropped/").await.map(|k| k.len()), Ok(1));
    drop(reg);
    // Far sooner than the 30 s lease would expire: the lease was revoked.
    let took = eventually("key removed after drop", Duration::from_secs(20), || async {
        keys(&etcd, "/lb/services/dropped/").await.expect("etcd answers").is_empty()
    })
    .await;
    assert!(took < Duration::from_secs(5), "removed {took:?} after the drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refilled_store_that_caught_up_with_our_revision_is_relisted() {
    support::init_tracing();
    let mut etcd = Etcd::start().await;
    let proxy = Proxy::start(etcd.client_addr()).await;
    let value = |port: u16| format!(r#"{{"v":1,"addr":"127.0.0.1:{port}"}}"#);
    let p = "/lb/services/refill/";
    let mut c = etcd.client().await.expect("connect");
    for (id, port) in [("a", 8001), ("b", 8002), ("c", 8003)] {
        c.put(format!("{p}{id}"), value(port), None).await.expect("put");
    }
    let resolver = EtcdResolver::builder([proxy.endpoint()])
        .backoff(Duration::from_millis(100), Duration::from_millis(500))
        .build_resolver()
        .expect("valid options");
    let w = SetWatcher::new(resolver.resolve("refill"));
    w.wait("three listed", Duration::from_secs(10), |s| s.len() == 3).await;

    // While the client is cut off, etcd loses its data and is refilled past the client's revision:
    // neither the revision nor the raft term went backwards, but the history is another one.
    proxy.cut();
    etcd.restart_empty().await;
    let mut c = etcd.client().await.expect("connect");
    c.put("/unrelated", "x", None).await.expect("put");
    c.put(format!("{p}a"), value(8011), None).await.expect("put");
    c.put(format!("{p}b"), value(8002), None).await.expect("put");
    c.put(format!("{p}d"), value(8004), None).await.expect("put");
    proxy.resume();

    w.wait("the new history listed", Duration::from_secs(15), |s| {
        let ids: Vec<&str> = s.iter().map(|e| e.id().as_str()).collect();
        ids == ["a", "b", "d"] && s.get(&"a".into()).is_some_and(|e| e.addr().port() == 8011)
    })
    .await;
}
