//! The balanced service over mock connections (tower-test), on a paused clock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use lb_core::balance::error::Unavailable;
use lb_core::balance::Wait;
use lb_core::discover::{self, Update};
use lb_core::pool::PoolConfig;
use lb_core::policy::{hash_key, RingHash, RoundRobin};
use lb_core::test_util::TestConnector;
use lb_core::{Balance, Endpoint, Pool};
use tower::{Service, ServiceExt};
use tower_test::mock::{self, Handle, Mock};

type Req = String;
type Rsp = SocketAddr;
/// The test's side of one endpoint's mock service.
type Answers = Handle<Req, Rsp>;

/// A connector handing each address of `ports` its own mock service, and the handles that answer
/// them, in the order of `ports`. Other addresses are for the test to refuse.
fn mocks<const N: usize>(ports: [u16; N]) -> (TestConnector<Mock<Req, Rsp>>, [Answers; N]) {
    let mut services = HashMap::new();
    let handles = ports.map(|p| {
        let (mock, mut handle) = mock::pair();
        handle.allow(u64::MAX);
        services.insert(addr(p), mock);
        handle
    });
    let connector = TestConnector::with_connection(move |ep: &Endpoint| {
        services.get(&ep.addr()).cloned().expect("a mock for every endpoint the test does not refuse")
    });
    (connector, handles)
}

fn addr(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

/// Answers every request a handle receives with the handle's address, until the test ends.
fn serve(mut handle: Answers, me: SocketAddr) {
    tokio::spawn(async move {
        while let Some((_, tx)) = handle.next_request().await {
            tx.send_response(me);
        }
    });
}

#[tokio::test(start_paused = true)]
async fn picks_per_request_over_one_service() {
    let (conn, handles) = mocks([1, 2, 3]);
    for (p, handle) in (1..=3).zip(handles) {
        serve(handle, addr(p));
    }
    let (tx, rx) = discover::channel();
    tx.send(Update::Reset((1..=3).map(|p| Endpoint::new(addr(p))).collect()));
    let pool = Pool::spawn(Box::pin(rx), conn, RoundRobin::new(), PoolConfig::new("mock"));
    assert!(pool.ready_timeout(Duration::from_secs(1)).await);
    let mut svc = Balance::new(pool);
    let mut counts: HashMap<SocketAddr, usize> = HashMap::new();
    for _ in 0..300 {
        let rsp = svc.ready().await.expect("always ready").call("hi".to_string()).await.expect("answered");
        *counts.entry(rsp).or_default() += 1;
    }
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![100, 100, 100]);
}

#[tokio::test(start_paused = true)]
async fn no_endpoint_fails_after_failfast_not_before() {
    let (_tx, rx) = discover::channel();
    let pool = Pool::spawn(Box::pin(rx), mocks([]).0, RoundRobin::new(), PoolConfig::new("empty-target"));
    let mut svc = Balance::new(pool).wait(Wait::at_most(Duration::from_secs(2)));
    let started = tokio::time::Instant::now();
    let err = svc.ready().await.expect("ready").call("hi".to_string()).await.expect_err("no endpoint");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(2) && waited < Duration::from_millis(2100), "{waited:?}");
    let unavailable = err.downcast_ref::<Unavailable>().expect("typed error");
    assert_eq!(unavailable.target(), "empty-target");
    assert!(!unavailable.discovery_initialized());
    assert!(err.to_string().contains("empty-target"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_request_waits_for_the_first_endpoint() {
    let (conn, [handle]) = mocks([1]);
    serve(handle, addr(1));
    let (tx, rx) = discover::channel();
    let pool = Pool::spawn(Box::pin(rx), conn, RoundRobin::new(), PoolConfig::new("late"));
    let mut svc = Balance::new(pool).wait(Wait::at_most(Duration::from_secs(5)));
    let call = tokio::spawn(async move { svc.ready().await.expect("ready").call("hi".to_string()).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    tx.send(Update::Reset(vec![Endpoint::new(addr(1))]));
    let rsp = call.await.expect("joined").expect("served once the endpoint arrived");
    assert_eq!(rsp, addr(1));
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_fails_before_sending_is_rerouted() {
    let (conn, [mut broken, handle]) = mocks([1, 2]);
    serve(handle, addr(2));
    let (tx, rx) = discover::channel();
    tx.send(Update::Reset(vec![Endpoint::new(addr(1)), Endpoint::new(addr(2))]));
    let pool = Pool::spawn(Box::pin(rx), conn, RoundRobin::new(), PoolConfig::new("reroute"));
    assert!(pool.ready_timeout(Duration::from_secs(1)).await);
    let mut svc = Balance::new(pool);
    for _ in 0..10 {
        broken.send_error("connection reset");
        let rsp = svc.ready().await.expect("ready").call("hi".to_string()).await.expect("rerouted, never failed");
        assert_eq!(rsp, addr(2));
    }
}

#[tokio::test(start_paused = true)]
async fn load_is_counted_while_the_call_is_outstanding() {
    let (conn, [mut handle]) = mocks([1]);
    let (tx, rx) = discover::channel();
    tx.send(Update::Reset(vec![Endpoint::new(addr(1))]));
    let pool = Pool::spawn(Box::pin(rx), conn, RoundRobin::new(), PoolConfig::new("load"));
    assert!(pool.ready_timeout(Duration::from_secs(1)).await);
    let mut svc = Balance::new(pool.clone());
    let call = tokio::spawn(async move { svc.ready().await.expect("ready").call("hi".to_string()).await });
    let (_, respond) = handle.next_request().await.expect("request arrived");
    let in_flight = || pool.snapshot().entries()[0].load.in_flight();
    assert_eq!(in_flight(), 1);
    tokio::time::sleep(Duration::from_millis(40)).await;
    respond.send_response(addr(1));
    call.await.expect("joined").expect("answered");
    assert_eq!(in_flight(), 0);
    let rtt = pool.snapshot().entries()[0].load.rtt_estimate();
    assert!(rtt >= Duration::from_millis(39), "a 40 ms answer raised the estimate: {rtt:?}");
}

#[tokio::test(start_paused = true)]
async fn hashing_routes_a_key_to_one_endpoint() {
    let (conn, handles) = mocks([1, 2, 3, 4]);
    for (p, handle) in (1..=4).zip(handles) {
        serve(handle, addr(p));
    }
    let (tx, rx) = discover::channel();
    tx.send(Update::Reset((1..=4).map(|p| Endpoint::new(addr(p))).collect()));
    let pool = Pool::spawn(Box::pin(rx), conn, RingHash::new(), PoolConfig::new("hash"));
    assert!(pool.ready_timeout(Duration::from_secs(1)).await);
    let mut svc = Balance::new(pool).with_key(|req: &Req| Some(hash_key(req.as_bytes())));
    let mut seen: HashMap<&str, SocketAddr> = HashMap::new();
    for i in 0..200 {
        let key = ["alice", "bob", "carol", "dave", "erin"][i % 5];
        let rsp = svc.ready().await.expect("ready").call(key.to_string()).await.expect("answered");
        assert_eq!(*seen.entry(key).or_insert(rsp), rsp, "{key} moved");
    }
}

#[tokio::test(start_paused = true)]
async fn when_every_endpoint_fails_to_connect_calls_fail_at_once_with_the_reason() {
    // Both addresses refuse every connection attempt.
    let (conn, []) = mocks([]);
    conn.refuse(addr(8));
    conn.refuse(addr(9));
    let (tx, rx) = discover::channel();
    tx.send(Update::Reset(vec![Endpoint::new(addr(8)), Endpoint::new(addr(9))]));
    let pool = Pool::spawn(Box::pin(rx), conn, RoundRobin::new(), PoolConfig::new("refusing"));
    let mut svc = Balance::new(pool.clone()).wait(Wait::at_most(Duration::from_secs(3)));
    let started = tokio::time::Instant::now();
    let err = svc.ready().await.expect("ready").call("hi".to_string()).await.expect_err("nothing connects");
    assert!(started.elapsed() < Duration::from_secs(3), "failed without waiting out the 3 s: {:?}", started.elapsed());
    let unavailable = err.downcast_ref::<Unavailable>().expect("typed error");
    assert!(unavailable.is_connect_failure(), "{err}");
    assert_eq!(unavailable.last_connect_error(), Some("connection refused by the test connector"));
    assert!(err.to_string().contains("failed to connect") && err.to_string().contains("connection refused by the test connector"), "{err}");

    // Wait-for-ready calls wait out the whole timeout instead, and still say why.
    let mut patient = Balance::new(pool).wait(Wait {
        wait_for_ready: true,
        ..Wait::at_most(Duration::from_secs(3))
    });
    let started = tokio::time::Instant::now();
    let err = patient.ready().await.expect("ready").call("hi".to_string()).await.expect_err("nothing connects");
    assert!(started.elapsed() >= Duration::from_secs(3), "{:?}", started.elapsed());
    assert!(err.to_string().contains("connection refused by the test connector"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn an_empty_set_is_waited_on_and_named() {
    let (tx, rx) = discover::channel();
    tx.send(Update::Reset(vec![]));
    let pool = Pool::spawn(Box::pin(rx), mocks([]).0, RoundRobin::new(), PoolConfig::new("none"));
    let mut svc = Balance::new(pool).wait(Wait::at_most(Duration::from_secs(2)));
    let started = tokio::time::Instant::now();
    let err = svc.ready().await.expect("ready").call("hi".to_string()).await.expect_err("no endpoint");
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(err.to_string().contains("discovery lists no endpoint"), "{err}");
}

#[derive(Debug)]
struct HandedBack(Option<Req>);

impl lb_core::balance::EndpointError<Req> for HandedBack {
    fn take_unsent(&mut self) -> Option<Req> {
        self.0.take()
    }

    fn into_error(self) -> lb_core::BoxError {
        "connection closed before the request was written".into()
    }
}

/// An endpoint service that answers with its address, or hands every request back unsent as a
/// closed HTTP/2 connection does.
#[derive(Clone)]
enum Backend {
    Refusing,
    Serving(SocketAddr),
}

impl Service<Req> for Backend {
    type Response = Rsp;
    type Error = HandedBack;
    type Future = std::future::Ready<Result<Rsp, HandedBack>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), HandedBack>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        std::future::ready(match self {
            Backend::Refusing => Err(HandedBack(Some(req))),
            Backend::Serving(a) => Ok(*a),
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_handed_back_unsent_goes_elsewhere_and_blames_no_one() {
    let connector = TestConnector::with_connection(|ep: &Endpoint| {
        if ep.addr() == addr(1) { Backend::Refusing } else { Backend::Serving(ep.addr()) }
    });
    let (tx, rx) = discover::channel();
    tx.send(Update::Reset(vec![Endpoint::new(addr(1)), Endpoint::new(addr(2))]));
    let pool = Pool::spawn(Box::pin(rx), connector, RoundRobin::new(), PoolConfig::new("handback"));
    assert!(pool.ready_timeout(Duration::from_secs(1)).await);
    let mut svc = Balance::new(pool.clone());
    for _ in 0..20 {
        let rsp = svc.ready().await.expect("ready").call("hi".to_string()).await.expect("sent elsewhere");
        assert_eq!(rsp, addr(2));
    }
    let refusing = pool.snapshot().entries().iter().find(|e| e.endpoint.addr() == addr(1)).map(|e| e.load.clone());
    let refusing = refusing.expect("still listed");
    assert_eq!(refusing.consecutive_failures(), 0, "an unsent request is not the endpoint's failure");
    assert_eq!(refusing.in_flight(), 0);

    // With no other endpoint, the request waits for a new snapshot, which never comes: unavailable.
    let (tx, rx) = discover::channel();
    tx.send(Update::Reset(vec![Endpoint::new(addr(1))]));
    let connector = TestConnector::with_connection(|_: &Endpoint| Backend::Refusing);
    let pool = Pool::spawn(Box::pin(rx), connector, RoundRobin::new(), PoolConfig::new("alone"));
    assert!(pool.ready_timeout(Duration::from_secs(1)).await);
    let mut svc = Balance::new(pool).wait(Wait::at_most(Duration::from_millis(100)));
    let err = svc.ready().await.expect("ready").call("hi".to_string()).await.expect_err("nowhere to go");
    assert!(err.downcast_ref::<Unavailable>().is_some(), "{err}");
}

#[tokio::test(start_paused = true)]
async fn pick_or_wait_wakes_on_the_first_endpoint() {
    let (conn, [_handle]) = mocks([1]);
    let (tx, rx) = discover::channel();
    let pool = Pool::spawn(Box::pin(rx), conn, RoundRobin::new(), PoolConfig::new("later"));
    let wait = Wait::at_most(Duration::from_secs(10));
    let pick = tokio::spawn(pool.pick_or_wait(Default::default(), wait));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = tokio::time::Instant::now();
    tx.send(Update::Reset(vec![Endpoint::new(addr(1))]));
    let picked = pick.await.expect("joined").expect("picked once the endpoint arrived");
    assert_eq!(picked.endpoint.addr(), addr(1));
    assert_eq!(sent.elapsed(), Duration::ZERO, "woken by the snapshot, not by a timer");
}

#[tokio::test(start_paused = true)]
async fn circuit_breaking_refuses_at_once_and_recovers() {
    use futures_util::StreamExt;
    use lb_core::balance::error::Overloaded;
    use lb_core::balance::{Limit, Limits};
    let (conn, [mut h1, mut h2]) = mocks([1, 2]);
    let (tx, rx) = discover::channel();
    tx.send(Update::Reset(vec![Endpoint::new(addr(1)), Endpoint::new(addr(2))]));
    let pool = Pool::spawn(Box::pin(rx), conn, RoundRobin::new(), PoolConfig::new("bounded"));
    assert!(pool.ready_timeout(Duration::from_secs(1)).await);

    // At most 2 in flight for the target: the third call fails at once, without being sent.
    let svc = Balance::new(pool.clone()).limits(Limits { max_in_flight: Some(2), ..Limits::default() });
    let mut calls: futures_util::stream::FuturesUnordered<_> =
        ["a", "b"].into_iter().map(|m| tokio::spawn(svc.send(m.to_string()))).collect();
    let (_, r1) = h1.next_request().await.expect("one on each endpoint");
    let (_, r2) = h2.next_request().await.expect("one on each endpoint");
    let err = svc.send("c".to_string()).await.expect_err("over the bound");
    let o = err.downcast_ref::<Overloaded>().expect("typed");
    assert_eq!(o.limit(), Limit::InFlight);
    assert!(err.to_string().contains("max_in_flight"), "{err}");
    assert_eq!(svc.gate().expect("bounded").in_flight(), 2, "a refusal takes no slot");
    r1.send_response(addr(1));
    assert_eq!(calls.next().await.expect("a call").expect("joined").expect("answered"), addr(1));
    assert_eq!(svc.gate().expect("bounded").in_flight(), 1, "the slot comes back with the response");
    calls.push(tokio::spawn(svc.send("d".to_string())));
    let r3 = tokio::select! {
        r = h1.next_request() => r.expect("room again").1,
        r = h2.next_request() => r.expect("room again").1,
    };
    r2.send_response(addr(2));
    r3.send_response(addr(3));
    let mut answers: Vec<_> = Vec::new();
    while let Some(joined) = calls.next().await {
        answers.push(joined.expect("joined").expect("answered"));
    }
    answers.sort();
    assert_eq!(answers, vec![addr(2), addr(3)]);
    assert_eq!(svc.gate().expect("bounded").in_flight(), 0);

    // At most 1 in flight per endpoint: both endpoints busy, the next call fails at once.
    let svc = Balance::new(pool.clone()).limits(Limits { max_in_flight_per_endpoint: Some(1), ..Limits::default() });
    let a = tokio::spawn(svc.send("a".to_string()));
    let b = tokio::spawn(svc.send("b".to_string()));
    let (_, ra) = h1.next_request().await.expect("one on each");
    let (_, rb) = h2.next_request().await.expect("one on each");
    let err = svc.send("c".to_string()).await.expect_err("every endpoint at its bound");
    assert_eq!(err.downcast_ref::<Overloaded>().map(|o| o.limit()), Some(Limit::InFlightPerEndpoint), "{err}");
    ra.send_response(addr(1));
    rb.send_response(addr(2));
    a.await.expect("joined").expect("answered");
    b.await.expect("joined").expect("answered");
}

#[tokio::test(start_paused = true)]
async fn at_most_max_waiting_requests_wait_for_an_endpoint() {
    use lb_core::balance::error::Overloaded;
    use lb_core::balance::{Limit, Limits};
    let (conn, [h1]) = mocks([1]);
    serve(h1, addr(1));
    let (tx, rx) = discover::channel();
    let pool = Pool::spawn(Box::pin(rx), conn, RoundRobin::new(), PoolConfig::new("waiting"));
    let svc = Balance::new(pool).wait(Wait::at_most(Duration::from_secs(10))).limits(Limits { max_waiting: Some(1), ..Limits::default() });
    let waiting = tokio::spawn(svc.send("first".to_string()));
    // The first call is now waiting (no endpoint yet): it holds the one waiting slot.
    while svc.gate().expect("bounded").waiting() == 0 {
        tokio::task::yield_now().await;
    }
    let err = svc.send("second".to_string()).await.expect_err("no room to wait");
    assert_eq!(err.downcast_ref::<Overloaded>().map(|o| o.limit()), Some(Limit::Waiting), "{err}");
    tx.send(Update::Reset(vec![Endpoint::new(addr(1))]));
    assert_eq!(waiting.await.expect("joined").expect("served once the endpoint came"), addr(1));
    assert_eq!(svc.gate().expect("bounded").waiting(), 0, "the slot is given back");
}
