//! Consul over TLS: discovery and registration against the Consul double (`lb-doubles`) serving
//! HTTPS on 127.0.0.1 with certificates from a private CA made by rcgen, with and without client
//! certificate verification (Consul's `verify_incoming`). It is a double, not Consul.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use lb_core::{Endpoint, Update};
use lb_doubles::consul::{ConsulDouble, DoubleConfig};
use lb_registry::consul::{ConsulRegistrar, ConsulRegistrarBuilder, ConsulResolver, ConsulResolverBuilder};
use lb_registry::{Registrar as _, Resolver as _};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Generous: the machines running these tests are shared and slow.
const PATIENCE: Duration = Duration::from_secs(15);

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for these names (IPs or DNS names) and its key, both PEM.
    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let mut params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("client"));
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("signed");
        (cert.pem(), key.serialize_pem())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The double's TLS configuration: a server certificate for `names`, and, with `client_ca`, a
/// required client certificate signed by it.
fn server_config(ca: &Ca, names: &[&str], client_ca: Option<&Ca>) -> Arc<rustls::ServerConfig> {
    let (cert, key) = ca.issue(names, ExtendedKeyUsagePurpose::ServerAuth);
    let chain = vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("cert pem")];
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key pem");
    let builder = rustls::ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().expect("versions");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(client_ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CertificateDer::from_pem_slice(client_ca.pem().as_bytes()).expect("ca pem")).expect("root");
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    Arc::new(builder.with_single_cert(chain, key).expect("server certificate"))
}

async fn tls_double(ca: &Ca, names: &[&str], client_ca: Option<&Ca>) -> ConsulDouble {
    ConsulDouble::start_tls(DoubleConfig::default(), server_config(ca, names, client_ca))
        .await
        .expect("start the consul double with TLS")
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn registrar(double: &ConsulDouble) -> ConsulRegistrarBuilder {
    ConsulRegistrar::builder().address(double.url()).ttl(Duration::from_millis(300))
}

fn resolver(double: &ConsulDouble) -> ConsulResolverBuilder {
    ConsulResolver::builder()
        .address(double.url())
        .wait(Duration::from_secs(3))
        .min_interval(Duration::from_millis(20))
        .max_backoff(Duration::from_millis(300))
}

/// The first answer of a resolver's stream.
async fn first_answer(resolver: ConsulResolver, service: &str) -> Result<Update, lb_core::BoxError> {
    let mut discover = resolver.resolve(service);
    tokio::time::timeout(PATIENCE, discover.next()).await.expect("an answer in time").expect("the stream stays open")
}

/// An error and its sources on one line: registration errors name the instance and hold the
/// transport error as their source.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn ports(update: &Update) -> Vec<u16> {
    match update {
        Update::Reset(list) => list.iter().map(|e| e.addr().port()).collect(),
        other => panic!("expected a full set, got {other:?}"),
    }
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("lb-consul-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, content).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_and_discovery_over_https_with_a_private_ca() {
    let ca = Ca::new("lb test consul CA");
    let double = tls_double(&ca, &["127.0.0.1"], None).await;
    let dir = TempDir::new("private-ca");
    let ca_file = dir.write("ca.pem", &ca.pem());

    let r = registrar(&double).tls_ca_file(&ca_file).build().expect("valid registrar options");
    let reg = r.register("secure", Endpoint::new(addr(8101))).await.expect("register over https");
    assert_eq!(double.services().len(), 1);
    // Heartbeats go over the same TLS client.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while double.services().first().map_or(0, |s| s.passes) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "TTL passes over https");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let found = first_answer(resolver(&double).tls_ca_pem(ca.pem()).build().expect("options"), "secure").await;
    assert_eq!(ports(&found.expect("discovery over https")), vec![8101]);

    reg.deregister().await;
    assert!(double.services().is_empty(), "deregistration over https");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_trust_the_ca_fails_clearly_and_changes_nothing() {
    let ca = Ca::new("lb test consul CA");
    let other = Ca::new("some other CA");
    let double = tls_double(&ca, &["127.0.0.1"], None).await;
    let trusted = registrar(&double).tls_ca_pem(ca.pem()).build().expect("options");
    let _reg = trusted.register("guarded", Endpoint::new(addr(8201))).await.expect("register");

    let untrusting = registrar(&double).tls_ca_pem(other.pem()).build().expect("options");
    let err = untrusting.register("guarded", Endpoint::new(addr(8202))).await.expect_err("the agent's CA is not trusted");
    let text = chain(&err);
    assert!(err.is_registry(), "{text}");
    assert!(text.contains("certificate") && text.contains("TLS handshake"), "the error says why: {text}");

    let answer = first_answer(resolver(&double).tls_ca_pem(other.pem()).build().expect("options"), "guarded").await;
    let err = answer.expect_err("discovery with an untrusted CA fails, without an empty set");
    assert!(chain(&*err).contains("certificate"), "{}", chain(&*err));

    // A plain-HTTP client gets an error, not an answer, from an HTTPS-only agent.
    let plain = ConsulResolver::builder().address(double.authority()).build().expect("options");
    first_answer(plain, "guarded").await.expect_err("plain HTTP to an HTTPS agent");

    // Nothing was registered or removed by the failed clients.
    assert_eq!(double.services().iter().map(|s| s.port).collect::<Vec<_>>(), vec![8201]);
    let found = first_answer(resolver(&double).tls_ca_pem(ca.pem()).build().expect("options"), "guarded").await;
    assert_eq!(ports(&found.expect("the trusting client still sees it")), vec![8201]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_presented_when_the_agent_requires_them() {
    let ca = Ca::new("lb test consul CA");
    let clients = Ca::new("lb test client CA");
    let double = tls_double(&ca, &["127.0.0.1"], Some(&clients)).await;
    let (cert, key) = clients.issue(&["lb-client"], ExtendedKeyUsagePurpose::ClientAuth);
    let dir = TempDir::new("mtls");
    let cert_file = dir.write("client.pem", &cert);
    let key_file = dir.write("client-key.pem", &key);

    let r = registrar(&double)
        .tls_ca_pem(ca.pem())
        .tls_identity_files(&cert_file, &key_file)
        .build()
        .expect("options");
    let _reg = r.register("mutual", Endpoint::new(addr(8301))).await.expect("register with a client certificate");
    let with_cert = resolver(&double).tls_ca_pem(ca.pem()).tls_identity_pem(cert.clone(), key.clone()).build().expect("options");
    assert_eq!(ports(&first_answer(with_cert, "mutual").await.expect("discovery with a client certificate")), vec![8301]);

    let without = registrar(&double).tls_ca_pem(ca.pem()).build().expect("options");
    let err = without.register("mutual", Endpoint::new(addr(8302))).await.expect_err("no client certificate");
    assert!(err.is_registry(), "{err}");
    // With TLS 1.3 the agent refuses after the handshake (an alert, or just a closed connection):
    // the error says what is missing.
    assert!(chain(&err).contains("asked for a client certificate"), "{}", chain(&err));
    let answer = first_answer(resolver(&double).tls_ca_pem(ca.pem()).build().expect("options"), "mutual").await;
    let err = answer.expect_err("discovery without a client certificate fails");
    assert!(chain(&*err).contains("asked for a client certificate"), "{}", chain(&*err));

    // A certificate from a CA the agent does not accept is refused too.
    let (stranger, stranger_key) = Ca::new("stranger").issue(&["lb-client"], ExtendedKeyUsagePurpose::ClientAuth);
    let wrong = registrar(&double).tls_ca_pem(ca.pem()).tls_identity_pem(stranger, stranger_key).build().expect("options");
    wrong.register("mutual", Endpoint::new(addr(8303))).await.expect_err("a client certificate from another CA");

    assert_eq!(double.services().iter().map(|s| s.port).collect::<Vec<_>>(), vec![8301]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_domain_verifies_a_name_other_than_the_address() {
    let ca = Ca::new("lb test consul CA");
    let double = tls_double(&ca, &["consul.test"], None).await;
    let r = registrar(&double).tls_ca_pem(ca.pem()).build().expect("options");
    let err = r.register("named", Endpoint::new(addr(8401))).await.expect_err("127.0.0.1 is not in the certificate");
    assert!(chain(&err).contains("certificate"), "{}", chain(&err));

    // A bare host:port with a TLS option set speaks TLS.
    let r = ConsulRegistrar::builder()
        .address(double.authority())
        .tls_ca_pem(ca.pem())
        .tls_domain("consul.test")
        .build()
        .expect("options");
    let _reg = r.register("named", Endpoint::new(addr(8401))).await.expect("register, verifying consul.test");
    let found = first_answer(resolver(&double).tls_ca_pem(ca.pem()).tls_domain("consul.test").build().expect("options"), "named").await;
    assert_eq!(ports(&found.expect("discovery")), vec![8401]);
}

#[test]
fn bad_tls_material_fails_the_build() {
    let err = ConsulResolver::builder()
        .address("https://127.0.0.1:8501")
        .tls_ca_file("/nonexistent/lb/consul-ca.pem")
        .build()
        .expect_err("unreadable CA file");
    assert!(err.is_invalid_target() && err.to_string().contains("/nonexistent/lb/consul-ca.pem"), "{err}");
    let err = ConsulRegistrar::builder()
        .address("https://127.0.0.1:8501")
        .tls_ca_file("/nonexistent/lb/consul-ca.pem")
        .build()
        .expect_err("unreadable CA file");
    assert!(err.is_invalid_target(), "{err}");

    // A client certificate with some other key is refused before any connection.
    let ca = Ca::new("lb test client CA");
    let (cert, _) = ca.issue(&["lb-client"], ExtendedKeyUsagePurpose::ClientAuth);
    let (_, other_key) = ca.issue(&["lb-client"], ExtendedKeyUsagePurpose::ClientAuth);
    let err = ConsulRegistrar::builder()
        .address("https://127.0.0.1:8501")
        .tls_ca_pem(ca.pem())
        .tls_identity_pem(cert, other_key)
        .build()
        .expect_err("mismatched certificate and key");
    assert!(err.is_invalid_target() && err.to_string().contains("do not go together"), "{err}");
    let err = ConsulRegistrar::builder()
        .address("https://127.0.0.1:8501")
        .tls_ca_pem(ca.pem())
        .tls_identity_pem(ca.pem(), "not a key")
        .build()
        .expect_err("no key in the key PEM");
    assert!(err.is_invalid_target() && err.to_string().contains("client key"), "{err}");
}

/// Set in the child process that [`consul_environment_variables_configure_tls`] runs.
const CHILD_MARKER: &str = "LB_CONSUL_TLS_ENV_CHILD";

/// Consul's environment variables configure a target-only client. They are process-wide, so the
/// client runs in a child process (this test binary, running [`env_child`]) with its own
/// environment, and other tests here never see them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_environment_variables_configure_tls() {
    let ca = Ca::new("lb test consul CA");
    let clients = Ca::new("lb test client CA");
    let double = tls_double(&ca, &["consul.test"], Some(&clients)).await;
    let (cert, key) = clients.issue(&["lb-client"], ExtendedKeyUsagePurpose::ClientAuth);
    let dir = TempDir::new("env");
    let exe = std::env::current_exe().expect("the test binary");
    let mut child = tokio::process::Command::new(exe);
    child
        .args(["env_child", "--ignored", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_MARKER, "1")
        .env("CONSUL_HTTP_ADDR", double.authority())
        .env("CONSUL_HTTP_SSL", "true")
        .env("CONSUL_CACERT", dir.write("ca.pem", &ca.pem()))
        .env("CONSUL_CLIENT_CERT", dir.write("client.pem", &cert))
        .env("CONSUL_CLIENT_KEY", dir.write("client-key.pem", &key))
        .env("CONSUL_TLS_SERVER_NAME", "consul.test")
        .kill_on_drop(true);
    let out = tokio::time::timeout(PATIENCE * 2, child.output()).await.expect("the child finishes").expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("test env_child ... ok") && stdout.contains("1 passed"), "the child test ran:\n{stdout}");
    assert_eq!(double.registrations(), 1, "the child registered over TLS");
}

/// Run by `consul_environment_variables_configure_tls` in a child process with the variables set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process of consul_environment_variables_configure_tls"]
async fn env_child() {
    assert!(
        std::env::var_os(CHILD_MARKER).is_some(),
        "env_child runs only as the child of consul_environment_variables_configure_tls"
    );
    let target = lb_registry::Target::parse("consul:///envsvc").expect("target");
    let reg = lb_registry::register(&target, Endpoint::new(addr(8501))).await.expect("register configured by the environment");
    let mut discover = lb_registry::resolve(&target).expect("resolver configured by the environment");
    let first = tokio::time::timeout(PATIENCE, discover.next()).await.expect("an answer").expect("open");
    assert_eq!(ports(&first.expect("discovery configured by the environment")), vec![8501]);

    // A builder option wins over its variable: a wrong server name fails verification.
    let r = ConsulRegistrar::builder().tls_domain("not-consul.test").build().expect("options");
    let err = r.register("envsvc", Endpoint::new(addr(8502))).await.expect_err("the builder's name is verified");
    assert!(chain(&err).contains("certificate"), "{}", chain(&err));
    // An explicit http:// address wins over CONSUL_HTTP_SSL.
    let plain = ConsulResolver::builder().address(format!("http://{}", std::env::var("CONSUL_HTTP_ADDR").expect("set")));
    let answer = first_answer(plain.build().expect("options"), "envsvc").await;
    answer.expect_err("plain HTTP to an HTTPS agent");
    reg.deregister().await;
}
