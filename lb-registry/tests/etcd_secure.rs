//! etcd with mutual TLS and with username/password authentication, configured through the builder
//! and through the `LB_ETCD_*` environment variables.

mod support;

use std::time::Duration;

use futures_util::StreamExt as _;
use lb_core::discover::BoxDiscover;
use lb_core::Endpoint;
use lb_registry::etcd::{env, EtcdRegistrar, EtcdResolver};
use lb_registry::{Registrar as _, Resolver as _, Target};
use support::{Etcd, SetWatcher};

const TTL: Duration = Duration::from_secs(3);

fn instance(id: &str, port: u16) -> Endpoint {
    Endpoint::new(([127, 0, 0, 1], port).into()).with_id(id)
}

/// Reads a discovery stream until its first error (at most 30 s), and returns it: a refused
/// client must say so, and must have delivered no endpoint before.
async fn first_error(mut discover: BoxDiscover) -> String {
    let read = async {
        while let Some(item) = discover.next().await {
            match item {
                Ok(lb_core::Update::Reset(l) | lb_core::Update::Add(l)) if !l.is_empty() => panic!("endpoints read: {l:?}"),
                Ok(_) => {}
                Err(e) => return e.to_string(),
            }
        }
        panic!("the discovery stream ended without an error");
    };
    tokio::time::timeout(Duration::from_secs(30), read).await.expect("the refusal surfaces as a discovery error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls() {
    support::init_tracing();
    let etcd = Etcd::start_tls().await;
    let c = etcd.certs().expect("tls fixture").clone();
    let secure = || {
        EtcdRegistrar::builder([etcd.endpoint()])
            .tls_ca_file(&c.ca)
            .tls_identity_files(&c.client_cert, &c.client_key)
            .ttl(TTL)
    };
    let _reg = secure()
        .build_registrar()
        .expect("valid options")
        .register("sec", instance("a", 7501))
        .await
        .expect("registers over mutual TLS");
    let w = SetWatcher::new(secure().build_resolver().expect("valid options").resolve("sec"));
    w.wait("discovered over mutual TLS", Duration::from_secs(30), |s| s.len() == 1).await;

    // Without a client certificate the server refuses: an error, no data, no crash.
    let no_identity = EtcdResolver::builder([etcd.endpoint()])
        .tls_ca_file(&c.ca)
        .build_resolver()
        .expect("valid options");
    // Nothing is read without a client certificate; the failure surfaces as a discovery error.
    first_error(no_identity.resolve("sec")).await;

    // Plain text to a TLS-only server fails the first registration with a registry error.
    let plain = EtcdRegistrar::builder([etcd.endpoint()])
        .connect_timeout(Duration::from_secs(1))
        .request_timeout(Duration::from_secs(2))
        .build_registrar()
        .expect("valid options");
    let err = plain.register("sec", instance("b", 7502)).await.expect_err("plain text is refused");
    assert!(err.is_registry(), "{err}");

    // A missing key file is a clear configuration error, before any network traffic.
    let err = EtcdResolver::builder([etcd.endpoint()])
        .tls_identity_files(&c.client_cert, "/nonexistent/client.key")
        .build_resolver()
        .expect_err("missing key file");
    assert!(err.is_invalid_target() && err.to_string().contains("/nonexistent/client.key"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn username_and_password_from_the_builder_and_the_environment() {
    support::init_tracing();
    let etcd = Etcd::start().await;
    let mut root = etcd.client().await.expect("connect");
    root.user_add("root", "root-pw", None).await.expect("add root");
    root.user_grant_role("root", "root").await.expect("grant root");
    root.user_add("svc", "svc-pw", None).await.expect("add svc");
    root.role_add("lb").await.expect("add role");
    root.role_grant_permission("lb", etcd_client::Permission::read_write("/lb/").with_prefix())
        .await
        .expect("grant /lb/");
    root.user_grant_role("svc", "lb").await.expect("grant lb");
    root.auth_enable().await.expect("enable auth");

    let _a = EtcdRegistrar::builder([etcd.endpoint()])
        .credentials("svc", "svc-pw")
        .ttl(TTL)
        .build_registrar()
        .expect("valid options")
        .register("authsvc", instance("a", 7601))
        .await
        .expect("registers with credentials");

    let anonymous = EtcdResolver::builder([etcd.endpoint()]).build_resolver().expect("valid options");
    // Nothing is read without credentials; the refusal surfaces as a discovery error.
    let refusal = first_error(anonymous.resolve("authsvc")).await;
    assert!(refusal.to_lowercase().contains("permission denied") || refusal.contains("user name is empty"), "{refusal}");
    let wrong = EtcdRegistrar::builder([etcd.endpoint()])
        .credentials("svc", "wrong")
        .build_registrar()
        .expect("valid options");
    assert!(wrong.register("authsvc", instance("x", 7603)).await.expect_err("wrong password").is_registry());

    // URI-only configuration (CLI, C ABI, agent) takes credentials from the environment. This is
    // the only test in this binary that reads it.
    std::env::set_var(env::USERNAME, "svc");
    std::env::set_var(env::PASSWORD, "svc-pw");
    let target = Target::parse(&format!("etcd://{}/authsvc?ttl=3s", etcd.endpoint())).expect("valid");
    let _b = lb_registry::register(&target, instance("b", 7602)).await.expect("registers with env credentials");
    let w = SetWatcher::new(lb_registry::resolve(&target).expect("resolves"));
    w.wait("both discovered with env credentials", Duration::from_secs(30), |s| s.len() == 2).await;
    std::env::remove_var(env::USERNAME);
    std::env::remove_var(env::PASSWORD);
}
