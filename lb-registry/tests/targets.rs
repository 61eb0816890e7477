//! Target options through the public entry points: every scheme refuses a key it does not read,
//! naming it, whether the target is resolved or registered; nothing is contacted to find out.

use lb_core::Endpoint;
use lb_registry::{Error, Target};

fn resolve(uri: &str) -> Result<(), Error> {
    lb_registry::resolve(&Target::parse(uri).expect("parses as a URI")).map(drop)
}

fn assert_names(err: Error, key: &str, known: &str) {
    let message = err.to_string();
    assert!(err.is_invalid_target(), "{message}");
    assert!(message.contains(&format!("`{key}`")), "the key is named: {message}");
    assert!(message.contains(known), "the known keys are listed: {message}");
}

#[test]
fn unknown_options_are_refused_by_name_for_every_scheme() {
    let mut cases = vec![
        ("static:///127.0.0.1:1?snapshot=/tmp/x.json", "snapshot", "known: none"),
        ("static:///127.0.0.1:1?policy=rr", "policy", "known: none"),
        ("dns:///localhost:1?refesh=5s", "refesh", "allow_empty, family, refresh, resync, snapshot"),
    ];
    if cfg!(feature = "etcd") {
        cases.push(("etcd://127.0.0.1:1/greeter?snapshott=/tmp/x.json", "snapshott", "prefix, resync, snapshot, ttl"));
    }
    if cfg!(feature = "consul") {
        cases.push(("consul://127.0.0.1:1/greeter?refresh=5s", "refresh", "dc, deregister_after, ns, resync, snapshot, tag, ttl, wait"));
    }
    if cfg!(feature = "kubernetes") {
        cases.push(("kubernetes:///greeter.default:grpc?snapshott=/tmp/x.json", "snapshott", "hints, node, region, resync, snapshot, zone"));
    }
    for (uri, key, known) in cases {
        assert_names(resolve(uri).expect_err(uri), key, known);
    }
}

#[test]
fn the_cache_keys_are_read_for_every_registry_scheme() {
    let mut uris = vec!["dns:///localhost:1?snapshot=/tmp/lb-x.json&resync=10m&allow_empty=true"];
    if cfg!(feature = "etcd") {
        uris.push("etcd://127.0.0.1:1/greeter?snapshot=/tmp/lb-x.json&resync=off&allow_empty=false");
    }
    if cfg!(feature = "consul") {
        uris.push("consul://127.0.0.1:1/greeter?snapshot=/tmp/lb-x.json&resync=1m");
    }
    if cfg!(feature = "kubernetes") {
        uris.push("kubernetes:///greeter.default:grpc?snapshot=/tmp/lb-x.json&allow_empty");
    }
    for uri in uris {
        resolve(uri).unwrap_or_else(|e| panic!("{uri}: {e}"));
        let bad = format!("{uri}&resync=sometimes");
        assert!(resolve(&bad).expect_err(&bad).to_string().contains("resync"), "{bad}");
    }
}

#[tokio::test]
async fn registration_targets_are_checked_the_same_way() {
    let instance = Endpoint::new("127.0.0.1:50051".parse().expect("literal"));
    if cfg!(feature = "etcd") {
        let t = Target::parse("etcd://127.0.0.1:1/greeter?tll=5s").expect("parses");
        assert_names(lb_registry::register(&t, instance.clone()).await.expect_err("typo"), "tll", "prefix, resync, snapshot, ttl");
    }
    if cfg!(feature = "consul") {
        let t = Target::parse("consul://127.0.0.1:1/greeter?deregister=1m").expect("parses");
        assert_names(lb_registry::register(&t, instance.clone()).await.expect_err("typo"), "deregister", "deregister_after");
    }
    let _ = instance;
}
