use std::sync::atomic::{AtomicUsize, Ordering};

use lb_core::discover::{channel, Updater};

use std::time::{SystemTime, UNIX_EPOCH};

use lb_core::Locality;

use super::*;

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

    // An empty `Add` is a liveness signal: fresh again, nothing forwarded.
    let (tx2, rx2) = channel();
    let mut cached2 = Cache::builder().wrap(Box::pin(rx2));
    let h2 = cached2.handle();
    tx2.send(Update::Reset(vec![ep(1)]));
    recv(&mut cached2).await.expect("reset");
    tx2.send_error("blip");
    recv(&mut cached2).await.expect_err("error");
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(!h2.is_fresh());
    tx2.send(Update::Add(vec![]));
    settle().await;
    assert!(h2.is_fresh());
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
        tx.send(Update::Reset(vec![ep(1), ep(2).with_weight(7).with_locality(Locality::unknown().with_zone("z"))]));
        recv(&mut cached).await.expect("reset");
        tx.send(Update::Remove(vec![ep(1).id().clone()]));
        recv(&mut cached).await.expect("remove");
        // Paused time does not advance while a blocking write runs, so poll the file in real time.
        tokio::time::advance(Duration::from_millis(150)).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !path.exists() {
            assert!(std::time::Instant::now() < deadline, "snapshot written");
            std::thread::sleep(Duration::from_millis(10));
            settle().await;
        }
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
    write_atomically(
        &path,
        &SnapshotFile {
            v: SNAPSHOT_VERSION,
            target: "t".into(),
            saved_at_unix_ms: SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_millis() as u64 - 3_600_000,
            endpoints: vec![SnapEndpoint::from_endpoint(&ep(1)), SnapEndpoint::from_endpoint(&ep(2))],
        },
    )
    .expect("write snapshot");
    let (tx, rx) = channel();
    let mut cached = Cache::builder().snapshot(&path).wrap(Box::pin(rx));
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
