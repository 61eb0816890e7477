//! The discovery cache on a `consul://` target, against the in-repo Consul double (a double of
//! Consul's HTTP API: no Consul server can be installed where these tests run): the `snapshot`
//! option serves the last set to a client started while the agent fails, a client that stops right
//! after its first set leaves that set on disk, and `Update::Current` makes the data fresh again.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt as _;
use lb_core::discover::BoxDiscover;
use lb_core::{BoxError, Endpoint, Update};
use lb_doubles::consul::{ConsulDouble, Fault};
use lb_registry::cache::Cache;
use lb_registry::consul::ConsulResolver;
use lb_registry::{Registration, Target};

/// Generous: the machines running these tests are shared and slow.
const PATIENCE: Duration = Duration::from_secs(15);

/// A fresh directory for one test's snapshot file.
fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lb-consul-cache-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn register(double: &ConsulDouble, service: &str, port: u16) -> Registration {
    let target = Target::parse(&format!("consul://{}/{service}", double.authority())).expect("valid target");
    lb_registry::register(&target, Endpoint::new(SocketAddr::from(([127, 0, 0, 1], port))))
        .await
        .expect("register with the consul double")
}

async fn next(discover: &mut BoxDiscover) -> Result<Update, BoxError> {
    tokio::time::timeout(PATIENCE, discover.next()).await.expect("an item in time").expect("the stream stays open")
}

/// Waits for the next full set, passing over errors and confirmations, and returns its ports.
async fn next_set(discover: &mut BoxDiscover) -> Vec<u16> {
    loop {
        if let Ok(Update::Reset(list)) = next(discover).await {
            return ports(&list);
        }
    }
}

fn ports(list: &[Endpoint]) -> Vec<u16> {
    let mut p: Vec<u16> = list.iter().map(|e| e.addr().port()).collect();
    p.sort_unstable();
    p
}

/// The ports listed in a snapshot file, read as plain JSON: what any reader of the file sees.
fn file_ports(path: &Path) -> Vec<u16> {
    let bytes = std::fs::read(path).expect("the snapshot file exists");
    let file: serde_json::Value = serde_json::from_slice(&bytes).expect("the snapshot is whole JSON");
    let mut p: Vec<u16> = file["endpoints"]
        .as_array()
        .expect("an endpoint list")
        .iter()
        .map(|e| e["addr"].as_str().expect("an address").parse::<SocketAddr>().expect("ip:port").port())
        .collect();
    p.sort_unstable();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_serves_the_last_set_to_a_client_started_while_the_agent_fails() {
    let double = ConsulDouble::start().await.expect("start the consul double");
    let _a = register(&double, "snap", 7401).await;
    let _b = register(&double, "snap", 7402).await;
    let dir = temp_dir("snapshot");
    let path = dir.join("snap.json");
    let target = Target::parse(&format!("consul://{}/snap?snapshot={}", double.authority(), path.display())).expect("valid");

    // A first client gets its set and is dropped at once: the set is on disk when drop returns.
    let mut first = lb_registry::resolve(&target).expect("resolves");
    assert_eq!(next_set(&mut first).await, vec![7401, 7402]);
    drop(first);
    assert_eq!(file_ports(&path), vec![7401, 7402]);

    // The agent fails every query: a new client serves the file's set at once, then reports why.
    double.set_fault(Fault::ServerError);
    let mut second = lb_registry::resolve(&target).expect("resolves");
    match next(&mut second).await {
        Ok(Update::Reset(list)) => assert_eq!(ports(&list), vec![7401, 7402], "the snapshot's set"),
        other => panic!("expected the snapshot's set first, got {other:?}"),
    }
    assert!(next(&mut second).await.is_err(), "the agent's failure is still reported");

    // The agent recovers with a changed set: the registry's word replaces the file's.
    let _c = register(&double, "snap", 7403).await;
    double.set_fault(Fault::None);
    assert_eq!(next_set(&mut second).await, vec![7401, 7402, 7403]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_exits_right_after_discovery_leaves_its_current_set() {
    let double = ConsulDouble::start().await.expect("start the consul double");
    let _a = register(&double, "brief", 7501).await;
    let dir = temp_dir("exit");
    let path = dir.join("brief.json");
    let target = Target::parse(&format!("consul://{}/brief?snapshot={}", double.authority(), path.display())).expect("valid");

    // A "process": its own runtime, a client task that owns the discovery stream (as a pool's
    // task does), and a clean exit — the runtime is dropped, which drops every task — as soon as
    // the client has seen its second set, well within the one-second snapshot interval.
    let authority = double.authority();
    let process = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("a runtime");
        rt.block_on(async move {
            let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut discover = lb_registry::resolve(&target).expect("resolves");
                while let Some(item) = discover.next().await {
                    if let Ok(Update::Reset(list)) = item {
                        let _ = seen_tx.send(ports(&list));
                    }
                }
            });
            assert_eq!(seen.recv().await.expect("a first set"), vec![7501]);
            let second = Target::parse(&format!("consul://{authority}/brief")).expect("valid");
            let reg = lb_registry::register(&second, Endpoint::new(SocketAddr::from(([127, 0, 0, 1], 7502)))).await.expect("register");
            assert_eq!(seen.recv().await.expect("a second set"), vec![7501, 7502]);
            // Kept registered through the exit: dropping it would deregister, racing the exit
            // with one more update.
            std::mem::forget(reg);
        });
        drop(rt);
    });
    process.await.expect("the process ran");
    assert_eq!(file_ports(&path), vec![7501, 7502], "the set current at exit is on disk");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_answer_after_an_outage_confirms_the_set_and_the_data_is_fresh_again() {
    let double = ConsulDouble::start().await.expect("start the consul double");
    let _a = register(&double, "fresh", 7601).await;
    let resolver = ConsulResolver::builder()
        .address(double.authority())
        .wait(Duration::from_secs(3))
        .min_interval(Duration::from_millis(20))
        .max_backoff(Duration::from_millis(300))
        .build()
        .expect("valid options");
    let cached = Cache::builder().resolve(resolver, "fresh");
    let handle = cached.handle();
    let mut discover = cached.boxed();
    assert_eq!(next_set(&mut discover).await, vec![7601]);
    assert!(handle.is_fresh());

    double.set_fault(Fault::ServerError);
    assert!(next(&mut discover).await.is_err());
    assert!(!handle.is_fresh(), "an error starts the staleness clock");

    // The agent answers again with the same set: not a new set, a confirmation.
    double.set_fault(Fault::None);
    loop {
        match next(&mut discover).await {
            Ok(Update::Current) => break,
            Err(_) => continue, // queries that were already failing
            Ok(other) => panic!("an unchanged set is confirmed, not sent again: {other:?}"),
        }
    }
    assert!(handle.is_fresh(), "the confirmation stops the staleness clock");
    assert_eq!(handle.len(), 1);
}
