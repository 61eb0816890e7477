use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;
use lb_core::discover::{channel, Updater};
use lb_core::Locality;

use super::snapshot::{write_atomically, SNAPSHOT_VERSION};
use super::*;
use crate::document::EndpointDocument;

fn ep(port: u16) -> Endpoint {
    Endpoint::new(([127, 0, 0, 1], port).into())
}

fn ids(update: &Update) -> Vec<u16> {
    match update {
        Update::Reset(l) | Update::Add(l) => l.iter().map(|e| e.addr().port()).collect(),
        Update::Remove(ids) => ids.iter().map(|i| i.as_str().rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0)).collect(),
        Update::Current => Vec::new(),
    }
}

async fn recv(c: &mut Cached) -> Result<Update, BoxError> {
    tokio::time::timeout(Duration::from_secs(5), c.next())
        .await
        .expect("the cache forwards within 5 s")
        .expect("the cache stream does not end")
}

/// Lets the cache task run to quiescence without moving the paused clock.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lb-cache-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir.join("snapshot.json")
}

#[tokio::test(start_paused = true)]
async fn keeps_the_set_across_errors_and_reports_staleness() {
    let (tx, rx) = channel();
    let mut cached = Cache::builder().name("t").wrap(Box::pin(rx));
    let handle = cached.handle();
    assert_eq!(handle.staleness(), None, "no data yet");

    tx.send(Update::Reset(vec![ep(1), ep(2)]));
    assert_eq!(ids(&recv(&mut cached).await.expect("reset")), vec![1, 2]);
    assert!(handle.is_fresh());

    tx.send_error("registry unreachable");
    assert!(recv(&mut cached).await.is_err(), "errors are forwarded for the pool's metrics");
    tokio::time::advance(Duration::from_secs(42)).await;
    let stale = handle.staleness().expect("has data");
    assert!(stale >= Duration::from_secs(42) && stale < Duration::from_secs(43), "{stale:?}");
    assert_eq!(handle.len(), 2, "set kept");

    // The source ending is an outage too; the set stays.
    drop(tx);
    settle().await;
    assert_eq!(handle.len(), 2);

    // `Current` after an error: the source is back and vouches for the set; fresh again.
    let (tx2, rx2) = channel();
    let mut cached2 = Cache::builder().wrap(Box::pin(rx2));
    let h2 = cached2.handle();
    tx2.send(Update::Reset(vec![ep(1)]));
    recv(&mut cached2).await.expect("reset");
    tx2.send_error("blip");
    recv(&mut cached2).await.expect_err("error");
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(!h2.is_fresh());
    tx2.send(Update::Current);
    assert_eq!(recv(&mut cached2).await.expect("confirmation"), Update::Current, "passed on to the pool");
    assert!(h2.is_fresh());
    assert_eq!(h2.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn current_keeps_the_cache_fresh_only_when_the_source_vouches_for_what_is_served() {
    let path = temp_path("current");
    write_snapshot_file(&path, "t", 60_000, &[ep(1)]);
    let (tx, rx) = channel();
    let mut cached = Cache::builder().name("t").snapshot(&path).wrap(Box::pin(rx));
    let handle = cached.handle();
    assert_eq!(recv(&mut cached).await.expect("the file's set"), Update::Reset(vec![ep(1)]));
    assert!(handle.is_from_snapshot());

    // The source has delivered nothing yet: its `Current` cannot vouch for the file's set.
    tx.send(Update::Current);
    tx.send(Update::Reset(vec![ep(2)]));
    assert_eq!(recv(&mut cached).await.expect("the source's set"), Update::Reset(vec![ep(2)]), "the early Current is not forwarded");
    assert!(handle.is_fresh());

    // An empty `Add` says nothing either way.
    tx.send_error("watch broken");
    recv(&mut cached).await.expect_err("error");
    tx.send(Update::Add(Vec::new()));
    tx.send(Update::Current);
    assert_eq!(recv(&mut cached).await.expect("confirmation"), Update::Current);
    assert!(handle.is_fresh(), "a re-established watch makes the data fresh");

    // A refused update: the source's word is no longer what is served, and its `Current` (about
    // the empty set it sent) must not make the kept set look fresh.
    tx.send(Update::Reset(Vec::new()));
    tx.send(Update::Current);
    tx.send(Update::Add(vec![ep(3)]));
    assert_eq!(recv(&mut cached).await.expect("add"), Update::Add(vec![ep(3)]), "neither the refused reset nor the Current went on");
    assert!(handle.is_fresh(), "an applied update is the source's word again");
    let _ = std::fs::remove_dir_all(path.parent().expect("has a parent"));
}

#[tokio::test(start_paused = true)]
async fn refuses_updates_that_would_empty_a_healthy_set() {
    let (tx, rx) = channel();
    let mut cached = Cache::builder().wrap(Box::pin(rx));
    let handle = cached.handle();
    tx.send(Update::Reset(vec![ep(1), ep(2)]));
    recv(&mut cached).await.expect("reset");

    tx.send(Update::Reset(vec![]));
    tx.send(Update::Remove(vec![ep(1).id().clone(), ep(2).id().clone()]));
    // A partial removal is normal churn and goes through.
    tx.send(Update::Remove(vec![ep(1).id().clone()]));
    assert_eq!(ids(&recv(&mut cached).await.expect("partial remove")), vec![1]);
    assert_eq!(handle.len(), 1);
    // Removing the last one is refused too.
    tx.send(Update::Remove(vec![ep(2).id().clone()]));
    tx.send(Update::Add(vec![ep(3)]));
    assert_eq!(ids(&recv(&mut cached).await.expect("add")), vec![3], "the refused updates were not forwarded");
    assert_eq!(handle.len(), 2);

    // With allow_empty the registry's word is final.
    let (tx, rx) = channel();
    let mut cached = Cache::builder().allow_empty(true).wrap(Box::pin(rx));
    tx.send(Update::Reset(vec![ep(1)]));
    recv(&mut cached).await.expect("reset");
    tx.send(Update::Reset(vec![]));
    assert_eq!(recv(&mut cached).await.expect("empty reset"), Update::Reset(vec![]));
    assert!(cached.handle().is_empty());
}

#[tokio::test(start_paused = true)]
async fn restartable_sources_resync_periodically_and_after_ending() {
    let made = Arc::new(AtomicUsize::new(0));
    let senders: Arc<Mutex<Vec<Updater>>> = Arc::default();
    let (m, s) = (Arc::clone(&made), Arc::clone(&senders));
    let mut cached = Cache::builder()
        .resync_every(Duration::from_secs(60))
        .restart_backoff(Duration::from_secs(2))
        .wrap_with(move || {
            let n = m.fetch_add(1, Ordering::SeqCst) as u16;
            let (tx, rx) = channel();
            // Each incarnation lists what the registry holds "now".
            tx.send(Update::Reset(vec![ep(100 + n)]));
            s.lock().expect("test lock").push(tx);
            Box::pin(rx)
        });
    assert_eq!(ids(&recv(&mut cached).await.expect("first")), vec![100]);
    assert_eq!(made.load(Ordering::SeqCst), 1);

    tokio::time::advance(Duration::from_secs(59)).await;
    settle().await;
    assert_eq!(made.load(Ordering::SeqCst), 1, "no resync before the period");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(ids(&recv(&mut cached).await.expect("resync")), vec![101]);
    assert_eq!(made.load(Ordering::SeqCst), 2);

    // The current source ends: restarted after the backoff, not before.
    senders.lock().expect("test lock").clear();
    settle().await;
    tokio::time::advance(Duration::from_millis(1900)).await;
    settle().await;
    assert_eq!(made.load(Ordering::SeqCst), 2);
    tokio::time::advance(Duration::from_millis(100)).await;
    assert_eq!(ids(&recv(&mut cached).await.expect("restart")), vec![102]);
}

#[tokio::test(start_paused = true)]
async fn snapshot_is_written_and_served_at_cold_start() {
    let path = temp_path("cold");
    {
        let (tx, rx) = channel();
        let mut cached = Cache::builder()
            .snapshot(&path)
            .snapshot_interval(Duration::from_millis(100))
            .wrap(Box::pin(rx));
        let mut written = writes(&cached);
        tx.send(Update::Reset(vec![ep(1), ep(2).with_weight(7).with_locality(Locality::unknown().with_zone("z"))]));
        recv(&mut cached).await.expect("reset");
        tx.send(Update::Remove(vec![ep(1).id().clone()]));
        recv(&mut cached).await.expect("remove");
        // The second change is written once the interval has passed.
        written.wait_for(|g| *g >= 1).await.expect("the first set is written");
        tokio::time::advance(Duration::from_millis(150)).await;
        written.wait_for(|g| *g >= 2).await.expect("the change is written after the interval");
        assert_eq!(file_ports(&path), vec![2]);
    }

    // A new client whose source never answers serves the file at once, marked stale.
    let (_tx, rx) = channel();
    let mut cached = Cache::builder().snapshot(&path).wrap(Box::pin(rx));
    let handle = cached.handle();
    let Update::Reset(list) = recv(&mut cached).await.expect("snapshot") else {
        panic!("a snapshot is served as a full set")
    };
    assert_eq!(list, vec![ep(2).with_weight(7).with_locality(Locality::unknown().with_zone("z"))]);
    assert!(handle.is_from_snapshot());
    assert!(!handle.is_fresh());

    // A corrupt file is ignored, not fatal.
    std::fs::write(&path, b"{ half a file").expect("write test file");
    let (tx, rx) = channel();
    let mut cached = Cache::builder().snapshot(&path).wrap(Box::pin(rx));
    tx.send(Update::Reset(vec![ep(5)]));
    assert_eq!(ids(&recv(&mut cached).await.expect("source wins")), vec![5]);
    let _ = std::fs::remove_dir_all(path.parent().expect("has a parent"));
}

#[tokio::test(start_paused = true)]
async fn the_source_replaces_the_snapshot_once_it_answers() {
    let path = temp_path("replace");
    write_snapshot_file(&path, "t", 3_600_000, &[ep(1), ep(2)]);
    let (tx, rx) = channel();
    let mut cached = Cache::builder().name("t").snapshot(&path).wrap(Box::pin(rx));
    let handle = cached.handle();
    assert_eq!(ids(&recv(&mut cached).await.expect("snapshot")), vec![1, 2]);
    let stale = handle.staleness().expect("has data");
    assert!(stale >= Duration::from_secs(3599), "a one-hour-old file is one hour stale: {stale:?}");

    tx.send(Update::Reset(vec![ep(2), ep(3)]));
    assert_eq!(ids(&recv(&mut cached).await.expect("source")), vec![2, 3]);
    assert!(handle.is_fresh());
    assert!(!handle.is_from_snapshot());
    let _ = std::fs::remove_dir_all(path.parent().expect("has a parent"));
}

#[tokio::test(start_paused = true)]
async fn dropping_the_stream_drops_the_source() {
    struct Guard(Arc<AtomicUsize>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = Arc::clone(&dropped);
    let mut cached = Cache::builder().wrap_with(move || {
        let (tx, rx) = channel();
        tx.send(Update::Reset(vec![ep(1)]));
        let guard = Guard(Arc::clone(&d));
        // The source owns the guard (as an etcd watch owns its connection) and stays open.
        Box::pin(rx.map(move |u| {
            let _ = &guard;
            let _ = &tx;
            u
        }))
    });
    recv(&mut cached).await.expect("reset");
    assert_eq!(dropped.load(Ordering::SeqCst), 0);
    drop(cached);
    settle().await;
    assert_eq!(dropped.load(Ordering::SeqCst), 1, "the source (and its registry connection) is released");
}

/// Follows the generation of the set on disk.
fn writes(cached: &Cached) -> tokio::sync::watch::Receiver<u64> {
    cached.handle.shared.snapshot.as_ref().expect("a cache with a snapshot").subscribe()
}

/// The ports of the endpoints in a snapshot file, read as any reader would.
fn file_ports(path: &Path) -> Vec<u16> {
    let bytes = std::fs::read(path).expect("the snapshot file exists");
    let file: SnapshotFile = serde_json::from_slice(&bytes).expect("a whole snapshot document");
    file.endpoints.into_iter().map(|d| d.into_endpoint().expect("valid entries").addr().port()).collect()
}

fn write_snapshot_file(path: &Path, target: &str, age_ms: u64, endpoints: &[Endpoint]) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis() as u64;
    let file = SnapshotFile {
        v: SNAPSHOT_VERSION,
        target: target.into(),
        saved_at_unix_ms: now - age_ms,
        endpoints: endpoints.iter().map(EndpointDocument::from_endpoint).collect(),
    };
    write_atomically(path, &file).expect("write the snapshot file");
}

#[tokio::test(start_paused = true)]
async fn the_first_set_is_written_at_once_changes_coalesce_and_the_last_is_flushed_on_drop() {
    let path = temp_path("timing");
    let (tx, rx) = channel();
    let mut cached = Cache::builder()
        .name("t")
        .snapshot(&path)
        .snapshot_interval(Duration::from_secs(3600))
        .wrap(Box::pin(rx));
    let mut written = writes(&cached);
    tx.send(Update::Reset(vec![ep(1)]));
    recv(&mut cached).await.expect("reset");
    // No time passes: the first full set does not wait for the (hour-long) interval.
    written.wait_for(|g| *g == 1).await.expect("written");
    assert_eq!(file_ports(&path), vec![1]);

    tx.send(Update::Add(vec![ep(2)]));
    recv(&mut cached).await.expect("add");
    settle().await;
    assert_eq!(file_ports(&path), vec![1], "a later change waits for the interval");

    // The client stops well within the interval: the last set is on disk when drop returns.
    drop(cached);
    assert_eq!(file_ports(&path), vec![1, 2]);
    let _ = std::fs::remove_dir_all(path.parent().expect("has a parent"));
}

#[tokio::test(start_paused = true)]
async fn a_client_dropped_right_after_its_first_set_leaves_it_on_disk() {
    let path = temp_path("exit");
    let (tx, rx) = channel();
    let mut cached = Cache::builder().name("t").snapshot(&path).wrap(Box::pin(rx));
    tx.send(Update::Reset(vec![ep(1), ep(2)]));
    recv(&mut cached).await.expect("reset");
    drop(cached);
    assert_eq!(file_ports(&path), vec![1, 2]);

    // A cache that only served the file, never hearing from its source, leaves the file alone:
    // rewriting it would make old data look new.
    let before = std::fs::read(&path).expect("file");
    let (_tx, rx) = channel();
    let mut cached = Cache::builder().name("t").snapshot(&path).wrap(Box::pin(rx));
    recv(&mut cached).await.expect("the file's set");
    drop(cached);
    assert_eq!(std::fs::read(&path).expect("file"), before);
    let _ = std::fs::remove_dir_all(path.parent().expect("has a parent"));
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_of_another_target_is_not_served() {
    let path = temp_path("other");
    write_snapshot_file(&path, "etcd://h:2379/billing", 0, &[ep(9)]);
    let (tx, rx) = channel();
    let mut cached = Cache::builder().name("etcd://h:2379/greeter").snapshot(&path).wrap(Box::pin(rx));
    tx.send(Update::Reset(vec![ep(1)]));
    assert_eq!(recv(&mut cached).await.expect("the source's set"), Update::Reset(vec![ep(1)]), "billing's endpoints never served");
    let _ = std::fs::remove_dir_all(path.parent().expect("has a parent"));
}

#[test]
fn target_options_mean_the_same_for_every_registry() {
    for uri in ["etcd://h:1/s", "consul://h:1/s", "kubernetes:///s.ns:p", "dns:///a.test:80"] {
        let t = Target::parse(&format!("{uri}?allow_empty=true&resync=90s&snapshot=/tmp/x.json")).expect("valid");
        let b = CacheBuilder::from_target(&t).expect("valid options");
        assert!(b.allow_empty, "{uri}");
        assert_eq!(b.resync, Some(Duration::from_secs(90)), "{uri}");
        assert_eq!(b.snapshot.as_deref(), Some(Path::new("/tmp/x.json")), "{uri}");
        assert_eq!(b.name.as_deref(), Some(uri), "named after the target without its query");
        let off = CacheBuilder::from_target(&Target::parse(&format!("{uri}?resync=off")).expect("valid")).expect("valid");
        assert_eq!(off.resync, None);
    }
    let etcd = CacheBuilder::from_target(&Target::parse("etcd://h:1/s").expect("valid")).expect("valid");
    assert_eq!(etcd.resync, Some(Duration::from_secs(300)), "etcd relists every 5 minutes by default");
    let dns = CacheBuilder::from_target(&Target::parse("dns:///a.test:80").expect("valid")).expect("valid");
    assert_eq!((dns.resync, dns.allow_empty, dns.snapshot), (None, false, None));
    for (bad, says) in [
        ("dns:///a.test:80?resync=100ms", "1s minimum"),
        ("dns:///a.test:80?resync=soon", "not a duration"),
        ("dns:///a.test:80?allow_empty=maybe", "true or false"),
        ("dns:///a.test:80?snapshot=", "file path"),
        ("static:///127.0.0.1:1", "no discovery cache"),
    ] {
        let err = CacheBuilder::from_target(&Target::parse(bad).expect("parses")).expect_err(bad);
        assert!(err.is_invalid_target() && err.to_string().contains(says), "{bad}: {err}");
    }
}
