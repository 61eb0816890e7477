//! `LbClient::request_replayable` against real HTTP/2 servers (the h2 crate) on loopback, one of
//! which refuses every stream with `REFUSED_STREAM`, as an overloaded or restarting server does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use lb_core::policy::RoundRobin;
use lb_hyper::{LbClient, Protocol};
use tokio::net::TcpListener;

/// An HTTP/2 server answering with its address, or refusing every stream. Returns its address and
/// how many streams it saw.
async fn server(refuse: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    let addr = listener.local_addr().expect("bound");
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else { return };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    counter.fetch_add(1, Ordering::Relaxed);
                    if refuse {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    let rsp = http::Response::builder().status(200).body(()).expect("valid response");
                    if let Ok(mut body) = respond.send_response(rsp, false) {
                        let _ = body.send_data(Bytes::from(addr.to_string()), true);
                    }
                }
            });
        }
    });
    (addr, seen)
}

fn post() -> Request<Full<Bytes>> {
    Request::post("/orders").body(Full::new(Bytes::from_static(b"{\"item\":7}"))).expect("valid request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_streams_are_replayed_to_another_endpoint() {
    let (refusing, refused) = server(true).await;
    let (healthy, _) = server(false).await;
    let client: LbClient<Full<Bytes>> = LbClient::builder()
        .protocol(Protocol::Http2)
        .policy(RoundRobin::new())
        .build_from_target(&format!("static:///{refusing},{healthy}"))
        .expect("valid target");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while client.endpoints().iter().filter(|e| e.healthy).count() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", client.endpoints());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Plain `request`: what hyper consumed cannot be sent again, so a refusal reaches the caller.
    let mut failed = 0;
    for _ in 0..10 {
        if client.request(post()).await.is_err() {
            failed += 1;
        }
    }
    assert!(failed > 0, "round robin sent some requests to the refusing server");

    // `request_replayable`: every refused request is re-sent to the other endpoint.
    let before = refused.load(Ordering::Relaxed);
    for _ in 0..10 {
        let rsp = client.request_replayable(post()).await.expect("replayed");
        assert_eq!(rsp.status(), 200);
        let body = rsp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body, healthy.to_string().as_bytes(), "answered by the healthy server");
    }
    assert!(refused.load(Ordering::Relaxed) > before, "the refusing server was tried and refused");
    assert!(client.endpoints().iter().all(|e| e.healthy), "a refusal is not a failure: nothing ejected");
}
