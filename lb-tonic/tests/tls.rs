//! TLS with rustls: ALPN h2, certificate checked against the endpoint's IP or a configured name,
//! client certificates for servers that require them.

mod support;

use std::sync::Arc;
use std::time::Duration;

use lb_tonic::LbChannel;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use support::lbtest::echo_client::EchoClient;
use support::lbtest::EchoRequest;
use support::{static_target, wait_healthy, Backend};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

struct Pki {
    cert: CertificateDer<'static>,
    key: Vec<u8>,
}

fn pki(names: &[&str]) -> Pki {
    let ck = rcgen::generate_simple_self_signed(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("certificate generates");
    Pki {
        cert: ck.cert.der().clone(),
        key: ck.key_pair.serialize_der(),
    }
}

fn acceptor(pki: &Pki) -> tokio_rustls::TlsAcceptor {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![pki.cert.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key.clone())),
        )
        .expect("valid key");
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

fn client_config(pki: &Pki) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.cert.clone()).expect("trust anchor");
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_tls_verified_by_ip_address() {
    let pki = pki(&["127.0.0.1"]);
    let bs = vec![
        Backend::start_with(Duration::ZERO, Some(acceptor(&pki))).await,
        Backend::start_with(Duration::ZERO, Some(acceptor(&pki))).await,
    ];
    let channel = LbChannel::builder()
        .tls(client_config(&pki))
        .build_from_target(&static_target(&bs))
        .expect("valid target");
    wait_healthy(&channel, 2, Duration::from_secs(30)).await;
    let (per, errors) = support::load(&channel, 100, 4).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(per.values().sum::<usize>(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_server_name_is_verified() {
    let pki = pki(&["greeter.internal"]);
    let bs = vec![Backend::start_with(Duration::ZERO, Some(acceptor(&pki))).await];

    // The certificate names greeter.internal, not the IP: without the name, no endpoint connects.
    let by_ip = LbChannel::builder()
        .tls(client_config(&pki))
        .endpoint_wait_timeout(Duration::from_millis(300))
        .build_from_target(&static_target(&bs))
        .expect("valid target");
    let status = EchoClient::new(by_ip).unary(EchoRequest::default()).await.expect_err("certificate mismatch");
    assert_eq!(status.code(), tonic::Code::Unavailable);

    let by_name = LbChannel::builder()
        .tls(client_config(&pki))
        .tls_server_name("greeter.internal")
        .build_from_target(&static_target(&bs))
        .expect("valid target");
    let reply = EchoClient::new(by_name).unary(EchoRequest::default()).await.expect("verified by name");
    assert_eq!(reply.into_inner().backend, bs[0].addr.to_string());
}

/// A CA that signs a server certificate for 127.0.0.1 and client certificates.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        Ca { cert, key }
    }

    /// A certificate for `names`, and its key, signed by this CA.
    fn issue(&self, names: &[&str], usage: rcgen::ExtendedKeyUsagePurpose) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let mut params = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
        params.extended_key_usages = vec![usage];
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("signed");
        (cert.der().clone(), PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).expect("trust anchor");
        roots
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_presented_to_servers_that_require_them() {
    let (servers, clients) = (Ca::new("lb test server CA"), Ca::new("lb test client CA"));
    let (server_cert, server_key) = servers.issue(&["127.0.0.1"], rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(clients.roots()), provider())
        .build()
        .expect("client verifier");
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![server_cert], server_key)
        .expect("valid key");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let bs = vec![Backend::start_with(Duration::ZERO, Some(acceptor)).await];
    let client_builder = || {
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(servers.roots())
    };

    // Without a client certificate the server refuses the handshake: no endpoint, and why.
    let anonymous = LbChannel::builder()
        .tls(client_builder().with_no_client_auth())
        .endpoint_wait_timeout(Duration::from_secs(30))
        .build_from_target(&static_target(&bs))
        .expect("valid target");
    let status = EchoClient::new(anonymous).unary(EchoRequest::default()).await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(bs[0].served(), 0);

    // With one the CA signed, calls go through: the channel keeps the caller's client
    // authentication when it sets ALPN on the configuration.
    let (cert, key) = clients.issue(&["lb-client"], rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    let identified = LbChannel::builder()
        .tls(client_builder().with_client_auth_cert(vec![cert], key).expect("client certificate"))
        .build_from_target(&static_target(&bs))
        .expect("valid target");
    wait_healthy(&identified, 1, Duration::from_secs(30)).await;
    let reply = EchoClient::new(identified).unary(EchoRequest::default()).await.expect("mutual TLS");
    assert_eq!(reply.into_inner().backend, bs[0].addr.to_string());
}
