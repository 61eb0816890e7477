//! The connector on its own: close signals, unsent requests handed back, extra HTTP/2 connections.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use lb_core::pool::Connect;
use lb_core::Endpoint;
use lb_hyper::{HttpConnector, Protocol};
use support::Backend;

async fn closed_connection_hands_the_request_back(protocol: Protocol) {
    let backend = Backend::start(Duration::ZERO).await;
    let connector = HttpConnector::<Empty<Bytes>>::new(protocol);
    let connected = connector.connect(&Endpoint::new(backend.addr)).await.expect("connects");
    let (conn, closed) = connected.into_parts();

    let req = Request::get(format!("http://{}/echo", backend.addr))
        .header("host", backend.addr.to_string())
        .body(Empty::new())
        .expect("valid");
    let (rsp, slot) = conn.send(req).await.expect("served");
    assert_eq!(rsp.status(), 200);
    rsp.into_body().collect().await.expect("body");
    drop(slot);

    backend.kill().await;
    tokio::time::timeout(Duration::from_secs(30), closed).await.expect("close signal fires when the server goes");
    assert!(conn.is_closed());

    let req = Request::get("http://unused/echo").header("x-marker", "mine").body(Empty::new()).expect("valid");
    let mut err = conn.send(req).await.expect_err("connection is gone");
    assert!(err.is_unsent(), "{err:?}");
    let back = err.take_request().expect("the request comes back");
    assert_eq!(back.headers()["x-marker"], "mine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_http2_connection_hands_the_request_back() {
    closed_connection_hands_the_request_back(Protocol::Http2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_http1_connection_hands_the_request_back() {
    closed_connection_hands_the_request_back(Protocol::Http1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_is_a_connect_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let connector = HttpConnector::<Empty<Bytes>>::http2();
    let err = connector
        .connect(&Endpoint::new(([127, 0, 0, 1], port).into()))
        .await
        .expect_err("nobody listens");
    assert!(err.to_string().to_lowercase().contains("refused"), "{err}");
}
