//! The blocking-query rules on a paused clock, against a scripted server.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;

use super::*;

#[derive(Clone)]
enum Step {
    /// Answer after `delay` with this index and these ports.
    Answer { delay: Duration, index: u64, ports: Vec<u16> },
    /// Answer 200 with a body that is not JSON.
    Garbage,
    /// Answer at once with these ports but no `X-Consul-Index` header.
    NoIndex(Vec<u16>),
    /// Fail with a transport error.
    Fail,
    /// Answer at once, as Consul does for a token that may not see these ports: `[]`, the index,
    /// and `X-Consul-Results-Filtered-By-ACLs: true`.
    Filtered { index: u64 },
    /// Answer at once with these ports and `X-Consul-Default-ACL-Policy: deny`, no filter header
    /// (what a request without a token gets; empty when the anonymous token may not read).
    DefaultDeny { index: u64, ports: Vec<u16> },
}

fn reply(index: Option<u64>, body: Bytes) -> Reply {
    Reply { status: StatusCode::OK, index, acl_filtered: false, default_deny: false, body }
}

#[derive(Default)]
struct Script {
    steps: Mutex<VecDeque<Step>>,
    /// (index asked, wait asked, when).
    log: Mutex<Vec<(u64, Duration, Instant)>>,
}

struct Scripted(Arc<Script>);

fn body(ports: &[u16]) -> Bytes {
    let entries: Vec<_> = ports
        .iter()
        .map(|p| serde_json::json!({"Node": {"Node": "n"}, "Service": {"ID": format!("s{p}"), "Address": "127.0.0.1", "Port": p}}))
        .collect();
    Bytes::from(serde_json::Value::Array(entries).to_string())
}

impl Fetch for Scripted {
    fn fetch(&self, index: u64, wait: Duration) -> BoxFuture<'static, Result<Reply, BoxError>> {
        let script = Arc::clone(&self.0);
        Box::pin(async move {
            script.log.lock().expect("log").push((index, wait, Instant::now()));
            let step = script.steps.lock().expect("steps").pop_front();
            match step {
                Some(Step::Answer { delay, index, ports }) => {
                    tokio::time::sleep(delay).await;
                    Ok(reply(Some(index), body(&ports)))
                }
                Some(Step::Garbage) => Ok(reply(Some(index), Bytes::from_static(b"<html>"))),
                Some(Step::Fail) => Err("connection refused".into()),
                Some(Step::NoIndex(ports)) => Ok(reply(None, body(&ports))),
                Some(Step::Filtered { index }) => Ok(Reply { acl_filtered: true, default_deny: true, ..reply(Some(index), body(&[])) }),
                Some(Step::DefaultDeny { index, ports }) => Ok(Reply { default_deny: true, ..reply(Some(index), body(&ports)) }),
                // A real server with nothing new: holds the query for the whole wait.
                None => {
                    tokio::time::sleep(wait).await;
                    Ok(reply(Some(index), body(&[1])))
                }
            }
        })
    }
}

fn watch(steps: Vec<Step>) -> (Watch, Arc<Script>) {
    let script = Arc::new(Script { steps: Mutex::new(steps.into()), ..Script::default() });
    let cfg = WatchConfig { wait: Duration::from_secs(16), seed: Some(7), ..WatchConfig::default() };
    (Watch::new(Box::new(Scripted(Arc::clone(&script))), "svc", cfg), script)
}

fn answer(index: u64, ports: &[u16]) -> Step {
    Step::Answer { delay: Duration::from_millis(5), index, ports: ports.to_vec() }
}

fn ports(update: &Update) -> Vec<u16> {
    match update {
        Update::Reset(list) => list.iter().map(|e| e.addr().port()).collect(),
        other => panic!("expected a reset, got {other:?}"),
    }
}

fn asked(script: &Script) -> Vec<u64> {
    script.log.lock().expect("log").iter().map(|(i, _, _)| *i).collect()
}

#[tokio::test(start_paused = true)]
async fn follows_the_index_and_resets_it_when_it_goes_backwards() {
    let (mut w, script) = watch(vec![answer(50, &[1]), answer(60, &[1, 2]), answer(7, &[2]), answer(9, &[2, 3])]);
    assert_eq!(ports(&w.next().await.expect("first")), vec![1]);
    assert_eq!(ports(&w.next().await.expect("second")), vec![1, 2]);
    assert_eq!(ports(&w.next().await.expect("backwards answer still applies")), vec![2]);
    assert_eq!(ports(&w.next().await.expect("fourth")), vec![2, 3]);
    assert_eq!(asked(&script), vec![0, 50, 60, 0], "index 7 < 60 restarts from 0");
}

#[tokio::test(start_paused = true)]
async fn an_index_of_zero_is_raised_to_one() {
    let (mut w, script) = watch(vec![answer(0, &[1]), answer(3, &[1, 2])]);
    w.next().await.expect("first");
    w.next().await.expect("second");
    assert_eq!(asked(&script), vec![0, 1]);
}

#[tokio::test(start_paused = true)]
async fn a_server_that_does_not_block_is_not_hammered() {
    // 200 answers at once with the same index: a server (or proxy) ignoring `index`.
    let same: Vec<Step> = std::iter::once(answer(5, &[1]))
        .chain(std::iter::repeat_n(Step::Answer { delay: Duration::ZERO, index: 5, ports: vec![1] }, 200))
        .collect();
    let (mut w, script) = watch(same);
    w.next().await.expect("first");
    let start = Instant::now();
    // Nothing changes, so `next` keeps querying; give it 60 virtual seconds.
    let _ = tokio::time::timeout(Duration::from_secs(60), w.next()).await;
    let n = asked(&script).len();
    assert!(n <= 12, "{n} queries in 60 s against a non-blocking server");
    assert!(n >= 4, "it must keep trying ({n} queries)");
    assert!(start.elapsed() >= Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn unchanged_answers_are_not_reported_and_waits_are_jittered() {
    let (mut w, script) = watch(vec![answer(5, &[1])]);
    w.next().await.expect("first");
    // Every later answer is the scripted "nothing new after the full wait".
    let _ = tokio::time::timeout(Duration::from_secs(100), w.next()).await;
    let log = script.log.lock().expect("log").clone();
    assert!(log.len() >= 6, "{} queries", log.len());
    for (index, wait, _) in &log[1..] {
        assert_eq!(*index, 5);
        assert!(*wait <= Duration::from_secs(16) && *wait >= Duration::from_secs(15), "{wait:?}");
    }
    let distinct: std::collections::BTreeSet<_> = log[1..].iter().map(|(_, w, _)| *w).collect();
    assert!(distinct.len() > 1, "the wait is jittered");
}

#[tokio::test(start_paused = true)]
async fn errors_back_off_resync_without_blocking_and_reconfirm_the_set() {
    let steps = vec![answer(5, &[1]), Step::Fail, Step::Fail, Step::Garbage, Step::Fail, answer(5, &[1])];
    let (mut w, script) = watch(steps);
    w.next().await.expect("first");
    for _ in 0..4 {
        assert!(w.next().await.is_err());
    }
    let update = w.next().await.expect("recovered");
    assert_eq!(update, Update::Current, "the unchanged set is confirmed, not sent again");
    let log = script.log.lock().expect("log").clone();
    assert_eq!(log.iter().map(|(i, _, _)| *i).collect::<Vec<_>>(), vec![0, 5, 0, 0, 0, 0]);
    let gaps: Vec<Duration> = log.windows(2).map(|p| p[1].2 - p[0].2).collect();
    assert!(gaps[2] > gaps[1] && gaps[3] > gaps[2], "backoff grows: {gaps:?}");
}

#[tokio::test(start_paused = true)]
async fn a_churning_service_is_rate_limited_after_a_burst() {
    // Every answer carries a new index and a new set: a service changing all the time.
    let churn: Vec<Step> = (1..=400)
        .map(|i| Step::Answer { delay: Duration::ZERO, index: 10 + i, ports: vec![(i % 7 + 1) as u16] })
        .collect();
    let (mut w, script) = watch(churn);
    let start = Instant::now();
    for _ in 0..5 {
        w.next().await.expect("change");
    }
    assert_eq!(start.elapsed(), Duration::ZERO, "a burst of changes goes through at once");
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let _ = w.next().await;
        }
    })
    .await;
    let n = asked(&script).len();
    // 5 at once, then one per 100 ms.
    assert!((100..=106).contains(&n), "{n} queries in 10 s");
}

#[tokio::test(start_paused = true)]
async fn answers_without_an_index_are_applied_and_polled_slowly() {
    let (mut w, script) = watch(vec![Step::NoIndex(vec![1, 2]); 100]);
    assert_eq!(ports(&w.next().await.expect("the data is applied")), vec![1, 2]);
    let _ = tokio::time::timeout(Duration::from_secs(60), w.next()).await;
    let log = asked(&script);
    assert!(log.iter().all(|i| *i == 0), "nothing to block on: {log:?}");
    assert!(log.len() <= 12, "{} polls in a minute", log.len());
}

#[tokio::test(start_paused = true)]
async fn a_changed_set_after_errors_is_a_reset_and_an_unchanged_answer_without_errors_is_silent() {
    let (mut w, _script) = watch(vec![answer(5, &[1]), Step::Fail, answer(6, &[1, 2]), answer(7, &[1, 2]), answer(8, &[3])]);
    w.next().await.expect("first");
    assert!(w.next().await.is_err());
    assert_eq!(ports(&w.next().await.expect("recovered with news")), vec![1, 2]);
    // Index 7 repeats the set with no error before it: nothing to say; index 8 changes it.
    assert_eq!(ports(&w.next().await.expect("change")), vec![3]);
}

#[tokio::test(start_paused = true)]
async fn an_acl_filtered_answer_is_an_error_naming_the_token_and_the_index_keeps_blocking() {
    let steps = vec![answer(5, &[1, 2]), Step::Filtered { index: 6 }, Step::Filtered { index: 6 }, answer(7, &[1, 2])];
    let (w, script) = watch(steps);
    let mut w = w.with_token(Some("the ACL token …3f9a (from CONSUL_HTTP_TOKEN)".into()));
    assert_eq!(ports(&w.next().await.expect("first")), vec![1, 2]);
    for _ in 0..2 {
        let err = w.next().await.expect_err("a filtered answer is not a set");
        let message = err.to_string();
        assert!(err.is::<AclDenied>(), "{message}");
        assert!(message.contains("…3f9a (from CONSUL_HTTP_TOKEN)") && message.contains("service:read"), "{message}");
    }
    // The same set again after the filtered answers: confirmed, not re-sent.
    assert_eq!(w.next().await.expect("the token works again"), Update::Current);
    // Unlike a failure, a filtered answer leaves the index in place: the next query blocks on it.
    assert_eq!(asked(&script), vec![0, 5, 6, 6]);
}

#[tokio::test(start_paused = true)]
async fn an_empty_answer_without_a_token_from_a_deny_by_default_agent_is_an_error_until_a_first_set() {
    let steps = vec![
        Step::DefaultDeny { index: 3, ports: vec![] },
        Step::DefaultDeny { index: 4, ports: vec![1] },
        Step::DefaultDeny { index: 5, ports: vec![] },
    ];
    let (mut w, _script) = watch(steps);
    let err = w.next().await.expect_err("nothing visible without a token at cold start");
    assert!(err.is::<AclDenied>() && err.to_string().contains("without an ACL token"), "{err}");
    assert_eq!(ports(&w.next().await.expect("the anonymous token may read it after all")), vec![1]);
    // After a first set an empty answer may be a service scaled to zero: the cache's rule applies.
    assert_eq!(ports(&w.next().await.expect("empty")), Vec::<u16>::new());
}
