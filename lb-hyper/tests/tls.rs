//! `LbClient` over HTTPS (rustls, certificates made with rcgen at run time) against real hyper
//! servers on loopback: HTTP/1.1 and HTTP/2 negotiated by ALPN, the certificate checked against the
//! endpoint's IP or a configured name, and HTTP health checks that travel over TLS too.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use lb_core::policy::RoundRobin;
use lb_hyper::{LbClient, Protocol};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use support::{static_target, Backend};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A self-signed certificate for `names`, which clients trust as their CA.
struct Pki {
    cert: CertificateDer<'static>,
    key: Vec<u8>,
}

fn pki(names: &[&str]) -> Pki {
    let ck = rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("certificate");
    Pki { cert: ck.cert.der().clone(), key: ck.key_pair.serialize_der() }
}

fn acceptor(pki: &Pki) -> tokio_rustls::TlsAcceptor {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![pki.cert.clone()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key.clone())))
        .expect("valid key");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

fn trusting(pki: &Pki) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.cert.clone()).expect("trust anchor");
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

async fn tls_backends(pki: &Pki, n: usize) -> Vec<Backend> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Backend::start_with("127.0.0.1:0".parse().expect("addr"), Duration::ZERO, Some(acceptor(pki))).await);
    }
    out
}

async fn wait_healthy(client: &LbClient<Empty<Bytes>>, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while client.endpoints().iter().filter(|e| e.healthy).count() != n {
        assert!(tokio::time::Instant::now() < deadline, "not {n} healthy: {:?}", client.endpoints());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `(backend address, HTTP version, request-target)` the server reported.
async fn get(client: &LbClient<Empty<Bytes>>, uri: &str) -> (String, String, String) {
    let rsp = client.request(Request::get(uri).body(Empty::new()).expect("valid request")).await.expect("response");
    assert_eq!(rsp.status(), 200);
    let body = rsp.into_body().collect().await.expect("body").to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    let parts: Vec<&str> = body.split(' ').collect();
    (parts[0].to_string(), parts[2].to_string(), parts[3].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_over_http1_and_http2_verified_by_ip() {
    let pki = pki(&["127.0.0.1"]);
    let bs = tls_backends(&pki, 2).await;
    for (protocol, version) in [(Protocol::Http1, "HTTP/1.1"), (Protocol::Http2, "HTTP/2.0")] {
        let client = LbClient::builder()
            .protocol(protocol)
            .policy(RoundRobin::new())
            .tls(trusting(&pki))
            .build_from_target::<Empty<Bytes>>(&static_target(&bs))
            .expect("valid");
        wait_healthy(&client, 2).await;
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..10 {
            let (backend, got, target) = get(&client, "/echo").await;
            assert_eq!(got, version, "ALPN settled on the configured protocol");
            if protocol == Protocol::Http2 {
                assert_eq!(target, format!("https://{backend}/echo"), "the request says https");
            }
            seen.insert(backend);
        }
        assert_eq!(seen.len(), 2, "both TLS backends served: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_or_misnamed_certificate_never_connects_and_says_why() {
    let stranger = pki(&["127.0.0.1"]);
    let pki = pki(&["backend.internal"]);
    let bs = tls_backends(&pki, 1).await;
    let build = |client_config: rustls::ClientConfig, name: Option<&str>| {
        let mut b = LbClient::builder().tls(client_config).endpoint_wait_timeout(Duration::from_secs(30));
        if let Some(name) = name {
            b = b.tls_server_name(name);
        }
        b.build_from_target::<Empty<Bytes>>(&static_target(&bs)).expect("valid")
    };
    let unavailable = |client: LbClient<Empty<Bytes>>| async move {
        let err = client.request(Request::get("/echo").body(Empty::new()).expect("valid")).await.expect_err("no connection");
        assert!(err.is_unavailable(), "{err:?}");
        err.to_string().to_lowercase()
    };
    // Signed by nobody the client trusts.
    let message = unavailable(build(trusting(&stranger), None)).await;
    assert!(message.contains("failed to connect") && message.contains("certificate"), "{message}");
    // Trusted, but it names backend.internal, not the IP dialled.
    let message = unavailable(build(trusting(&pki), None)).await;
    assert!(message.contains("certificate"), "{message}");
    assert_eq!(bs[0].served(), 0);
    // With the name it carries, it connects.
    let named = build(trusting(&pki), Some("backend.internal"));
    wait_healthy(&named, 1).await;
    assert_eq!(get(&named, "/echo").await.0, bs[0].addr.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_health_checks_take_a_backend_out_and_back() {
    let pki = pki(&["127.0.0.1"]);
    let bs = tls_backends(&pki, 2).await;
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let client = LbClient::builder()
            .protocol(protocol)
            .policy(RoundRobin::new())
            .tls(trusting(&pki))
            .health_check_path("/health", Duration::from_millis(50))
            .build_from_target::<Empty<Bytes>>(&static_target(&bs))
            .expect("valid");
        wait_healthy(&client, 2).await;
        bs[0].healthy.store(false, Ordering::Relaxed);
        wait_healthy(&client, 1).await;
        let before = bs[0].served();
        for _ in 0..20 {
            assert_eq!(get(&client, "/echo").await.0, bs[1].addr.to_string());
        }
        assert_eq!(bs[0].served(), before, "the backend failing its health check got requests");
        bs[0].healthy.store(true, Ordering::Relaxed);
        wait_healthy(&client, 2).await;
    }
    // The probes went over the TLS connections; over HTTP/2 the request says so.
    let probes = bs[0].probes.lock().expect("not poisoned").clone();
    assert!(probes.iter().any(|p| p == &format!("https://{}/health", bs[0].addr)), "{probes:?}");
}
