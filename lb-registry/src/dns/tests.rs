//! Tests of the DNS provider, with a scripted double of the system resolver.

use std::collections::HashMap;
use std::sync::Mutex;

use lb_core::EndpointId;

use super::*;

/// A scripted double of the system resolver: each name answers what the test last set, and every
/// call is recorded with its (tokio) time.
#[derive(Clone, Default)]
struct ScriptedResolver {
    script: Arc<Mutex<Script>>,
}

#[derive(Default)]
struct Script {
    answers: HashMap<String, Answer>,
    calls: Vec<(String, Instant)>,
}

#[derive(Clone)]
enum Answer {
    Addrs(Vec<IpAddr>),
    Fail,
    Hang,
}

impl ScriptedResolver {
    fn set(&self, host: &str, answer: Answer) {
        self.lock().answers.insert(host.to_string(), answer);
    }

    fn addrs(&self, host: &str, ips: &[&str]) {
        self.set(host, Answer::Addrs(ips.iter().map(|ip| ip.parse().expect("test IP")).collect()));
    }

    fn calls(&self, host: &str) -> Vec<Instant> {
        self.lock().calls.iter().filter(|(h, _)| h == host).map(|(_, at)| *at).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Lookup for ScriptedResolver {
    fn lookup(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        let answer = {
            let mut s = self.lock();
            s.calls.push((host.to_string(), Instant::now()));
            s.answers.get(host).cloned().unwrap_or(Answer::Fail)
        };
        Box::pin(async move {
            match answer {
                Answer::Addrs(ips) => Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect()),
                Answer::Fail => Err(io::Error::other("scripted failure (name not known)")),
                Answer::Hang => std::future::pending().await,
            }
        })
    }
}

const REFRESH: Duration = Duration::from_secs(10);

fn resolver(dns: &ScriptedResolver) -> DnsResolver {
    DnsResolver::builder().refresh(REFRESH).lookup(Arc::new(dns.clone())).build()
}

/// The next item within one refresh round: refresh + the largest jitter + a lookup that times
/// out + a margin. Shorter than two rounds (2 × refresh × 0.9).
async fn next_in_round(stream: &mut BoxDiscover) -> Option<Result<Update, BoxError>> {
    let round = REFRESH.mul_f64(1.0 + JITTER) + DEFAULT_LOOKUP_TIMEOUT + Duration::from_millis(500);
    tokio::time::timeout(round, stream.next())
        .await
        .ok()
        .flatten()
}

fn reset_addrs(item: Option<Result<Update, BoxError>>) -> Vec<String> {
    match item {
        Some(Ok(Update::Reset(eps))) => {
            for ep in &eps {
                assert_eq!(ep.id(), &EndpointId::from(ep.addr()), "ids are the socket address");
                assert_eq!(ep.weight(), Endpoint::DEFAULT_WEIGHT);
                assert!(ep.locality().zone.is_none());
            }
            eps.iter().map(|e| e.addr().to_string()).collect()
        }
        other => panic!("expected a reset, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn first_round_emits_the_union_then_only_changes() {
    let dns = ScriptedResolver::default();
    dns.addrs("a.test", &["10.0.0.2", "10.0.0.1"]);
    dns.addrs("b.test", &["10.0.0.3", "10.0.0.1", "fd00::1"]);
    let mut s = resolver(&dns).watch("a.test:80,b.test:80").expect("valid");

    // Deduplicated (10.0.0.1 is behind both names) and sorted.
    let first = reset_addrs(next_in_round(&mut s).await);
    assert_eq!(first, ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "[fd00::1]:80"]);

    // An unchanged round emits nothing, but it did run.
    assert!(next_in_round(&mut s).await.is_none(), "unchanged round emitted something");
    assert_eq!(dns.calls("a.test").len(), 2);

    // One address added, one removed: a reset whose unchanged members keep their ids.
    dns.addrs("a.test", &["10.0.0.1", "10.0.0.4"]);
    let second = reset_addrs(next_in_round(&mut s).await);
    assert_eq!(second, ["10.0.0.1:80", "10.0.0.3:80", "10.0.0.4:80", "[fd00::1]:80"]);
}

#[tokio::test(start_paused = true)]
async fn a_failing_name_keeps_its_addresses_while_the_others_update() {
    let dns = ScriptedResolver::default();
    dns.addrs("a.test", &["10.0.0.1"]);
    dns.addrs("b.test", &["10.0.0.2"]);
    let mut s = resolver(&dns).watch("a.test:80,b.test:80").expect("valid");
    assert_eq!(reset_addrs(next_in_round(&mut s).await), ["10.0.0.1:80", "10.0.0.2:80"]);

    dns.set("a.test", Answer::Fail);
    dns.addrs("b.test", &["10.0.0.3"]);
    assert_eq!(reset_addrs(next_in_round(&mut s).await), ["10.0.0.1:80", "10.0.0.3:80"]);

    // A lookup that never answers times out and counts as a failure too.
    dns.set("a.test", Answer::Hang);
    dns.addrs("b.test", &["10.0.0.4"]);
    assert_eq!(reset_addrs(next_in_round(&mut s).await), ["10.0.0.1:80", "10.0.0.4:80"]);
}

#[tokio::test(start_paused = true)]
async fn every_name_failing_is_an_error_not_an_empty_set() {
    let dns = ScriptedResolver::default();
    dns.set("a.test", Answer::Fail);
    dns.set("b.test", Answer::Hang);
    let mut s = resolver(&dns).watch("a.test:80,b.test:80").expect("valid");
    match next_in_round(&mut s).await {
        Some(Err(e)) => {
            let msg = e.to_string();
            assert!(msg.contains("a.test:80") && msg.contains("b.test:80") && msg.contains("no answer"), "{msg}");
        }
        other => panic!("expected an error, got {other:?}"),
    }

    // Once a name answers, its set arrives; when every name fails again, an error (the pool
    // keeps its set) and the next good round confirms the set although it did not change.
    dns.addrs("a.test", &["10.0.0.1"]);
    assert_eq!(reset_addrs(next_in_round(&mut s).await), ["10.0.0.1:80"]);
    dns.set("a.test", Answer::Fail);
    assert!(matches!(next_in_round(&mut s).await, Some(Err(_))));
    dns.addrs("a.test", &["10.0.0.1"]);
    assert!(matches!(next_in_round(&mut s).await, Some(Ok(Update::Current))), "unchanged: confirmed, not re-sent");
    dns.set("a.test", Answer::Fail);
    assert!(matches!(next_in_round(&mut s).await, Some(Err(_))));
    dns.addrs("a.test", &["10.0.0.2"]);
    assert_eq!(reset_addrs(next_in_round(&mut s).await), ["10.0.0.2:80"], "changed: the new set");
}

#[tokio::test(start_paused = true)]
async fn an_empty_answer_over_a_non_empty_set_needs_allow_empty() {
    for allow_empty in [false, true] {
        let dns = ScriptedResolver::default();
        dns.addrs("a.test", &["10.0.0.1"]);
        // Through the cache every `dns:///` target gets, configured by the same key.
        let target = Target::parse(&format!("dns:///a.test:80?allow_empty={allow_empty}")).expect("valid");
        let mut s = crate::cached(&target, resolver(&dns)).expect("valid");
        assert_eq!(reset_addrs(next_in_round(&mut s).await), ["10.0.0.1:80"]);

        dns.addrs("a.test", &[]);
        let item = next_in_round(&mut s).await;
        if allow_empty {
            assert!(reset_addrs(item).is_empty());
        } else {
            assert!(item.is_none(), "an empty reset went through: {item:?}");
            // The set comes back as soon as the name answers again.
            dns.addrs("a.test", &["10.0.0.2"]);
            assert_eq!(reset_addrs(next_in_round(&mut s).await), ["10.0.0.2:80"]);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn ip_literals_are_not_looked_up_and_family_filters_answers() {
    let dns = ScriptedResolver::default();
    dns.addrs("a.test", &["10.0.0.1", "fd00::1"]);
    let r = DnsResolver::builder().family(Family::Ipv6).lookup(Arc::new(dns.clone())).build();
    let mut s = r.watch("a.test:80,[fd00::9]:81").expect("valid");
    assert_eq!(reset_addrs(s.next().await), ["[fd00::1]:80", "[fd00::9]:81"]);
    assert!(dns.calls("fd00::9").is_empty());

    let err = r.watch("a.test:80,10.0.0.9:81").err().expect("IPv4 literal with family=ipv6");
    assert!(err.is_invalid_target(), "{err}");
}

#[tokio::test(start_paused = true)]
async fn re_resolves_every_refresh_with_jitter_and_stops_when_dropped() {
    let dns = ScriptedResolver::default();
    dns.addrs("a.test", &["10.0.0.1"]);
    let mut s = resolver(&dns).watch("a.test:80").expect("valid");
    assert!(matches!(s.next().await, Some(Ok(Update::Reset(_)))));

    // Nothing changes for about eight rounds.
    let quiet = tokio::time::timeout(REFRESH * 8, s.next()).await;
    assert!(quiet.is_err(), "nothing changed, yet: {quiet:?}");
    let calls = dns.calls("a.test");
    assert!((7..=9).contains(&calls.len()), "{} lookups in 8 refresh periods", calls.len());
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1] - w[0]).collect();
    for gap in &gaps {
        assert!(
            *gap >= REFRESH.mul_f64(1.0 - JITTER) && *gap <= REFRESH.mul_f64(1.0 + JITTER),
            "gap {gap:?} outside refresh ±10%"
        );
    }
    assert!(gaps.windows(2).any(|w| w[0] != w[1]), "no jitter: {gaps:?}");

    drop(s);
    let before = dns.calls("a.test").len();
    tokio::time::sleep(REFRESH * 5).await;
    assert_eq!(dns.calls("a.test").len(), before, "lookups went on after the stream was dropped");
}

#[tokio::test(start_paused = true)]
async fn failures_are_counted_by_reason() {
    use std::sync::atomic::{AtomicU64, Ordering};

    use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

    #[derive(Default)]
    struct Rec {
        error: Arc<AtomicU64>,
        timeout: Arc<AtomicU64>,
    }
    impl Recorder for Rec {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let label = |k: &str| key.labels().find(|l| l.key() == k).map(|l| l.value().to_string());
            match (key.name(), label("registry").as_deref(), label("reason").as_deref()) {
                (LOOKUP_FAILURES, Some("dns"), Some("error")) => Counter::from_arc(Arc::clone(&self.error)),
                (LOOKUP_FAILURES, Some("dns"), Some("timeout")) => Counter::from_arc(Arc::clone(&self.timeout)),
                _ => Counter::noop(),
            }
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    let dns = ScriptedResolver::default();
    dns.set("a.test", Answer::Fail);
    dns.set("b.test", Answer::Hang);
    dns.addrs("c.test", &["10.0.0.3"]);
    let cfg = Arc::clone(&resolver(&dns).cfg);
    let names = parse_names("a.test:80,b.test:80,c.test:80", Family::Any).expect("valid");
    // The uncached rounds, polled on this thread only, so the local recorder sees every count.
    let mut rounds = Rounds::new(cfg, names, Arc::from("dns:///test"));
    let rec = Rec::default();
    let update = {
        let _guard = metrics::set_default_local_recorder(&rec);
        rounds.next().await
    };
    assert_eq!(reset_addrs(Some(update)), ["10.0.0.3:80"]);
    assert_eq!((rec.error.load(Ordering::Relaxed), rec.timeout.load(Ordering::Relaxed)), (1, 1));
}

#[test]
fn target_parsing() {
    let names = parse_names("a.test:80, 10.0.0.1:81,[::1]:82,svc.ns.svc.cluster.local.:83,a.test:80", Family::Any)
        .expect("valid");
    assert_eq!(names.len(), 4, "the repeated name is looked up once");
    assert_eq!(names[0].host, Host::Dns("a.test".into()));
    assert_eq!(names[1].host, Host::Ip("10.0.0.1".parse().expect("ip")));
    assert_eq!((names[2].host.clone(), names[2].port), (Host::Ip("::1".parse().expect("ip")), 82));

    for (bad, says) in [
        ("a.test", "no port"),
        ("a.test:", "port"),
        ("a.test:http", "port"),
        ("a.test:70000", "port"),
        ("a.test:0", "port"),
        ("[::1]", "no port"),
        ("[::1]:", "port"),
        ("[nope]:80", "IPv6"),
        ("::1:80", "brackets"),
        ("a b:80", "host name"),
        (":80", "host name"),
        ("", "at least one"),
    ] {
        let err = parse_names(bad, Family::Any).expect_err(bad);
        assert!(err.is_invalid_target() && err.to_string().contains(says), "{bad}: {err}");
    }
}

#[test]
fn target_options() {
    let t = Target::parse("dns:///a.test:80?refresh=5s&allow_empty=true&family=ipv4").expect("valid");
    let b = DnsResolverBuilder::from_target(&t).expect("valid");
    assert_eq!((b.refresh, b.family), (Duration::from_secs(5), Family::Ipv4));

    let t = Target::parse("dns:///a.test:80").expect("valid");
    let b = DnsResolverBuilder::from_target(&t).expect("valid");
    assert_eq!((b.refresh, b.family), (DEFAULT_REFRESH, Family::Any));

    for (bad, says) in [
        ("dns://8.8.8.8/a.test:80", "system resolver"),
        ("dns:///a.test:80?refresh=soon", "not a duration"),
        ("dns:///a.test:80?refresh=200ms", "1s minimum"),
        ("dns:///a.test:80?allow_empty=maybe", "true or false"),
        ("dns:///a.test:80?family=ipv5", "ipv4, ipv6 or any"),
        ("dns:///a.test:80?refrsh=5s", "no option `refrsh`"),
    ] {
        let t = Target::parse(bad).expect("parses as a URI");
        let err = DnsResolverBuilder::from_target(&t).expect_err(bad);
        assert!(err.is_invalid_target() && err.to_string().contains(says), "{bad}: {err}");
    }
    // The builder clamps instead.
    assert_eq!(DnsResolver::builder().refresh(Duration::ZERO).refresh, MIN_REFRESH);
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_serves_the_last_addresses_when_no_name_resolves_at_start() {
    let dir = std::env::temp_dir().join(format!("lb-dns-snapshot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("greeter.json");
    let target = Target::parse(&format!("dns:///a.test:80?snapshot={}", path.display())).expect("valid");

    // A first run: the name resolves, and the client stops right after its first set.
    let dns = ScriptedResolver::default();
    dns.addrs("a.test", &["10.0.0.1", "10.0.0.2"]);
    let mut first = crate::cached(&target, resolver(&dns)).expect("valid");
    assert_eq!(reset_addrs(next_in_round(&mut first).await), ["10.0.0.1:80", "10.0.0.2:80"]);
    drop(first);

    // The next start: DNS answers nothing, the file's set is served at once, then the error.
    dns.set("a.test", Answer::Fail);
    let mut second = crate::cached(&target, resolver(&dns)).expect("valid");
    assert_eq!(reset_addrs(second.next().await), ["10.0.0.1:80", "10.0.0.2:80"]);
    assert!(matches!(next_in_round(&mut second).await, Some(Err(_))), "the lookup failure is still reported");

    // Once the name resolves, its answer replaces the file's set.
    dns.addrs("a.test", &["10.0.0.3"]);
    assert_eq!(reset_addrs(next_in_round(&mut second).await), ["10.0.0.3:80"]);
    let _ = std::fs::remove_dir_all(&dir);
}
