//! Fixtures for the Kubernetes tests: the API server double, real TCP backends on loopback
//! addresses that share one port (an EndpointSlice gives one port to all its endpoints), a
//! connector that connects over TCP and counts attempts, and a pool wired to the resolver under test.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lb_core::policy::{PickContext, Policy};
use lb_core::test_util::TestConnector;
use lb_core::{Pool, PoolConfig};
use lb_doubles::kube::KubeDouble;
use lb_registry::kubernetes::{KubernetesResolver, KubernetesResolverBuilder};
use tokio::net::TcpListener;

pub const SERVICE: &str = "greeter.default:grpc";

/// Real listeners on `127.0.0.{1..=n}` sharing one port; each keeps its accepted connections open
/// and counts them.
pub struct Backends {
    pub port: u16,
    pub ips: Vec<String>,
    accepts: Arc<Mutex<BTreeMap<IpAddr, u64>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Backends {
    pub async fn start(n: u8) -> Backends {
        for _attempt in 0..20 {
            let first = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
            let port = first.local_addr().expect("local addr").port();
            let mut listeners = vec![first];
            for i in 2..=n {
                match TcpListener::bind(SocketAddr::from(([127, 0, 0, i], port))).await {
                    Ok(l) => listeners.push(l),
                    Err(_) => break,
                }
            }
            if listeners.len() != usize::from(n) {
                continue; // the port was taken on another loopback address: try another
            }
            let accepts = Arc::new(Mutex::new(BTreeMap::new()));
            let tasks = listeners
                .into_iter()
                .map(|l| {
                    let accepts = Arc::clone(&accepts);
                    tokio::spawn(async move {
                        let mut open = Vec::new();
                        while let Ok((s, _)) = l.accept().await {
                            let ip = l.local_addr().expect("local addr").ip();
                            *accepts.lock().expect("accepts lock").entry(ip).or_insert(0) += 1;
                            open.push(s);
                        }
                    })
                })
                .collect();
            let ips = (1..=n).map(|i| format!("127.0.0.{i}")).collect();
            return Backends { port, ips, accepts, tasks };
        }
        panic!("no port free on 127.0.0.1..{n}");
    }

    pub fn ip(&self, i: usize) -> &str {
        &self.ips[i]
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.ips[i].parse().expect("loopback ip"), self.port)
    }

    /// Connections accepted by backend `i` so far.
    pub fn accepts(&self, i: usize) -> u64 {
        let ip: IpAddr = self.ips[i].parse().expect("loopback ip");
        self.accepts.lock().expect("accepts lock").get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A connector that connects over TCP (a backend that is not listening does not connect), counts
/// attempts per address, and whose connection is the address.
pub fn tcp_connector() -> TestConnector {
    TestConnector::new().over_tcp()
}

/// A client of the double, as `KubernetesResolverBuilder::client` asks for one: kube's retry layer
/// off, so the watch hears of every failure (as the client lb infers for itself does).
pub fn client(double: &KubeDouble) -> kube::Client {
    let url = double.url().parse().expect("the double's URL is a valid URI");
    let mut config = kube::Config::new(url);
    config.default_retry = false;
    kube::Client::try_from(config).expect("a client for the double")
}

/// A resolver builder on the double with a short watch backoff and no environment.
pub fn resolver(double: &KubeDouble) -> KubernetesResolverBuilder {
    KubernetesResolver::builder()
        .client(client(double))
        .ignore_env()
        .watch_backoff(Duration::from_millis(20), Duration::from_millis(200))
}

pub fn pool(resolver: &KubernetesResolver, service: &str, connector: &TestConnector, policy: impl Policy) -> Pool<SocketAddr> {
    let discover = resolver.watch(service).expect("valid service");
    Pool::spawn(discover, connector.clone(), policy, PoolConfig::new(format!("kubernetes:///{service}")))
}

/// The addresses of the endpoints the pool can send to now, sorted.
pub fn healthy(pool: &Pool<SocketAddr>) -> Vec<SocketAddr> {
    let snap = pool.snapshot();
    let mut v: Vec<SocketAddr> = snap.entries().iter().filter(|e| e.healthy).map(|e| e.endpoint.addr()).collect();
    v.sort();
    v
}

/// Waits (at most 10 s) until the pool's healthy set is exactly `want`.
pub async fn wait_healthy(pool: &Pool<SocketAddr>, want: &[SocketAddr]) {
    let mut want = want.to_vec();
    want.sort();
    let mut rx = pool.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if healthy(pool) == want {
            return;
        }
        if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
            panic!("pool never reached {want:?}; it has {:?}", healthy(pool));
        }
    }
}

/// Waits (at most 10 s) for a condition polled every 10 ms.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Picks `n` times and counts picks per address.
pub fn picks(pool: &Pool<SocketAddr>, n: usize) -> BTreeMap<SocketAddr, usize> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        if let Some(p) = pool.pick(&PickContext::default()) {
            *out.entry(p.endpoint.addr()).or_insert(0) += 1;
        }
    }
    out
}

/// A certificate for `127.0.0.1` made with rcgen, serving as its own CA: the API server double's
/// TLS identity, and the PEM file a kubeconfig's `certificate-authority` names. The file is removed
/// on drop.
pub struct TestCa {
    pub cert_pem: String,
    key_der: Vec<u8>,
    pub file: std::path::PathBuf,
}

impl TestCa {
    pub fn new() -> TestCa {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("rcgen makes a certificate");
        let cert_pem = ck.cert.pem();
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let file = std::env::temp_dir().join(format!("lb-kube-ca-{}-{n}.pem", std::process::id()));
        std::fs::write(&file, &cert_pem).expect("write the CA file");
        TestCa { cert_pem, key_der: ck.key_pair.serialize_der(), file }
    }

    /// The double's rustls server configuration.
    pub fn server_config(&self) -> Arc<lb_doubles::kube::rustls::ServerConfig> {
        use lb_doubles::kube::rustls;
        use rustls::pki_types::pem::PemObject as _;
        let cert = rustls::pki_types::CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).expect("PEM certificate");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .expect("the key matches the certificate");
        Arc::new(config)
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

/// A client built the way `KUBECONFIG` users get one: from a kubeconfig document.
pub async fn client_from_kubeconfig(yaml: &str) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(yaml).expect("a valid kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
        .await
        .expect("a usable kubeconfig");
    config.default_retry = false;
    kube::Client::try_from(config).expect("a client for the double")
}
