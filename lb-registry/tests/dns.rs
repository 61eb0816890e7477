//! `dns:///` through `lb_registry::resolve` and the real system resolver, on loopback only:
//! `localhost` comes from the machine's hosts file, and the server is a plain TCP listener on
//! 127.0.0.1.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures_util::StreamExt as _;
use lb_core::{Endpoint, EndpointId, Update};
use lb_registry::Target;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Generous: the machines running these tests are shared and slow.
const PATIENCE: Duration = Duration::from_secs(15);

async fn first_reset(uri: &str) -> Vec<Endpoint> {
    let target = Target::parse(uri).expect("valid target");
    let mut updates = lb_registry::resolve(&target).expect("dns is always available");
    match tokio::time::timeout(PATIENCE, updates.next()).await {
        Ok(Some(Ok(Update::Reset(endpoints)))) => endpoints,
        other => panic!("expected a first reset from {uri}, got {other:?}"),
    }
}

#[tokio::test]
async fn localhost_resolves_to_a_reachable_server() {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind 127.0.0.1");
    let port = listener.local_addr().expect("local addr").port();
    let server = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        conn.write_all(b"hello").await.expect("write");
    });

    let endpoints = first_reset(&format!("dns:///localhost:{port}?refresh=1s")).await;
    let addrs: Vec<SocketAddr> = endpoints.iter().map(Endpoint::addr).collect();
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    assert!(addrs.contains(&v4), "{addrs:?}");
    // The machine may also resolve localhost to [::1]; anything else would be wrong.
    for ep in &endpoints {
        assert!(ep.addr().ip().is_loopback() && ep.addr().port() == port, "{ep:?}");
        assert_eq!(ep.id(), &EndpointId::from(ep.addr()));
    }

    let mut conn = TcpStream::connect(v4).await.expect("connect to the resolved address");
    let mut greeting = Vec::new();
    conn.read_to_end(&mut greeting).await.expect("read");
    assert_eq!(greeting, b"hello");
    server.await.expect("server task");
}

#[tokio::test]
async fn ip_literals_are_used_as_they_are() {
    let endpoints = first_reset("dns:///[::1]:7001,127.0.0.1:7001,127.0.0.1:7002").await;
    let addrs: Vec<SocketAddr> = endpoints.iter().map(Endpoint::addr).collect();
    let expected: Vec<SocketAddr> = vec![
        (Ipv4Addr::LOCALHOST, 7001).into(),
        (Ipv4Addr::LOCALHOST, 7002).into(),
        (IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1]), 7001).into(),
    ];
    assert_eq!(addrs, expected);
}

#[tokio::test]
async fn bad_targets_and_registration_are_refused() {
    let target = Target::parse("dns://8.8.8.8/localhost:80").expect("valid URI");
    let err = lb_registry::resolve(&target).err().expect("a DNS server in the authority");
    assert!(err.is_invalid_target() && err.to_string().contains("system resolver"), "{err}");

    for bad in ["dns:///localhost", "dns:///localhost:99999", "dns:///localhost:80?refresh=0s", "dns:///"] {
        let target = Target::parse(bad).expect("valid URI");
        let err = lb_registry::resolve(&target).err().expect(bad);
        assert!(err.is_invalid_target(), "{bad}: {err}");
    }

    let target = Target::parse("dns:///localhost:80").expect("valid URI");
    let instance = Endpoint::new((Ipv4Addr::LOCALHOST, 80).into());
    let err = lb_registry::register(&target, instance).await.expect_err("dns cannot register");
    assert!(err.is_invalid_target() && err.to_string().contains("cannot register"), "{err}");
}
