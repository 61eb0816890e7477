//! Kubernetes discovery end to end: the API server double → `KubernetesResolver` (kube-runtime's
//! watcher) → `lb_core::Pool` with real TCP connections to loopback backends.


mod kubernetes_support;


use kubernetes_support::*;
use lb_core::policy::RoundRobin;
use lb_core::PickContext;
use lb_doubles::kube::{endpoint, endpoint_slice, KubeDouble};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_appear_and_disappear_with_slice_changes() {
    let double = KubeDouble::start().await.expect("double");
    let b = Backends::start(3).await;
    let slice = |eps: &[usize]| {
        eps.iter()
            .fold(endpoint_slice("greeter-abc", "greeter").port(Some("grpc"), b.port), |s, &i| s.endpoint(endpoint(b.ip(i))))
    };
    double.apply(slice(&[0, 1]).build());
    let connector = tcp_connector();
    let pool = pool(&resolver(&double).build(), SERVICE, &connector, RoundRobin::new());
    wait_healthy(&pool, &[b.addr(0), b.addr(1)]).await;

    double.apply(slice(&[0, 1, 2]).build());
    wait_healthy(&pool, &[b.addr(0), b.addr(1), b.addr(2)]).await;

    // Backend 1 fails its readiness probe: it leaves the set without any request failing.
    double.apply(slice(&[0, 2]).endpoint(endpoint(b.ip(1)).not_ready()).build());
    wait_healthy(&pool, &[b.addr(0), b.addr(2)]).await;
    let n = picks(&pool, 100);
    assert_eq!((n.get(&b.addr(0)), n.get(&b.addr(2)), n.get(&b.addr(1))), (Some(&50), Some(&50), None), "{n:?}");

    // The service's last slice is deleted: no endpoints (a real, empty state, not an error).
    assert!(double.delete("default", "greeter-abc"));
    wait_healthy(&pool, &[]).await;
    assert!(pool.pick(&PickContext::default()).is_none());
    assert_eq!(double.list_requests(), 1, "watch events only, no relist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_slices_of_a_service_are_merged() {
    let double = KubeDouble::start().await.expect("double");
    let b = Backends::start(5).await;
    double.apply(
        endpoint_slice("greeter-a", "greeter")
            .port(Some("grpc"), b.port)
            .port(Some("metrics"), 9090)
            .endpoint(endpoint(b.ip(0)))
            .endpoint(endpoint(b.ip(1)))
            .build(),
    );
    double.apply(endpoint_slice("greeter-b", "greeter").port(Some("grpc"), b.port).endpoint(endpoint(b.ip(2))).build());
    // A slice without the `grpc` port contributes nothing to this service port.
    double.apply(endpoint_slice("greeter-c", "greeter").port(Some("metrics"), b.port).endpoint(endpoint(b.ip(3))).build());
    // Another service's slice, and the same service name in another namespace: not selected.
    double.apply(endpoint_slice("other-a", "other").port(Some("grpc"), b.port).endpoint(endpoint(b.ip(4))).build());
    double.apply(
        endpoint_slice("greeter-x", "greeter")
            .namespace("staging")
            .port(Some("grpc"), b.port)
            .endpoint(endpoint(b.ip(4)))
            .build(),
    );

    let connector = tcp_connector();
    let pool = pool(&resolver(&double).build(), SERVICE, &connector, RoundRobin::new());
    wait_healthy(&pool, &[b.addr(0), b.addr(1), b.addr(2)]).await;
    let n = picks(&pool, 300);
    assert_eq!(n.values().copied().collect::<Vec<_>>(), vec![100, 100, 100], "{n:?}");

    // Removing one slice removes only its endpoints.
    double.delete("default", "greeter-a");
    wait_healthy(&pool, &[b.addr(2)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_endpoints_serve_only_when_no_ready_one_is_left() {
    let double = KubeDouble::start().await.expect("double");
    let b = Backends::start(4).await;
    let base = || endpoint_slice("greeter-abc", "greeter").port(Some("grpc"), b.port);
    let gone = || endpoint(b.ip(3)).ready(Some(false)).serving(Some(false)).terminating(Some(true));
    double.apply(
        base()
            .endpoint(endpoint(b.ip(0)))
            .endpoint(endpoint(b.ip(1)).terminating_but_serving())
            .endpoint(gone())
            .build(),
    );
    let connector = tcp_connector();
    let pool = pool(&resolver(&double).build(), SERVICE, &connector, RoundRobin::new());
    wait_healthy(&pool, &[b.addr(0)]).await;
    assert_eq!(picks(&pool, 50).get(&b.addr(0)), Some(&50));

    // The last ready pod starts terminating too: the serving-but-terminating ones take the traffic
    // (Kubernetes' fallback) instead of failing every request. Not-serving ones never do.
    double.apply(
        base()
            .endpoint(endpoint(b.ip(0)).terminating_but_serving())
            .endpoint(endpoint(b.ip(1)).terminating_but_serving())
            .endpoint(gone())
            .build(),
    );
    wait_healthy(&pool, &[b.addr(0), b.addr(1)]).await;
    let n = picks(&pool, 100);
    assert_eq!((n.get(&b.addr(0)), n.get(&b.addr(1)), n.get(&b.addr(3))), (Some(&50), Some(&50), None), "{n:?}");

    // A replacement becomes ready: it alone gets new requests.
    double.apply(
        base()
            .endpoint(endpoint(b.ip(0)).terminating_but_serving())
            .endpoint(endpoint(b.ip(1)).terminating_but_serving())
            .endpoint(endpoint(b.ip(2)))
            .build(),
    );
    wait_healthy(&pool, &[b.addr(2)]).await;
    assert_eq!(picks(&pool, 50).get(&b.addr(2)), Some(&50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relist_after_410_keeps_healthy_endpoints_and_their_connections() {
    let double = KubeDouble::start().await.expect("double");
    let b = Backends::start(4).await;
    let slice = |eps: &[usize]| {
        eps.iter()
            .fold(endpoint_slice("greeter-abc", "greeter").port(Some("grpc"), b.port), |s, &i| s.endpoint(endpoint(b.ip(i))))
            .build()
    };
    double.apply(slice(&[0, 1, 2]));
    let connector = tcp_connector();
    let pool = pool(&resolver(&double).build(), SERVICE, &connector, RoundRobin::new());
    wait_healthy(&pool, &[b.addr(0), b.addr(1), b.addr(2)]).await;
    assert_eq!(double.list_requests(), 1);
    // The list's endpoints reach the pool before the watch that follows it is open.
    wait_until("the watch after the list", || double.open_watches() == 1).await;
    let watches = double.watch_requests();

    // The watch falls out of the API server's window: a 410 ERROR event mid-stream.
    double.expire_watches();
    wait_until("a relist and a new watch", || double.list_requests() == 2 && double.watch_requests() > watches).await;
    // A change after the relist arrives through the new watch, so once it shows, the relist's
    // Reset has been applied before it.
    double.apply(slice(&[0, 1, 2, 3]));
    wait_healthy(&pool, &[b.addr(0), b.addr(1), b.addr(2), b.addr(3)]).await;
    // The client side counts a connect before the backend's accept loop has run.
    wait_until("backend 3 accepting its connection", || b.accepts(3) == 1).await;
    for i in 0..4 {
        assert_eq!(connector.attempts(b.addr(i)), 1, "backend {i} was reconnected by the relist");
        assert_eq!(b.accepts(i), 1, "backend {i} accepted a second connection");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_outage_keeps_the_last_known_set_and_the_relist_applies_what_changed() {
    let double = KubeDouble::start().await.expect("double");
    let b = Backends::start(4).await;
    let slice = |eps: &[usize]| {
        eps.iter()
            .fold(endpoint_slice("greeter-abc", "greeter").port(Some("grpc"), b.port), |s, &i| s.endpoint(endpoint(b.ip(i))))
            .build()
    };
    double.apply(slice(&[0, 1, 2]));
    let connector = tcp_connector();
    let pool = pool(&resolver(&double).build(), SERVICE, &connector, RoundRobin::new());
    wait_healthy(&pool, &[b.addr(0), b.addr(1), b.addr(2)]).await;

    // The API server loses etcd: the watch ends and every retry gets a 503.
    double.set_unavailable(true);
    let watches = double.watch_requests();
    // The client tries again and hears the 503 (its discovery reports the error) ...
    wait_until("the client hears a 503", || double.unavailable_answers() > 0 && pool.snapshot().discovery_error().is_some()).await;
    assert_eq!(double.watch_requests(), watches, "503s are not counted as served watches");
    // ... and keeps the last known set.
    assert_eq!(healthy(&pool), vec![b.addr(0), b.addr(1), b.addr(2)], "the last known set stands");
    assert_eq!(picks(&pool, 30).len(), 3);

    // Meanwhile backend 1 goes away and 3 arrives, and the history is compacted past them.
    double.apply(slice(&[0, 2, 3]));
    double.compact();
    double.set_unavailable(false);
    // The watcher resumes from its old version, gets 410 (as an ERROR event), relists, and one
    // diffed reset removes 1 and adds 3.
    wait_healthy(&pool, &[b.addr(0), b.addr(2), b.addr(3)]).await;
    assert_eq!(double.list_requests(), 2, "exactly one relist");
    assert_eq!(double.expired_requests(), 1, "after one 410 for the compacted version");
    for i in [0, 2, 3] {
        assert_eq!(connector.attempts(b.addr(i)), 1, "backend {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_spare_a_relist_when_the_history_is_compacted() {
    let double = KubeDouble::start().await.expect("double");
    let b = Backends::start(2).await;
    double.apply(endpoint_slice("greeter-abc", "greeter").port(Some("grpc"), b.port).endpoint(endpoint(b.ip(0))).build());
    let connector = tcp_connector();
    let pool = pool(&resolver(&double).build(), SERVICE, &connector, RoundRobin::new());
    wait_healthy(&pool, &[b.addr(0)]).await;

    // Other services churn; our watcher sees none of it but gets a bookmark with the new version,
    // so when the history is compacted and its watch ends, it resumes without a relist. Closing a
    // watch ends its response after what was already queued on it, so the bookmark sent before the
    // close reaches the client first: no pause is needed between the two.
    wait_until("a live watch", || double.open_watches() == 1).await;
    let (expired, lists) = (double.expired_requests(), double.list_requests());
    for i in 0..20 {
        double.apply(endpoint_slice(&format!("other-{i}"), "other").port(Some("grpc"), 1).endpoint(endpoint("10.9.9.9")).build());
    }
    double.send_bookmarks();
    double.compact();
    double.close_watches();
    let watches = double.watch_requests();
    wait_until("a re-watch", || double.watch_requests() > watches).await;
    assert_eq!(double.expired_requests(), expired, "the re-watch started from the bookmark's version, not a compacted one");
    assert_eq!(double.list_requests(), lists, "no relist");
    double.apply(
        endpoint_slice("greeter-abc", "greeter")
            .port(Some("grpc"), b.port)
            .endpoint(endpoint(b.ip(0)))
            .endpoint(endpoint(b.ip(1)))
            .build(),
    );
    wait_healthy(&pool, &[b.addr(0), b.addr(1)]).await;
}

/// The double's chunked lists, read with kube's own client: what a watcher with a page size gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_double_serves_lists_in_chunks_with_a_consistent_version() {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Api, ListParams};

    let double = KubeDouble::start().await.expect("double");
    for i in 0..5 {
        double.apply(endpoint_slice(&format!("greeter-{i}"), "greeter").port(Some("grpc"), 80).build());
    }
    double.apply(endpoint_slice("other-0", "other").port(Some("grpc"), 80).build());
    let api: Api<EndpointSlice> = Api::namespaced(client(&double), "default");
    let params = ListParams::default().labels("kubernetes.io/service-name=greeter").limit(2);
    let (mut names, mut token, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let mut p = params.clone();
        p.continue_token = token.clone();
        let page = api.list(&p).await.expect("a page");
        pages += 1;
        assert_eq!(page.metadata.resource_version.as_deref(), Some("6"), "every page reports the first page's version");
        names.extend(page.items.into_iter().filter_map(|s| s.metadata.name));
        token = page.metadata.continue_.filter(|c| !c.is_empty());
        if token.is_none() {
            break;
        }
        // A write between pages does not disturb the listing.
        double.apply(endpoint_slice("other-1", "other").port(Some("grpc"), 80).build());
    }
    assert_eq!(pages, 3);
    assert_eq!(names, ["greeter-0", "greeter-1", "greeter-2", "greeter-3", "greeter-4"]);

    // A continue token older than the compaction is 410 Gone, as from the API server.
    let first = api.list(&params).await.expect("a page");
    double.apply(endpoint_slice("other-2", "other").port(Some("grpc"), 80).build());
    double.compact();
    let mut p = params.clone();
    p.continue_token = first.metadata.continue_;
    match api.list(&p).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 410, "{status:?}"),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_entries_and_events_are_skipped_without_losing_the_set() {
    lb_core::test_recorder::install();
    let double = KubeDouble::start().await.expect("double");
    let b = Backends::start(3).await;
    // One endpoint's address is not an IP: it is skipped (logged and counted), the others serve.
    double.apply(
        endpoint_slice("greeter-abc", "greeter")
            .port(Some("grpc"), b.port)
            .endpoint(endpoint(b.ip(0)))
            .endpoint(endpoint("not-an-ip"))
            .endpoint(endpoint(b.ip(1)))
            .build(),
    );
    // An FQDN slice of the same service contributes nothing usable.
    double.apply(
        endpoint_slice("greeter-fqdn", "greeter")
            .address_type("FQDN")
            .port(Some("grpc"), b.port)
            .endpoint(endpoint("greeter-0.example.com"))
            .build(),
    );
    let connector = tcp_connector();
    let pool = pool(&resolver(&double).build(), SERVICE, &connector, RoundRobin::new());
    wait_healthy(&pool, &[b.addr(0), b.addr(1)]).await;
    // Counted once per slice version: the address that is not an IP, and the FQDN slice's one.
    // (No other test of this binary lists an unusable address.)
    let invalid = lb_core::test_recorder::recorded().counter("lb_registry_invalid_entries_total", &[("registry", "kubernetes"), ("reason", "address")]);
    assert_eq!(invalid, 2);

    // A watch event that is not a valid EndpointSlice: an error on the stream, the set stands, and
    // the watch goes on.
    wait_until("the watch after the list", || double.open_watches() == 1).await;
    assert!(pool.snapshot().discovery_error().is_none(), "{:?}", pool.snapshot().discovery_error());
    double.inject_watch_line(
        r#"{"type":"MODIFIED","object":{"kind":"EndpointSlice","apiVersion":"discovery.k8s.io/v1","metadata":{"name":"greeter-abc","resourceVersion":"99"},"addressType":"IPv4","endpoints":"garbage"}}"#,
    );
    double.inject_watch_line("this is not JSON");
    // The client read them (its discovery reported the error) and kept its set.
    wait_until("the client reports the malformed events", || pool.snapshot().discovery_error().is_some()).await;
    assert_eq!(healthy(&pool), vec![b.addr(0), b.addr(1)]);
    double.apply(
        endpoint_slice("greeter-abc", "greeter")
            .port(Some("grpc"), b.port)
            .endpoint(endpoint(b.ip(0)))
            .endpoint(endpoint(b.ip(1)))
            .endpoint(endpoint(b.ip(2)))
            .build(),
    );
    wait_healthy(&pool, &[b.addr(0), b.addr(1), b.addr(2)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slice_relabelled_away_from_the_service_leaves_it() {
    let double = KubeDouble::start().await.expect("double");
    let b = Backends::start(2).await;
    double.apply(endpoint_slice("greeter-a", "greeter").port(Some("grpc"), b.port).endpoint(endpoint(b.ip(0))).build());
    double.apply(endpoint_slice("greeter-b", "greeter").port(Some("grpc"), b.port).endpoint(endpoint(b.ip(1))).build());
    let connector = tcp_connector();
    let pool = pool(&resolver(&double).build(), SERVICE, &connector, RoundRobin::new());
    wait_healthy(&pool, &[b.addr(0), b.addr(1)]).await;
    wait_until("the watch after the list", || double.open_watches() == 1).await;

    // The same object now belongs to another service: the API server tells this watch DELETED.
    double.apply(endpoint_slice("greeter-b", "other").port(Some("grpc"), b.port).endpoint(endpoint(b.ip(1))).build());
    wait_healthy(&pool, &[b.addr(0)]).await;
    // And back: ADDED.
    double.apply(endpoint_slice("greeter-b", "greeter").port(Some("grpc"), b.port).endpoint(endpoint(b.ip(1))).build());
    wait_healthy(&pool, &[b.addr(0), b.addr(1)]).await;
    assert_eq!(double.list_requests(), 1, "through watch events, not a relist");
}
