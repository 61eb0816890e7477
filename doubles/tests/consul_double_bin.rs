//! The `consul-double` binary's contract with the tests of other crates: the first stdout line is
//! the bound address, and Consul's HTTP API answers there (checked with raw HTTP/1.1, so a broken
//! client library cannot hide a broken double), over plain TCP or, with `--tls-cert`, rustls.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lb_doubles::consul::rustls;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

struct Double(Child);

impl Drop for Double {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(extra: &[&str]) -> (Double, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_consul-double"))
        .args(["--addr", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("consul-double starts");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut first).expect("first line");
    let addr = first.trim().parse().unwrap_or_else(|_| panic!("first line is the address, got {first:?}"));
    (Double(child), addr)
}

/// One request; returns (status, headers, body).
fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let token = token.map(|t| format!("X-Consul-Token: {t}\r\n")).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{token}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status code");
    (status, head.to_ascii_lowercase(), body.to_string())
}

#[test]
fn serves_registration_and_health_with_the_token_it_was_given() {
    let (_double, addr) = start(&["--acl-token", "t0k", "--unprivileged-token", "weak"]);
    let reg = r#"{"ID":"web-1","Name":"web","Address":"127.0.0.1","Port":8080,
                 "Check":{"TTL":"30s","Status":"passing"}}"#;
    // Writes need service:write: 403 without a token, with a token lacking it, with an unknown one.
    for token in [None, Some("weak")] {
        let (status, head, body) = http(addr, "PUT", "/v1/agent/service/register", token, reg);
        assert_eq!(status, 403, "{token:?}: {body}");
        assert!(body.starts_with("Permission denied") && body.contains("service:write"), "{body}");
        assert!(head.contains("x-consul-default-acl-policy: deny"), "{head}");
    }
    let (status, _, body) = http(addr, "PUT", "/v1/agent/service/register", Some("n0pe"), reg);
    assert_eq!((status, body.as_str()), (403, "ACL not found"));
    let (status, _, body) = http(addr, "PUT", "/v1/agent/service/register", Some("t0k"), reg);
    assert_eq!(status, 200, "{body}");

    // Reads are filtered, not refused: 200 and an empty list. The header that says so goes only to
    // a caller that presented a token (Consul hides it from the anonymous token).
    let (status, head, body) = http(addr, "GET", "/v1/health/service/web", None, "");
    assert_eq!((status, body.as_str()), (200, "[]"), "anonymous read");
    assert!(!head.contains("x-consul-results-filtered-by-acls"), "{head}");
    let (status, head, body) = http(addr, "GET", "/v1/health/service/web", Some("weak"), "");
    assert_eq!((status, body.as_str()), (200, "[]"), "a token without service:read");
    assert!(head.contains("x-consul-results-filtered-by-acls: true"), "{head}");
    let (_, head, _) = http(addr, "GET", "/v1/health/service/nothing-here", Some("weak"), "");
    assert!(!head.contains("x-consul-results-filtered-by-acls"), "nothing hidden, no header: {head}");
    let (status, _, body) = http(addr, "GET", "/v1/health/service/web", Some("n0pe"), "");
    assert_eq!((status, body.as_str()), (403, "ACL not found"), "an unknown secret is refused, reads included");

    let (status, head, body) = http(addr, "GET", "/v1/health/service/web?passing", Some("t0k"), "");
    assert_eq!(status, 200);
    assert!(head.contains("x-consul-index: "), "{head}");
    assert!(!head.contains("x-consul-results-filtered-by-acls"), "{head}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v[0]["Service"]["ID"], "web-1");
    assert_eq!(v[0]["Service"]["Port"], 8080);

    let (status, _, _) = http(addr, "PUT", "/v1/agent/check/fail/service:web-1", Some("t0k"), "");
    assert_eq!(status, 200);
    let (_, _, body) = http(addr, "GET", "/v1/health/service/web?passing", Some("t0k"), "");
    assert_eq!(body, "[]", "?passing filters critical instances");
    let (status, _, body) = http(addr, "PUT", "/v1/agent/check/pass/service:nope", Some("t0k"), "");
    assert_eq!(status, 404, "{body}");
}

fn index_of(head: &str) -> u64 {
    head.lines()
        .find_map(|l| l.strip_prefix("x-consul-index: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("an X-Consul-Index header")
}

#[test]
fn blocking_queries_return_on_change_or_after_wait_and_ttl_passes_do_not_wake_them() {
    let (_double, addr) = start(&[]);
    let reg = r#"{"ID":"api-1","Name":"api","Address":"127.0.0.1","Port":9090,"Check":{"TTL":"30s","Status":"passing"}}"#;
    assert_eq!(http(addr, "PUT", "/v1/agent/service/register", None, reg).0, 200);
    let (_, head, _) = http(addr, "GET", "/v1/health/service/api?passing", None, "");
    let index = index_of(&head);

    // Nothing changes but TTL passes: the query is held for the whole wait (plus at most wait/16).
    // Passes go in all the while, so some land while it is held, however the threads are scheduled.
    let querying = Arc::new(AtomicBool::new(true));
    let passer = {
        let querying = Arc::clone(&querying);
        std::thread::spawn(move || {
            let mut passes = 0;
            while querying.load(Ordering::SeqCst) {
                assert_eq!(http(addr, "PUT", "/v1/agent/check/pass/service:api-1", None, "").0, 200);
                passes += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            passes
        })
    };
    let t = std::time::Instant::now();
    let (status, head, _) = http(addr, "GET", &format!("/v1/health/service/api?passing&index={index}&wait=1s"), None, "");
    let held = t.elapsed();
    querying.store(false, Ordering::SeqCst);
    let passes = passer.join().expect("passer");
    assert_eq!(status, 200);
    assert!(passes >= 2, "passes went in while the query was held ({passes})");
    assert_eq!(index_of(&head), index, "a TTL pass with the same output is not a change");
    // The wait is the behaviour: held at least the wait, and far less than five of them.
    assert!(held >= Duration::from_millis(950) && held < Duration::from_secs(5), "held {held:?}");

    // A registration is a change: a query held on the old index returns with a higher one, long
    // before its wait. The registration goes in once the query is sent; if the double reads it
    // later, the query returns at once all the same (its index is already behind).
    let mut query = TcpStream::connect(addr).expect("connect");
    query.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    write!(query, "GET /v1/health/service/api?passing&index={index}&wait=60s HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
        .expect("send the query");
    let t = std::time::Instant::now();
    let reg = r#"{"ID":"api-2","Name":"api","Address":"127.0.0.1","Port":9091}"#;
    assert_eq!(http(addr, "PUT", "/v1/agent/service/register", None, reg).0, 200);
    let mut raw = String::new();
    query.read_to_string(&mut raw).expect("read the answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let head = head.to_ascii_lowercase();
    assert!(t.elapsed() < Duration::from_secs(30), "returned on the change, not after the 60 s wait");
    assert!(index_of(&head) > index);
    assert!(body.contains("api-2"), "{body}");
}

/// A certificate for `names` signed by `ca`, and its key (both PEM).
fn issue(ca: &(rcgen::Certificate, KeyPair), names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
    let mut params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca.0, &ca.1).expect("signed");
    (cert.pem(), key.serialize_pem())
}

fn new_ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed");
    (cert, key)
}

/// One HTTPS request with rustls; the status, or the error that stopped it.
fn https(addr: SocketAddr, ca_pem: &str, identity: Option<(&str, &str)>, path: &str) -> Result<u16, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("ca")).expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("cert")],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"),
            )
            .expect("identity"),
    };
    let name = ServerName::from(addr.ip());
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut s = rustls::StreamOwned::new(conn, tcp);
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).map_err(|e| e.to_string())?;
    raw.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("no status line in {raw:?}"))
}

#[test]
fn serves_https_and_requires_client_certificates_when_given_a_client_ca() {
    let ca = new_ca("double CA");
    let clients = new_ca("client CA");
    let (cert, key) = issue(&ca, &["127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = issue(&clients, &["client"], ExtendedKeyUsagePurpose::ClientAuth);
    let dir = std::env::temp_dir().join(format!("consul-double-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = |name: &str, content: &str| {
        let p = dir.join(name);
        std::fs::write(&p, content).expect("write");
        p.to_string_lossy().into_owned()
    };
    let (cert_file, key_file, client_ca_file) = (file("cert.pem", &cert), file("key.pem", &key), file("client-ca.pem", &clients.0.pem()));

    let (_tls, addr) = start(&["--tls-cert", &cert_file, "--tls-key", &key_file]);
    assert_eq!(https(addr, &ca.0.pem(), None, "/v1/health/service/web"), Ok(200));
    let err = https(addr, &clients.0.pem(), None, "/v1/health/service/web").expect_err("a CA that did not sign it");
    assert!(err.contains("certificate"), "{err}");

    let (_mtls, addr) = start(&["--tls-cert", &cert_file, "--tls-key", &key_file, "--tls-client-ca", &client_ca_file]);
    assert_eq!(https(addr, &ca.0.pem(), Some((&client_cert, &client_key)), "/v1/health/service/web"), Ok(200));
    https(addr, &ca.0.pem(), None, "/v1/health/service/web").expect_err("a client certificate is required");
    let _ = std::fs::remove_dir_all(&dir);
}
