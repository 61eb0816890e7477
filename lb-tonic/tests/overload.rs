//! Overload safety through real tonic servers on loopback: retry budgets and gRPC retry
//! throttling, server pushback, hedged calls (never the same endpoint twice, losers cancelled),
//! and circuit breaking.

mod support;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lb_core::policy::RoundRobin;
use lb_tonic::{grpc_codes, HedgeDelay, HedgePolicy, LbChannel, RetryBudget, RetryPolicy};
use support::lbtest::echo_client::EchoClient;
use support::lbtest::echo_server::{Echo, EchoServer};
use support::lbtest::{EchoReply, EchoRequest};
use tokio::sync::Notify;
use tonic::{Code, Request, Response, Status};

/// What a scripted backend does with a call.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Answers at once.
    Answer,
    /// Answers with this code; with `grpc-retry-pushback-ms` when given.
    Fail(Code, Option<i64>),
    /// Never answers: the call ends only when the client cancels it.
    Stall,
}

/// One call as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    message: String,
    /// The `grpc-previous-rpc-attempts` header, if any.
    previous: Option<String>,
    at: tokio::time::Instant,
}

#[derive(Clone)]
struct Scripted {
    addr: SocketAddr,
    mode: Arc<Mutex<Vec<Mode>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    cancelled: Arc<AtomicUsize>,
    events: Arc<Notify>,
}

/// Counts a call the client cancelled (its handler dropped before the end).
struct CancelGuard {
    cancelled: Arc<AtomicUsize>,
    events: Arc<Notify>,
    done: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.done {
            self.cancelled.fetch_add(1, Ordering::SeqCst);
            self.events.notify_waiters();
        }
    }
}

type ReplyStream = Pin<Box<dyn futures_util::Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for Scripted {
    async fn unary(&self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let previous = req
            .metadata()
            .get("grpc-previous-rpc-attempts")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let message = req.into_inner().message;
        // The script's first entry is used once per call while more than one is left; the last
        // entry repeats.
        let mode = {
            let mut modes = self.mode.lock().expect("not poisoned");
            if modes.len() > 1 {
                modes.remove(0)
            } else {
                modes[0]
            }
        };
        self.seen.lock().expect("not poisoned").push(Seen {
            message: message.clone(),
            previous,
            at: tokio::time::Instant::now(),
        });
        self.events.notify_waiters();
        match mode {
            Mode::Answer => Ok(Response::new(EchoReply {
                backend: self.addr.to_string(),
                message,
            })),
            Mode::Fail(code, pushback) => {
                let mut status = Status::new(code, format!("failed on purpose at {}", self.addr));
                if let Some(ms) = pushback {
                    status.metadata_mut().insert("grpc-retry-pushback-ms", ms.to_string().parse().expect("ascii"));
                }
                Err(status)
            }
            Mode::Stall => {
                let mut guard = CancelGuard {
                    cancelled: self.cancelled.clone(),
                    events: self.events.clone(),
                    done: false,
                };
                std::future::pending::<()>().await;
                guard.done = true;
                unreachable!("a stalled call ends only by cancellation")
            }
        }
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(&self, _: Request<EchoRequest>) -> Result<Response<ReplyStream>, Status> {
        Err(Status::unimplemented("not scripted"))
    }
}

/// A tonic server on 127.0.0.1 following a script.
struct Backend {
    addr: SocketAddr,
    svc: Scripted,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    async fn start(modes: Vec<Mode>) -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound socket has an address");
        let svc = Scripted {
            addr,
            mode: Arc::new(Mutex::new(modes)),
            seen: Arc::default(),
            cancelled: Arc::default(),
            events: Arc::default(),
        };
        let server = EchoServer::new(svc.clone());
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder().add_service(server).serve_with_incoming(incoming).await;
        });
        Backend { addr, svc, task }
    }

    fn set(&self, mode: Mode) {
        *self.svc.mode.lock().expect("not poisoned") = vec![mode];
    }

    fn seen(&self) -> Vec<Seen> {
        self.svc.seen.lock().expect("not poisoned").clone()
    }

    fn received(&self) -> usize {
        self.svc.seen.lock().expect("not poisoned").len()
    }

    fn cancelled(&self) -> usize {
        self.svc.cancelled.load(Ordering::SeqCst)
    }

    /// Waits until `done(self)` holds, woken by each call the server receives or sees cancelled.
    async fn until(&self, what: &str, done: impl Fn(&Backend) -> bool) {
        let wait = async {
            loop {
                let event = self.svc.events.notified();
                if done(self) {
                    return;
                }
                event.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), wait).await.is_err() {
            panic!("{what}: not after 10 s ({} received, {} cancelled)", self.received(), self.cancelled());
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn target(backends: &[&Backend]) -> String {
    let list: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    format!("static:///{}", list.join(","))
}

fn request(message: &str) -> EchoRequest {
    EchoRequest {
        message: message.to_string(),
        ..Default::default()
    }
}

async fn channel(builder: lb_tonic::Builder, backends: &[&Backend]) -> LbChannel {
    let channel = builder
        // Failing on purpose must not eject anyone: these tests count what the servers receive.
        .outlier_detection(None)
        .overload_penalty_cap(None)
        .build_from_target(&target(backends))
        .expect("valid target");
    support::wait_healthy(&channel, backends.len(), Duration::from_secs(5)).await;
    channel
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_budget_bounds_what_a_failing_service_receives() {
    let b = Backend::start(vec![Mode::Fail(Code::Unavailable, None)]).await;
    let retry = RetryPolicy::new(5).backoff(Duration::from_millis(1));

    // Without a budget every call is sent five times.
    let unbounded = channel(LbChannel::builder().retry(retry.clone()).retry_budget(RetryBudget::unlimited()), &[&b]).await;
    let mut client = EchoClient::new(unbounded.clone());
    for i in 0..20 {
        let status = client.unary(request(&format!("u{i}"))).await.expect_err("fails every time");
        assert_eq!(status.code(), Code::Unavailable);
    }
    assert_eq!(b.received(), 100, "20 calls × 5 attempts");

    // A budget of 0.2 with no floor: retries add at most a fifth of the calls.
    let budget = RetryBudget::ratio(0.2).min_per_second(0);
    let bounded = channel(LbChannel::builder().retry(retry).retry_budget(budget), &[&b]).await;
    let mut client = EchoClient::new(bounded.clone());
    for i in 0..100 {
        let status = client.unary(request(&format!("b{i}"))).await.expect_err("fails every time");
        assert_eq!(status.code(), Code::Unavailable, "a spent budget leaves the original error");
    }
    let counters = bounded.client().retry_budget().expect("a retry policy is set");
    let received = b.received() - 100;
    assert_eq!(received as u64, 100 + counters.retries(), "every retry the budget allowed reached the server");
    assert!(counters.retries() <= 20, "at most 0.2 × 100 retries, got {}", counters.retries());
    assert!(counters.retries() >= 15, "the budget was used, got {}", counters.retries());
    assert!(counters.exhausted() > 0, "refusals are counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_throttling_follows_a6_tokens() {
    let b = Backend::start(vec![Mode::Fail(Code::Unavailable, None)]).await;
    let channel = channel(
        LbChannel::builder()
            .retry(RetryPolicy::new(5).backoff(Duration::from_millis(1)))
            .retry_budget(RetryBudget::throttle(10, 0.1)),
        &[&b],
    )
    .await;
    let mut client = EchoClient::new(channel.clone());
    // 10 tokens: four failures leave 6 (retries allowed above 5); the fifth attempt is the last.
    client.unary(request("first")).await.expect_err("fails");
    assert_eq!(b.received(), 5);
    // 5 tokens: this call's failure leaves 4, not above half: no retry.
    client.unary(request("second")).await.expect_err("fails");
    assert_eq!(b.received(), 6);
    assert_eq!(channel.client().retry_budget().and_then(|c| c.tokens()), Some(4.0));
    // Successes give 0.1 back each: 21 bring 4 to 6.1; a failure takes it to 5.1, still above
    // half, so it is retried once; the retry's failure leaves 4.1, and that is the end.
    b.set(Mode::Answer);
    for i in 0..21 {
        client.unary(request(&format!("ok{i}"))).await.expect("answers");
    }
    b.set(Mode::Fail(Code::Unavailable, None));
    client.unary(request("third")).await.expect_err("fails");
    assert_eq!(b.received(), 6 + 21 + 2);
    let tokens = channel.client().retry_budget().and_then(|c| c.tokens()).expect("a throttle");
    assert!((tokens - 4.1).abs() < 1e-9, "{tokens}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushback_sets_the_delay_and_a_negative_one_stops_retries() {
    let b = Backend::start(vec![Mode::Fail(Code::Unavailable, Some(300)), Mode::Answer]).await;
    let channel = channel(
        LbChannel::builder().retry(RetryPolicy::new(3).backoff(Duration::from_millis(1))),
        &[&b],
    )
    .await;
    let mut client = EchoClient::new(channel);
    let reply = client.unary(request("pushed")).await.expect("the retry succeeds");
    assert_eq!(reply.into_inner().message, "pushed");
    let seen = b.seen();
    assert_eq!(seen.len(), 2);
    let gap = seen[1].at - seen[0].at;
    assert!(gap >= Duration::from_millis(300), "retried after {gap:?}, before the server's 300 ms");
    assert_eq!(seen[0].previous, None);
    assert_eq!(seen[1].previous.as_deref(), Some("1"), "a retry says how many attempts came before");

    b.set(Mode::Fail(Code::Unavailable, Some(-1)));
    let status = client.unary(request("stop")).await.expect_err("fails");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(b.received(), 3, "a negative pushback is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_prefer_an_endpoint_the_call_has_not_tried() {
    let bs = [
        Backend::start(vec![Mode::Fail(Code::Unavailable, None)]).await,
        Backend::start(vec![Mode::Fail(Code::Unavailable, None)]).await,
        Backend::start(vec![Mode::Fail(Code::Unavailable, None)]).await,
    ];
    let refs: Vec<&Backend> = bs.iter().collect();
    let channel = channel(
        LbChannel::builder()
            .policy(RoundRobin::new())
            .retry(RetryPolicy::new(3).backoff(Duration::from_millis(1)))
            .retry_budget(RetryBudget::unlimited()),
        &refs,
    )
    .await;
    let mut client = EchoClient::new(channel);
    for i in 0..10 {
        client.unary(request(&format!("c{i}"))).await.expect_err("fails everywhere");
    }
    for b in &bs {
        let seen = b.seen();
        let mut calls: Vec<&str> = seen.iter().map(|s| s.message.as_str()).collect();
        calls.sort_unstable();
        let before = calls.len();
        calls.dedup();
        assert_eq!(calls.len(), before, "{} got one call twice: {seen:?}", b.addr);
        assert_eq!(before, 10, "each call's three attempts went to three backends");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedges_go_elsewhere_the_first_answer_wins_and_losers_are_cancelled() {
    let slow = Backend::start(vec![Mode::Stall]).await;
    let fast = [Backend::start(vec![Mode::Answer]).await, Backend::start(vec![Mode::Answer]).await];
    let channel = channel(
        LbChannel::builder()
            .policy(RoundRobin::new())
            .hedge(HedgePolicy::new(3, HedgeDelay::Fixed(Duration::from_millis(50))).every_call())
            .retry_budget(RetryBudget::unlimited()),
        &[&slow, &fast[0], &fast[1]],
    )
    .await;
    let mut client = EchoClient::new(channel.clone());
    for i in 0..30 {
        let reply = client.unary(request(&format!("h{i}"))).await.expect("a hedge answers");
        assert_ne!(reply.into_inner().backend, slow.addr.to_string(), "the stalled backend never answers");
    }
    // Round robin sends every third first attempt to the stalled backend: each was hedged and,
    // once the hedge answered, cancelled — the server sees every one of them end.
    let stalled_first = slow.seen().iter().filter(|s| s.previous.is_none()).count();
    assert!(stalled_first >= 5, "the stalled backend took its share of first attempts: {stalled_first}");
    slow.until("every stalled call cancelled", |b| b.cancelled() == b.received()).await;
    let hedges = channel.client().retry_budget().map(|c| c.hedges()).unwrap_or_default();
    assert!(hedges as usize >= stalled_first, "{hedges} hedges for {stalled_first} stalled first attempts");
    // A hedge never went where its call had been, and says which attempt it is.
    for b in [&slow, &fast[0], &fast[1]] {
        let seen = b.seen();
        let mut calls: Vec<&str> = seen.iter().map(|s| s.message.as_str()).collect();
        let before = calls.len();
        calls.sort_unstable();
        calls.dedup();
        assert_eq!(calls.len(), before, "{} got one call twice: {seen:?}", b.addr);
        assert!(seen.iter().all(|s| matches!(s.previous.as_deref(), None | Some("1") | Some("2"))), "{seen:?}");
    }
    let hedged: usize = fast.iter().map(|b| b.seen().iter().filter(|s| s.previous.is_some()).count()).sum();
    assert!(hedged >= stalled_first, "every stalled call's hedge reached a live backend");
    let in_flight: u32 = channel.endpoints().iter().map(|e| e.in_flight).sum();
    assert_eq!(in_flight, 0, "the cancelled attempts' load was released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_hedged_at_most_once_per_endpoint() {
    let a = Backend::start(vec![Mode::Stall]).await;
    let b = Backend::start(vec![Mode::Stall]).await;
    let channel = channel(
        LbChannel::builder()
            .hedge(HedgePolicy::new(5, HedgeDelay::Fixed(Duration::from_millis(10))).every_call())
            .request_timeout(Duration::from_millis(500)),
        &[&a, &b],
    )
    .await;
    let status = EchoClient::new(channel.clone()).unary(request("one")).await.expect_err("nobody answers");
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(a.received() + b.received(), 2, "two endpoints, two attempts, though five were allowed");
    assert_eq!((a.received(), b.received()), (1, 1));
    a.until("the attempt cancelled with the call", |s| s.cancelled() == 1).await;
    b.until("the attempt cancelled with the call", |s| s.cancelled() == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_calls_marked_hedgeable_are_hedged_by_default() {
    let a = Backend::start(vec![Mode::Stall, Mode::Answer]).await;
    let b = Backend::start(vec![Mode::Answer]).await;
    let channel = channel(
        LbChannel::builder()
            .policy(RoundRobin::new())
            .hedge(HedgePolicy::new(2, HedgeDelay::Fixed(Duration::from_millis(10))))
            .request_timeout(Duration::from_millis(300)),
        &[&a, &b],
    )
    .await;
    let mut client = EchoClient::new(channel);
    // Unmarked: whichever endpoint the first attempt went to is the only one.
    let mut results = Vec::new();
    for i in 0..2 {
        results.push(client.unary(request(&format!("plain{i}"))).await.map(|r| r.into_inner().backend));
    }
    assert_eq!(a.received() + b.received(), 2, "no hedge: {results:?}");
    let timed_out = results.iter().filter(|r| r.as_ref().is_err_and(|s| s.code() == Code::DeadlineExceeded)).count();
    assert_eq!(timed_out, 1, "the call that met the stall waited for it: {results:?}");

    // Marked: hedged.
    a.svc.mode.lock().expect("not poisoned").splice(0..0, [Mode::Stall, Mode::Stall]);
    for i in 0..2 {
        let mut req = Request::new(request(&format!("marked{i}")));
        req.extensions_mut().insert(lb_tonic::Hedgeable);
        client.unary(req).await.expect("the hedge answers");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaking_fails_overflow_at_once_and_recovers() {
    let b = Backend::start(vec![Mode::Stall]).await;
    let channel = channel(LbChannel::builder().max_in_flight(4), &[&b]).await;
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let mut client = EchoClient::new(channel.clone());
            tokio::spawn(async move { client.unary(request(&format!("stuck{i}"))).await })
        })
        .collect();
    b.until("four calls stalled on the server", |s| s.received() == 4).await;
    let status = EchoClient::new(channel.clone()).unary(request("over")).await.expect_err("over the bound");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("max_in_flight"), "{status:?}");
    assert_eq!(b.received(), 4, "the refused call was never sent");

    // The callers give up: their slots come back, and the server sees the cancellations.
    for c in &calls {
        c.abort();
    }
    b.until("the stalled calls cancelled", |s| s.cancelled() == 4).await;
    b.set(Mode::Answer);
    let mut client = EchoClient::new(channel.clone());
    for i in 0..8 {
        client.unary(request(&format!("after{i}"))).await.expect("room again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_fatal_failure_sends_the_next_hedge_at_once() {
    let failing = Backend::start(vec![Mode::Fail(Code::Unavailable, None)]).await;
    let answering = Backend::start(vec![Mode::Answer]).await;
    // A hedging delay far beyond the call's timeout: only a non-fatal failure can send the hedge
    // in time.
    let channel = channel(
        LbChannel::builder()
            .policy(RoundRobin::new())
            .hedge(
                HedgePolicy::new(2, HedgeDelay::Fixed(Duration::from_secs(60)))
                    .non_fatal(grpc_codes([Code::Unavailable]))
                    .every_call(),
            )
            .request_timeout(Duration::from_secs(5)),
        &[&failing, &answering],
    )
    .await;
    let mut client = EchoClient::new(channel);
    for i in 0..4 {
        let reply = client.unary(request(&format!("n{i}"))).await.expect("the hedge answers");
        assert_eq!(reply.into_inner().backend, answering.addr.to_string());
    }
    // Round robin alternates, and each hedge takes the answering backend's turn: after the first
    // call every call starts on the failing backend, and is hedged at once.
    assert!(failing.received() >= 3, "{} calls met the failing backend", failing.received());
    assert_eq!(answering.received(), 4, "each call reached the answering backend once");

    // A fatal code ends the call with it.
    failing.set(Mode::Fail(Code::NotFound, None));
    let mut outcomes = Vec::new();
    for i in 0..2 {
        outcomes.push(client.unary(request(&format!("f{i}"))).await.map(|_| ()).map_err(|s| s.code()));
    }
    assert!(outcomes.contains(&Err(Code::NotFound)), "{outcomes:?}");
}
