//! Consul registration and discovery against the in-repo Consul double (`lb-doubles`), which serves
//! Consul's HTTP API on 127.0.0.1 with its blocking-query and TTL-check semantics. It is a double:
//! no Consul server can be installed where these tests run.
//!
//! Clients here are real `lb_core::Pool`s over the Consul resolver, with lb-core's `TestConnector`,
//! whose "connection" is the endpoint's address: picks are observable without servers, and what is
//! asserted is what a caller's picker would choose.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use lb_core::policy::RoundRobin;
use lb_core::test_util::TestConnector;
use lb_core::{Endpoint, Locality, PickContext, Pool, PoolConfig};
use lb_doubles::consul::{CheckStatus, ConsulDouble, DoubleConfig, Fault};
use lb_registry::cache::Cache;
use lb_registry::consul::{ConsulRegistrar, ConsulResolver};
use lb_registry::{Registrar as _, Registration, Resolver as _, Target};

const TTL: Duration = Duration::from_millis(300);
const DEREGISTER_AFTER: Duration = Duration::from_secs(2);
/// Generous: the machines running these tests are shared and slow.
const PATIENCE: Duration = Duration::from_secs(15);

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn registrar(double: &ConsulDouble) -> ConsulRegistrar {
    ConsulRegistrar::builder()
        .address(double.authority())
        .ttl(TTL)
        .deregister_critical_after(DEREGISTER_AFTER)
        .build()
        .expect("valid registrar options")
}

fn resolver(double: &ConsulDouble) -> ConsulResolver {
    ConsulResolver::builder()
        .address(double.authority())
        .wait(Duration::from_secs(3))
        .min_interval(Duration::from_millis(20))
        .max_backoff(Duration::from_millis(300))
        .build()
        .expect("valid resolver options")
}

/// A client as `lb_registry::resolve` builds one: the resolver behind the default cache.
fn client(double: &ConsulDouble, service: &str) -> Pool<SocketAddr> {
    let discover = Cache::builder().resolve(resolver(double), service).boxed();
    Pool::spawn(discover, TestConnector::new(), RoundRobin::new(), PoolConfig::new(service))
}

/// The ports a picker chooses over enough picks to see every healthy endpoint (round robin).
fn picked(pool: &Pool<SocketAddr>) -> BTreeSet<u16> {
    (0..64).filter_map(|_| pool.pick(&PickContext::default())).map(|p| p.connection.port()).collect()
}

fn ports(list: &[u16]) -> BTreeSet<u16> {
    list.iter().copied().collect()
}

async fn eventually<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn picks_exactly(pool: &Pool<SocketAddr>, want: &[u16]) {
    let want = ports(want);
    eventually(&format!("the picker chooses exactly {want:?}"), || {
        let ok = picked(pool) == want;
        async move { ok }
    })
    .await;
}

/// Updates a cache named `name` refused for emptying its set, as counted in the process's metrics:
/// proof that a client saw an empty answer, before asserting it kept its set.
fn refused_empty(name: &str) -> u64 {
    lb_core::test_recorder::recorded().counter(lb_registry::cache::EMPTY_REFUSED, &[("target", name)])
}

async fn register(r: &ConsulRegistrar, service: &str, port: u16) -> Registration {
    r.register(service, Endpoint::new(addr(port))).await.expect("register with the consul double")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_the_check_passing() {
    let double = ConsulDouble::start().await.expect("start the consul double");
    // A TTL of a second, passed every third of it: a heartbeat may be late by two thirds of a
    // second on a loaded machine before the check expires.
    let ttl = Duration::from_secs(1);
    let r = ConsulRegistrar::builder().address(double.authority()).ttl(ttl).build().expect("valid registrar options");
    let reg = register(&r, "hb", 7001).await;
    // Thirty passes span ten TTLs: without them the check would have expired nine times over.
    eventually("thirty TTL passes", || {
        let passes = double.services().first().map_or(0, |s| s.passes);
        async move { passes >= 30 }
    })
    .await;
    let svc = double.services().into_iter().next().expect("still registered");
    assert_eq!(svc.status, CheckStatus::Passing);
    assert_eq!(double.ttl_expirations(), 0, "no TTL ran out between passes");
    assert_eq!(double.registrations(), 1, "passes found their check: no re-registration");
    let pool = client(&double, "hb");
    picks_exactly(&pool, &[7001]).await;

    reg.deregister().await;
    assert!(double.services().is_empty(), "graceful stop deregisters at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_heartbeats_turn_critical_and_clients_stop_picking_the_instance() {
    let double = ConsulDouble::start().await.expect("start the consul double");
    let r = registrar(&double);
    let _alive = register(&r, "crash", 7101).await;

    // The instance that will crash runs in its own runtime: shutting that runtime down kills its
    // heartbeat task without the graceful deregistration, like a process killed with SIGKILL.
    let authority = double.authority();
    let (tx, rx) = std::sync::mpsc::channel();
    let (crash, crash_rx) = tokio::sync::oneshot::channel::<()>();
    let crashing = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let r = ConsulRegistrar::builder()
                .address(authority)
                .ttl(TTL)
                .deregister_critical_after(DEREGISTER_AFTER)
                .build()
                .expect("options");
            let reg = r.register("crash", Endpoint::new(addr(7102))).await.expect("register");
            tx.send(()).expect("signal");
            std::mem::forget(reg);
            let _ = crash_rx.await;
        });
        rt.shutdown_background();
    });
    rx.recv().expect("the crashing instance registered");
    let pool = client(&double, "crash");
    picks_exactly(&pool, &[7101, 7102]).await;

    crash.send(()).expect("the crashing instance is waiting");
    crashing.join().expect("crashing thread");
    let crashed_at = tokio::time::Instant::now();
    picks_exactly(&pool, &[7101]).await;
    let gone_after = crashed_at.elapsed();
    let status = |id: &str| double.services().into_iter().find(|s| s.id.ends_with(id)).map(|s| s.status);
    assert_eq!(status("7102"), Some(CheckStatus::Critical), "critical, not yet reaped");
    assert!(gone_after < TTL * 3 + Duration::from_secs(2), "out of the picker {gone_after:?} after its last heartbeat");

    eventually("the double reaps the instance after DeregisterCriticalServiceAfter", || {
        let reaped = status("7102").is_none();
        async move { reaped }
    })
    .await;
    assert_eq!(status("7101"), Some(CheckStatus::Passing));
    assert_eq!(picked(&pool), ports(&[7101]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_with_a_reset_index_gets_everything_back() {
    for unknown_check_status in [404, 500] {
        let double = ConsulDouble::start().await.expect("start the consul double");
        double.set_unknown_check_status(unknown_check_status);
        let r = registrar(&double);
        let _a = register(&r, "restart", 7201).await;
        let _b = register(&r, "restart", 7202).await;
        let pool = client(&double, "restart");
        picks_exactly(&pool, &[7201, 7202]).await;
        // Push the index well above where the restarted double starts again.
        let bump = register(&r, "other", 7299).await;
        bump.deregister().await;
        let before = double.index();
        let registrations = double.registrations();

        // The agent comes back empty and, for a while, cannot take registrations.
        let refused = refused_empty("restart");
        double.set_agent_down(true);
        double.restart_with_reset_index();
        assert!(double.index() < before, "the index went backwards");
        assert!(double.services().is_empty());
        // Meanwhile the client keeps serving what it had: the empty answer, once it came, was
        // refused (the cache counted it), and the set stands.
        eventually("the client hears the empty answer and refuses it", || {
            let now = refused_empty("restart");
            async move { now > refused }
        })
        .await;
        assert_eq!(picked(&pool), ports(&[7201, 7202]));
        double.set_agent_down(false);

        eventually("both instances register again", || {
            let n = double.services().len();
            async move { n == 2 }
        })
        .await;
        assert!(double.registrations() >= registrations + 2);
        picks_exactly(&pool, &[7201, 7202]).await;

        // The client follows the new, lower index: a new instance shows up at once, not after
        // the blocking query on the old index would have timed out.
        let _c = register(&r, "restart", 7203).await;
        picks_exactly(&pool, &[7201, 7202, 7203]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_garbage_never_wipe_the_set() {
    let double = ConsulDouble::start().await.expect("start the consul double");
    let r = registrar(&double);
    let _a = register(&r, "faults", 7301).await;
    let _b = register(&r, "faults", 7302).await;
    let pool = client(&double, "faults");
    picks_exactly(&pool, &[7301, 7302]).await;

    for fault in [Fault::ServerError, Fault::Garbage, Fault::Empty, Fault::MalformedEntries] {
        let queries = double.health_queries();
        double.set_fault(fault.clone());
        // Several faulty answers: the client asks again only after handling the previous one, so
        // at least two were handled. (That it does not ask in a tight loop is the paused-clock
        // unit tests' job: consul::watch::tests.)
        eventually(&format!("{fault:?}: the client keeps asking"), || {
            let served = double.health_queries() - queries;
            async move { served >= 3 }
        })
        .await;
        let snapshot = pool.snapshot();
        assert!(snapshot.is_initialized());
        assert_eq!(snapshot.healthy(), 2, "{fault:?} wiped endpoints");
        assert_eq!(picked(&pool), ports(&[7301, 7302]), "{fault:?}");
        drop(snapshot);
        double.set_fault(Fault::None);
    }
    // And discovery still works afterwards.
    let _c = register(&r, "faults", 7303).await;
    picks_exactly(&pool, &[7301, 7302, 7303]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_picker_follows_registrations() {
    let double = ConsulDouble::start().await.expect("start the consul double");
    // Through the target-URI entry points, as the CLI and the C ABI use them.
    let target = Target::parse(&format!("consul://{}/follow?wait=3s", double.authority())).expect("target");
    let pool = Pool::spawn(lb_registry::resolve(&target).expect("resolve"), TestConnector::new(), RoundRobin::new(), PoolConfig::new("follow"));
    assert!(pool.initialized_timeout(PATIENCE).await, "an empty service is a known, empty set");
    assert_eq!(pool.snapshot().healthy(), 0, "nothing registered yet");

    let reg_target = Target::parse(&format!("consul://{}/follow?ttl=300ms&deregister_after=2s", double.authority())).expect("target");
    let mut regs = Vec::new();
    let mut want = Vec::new();
    for port in [7401, 7402, 7403] {
        regs.push(lb_registry::register(&reg_target, Endpoint::new(addr(port))).await.expect("register"));
        want.push(port);
        picks_exactly(&pool, &want).await;
    }
    // Round robin over what discovery delivered: an even split.
    let mut counts = std::collections::BTreeMap::<u16, usize>::new();
    for _ in 0..300 {
        let p = pool.pick(&PickContext::default()).expect("an endpoint");
        *counts.entry(p.connection.port()).or_default() += 1;
    }
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![100, 100, 100]);

    let middle = regs.remove(1);
    middle.deregister().await;
    picks_exactly(&pool, &[7401, 7403]).await;
    let cache_name = format!("consul://{}/follow", double.authority());
    let refused = refused_empty(&cache_name);
    drop(regs);
    // Dropping a registration deregisters in the background; the last one is refused as empty.
    eventually("the double has no instances left", || {
        let n = double.services().len();
        async move { n == 0 }
    })
    .await;
    // The client got the empty answer and refused it; the last answer before it may have held
    // one or both of them.
    eventually("the client refuses the empty answer", || {
        let now = refused_empty(&cache_name);
        async move { now > refused }
    })
    .await;
    let left = picked(&pool);
    assert!(!left.is_empty() && left.is_subset(&ports(&[7401, 7403])), "an empty answer does not wipe the set: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_locality_token_and_namespace_travel_through_consul() {
    let double = ConsulDouble::start_with(DoubleConfig {
        acl_token: Some("s3cret".into()),
        ..DoubleConfig::default()
    })
    .await
    .expect("start the consul double");

    let no_token = registrar(&double).register("meta", Endpoint::new(addr(7501))).await;
    let err = no_token.expect_err("the double requires the token");
    assert!(err.is_registry(), "{err}");

    let r = ConsulRegistrar::builder()
        .address(double.authority())
        .token("s3cret")
        .namespace("team-a")
        .tag("v2")
        .ttl(TTL)
        .build()
        .expect("options");
    let ep = Endpoint::new(addr(7501))
        .with_id("meta-1")
        .with_weight(0)
        .with_locality(Locality::unknown().with_zone("eu-1a").with_region("eu-1").with_node("host-7"))
        .with_metadata("version", "1.2.3");
    let _reg = r.register("meta", ep).await.expect("register with the token");
    let svc = double.services().into_iter().next().expect("registered");
    assert_eq!(double.last_token().as_deref(), Some("s3cret"));
    assert_eq!((svc.id.as_str(), svc.namespace.as_str(), svc.tags.clone()), ("meta-1", "team-a", vec!["v2".to_string()]));
    assert_eq!(svc.weights, (1, 1), "Consul rejects a zero passing weight");
    let meta = |k: &str| svc.meta.get(k).cloned();
    assert_eq!(meta("lb-weight").as_deref(), Some("0"));
    assert_eq!((meta("lb-zone"), meta("lb-region"), meta("lb-node")), (Some("eu-1a".into()), Some("eu-1".into()), Some("host-7".into())));
    assert_eq!(meta("version").as_deref(), Some("1.2.3"));

    let mut discover = ConsulResolver::builder()
        .address(double.authority())
        .token("s3cret")
        .namespace("team-a")
        .tag("v2")
        .build()
        .expect("options")
        .resolve("meta");
    use futures_util::StreamExt as _;
    let first = tokio::time::timeout(PATIENCE, discover.next()).await.expect("an answer").expect("open").expect("ok");
    let lb_core::Update::Reset(list) = first else { panic!("expected a full set first, got {first:?}") };
    assert_eq!(list.len(), 1);
    let got = &list[0];
    assert_eq!((got.addr(), got.weight()), (addr(7501), 0));
    assert_eq!(got.locality(), &Locality::unknown().with_zone("eu-1a").with_region("eu-1").with_node("host-7"));
    assert_eq!(got.metadata().get("version").map(String::as_str), Some("1.2.3"));

    // Other namespaces and tags see nothing: a known, empty set.
    let other_ns = ConsulResolver::builder().address(double.authority()).token("s3cret").build().expect("options");
    let first = tokio::time::timeout(PATIENCE, other_ns.resolve("meta").next()).await.expect("answer").expect("open");
    assert_eq!(first.expect("ok"), lb_core::Update::Reset(vec![]));
}

/// Consul filters reads by ACLs instead of refusing them: 200, an empty list, and
/// `X-Consul-Results-Filtered-By-ACLs`. lb reports that as an error naming the token, never as an
/// empty set, and a request that finds no endpoint says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_filtered_answer_is_an_error_naming_the_token_never_an_empty_set() {
    use futures_util::StreamExt as _;
    lb_core::test_recorder::install();
    let double = ConsulDouble::start_with(DoubleConfig {
        acl_token: Some("management-token".into()),
        unprivileged_tokens: vec!["weak-token-3f9a".into()],
        ..DoubleConfig::default()
    })
    .await
    .expect("start the consul double");
    let admin = ConsulRegistrar::builder().address(double.authority()).token("management-token").ttl(TTL).build().expect("options");
    let _reg = register(&admin, "acl", 7801).await;

    // A write without service:write is refused (403), and registration says so.
    let weak = ConsulRegistrar::builder().address(double.authority()).token("weak-token-3f9a").ttl(TTL).build().expect("options");
    let err = weak.register("acl", Endpoint::new(addr(7802))).await.expect_err("no service:write");
    let chain = std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source()).map(ToString::to_string).collect::<Vec<_>>().join(": ");
    assert!(err.is_registry() && chain.contains("403") && chain.contains("Permission denied"), "{chain}");

    // A read it may not see: an error naming the token (its last four characters and where it came
    // from, never the secret), not the empty list Consul sent.
    let before = lb_core::test_recorder::recorded().counter("lb_registry_auth_errors_total", &[("registry", "consul"), ("reason", "acl_filtered")]);
    let filtered = ConsulResolver::builder().address(double.authority()).token("weak-token-3f9a").build().expect("options");
    let first = tokio::time::timeout(PATIENCE, filtered.resolve("acl").next()).await.expect("answer").expect("open");
    let message = first.expect_err("a filtered answer is not a set").to_string();
    assert!(message.contains("…3f9a (from the builder's token option)") && message.contains("service:read"), "{message}");
    assert!(!message.contains("weak-token"), "the secret stays out of messages: {message}");
    assert!(lb_core::test_recorder::recorded().counter("lb_registry_auth_errors_total", &[("registry", "consul"), ("reason", "acl_filtered")]) > before);

    // Without a token the answer is just empty (Consul hides the header from the anonymous token);
    // the agent's default policy is deny, so at cold start that is reported the same way.
    let tokenless = ConsulResolver::builder().address(double.authority()).build().expect("options");
    let first = tokio::time::timeout(PATIENCE, tokenless.resolve("acl").next()).await.expect("answer").expect("open");
    let message = first.expect_err("nothing visible without a token").to_string();
    assert!(message.contains("without an ACL token") && message.contains("default ACL policy is deny"), "{message}");

    // An unknown secret is refused outright, reads included.
    let unknown = ConsulResolver::builder().address(double.authority()).token("no-such-token").build().expect("options");
    let first = tokio::time::timeout(PATIENCE, unknown.resolve("acl").next()).await.expect("answer").expect("open");
    let message = first.expect_err("ACL not found").to_string();
    assert!(message.contains("403") && message.contains("ACL not found"), "{message}");

    // End to end: a client whose token may not read the service fails its requests with the cause.
    let discover = Cache::builder().resolve(filtered, "acl").boxed();
    let pool = Pool::spawn(discover, TestConnector::new(), RoundRobin::new(), PoolConfig::new("consul-acl"));
    let wait = lb_core::balance::Wait { timeout: Duration::from_millis(50), wait_for_ready: false };
    eventually("the pool holds the ACL error", || {
        let seen = pool.snapshot().discovery_error().is_some();
        async move { seen }
    })
    .await;
    let err = pool.pick_or_wait(PickContext::default(), wait).await.expect_err("nothing to pick");
    let message = err.to_string();
    assert!(message.contains("discovery error: consul filtered the health answer for `acl` by ACLs"), "{message}");
    assert!(message.contains("…3f9a"), "{message}");
    assert!(!pool.is_initialized(), "the filtered empty list was never applied as a set");

    // With a token that may read it, the same service is there.
    let good = Pool::spawn(
        ConsulResolver::builder().address(double.authority()).token("management-token").build().expect("options").resolve("acl"),
        TestConnector::new(),
        RoundRobin::new(),
        PoolConfig::new("consul-acl-ok"),
    );
    picks_exactly(&good, &[7801]).await;
}

/// A token that could read the service loses its policy while the client runs (an operator edits
/// it): Consul filters the next answer to nothing. The client keeps the set it had — with a cache
/// that applies empty sets, so nothing but discovery's own rule keeps it — says why (the pool's
/// discovery error names the token, the auth counter moves), and sees the service again, new
/// instances included, once the policy is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_loses_its_read_policy_keeps_the_last_set_and_says_why() {
    lb_core::test_recorder::install();
    let double = ConsulDouble::start_with(DoubleConfig {
        acl_token: Some("management-token".into()),
        reader_tokens: vec!["reader-token-77c1".into()],
        ..DoubleConfig::default()
    })
    .await
    .expect("start the consul double");
    let admin = ConsulRegistrar::builder().address(double.authority()).token("management-token").ttl(TTL).build().expect("options");
    let _a = register(&admin, "revoked", 7811).await;
    let _b = register(&admin, "revoked", 7812).await;

    // A reader may read, not write.
    let reader = ConsulRegistrar::builder().address(double.authority()).token("reader-token-77c1").ttl(TTL).build().expect("options");
    let err = reader.register("revoked", Endpoint::new(addr(7819))).await.expect_err("a read-only token");
    assert!(err.is_registry(), "{err}");

    let resolver = ConsulResolver::builder()
        .address(double.authority())
        .token("reader-token-77c1")
        .min_interval(Duration::from_millis(20))
        .max_backoff(Duration::from_millis(300))
        .build()
        .expect("options");
    // allow_empty: the cache would apply an empty set, so only discovery itself keeps the set.
    let discover = Cache::builder().allow_empty(true).resolve(resolver, "revoked").boxed();
    let pool = Pool::spawn(discover, TestConnector::new(), RoundRobin::new(), PoolConfig::new("consul-revoked"));
    picks_exactly(&pool, &[7811, 7812]).await;
    let denied = || lb_core::test_recorder::recorded().counter("lb_registry_auth_errors_total", &[("registry", "consul"), ("reason", "acl_filtered")]);
    let before = denied();

    // The policy goes; a change to the service wakes the client's held query, which answers with
    // the privileges it arrived with (the new instance), and the next query is filtered.
    assert!(double.detach_read_policy("reader-token-77c1"));
    let _c = register(&admin, "revoked", 7813).await;
    let mut versions = pool.subscribe();
    tokio::time::timeout(PATIENCE, versions.wait_for(|_| pool.snapshot().discovery_error().is_some_and(|e| e.contains("…77c1"))))
        .await
        .expect("the pool hears that the answer was filtered")
        .expect("the pool runs");
    let message = pool.snapshot().discovery_error().cloned().expect("just seen");
    assert!(message.contains("X-Consul-Results-Filtered-By-ACLs") && message.contains("service:read"), "{message}");
    assert!(!message.contains("reader-token"), "the secret stays out of messages: {message}");
    assert!(denied() > before, "counted as an auth error");
    let kept = picked(&pool);
    assert!(kept == ports(&[7811, 7812]) || kept == ports(&[7811, 7812, 7813]), "the last set is kept, never emptied: {kept:?}");
    assert!(pool.snapshot().healthy() >= 2);

    // The policy comes back: the next answer (the query blocks until the service changes) shows
    // the service again.
    assert!(double.attach_read_policy("reader-token-77c1"));
    let _d = register(&admin, "revoked", 7814).await;
    picks_exactly(&pool, &[7811, 7812, 7813, 7814]).await;
    tokio::time::timeout(PATIENCE, versions.wait_for(|_| pool.snapshot().discovery_error().is_none()))
        .await
        .expect("a delivered set clears the error")
        .expect("the pool runs");
}

/// Consul-realistic durations on a paused clock: a 10 s TTL, the 1-minute minimum of
/// `DeregisterCriticalServiceAfter`, and an agent outage of several minutes. Registration never
/// gives up: the instance turns critical, is reaped, and registers again once the agent answers.
#[tokio::test(start_paused = true)]
async fn an_outage_longer_than_deregister_after_ends_in_a_new_registration() {
    let double = ConsulDouble::start().await.expect("start the consul double");
    let r = ConsulRegistrar::builder()
        .address(double.authority())
        .ttl(Duration::from_secs(10))
        .deregister_critical_after(Duration::from_secs(60))
        .build()
        .expect("options");
    let _reg = register(&r, "outage", 7601).await;
    let _other = register(&r, "outage", 7602).await;
    let pool = client(&double, "outage");
    picks_exactly(&pool, &[7601, 7602]).await;

    tokio::time::sleep(Duration::from_secs(300)).await;
    let svc = double.services();
    assert!(svc.iter().all(|s| s.status == CheckStatus::Passing && s.passes >= 80), "{svc:?}");
    assert_eq!(double.registrations(), 2);

    double.set_agent_down(true);
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(double.services().iter().all(|s| s.status == CheckStatus::Critical), "TTL expired without passes");
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(double.services().is_empty(), "reaped after DeregisterCriticalServiceAfter");
    // The client was told the set is empty and refused it.
    assert_eq!(picked(&pool), ports(&[7601, 7602]));

    double.set_agent_down(false);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let svc = double.services();
    assert_eq!(svc.len(), 2, "both registered again within one pass interval: {svc:?}");
    assert!(svc.iter().all(|s| s.status == CheckStatus::Passing));
    assert_eq!(double.registrations(), 4);
    picks_exactly(&pool, &[7601, 7602]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_to_the_next_agent_and_queries_the_given_datacenter() {
    let double = ConsulDouble::start().await.expect("start the consul double");
    let _reg = register(&registrar(&double), "dc", 7701).await;
    // Port 1 on loopback refuses connections: the first agent listed is down.
    let dead = "127.0.0.1:1".to_string();
    let build = |dc: &str| {
        ConsulResolver::builder()
            .address(dead.clone())
            .address(double.authority())
            .datacenter(dc)
            .min_interval(Duration::from_millis(20))
            .max_backoff(Duration::from_millis(200))
            .build()
            .expect("options")
    };
    let pool = Pool::spawn(build("dc1").resolve("dc"), TestConnector::new(), RoundRobin::new(), PoolConfig::new("dc"));
    picks_exactly(&pool, &[7701]).await;

    // Consul answers 500 "No path to datacenter" for an unknown one: an error, never an empty set.
    use futures_util::StreamExt as _;
    let mut other = build("mars").resolve("dc");
    let mut errors = 0;
    while errors < 2 {
        match tokio::time::timeout(PATIENCE, other.next()).await.expect("an answer").expect("open") {
            Err(e) if e.to_string().contains("No path to datacenter") => errors += 1,
            Err(_) => {} // the dead agent
            Ok(update) => panic!("an unknown datacenter produced {update:?}"),
        }
    }
}

/// `allow_empty=true` end to end: the last instance leaving empties the client's set (the default
/// refuses that), and a request then fails saying discovery lists nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_allow_empty_the_last_instance_leaving_empties_the_set() {
    let double = ConsulDouble::start().await.expect("start the consul double");
    let target = Target::parse(&format!("consul://{}/emptied?wait=3s&allow_empty=true", double.authority())).expect("target");
    let pool = Pool::spawn(lb_registry::resolve(&target).expect("resolve"), TestConnector::new(), RoundRobin::new(), PoolConfig::new("emptied"));
    let reg = register(&registrar(&double), "emptied", 8001).await;
    picks_exactly(&pool, &[8001]).await;

    reg.deregister().await;
    let mut published = pool.subscribe();
    tokio::time::timeout(PATIENCE, published.wait_for(|_| pool.snapshot().entries().is_empty()))
        .await
        .expect("the empty answer is applied")
        .expect("the pool runs");
    assert!(pool.snapshot().is_initialized() && pool.snapshot().discovery_error().is_none());
    let wait = lb_core::balance::Wait { timeout: Duration::from_millis(50), wait_for_ready: false };
    let err = pool.pick_or_wait(PickContext::default(), wait).await.expect_err("nothing left");
    assert!(err.to_string().contains("discovery lists no endpoint"), "{err}");

    // And the set fills again when an instance comes back.
    let _again = register(&registrar(&double), "emptied", 8002).await;
    picks_exactly(&pool, &[8002]).await;
}
