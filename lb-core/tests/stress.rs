//! A randomized stress test of insert / remove / eject / pick against a live pool.
//!
//! After every burst of operations the pool settles and its snapshot is checked against a model:
//! picks only ever return endpoints that discovery currently lists, that are not terminating and
//! not ejected; in-flight counts return to zero once every guard is dropped.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use lb_core::discover::{self, Update};
use lb_core::pool::{EndpointPhase, PoolConfig};
use lb_core::policy::{P2c, PickContext};
use lb_core::test_util::TestConnector;
use lb_core::{Endpoint, EndpointState, Outcome, Pool};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn random_operations_keep_the_pool_consistent() {
    let seed = std::env::var("LB_STRESS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed);
    let mut rng = StdRng::seed_from_u64(seed);
    let (tx, rx) = discover::channel();
    let pool = Pool::spawn(Box::pin(rx), TestConnector::new(), P2c::peak_ewma(), PoolConfig::new("stress"));
    let mut model: BTreeMap<u16, EndpointState> = BTreeMap::new();
    let mut held = Vec::new();

    for round in 0..300 {
        for _ in 0..rng.random_range(1..8) {
            let port = rng.random_range(1..40u16);
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            match rng.random_range(0..10) {
                0..=2 => {
                    let state = [EndpointState::Ready, EndpointState::Ready, EndpointState::Terminating][rng.random_range(0..3)];
                    tx.send(Update::Add(vec![Endpoint::new(addr).with_state(state)]));
                    model.insert(port, state);
                }
                3 => {
                    tx.send(Update::Remove(vec![Endpoint::new(addr).id().clone()]));
                    model.remove(&port);
                }
                4 => {
                    let n = rng.random_range(0..12u16);
                    let list: Vec<Endpoint> = (0..n).map(|i| Endpoint::new(([127, 0, 0, 1], 1 + (i * 3) % 39).into())).collect();
                    model = list.iter().map(|e| (e.addr().port(), EndpointState::Ready)).collect();
                    tx.send(Update::Reset(list));
                }
                5 | 6 => {
                    // Fail requests on a random endpoint: may trigger ejection.
                    for _ in 0..rng.random_range(1..7) {
                        if let Some(mut p) = pool.pick(&PickContext::default()) {
                            p.guard.set_outcome(Outcome::Failure);
                        }
                    }
                }
                _ => {
                    if let Some(p) = pool.pick(&PickContext::default()) {
                        if rng.random_bool(0.3) {
                            held.push(p);
                        }
                    }
                }
            }
        }
        settle().await;
        if rng.random_bool(0.2) {
            tokio::time::sleep(Duration::from_secs(rng.random_range(1..40))).await;
            settle().await;
        }

        let snap = pool.snapshot();
        let ejected: HashSet<u16> = snap
            .entries()
            .iter()
            .filter(|e| e.phase == EndpointPhase::Ejected)
            .map(|e| e.endpoint.addr().port())
            .collect();
        for _ in 0..20 {
            if let Some(p) = pool.pick(&PickContext::default()) {
                let port = p.endpoint.addr().port();
                assert_eq!(model.get(&port), Some(&EndpointState::Ready), "round {round}: picked {port}, model {model:?}");
                assert!(!ejected.contains(&port), "round {round}: picked ejected {port}");
            }
        }
        let ready_in_model = model.values().filter(|s| **s == EndpointState::Ready).count();
        assert!(snap.healthy() <= ready_in_model, "round {round}");
        if ready_in_model > 0 && ejected.is_empty() {
            assert_eq!(snap.healthy(), ready_in_model, "round {round}: every listed endpoint connects");
        }
        if rng.random_bool(0.5) {
            held.clear();
        }
    }
    held.clear();
    settle().await;
    for e in pool.snapshot().entries() {
        assert_eq!(e.load.in_flight(), 0, "guards all dropped");
    }
}
