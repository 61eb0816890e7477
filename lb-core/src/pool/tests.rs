//! Pool behaviour on a paused clock, with the scripted `TestConnector` (connections are addresses).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream;
use tokio::sync::mpsc;

use super::*;
use crate::discover::{self, Update};
use crate::endpoint::{EndpointState, Locality};
use crate::load::Outcome;
use crate::policy::{RoundRobin, SlowStart, Topology};
use crate::test_util::TestConnector;

fn addr(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

fn ep(port: u16) -> Endpoint {
    Endpoint::new(addr(port))
}

fn config() -> PoolConfig {
    PoolConfig::new("test")
}

async fn settle() {
    // Let the pool task run to quiescence; on a paused clock this does not advance time by itself.
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

fn picks(pool: &Pool<SocketAddr>, n: usize) -> HashMap<u16, usize> {
    let mut out = HashMap::new();
    for _ in 0..n {
        if let Some(p) = pool.pick(&PickContext::default()) {
            *out.entry(p.connection.port()).or_default() += 1;
        }
    }
    out
}

#[tokio::test(start_paused = true)]
async fn applies_discovery_with_no_requests_and_reports_ready() {
    let (tx, rx) = discover::channel();
    let pool = Pool::spawn(Box::pin(rx), TestConnector::default(), RoundRobin::new(), config());
    assert!(!pool.is_initialized());
    assert!(pool.pick(&PickContext::default()).is_none());

    tx.send(Update::Reset(vec![ep(1), ep(2), ep(3)]));
    assert!(pool.ready_timeout(Duration::from_secs(1)).await);
    settle().await;
    let snap = pool.snapshot();
    assert!(snap.is_initialized());
    assert_eq!(snap.healthy(), 3);
    assert_eq!(picks(&pool, 300).values().copied().collect::<Vec<_>>(), vec![100; 3]);
}

#[tokio::test(start_paused = true)]
async fn reset_keeps_unchanged_connections_and_load() {
    let (tx, rx) = discover::channel();
    let conn = TestConnector::default();
    let pool = Pool::spawn(Box::pin(rx), conn.clone(), RoundRobin::new(), config());
    tx.send(Update::Reset(vec![ep(1), ep(2)]));
    assert!(pool.ready_timeout(Duration::from_secs(1)).await);
    let held = pool.pick(&PickContext::default()).expect("an endpoint");
    let held_port = held.connection.port();

    // A relist with one endpoint reweighted, one removed and one added.
    tx.send(Update::Reset(vec![ep(1).with_weight(7), ep(2), ep(3)]));
    tx.send(Update::Remove(vec![ep(if held_port == 1 { 2 } else { 1 }).id().clone()]));
    settle().await;
    assert_eq!(conn.attempts(addr(held_port)), 1, "an unchanged endpoint was not reconnected");
    assert_eq!(conn.attempts(addr(3)), 1);
    let snap = pool.snapshot();
    let entry = snap
        .entries()
        .iter()
        .find(|e| e.endpoint.addr().port() == held_port)
        .expect("still listed");
    assert_eq!(entry.load.in_flight(), 1, "load history survives the reset");
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn refused_endpoint_is_retried_with_backoff_until_it_accepts() {
    let (tx, rx) = discover::channel();
    let conn = TestConnector::default();
    conn.refuse_next(addr(2), 3);
    let pool = Pool::spawn(Box::pin(rx), conn.clone(), RoundRobin::new(), config());
    tx.send(Update::Reset(vec![ep(1), ep(2)]));
    assert!(pool.ready_timeout(Duration::from_secs(1)).await);
    settle().await;
    assert_eq!(pool.snapshot().healthy(), 1, "the refusing endpoint is out of rotation");
    assert_eq!(picks(&pool, 10).get(&2), None);

    // 100 ms, 200 ms, 400 ms (±20%) of backoff: within a second it is connected.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    settle().await;
    assert_eq!(conn.attempts(addr(2)), 4);
    assert_eq!(pool.snapshot().healthy(), 2);
}

#[tokio::test(start_paused = true)]
async fn closed_connection_is_reopened() {
    let (tx, rx) = discover::channel();
    let conn = TestConnector::new().with_close_signals();
    let pool = Pool::spawn(Box::pin(rx), conn.clone(), RoundRobin::new(), config());
    tx.send(Update::Reset(vec![ep(1)]));
    assert!(pool.ready_timeout(Duration::from_secs(1)).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(conn.close(addr(1)), "connection 1 was open");
    settle().await;
    assert_eq!(conn.attempts(addr(1)), 2, "a long-lived connection that closes is reopened at once");
    assert_eq!(pool.snapshot().healthy(), 1);
}

fn fail(pool: &Pool<SocketAddr>, port: u16, times: usize) {
    for _ in 0..times {
        let snap = pool.snapshot();
        let e = snap.entries().iter().find(|e| e.endpoint.addr().port() == port).expect("listed");
        let mut g = e.load.start();
        g.set_outcome(Outcome::Failure);
    }
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_eject_for_a_growing_but_bounded_time() {
    let (tx, rx) = discover::channel();
    let pool = Pool::spawn(Box::pin(rx), TestConnector::default(), RoundRobin::new(), config());
    tx.send(Update::Reset((1..=10).map(ep).collect()));
    assert!(pool.ready_timeout(Duration::from_secs(1)).await);
    settle().await;

    fail(&pool, 4, 5);
    settle().await;
    assert_eq!(pool.snapshot().healthy(), 9, "five failures in a row eject");
    assert_eq!(picks(&pool, 90).get(&4), None);

    // First ejection: 30 s.
    tokio::time::sleep(Duration::from_secs(29)).await;
    settle().await;
    assert_eq!(pool.snapshot().healthy(), 9);
    tokio::time::sleep(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(pool.snapshot().healthy(), 10, "back after the first ejection time");

    // Second ejection in a row: 60 s.
    fail(&pool, 4, 5);
    settle().await;
    tokio::time::sleep(Duration::from_secs(45)).await;
    settle().await;
    assert_eq!(pool.snapshot().healthy(), 9, "the second ejection lasts longer");
    tokio::time::sleep(Duration::from_secs(20)).await;
    settle().await;
    assert_eq!(pool.snapshot().healthy(), 10, "but not forever");
}

#[tokio::test(start_paused = true)]
async fn ejection_is_capped() {
    let (tx, rx) = discover::channel();
    let pool = Pool::spawn(Box::pin(rx), TestConnector::default(), RoundRobin::new(), config());
    tx.send(Update::Reset((1..=10).map(ep).collect()));
    assert!(pool.ready_timeout(Duration::from_secs(1)).await);
    for port in 1..=10 {
        fail(&pool, port, 5);
        settle().await;
    }
    // 10% of 10: one endpoint ejected, however many fail (a client-side fault must not empty the pool).
    assert_eq!(pool.snapshot().healthy(), 9);
}

#[tokio::test(start_paused = true)]
async fn failure_rate_ejects_at_the_interval() {
    let (tx, rx) = discover::channel();
    let pool = Pool::spawn(Box::pin(rx), TestConnector::default(), RoundRobin::new(), config());
    tx.send(Update::Reset((1..=10).map(ep).collect()));
    assert!(pool.ready_timeout(Duration::from_secs(1)).await);
    // 90% failures, interleaved with successes so the consecutive detector never fires.
    for _ in 0..10 {
        fail(&pool, 7, 4);
        let snap = pool.snapshot();
        let e = snap.entries().iter().find(|e| e.endpoint.addr().port() == 7).expect("listed");
        let mut g = e.load.start();
        g.set_outcome(Outcome::Success);
        drop(g);
        drop(snap);
        fail(&pool, 7, 5);
        let snap = pool.snapshot();
        let e = snap.entries().iter().find(|e| e.endpoint.addr().port() == 7).expect("listed");
        e.load.reset_failures();
    }
    settle().await;
    assert_eq!(pool.snapshot().healthy(), 10, "rates are judged at the interval");
    tokio::time::sleep(Duration::from_secs(11)).await;
    settle().await;
    assert_eq!(pool.snapshot().healthy(), 9);
}

#[tokio::test(start_paused = true)]
async fn terminating_endpoints_drain_and_serving_ones_are_a_fallback() {
    let (tx, rx) = discover::channel();
    let pool = Pool::spawn(Box::pin(rx), TestConnector::default(), RoundRobin::new(), config());
    tx.send(Update::Reset(vec![ep(1), ep(2)]));
    assert!(pool.ready_timeout(Duration::from_secs(1)).await);
    let in_flight = pool.pick(&PickContext::default()).expect("picked");
    let port = in_flight.connection.port();
    let other = if port == 1 { 2 } else { 1 };

    tx.send(Update::Add(vec![ep(port).with_state(EndpointState::Terminating)]));
    settle().await;
    assert_eq!(picks(&pool, 20), HashMap::from([(other, 20)]), "no new requests to a terminating endpoint");
    assert_eq!(in_flight.guard.load().in_flight(), 1, "its in-flight request is untouched");

    // Only serving-but-terminating endpoints left: they take traffic (Kubernetes' fallback).
    tx.send(Update::Reset(vec![
        ep(port).with_state(EndpointState::Serving),
        ep(other).with_state(EndpointState::Terminating),
    ]));
    settle().await;
    assert_eq!(picks(&pool, 20), HashMap::from([(port, 20)]));

    // A ready endpoint appears: the serving one leaves rotation again.
    tx.send(Update::Add(vec![ep(9)]));
    settle().await;
    assert_eq!(picks(&pool, 20), HashMap::from([(9, 20)]));
}

#[tokio::test(start_paused = true)]
async fn discovery_errors_and_end_keep_the_last_set() {
    let (tx, rx) = discover::channel();
    let pool = Pool::spawn(Box::pin(rx), TestConnector::default(), RoundRobin::new(), config());
    tx.send(Update::Reset(vec![ep(1), ep(2)]));
    assert!(pool.ready_timeout(Duration::from_secs(1)).await);
    tx.send_error("registry unreachable");
    drop(tx);
    settle().await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(pool.snapshot().healthy(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_request_that_finds_no_endpoint_names_the_discovery_error_until_discovery_delivers() {
    let (tx, rx) = discover::channel();
    let pool = Pool::spawn(Box::pin(rx), TestConnector::default(), RoundRobin::new(), config());
    let wait = crate::balance::Wait { timeout: Duration::from_millis(100), wait_for_ready: false };
    let unavailable = |pool: Pool<SocketAddr>| async move {
        match pool.pick_or_wait(PickContext::default(), wait).await {
            Ok(p) => panic!("picked {}", p.endpoint.addr()),
            Err(crate::balance::error::PickError::Unavailable(e)) => e,
            Err(e) => panic!("not an Unavailable: {e}"),
        }
    };

    tx.send_error("registry says: token …3f9a may not read `svc`");
    settle().await;
    let err = unavailable(pool.clone()).await;
    assert_eq!(err.discovery_error(), Some("registry says: token …3f9a may not read `svc`"));
    let message = err.to_string();
    assert!(message.contains("has not delivered an endpoint set yet; discovery error: registry says: token …3f9a"), "{message}");

    // An empty set delivered: the error no longer explains anything.
    tx.send(Update::Reset(vec![]));
    settle().await;
    let err = unavailable(pool.clone()).await;
    assert_eq!((err.discovery_error(), err.to_string().contains("lists no endpoint")), (None, true), "{err}");

    // Errors after a set are named too, next to it.
    tx.send_error("registry unreachable");
    settle().await;
    let err = unavailable(pool.clone()).await;
    assert!(err.to_string().ends_with("discovery lists no endpoint; discovery error: registry unreachable"), "{err}");
    assert_eq!(pool.snapshot().discovery_error().map(|e| &**e), Some("registry unreachable"));
}

struct ScriptedHealth(Mutex<HashMap<SocketAddr, mpsc::UnboundedReceiver<bool>>>);

impl HealthCheck<SocketAddr> for ScriptedHealth {
    fn watch(&self, endpoint: &Endpoint, _: &SocketAddr) -> BoxStream<'static, bool> {
        match self.0.lock().expect("health lock").remove(&endpoint.addr()) {
            Some(rx) => Box::pin(stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })),
            None => Box::pin(stream::iter([true])),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn health_checks_gate_and_eject() {
    let (tx, rx) = discover::channel();
    let (htx, hrx) = mpsc::unbounded_channel();
    let health = Arc::new(ScriptedHealth(Mutex::new(HashMap::from([(addr(2), hrx)]))));
    let pool = Pool::spawn_with_health(Box::pin(rx), TestConnector::default(), RoundRobin::new(), config(), Some(health));
    tx.send(Update::Reset(vec![ep(1), ep(2)]));
    assert!(pool.ready_timeout(Duration::from_secs(1)).await);
    settle().await;
    assert_eq!(pool.snapshot().healthy(), 1, "not in rotation before its first SERVING");
    htx.send(true).expect("watch open");
    settle().await;
    assert_eq!(pool.snapshot().healthy(), 2);
    htx.send(false).expect("watch open");
    settle().await;
    assert_eq!(picks(&pool, 10), HashMap::from([(1, 10)]));
    htx.send(true).expect("watch open");
    settle().await;
    assert_eq!(pool.snapshot().healthy(), 2);
}

#[tokio::test(start_paused = true)]
async fn topology_prefers_the_callers_zone_through_the_pool() {
    let (tx, rx) = discover::channel();
    let caller = Locality::unknown().with_zone("a");
    let policy = Topology::new(RoundRobin::new(), caller);
    let pool = Pool::spawn(Box::pin(rx), TestConnector::default(), policy, config());
    tx.send(Update::Reset(vec![
        ep(1).with_locality(Locality::unknown().with_zone("a")),
        ep(2).with_locality(Locality::unknown().with_zone("b")),
        ep(3).with_locality(Locality::unknown().with_zone("b")),
    ]));
    assert!(pool.ready_timeout(Duration::from_secs(1)).await);
    settle().await;
    assert_eq!(picks(&pool, 50), HashMap::from([(1, 50)]));
}

#[tokio::test(start_paused = true)]
async fn slow_start_ramps_a_new_endpoint_up_from_its_connection() {
    let (tx, rx) = discover::channel();
    let policy = SlowStart::new(RoundRobin::new(), Duration::from_secs(10)).expect("not hashing");
    let pool = Pool::spawn(Box::pin(rx), TestConnector::default(), policy, config());
    tx.send(Update::Reset(vec![ep(1), ep(2), ep(3)]));
    assert!(pool.ready_timeout(Duration::from_secs(1)).await);
    settle().await;
    // A starting pool is all new: balanced as usual.
    let start = picks(&pool, 3_000);
    assert!(start.values().all(|n| (900..=1100).contains(n)), "{start:?}");

    tokio::time::advance(Duration::from_secs(60)).await;
    tx.send(Update::Add(vec![ep(4)]));
    settle().await;
    assert_eq!(pool.snapshot().healthy(), 4);
    // Round robin re-picks move a refused pick to the next endpoint: the newcomer's share is
    // f / (3 + f) for a factor f — 3.2 % at f = 0.1 (the floor), 14 % at 0.5, 25 % at 1.
    let share = |m: &HashMap<u16, usize>| m.get(&4).copied().unwrap_or(0) as f64 / m.values().sum::<usize>() as f64;
    let at_1s = share(&picks(&pool, 20_000));
    tokio::time::advance(Duration::from_secs(5)).await;
    let at_5s = share(&picks(&pool, 20_000));
    tokio::time::advance(Duration::from_secs(6)).await;
    let after = share(&picks(&pool, 20_000));
    assert!(at_1s > 0.015 && at_1s < 0.05, "just connected: {at_1s}");
    assert!(at_5s > 0.11 && at_5s < 0.18, "half way through the window: {at_5s}");
    assert!((after - 0.25).abs() < 0.01, "after the window: {after}");
}

#[tokio::test(start_paused = true)]
async fn pool_task_stops_with_the_last_handle() {
    let (tx, rx) = discover::channel();
    let pool = Pool::spawn(Box::pin(rx), TestConnector::default(), RoundRobin::new(), config());
    let clone = pool.clone();
    drop(pool);
    settle().await;
    assert!(tx.send(Update::Reset(vec![ep(1)])), "still running while a handle lives");
    drop(clone);
    settle().await;
    assert!(!tx.send(Update::Reset(vec![ep(1)])), "the task dropped its discovery stream");
}

#[tokio::test(start_paused = true)]
async fn an_overloaded_endpoint_sits_out_its_penalty_within_the_cap() {
    let (tx, rx) = discover::channel();
    let mut cfg = config();
    cfg.overload_penalty_cap = Some(Duration::from_secs(30));
    let pool = Pool::spawn(Box::pin(rx), TestConnector::default(), RoundRobin::new(), cfg);
    tx.send(Update::Reset((1..=10).map(ep).collect()));
    assert!(pool.ready_timeout(Duration::from_secs(1)).await);
    settle().await;
    assert_eq!(pool.snapshot().healthy(), 10);

    // Endpoint 1 answers "overloaded, come back in 5 s".
    let mut p = loop {
        let p = pool.pick(&PickContext::default()).expect("an endpoint");
        if p.connection.port() == 1 {
            break p;
        }
    };
    p.guard.set_penalty(Duration::from_secs(5));
    drop(p);
    settle().await;
    assert_eq!(pool.snapshot().healthy(), 9);
    assert!(!picks(&pool, 90).contains_key(&1), "out of picks while penalized");
    tokio::time::advance(Duration::from_secs(5)).await;
    settle().await;
    assert_eq!(pool.snapshot().healthy(), 10, "back after the hinted time");

    // A hint beyond the cap is cut to the cap; a second overloaded endpoint is refused by the
    // ejection cap (10 % of 10 = 1 at once).
    for port in [2u16, 3] {
        let mut p = loop {
            let p = pool.pick(&PickContext::default()).expect("an endpoint");
            if p.connection.port() == port {
                break p;
            }
        };
        p.guard.set_penalty(Duration::from_secs(3600));
        drop(p);
        settle().await;
    }
    assert_eq!(pool.snapshot().healthy(), 9, "at most the ejection cap is out at once");
    tokio::time::advance(Duration::from_secs(30)).await;
    settle().await;
    assert_eq!(pool.snapshot().healthy(), 10, "capped at 30 s");
}

#[tokio::test(start_paused = true)]
async fn a_load_report_policy_is_rebuilt_on_its_period() {
    use crate::load::LoadReport;
    use crate::policy::WeightedRoundRobin;
    let (tx, rx) = discover::channel();
    let policy = WeightedRoundRobin::from_load_reports()
        .blackout_period(Duration::ZERO)
        .weight_update_period(Duration::from_secs(1));
    let pool = Pool::spawn(Box::pin(rx), TestConnector::default(), policy, config());
    tx.send(Update::Reset(vec![ep(1), ep(2)]));
    assert!(pool.ready_timeout(Duration::from_secs(1)).await);
    settle().await;
    assert_eq!(picks(&pool, 100).values().copied().collect::<Vec<_>>(), vec![50, 50], "no reports: round robin");

    // The servers report: endpoint 2 is three times as loaded per query as endpoint 1.
    for (port, utilization) in [(1u16, 0.2), (2, 0.6)] {
        let entry = pool.snapshot().entries().iter().find(|e| e.endpoint.addr().port() == port).map(|e| Arc::clone(&e.load));
        let load = entry.expect("listed");
        load.record_report(&LoadReport { application_utilization: utilization, rps_fractional: 10.0, ..Default::default() }, tokio::time::Instant::now());
    }
    let version = pool.snapshot().version();
    tokio::time::advance(Duration::from_secs(1)).await;
    settle().await;
    assert!(pool.snapshot().version() > version, "rebuilt without any membership change");
    let shares = picks(&pool, 400);
    // Weights 100 : 33 (integer resolution 1 %), over a cycle 400 picks do not divide evenly.
    assert!(shares[&1].abs_diff(300) <= 3 && shares[&2].abs_diff(100) <= 3, "weights 3 : 1 from the reports: {shares:?}");
}

