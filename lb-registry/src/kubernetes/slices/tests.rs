use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointHints, EndpointPort, ForZone};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;

fn port(name: Option<&str>, port: i32) -> EndpointPort {
    EndpointPort {
        name: name.map(str::to_string),
        port: Some(port),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn ep(ip: &str, ready: Option<bool>, serving: Option<bool>, terminating: Option<bool>) -> SliceEndpoint {
    SliceEndpoint {
        addresses: vec![ip.to_string()],
        conditions: Some(EndpointConditions { ready, serving, terminating }),
        ..Default::default()
    }
}

fn slice(name: &str, ports: Vec<EndpointPort>, endpoints: Vec<SliceEndpoint>) -> EndpointSlice {
    EndpointSlice {
        address_type: "IPv4".into(),
        endpoints: Some(endpoints),
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ports: Some(ports),
    }
}

fn grpc() -> PortSpec {
    PortSpec::Named("grpc".into())
}

fn addrs(eps: &[Endpoint]) -> Vec<String> {
    eps.iter().map(|e| e.addr().to_string()).collect()
}

#[test]
fn ports_resolve_per_slice() {
    let a = slice("a", vec![port(Some("grpc"), 50051), port(Some("http"), 8080)], vec![ep("10.0.0.1", None, None, None)]);
    let b = slice("b", vec![port(Some("grpc"), 9000)], vec![ep("10.0.0.2", None, None, None)]);
    let c = slice("c", vec![port(Some("http"), 8080)], vec![ep("10.0.0.3", None, None, None)]);
    let eps = merge([&a, &b, &c], &grpc(), &Options::default());
    assert_eq!(addrs(&eps), ["10.0.0.1:50051", "10.0.0.2:9000"], "slice c lacks the port");
    assert_eq!(skipped(&c, &grpc()).no_port, 1);

    let single = slice("d", vec![port(None, 80)], vec![ep("10.0.0.4", None, None, None)]);
    assert_eq!(addrs(&merge([&single], &PortSpec::Unnamed, &Options::default())), ["10.0.0.4:80"]);
    assert!(merge([&a], &PortSpec::Unnamed, &Options::default()).is_empty(), "no unnamed port in a");
    assert_eq!(addrs(&merge([&a], &PortSpec::Number(8080), &Options::default())), ["10.0.0.1:8080"]);
}

#[test]
fn conditions_map_to_states() {
    let s = slice(
        "a",
        vec![port(Some("grpc"), 1)],
        vec![
            ep("10.0.0.1", None, None, None),                      // nil ready = ready
            ep("10.0.0.2", Some(true), Some(true), Some(false)),   // ready
            ep("10.0.0.3", Some(false), Some(true), Some(true)),   // serving && terminating
            ep("10.0.0.4", Some(false), Some(false), Some(true)),  // terminating, not serving
            ep("10.0.0.5", Some(false), Some(false), Some(false)), // not ready (starting up)
            ep("10.0.0.6", Some(false), None, Some(true)),         // nil serving = serving
        ],
    );
    let eps = merge([&s], &grpc(), &Options::default());
    let states: Vec<(String, EndpointState)> = eps.iter().map(|e| (e.addr().ip().to_string(), e.state())).collect();
    assert_eq!(
        states,
        [
            ("10.0.0.1".to_string(), EndpointState::Ready),
            ("10.0.0.2".to_string(), EndpointState::Ready),
            ("10.0.0.3".to_string(), EndpointState::Serving),
            ("10.0.0.6".to_string(), EndpointState::Serving),
        ]
    );
}

#[test]
fn bad_addresses_are_skipped_and_counted() {
    let mut s = slice("a", vec![port(Some("grpc"), 1)], vec![ep("not-an-ip", None, None, None), ep("10.0.0.1", None, None, None)]);
    assert_eq!(addrs(&merge([&s], &grpc(), &Options::default())), ["10.0.0.1:1"]);
    assert_eq!(skipped(&s, &grpc()).bad_address, 1);
    s.address_type = "FQDN".into();
    s.endpoints = Some(vec![ep("pod.example.com", None, None, None)]);
    assert!(merge([&s], &grpc(), &Options::default()).is_empty());
}

#[test]
fn a_pod_in_two_slices_counts_once_with_its_best_condition() {
    let pod = |ip: &str, ready| {
        let mut e = ep(ip, Some(ready), Some(true), Some(!ready));
        e.target_ref = Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: Some("default".into()),
            name: Some("greeter-0".into()),
            uid: Some("u0".into()),
            ..Default::default()
        });
        e
    };
    let a = slice("a", vec![port(Some("grpc"), 1)], vec![pod("10.0.0.1", false)]);
    let b = slice("b", vec![port(Some("grpc"), 1)], vec![pod("10.0.0.1", true)]);
    let eps = merge([&a, &b], &grpc(), &Options::default());
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0].state(), EndpointState::Ready);
    assert_eq!(eps[0].metadata().get(META_POD).map(String::as_str), Some("greeter-0"));

    // Dual stack: the IPv4 address wins, the pod is not counted twice.
    let mut v6 = slice("c", vec![port(Some("grpc"), 1)], vec![pod("fd00::1", true)]);
    v6.address_type = "IPv6".into();
    let eps = merge([&v6, &b], &grpc(), &Options::default());
    assert_eq!(addrs(&eps), ["10.0.0.1:1"]);
}

fn zoned(ip: &str, zone: &str, node: &str, hints: Option<&[&str]>) -> SliceEndpoint {
    let mut e = ep(ip, None, None, None);
    e.zone = Some(zone.into());
    e.node_name = Some(node.into());
    e.hints = hints.map(|h| EndpointHints {
        for_zones: Some(h.iter().map(|z| ForZone { name: z.to_string() }).collect()),
        ..Default::default()
    });
    e
}

fn zones(eps: &[Endpoint]) -> Vec<Option<&str>> {
    eps.iter().map(|e| e.locality().zone.as_deref()).collect()
}

#[test]
fn locality_and_regions() {
    let s = slice("a", vec![port(Some("grpc"), 1)], vec![zoned("10.0.0.1", "z1", "n1", None), zoned("10.0.0.2", "z2", "n2", None)]);
    let mut opts = Options::default();
    opts.zone_regions.insert("z1".into(), "r1".into());
    let eps = merge([&s], &grpc(), &opts);
    assert_eq!(eps[0].locality(), &Locality::unknown().with_zone("z1").with_node("n1").with_region("r1"));
    assert_eq!(eps[1].locality(), &Locality::unknown().with_zone("z2").with_node("n2"), "z2 has no region");
}

#[test]
fn zone_hints_rewrite_the_effective_zone() {
    // The controller moved 10.0.0.2 (in z1) to serve z2, which has too few endpoints.
    let s = slice(
        "a",
        vec![port(Some("grpc"), 1)],
        vec![
            zoned("10.0.0.1", "z1", "n1", Some(&["z1"])),
            zoned("10.0.0.2", "z1", "n2", Some(&["z2"])),
            zoned("10.0.0.3", "z2", "n3", Some(&["z2"])),
        ],
    );
    let opts = Options {
        caller_zone: Some(Arc::from("z1")),
        hints: true,
        ..Default::default()
    };
    let eps = merge([&s], &grpc(), &opts);
    assert_eq!(zones(&eps), [Some("z1"), Some("z2"), Some("z2")]);
    assert_eq!(eps[1].metadata().get(META_ZONE).map(String::as_str), Some("z1"), "reported zone kept");
    assert_eq!(eps[1].metadata().get(META_HINT_ZONES).map(String::as_str), Some("z2"));

    // From z2, 10.0.0.2 is same-zone.
    let from_z2 = Options {
        caller_zone: Some(Arc::from("z2")),
        ..opts.clone()
    };
    assert_eq!(zones(&merge([&s], &grpc(), &from_z2)), [Some("z1"), Some("z2"), Some("z2")]);

    // Hints off: reported zones.
    let off = Options { hints: false, ..opts.clone() };
    assert_eq!(zones(&merge([&s], &grpc(), &off)), [Some("z1"), Some("z1"), Some("z2")]);

    // One ready endpoint without hints: kube-proxy ignores all hints, and so do we.
    let mut partial = s.clone();
    if let Some(eps) = partial.endpoints.as_mut() {
        eps.push(zoned("10.0.0.4", "z3", "n4", None));
    }
    assert_eq!(zones(&merge([&partial], &grpc(), &opts)), [Some("z1"), Some("z1"), Some("z2"), Some("z3")]);

    // No endpoint hinted for the caller's zone: hints are ignored too.
    let from_z9 = Options {
        caller_zone: Some(Arc::from("z9")),
        ..opts
    };
    assert_eq!(zones(&merge([&s], &grpc(), &from_z9)), [Some("z1"), Some("z1"), Some("z2")]);
}

