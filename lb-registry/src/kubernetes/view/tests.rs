//! The incremental view against the from-scratch reference, over random slice histories.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::{Endpoint as SliceEndpoint, EndpointConditions, EndpointHints, EndpointPort, ForZone};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use lb_core::{EndpointSet, Update};

use super::*;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn random_slice(rng: &mut Rng) -> EndpointSlice {
    let v6 = rng.below(4) == 0;
    let n = rng.below(5);
    let endpoints = (0..n)
        .map(|_| {
            let pod = rng.below(10);
            // Now and then a garbled slice gives another pod's address.
            let ip_of = if rng.below(10) == 0 { rng.below(10) } else { pod };
            let address = if v6 { format!("fd00::{}", ip_of + 1) } else { format!("10.0.0.{}", ip_of + 1) };
            let (ready, serving, terminating) = match rng.below(4) {
                0 | 1 => (Some(true), Some(true), Some(false)),
                2 => (Some(false), Some(true), Some(true)),
                _ => (Some(false), Some(false), Some(false)),
            };
            SliceEndpoint {
                addresses: vec![address],
                conditions: Some(EndpointConditions { ready, serving, terminating }),
                zone: Some(format!("z{}", pod % 3)),
                node_name: Some(format!("n{pod}")),
                hints: match rng.below(4) {
                    0 => None,
                    1 => Some(EndpointHints {
                        for_zones: Some(vec![ForZone { name: "z2".into() }]),
                        for_nodes: None,
                    }),
                    _ => Some(EndpointHints {
                        for_zones: Some(vec![ForZone { name: format!("z{}", pod % 3) }]),
                        for_nodes: None,
                    }),
                },
                target_ref: (rng.below(5) != 0).then(|| ObjectReference {
                    kind: Some("Pod".into()),
                    name: Some(format!("p{pod}")),
                    uid: Some(format!("u{pod}")),
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
        .collect();
    let port_name = if rng.below(8) == 0 { "http" } else { "grpc" };
    EndpointSlice {
        address_type: if v6 { "IPv6" } else { "IPv4" }.into(),
        endpoints: Some(endpoints),
        metadata: ObjectMeta::default(),
        ports: Some(vec![EndpointPort {
            name: Some(port_name.into()),
            port: Some(80),
            ..Default::default()
        }]),
    }
}

/// Returns in how many steps hints changed some endpoint's effective zone.
fn check_history(seed: u64, opts: Options) -> usize {
    let mut hinted_steps = 0;
    let port = PortSpec::Named("grpc".into());
    let mut rng = Rng(seed);
    let mut view = View::new(port.clone(), opts.clone());
    let mut slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
    let mut consumer = EndpointSet::new();
    consumer.apply(Update::Reset(view.replace_all(std::iter::empty())));
    for step in 0..300 {
        let name = format!("s{}", rng.below(5));
        let change = if rng.below(4) == 0 {
            slices.remove(&name);
            view.delete(&name)
        } else {
            let s = random_slice(&mut rng);
            slices.insert(name.clone(), s.clone());
            view.apply(&name, &s)
        };
        consumer.apply(Update::Add(change.upserted));
        consumer.apply(Update::Remove(change.removed));

        let want = slices::merge(slices.values(), &port, &opts);
        assert_eq!(view.endpoints(), want, "seed {seed}, step {step}: the view");
        let mut got: Vec<Endpoint> = consumer.iter().cloned().collect();
        got.sort_by_key(|e| e.addr());
        assert_eq!(got, want, "seed {seed}, step {step}: what consumers were told");
        if want.iter().any(|e| e.locality().zone.as_deref() != e.metadata().get(slices::META_ZONE).map(String::as_str)) {
            hinted_steps += 1;
        }

        if step % 50 == 49 {
            // A relist rebuilds the same view.
            let mut fresh = View::new(port.clone(), opts.clone());
            let all = fresh.replace_all(slices.iter().map(|(n, s)| (n.clone(), s)));
            assert_eq!(all, want, "seed {seed}, step {step}: replace_all");
        }
    }
    hinted_steps
}

#[test]
fn incremental_view_equals_merging_from_scratch() {
    let hinted = Options {
        caller_zone: Some(Arc::from("z1")),
        hints: true,
        zone_regions: BTreeMap::from([("z1".to_string(), "r1".to_string())]),
    };
    let mut hinted_steps = 0;
    for seed in 1..=40u64 {
        hinted_steps += check_history(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), hinted.clone());
        let plain = check_history(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1, Options { hints: false, ..hinted.clone() });
        assert_eq!(plain, 0, "hints off never moves a zone");
    }
    // The histories must reach states where hints apply (and, by the view's checks, stop applying).
    assert!(hinted_steps > 100, "only {hinted_steps} steps with hints in effect");
}
