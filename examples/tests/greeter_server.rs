//! `greeter-server` as a user runs it: prints its address, answers naming it, serves
//! `grpc.health.v1`, exits cleanly on SIGTERM, and rejects a target it cannot register in.

mod support;

use std::process::Command;

use lb_examples::pb::greeter_client::GreeterClient;
use lb_examples::pb::HelloRequest;
use lb_examples::server::backend_of;
use support::Server;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[tokio::test]
async fn prints_its_address_answers_naming_it_and_serves_health() {
    let server = Server::start_logged(&["--zone", "a"]);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .expect("valid uri")
        .connect()
        .await
        .expect("connect to the printed address");

    let reply = GreeterClient::new(channel.clone())
        .say_hello(HelloRequest { name: "world".into() })
        .await
        .expect("SayHello succeeds")
        .into_inner();
    assert!(reply.message.starts_with("Hello world"), "{}", reply.message);
    assert_eq!(backend_of(&reply.message), Some(server.addr.to_string().as_str()));

    let mut health = HealthClient::new(channel);
    for service in ["", "helloworld.Greeter"] {
        let status = health
            .check(HealthCheckRequest { service: service.into() })
            .await
            .unwrap_or_else(|e| panic!("health check of {service:?}: {e}"))
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest { service: "no.such.Service".into() })
        .await
        .expect_err("unknown service");
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    // SIGTERM with a client still connected that cannot answer HTTP/2's graceful-shutdown PING
    // (this single-threaded test runtime is blocked waiting on the process): the drain is bounded
    // and the server still exits 0.
    let (clean, log) = server.terminate_with_log();
    assert!(clean, "greeter-server exits 0 on SIGTERM (within 5 s, or terminate panics):\n{log}");
    assert!(log.contains("drain timeout"), "the drain gave up on the silent client:\n{log}");
    drop(health);
}

// Multi-threaded so the dropped client's connection task runs while the test blocks on the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn drains_without_the_timeout_once_clients_are_gone() {
    let server = Server::start_logged(&["--drain-delay-ms", "0"]);
    let mut client = GreeterClient::connect(format!("http://{}", server.addr)).await.expect("connect");
    client.say_hello(HelloRequest { name: "bye".into() }).await.expect("SayHello succeeds");
    drop(client);

    let (clean, log) = server.terminate_with_log();
    assert!(clean, "greeter-server exits 0 on SIGTERM:\n{log}");
    assert!(log.contains("shutting down"), "{log}");
    assert!(!log.contains("drain timeout"), "nothing was left to wait for:\n{log}");
}

#[tokio::test]
async fn slow_server_delays_its_replies() {
    let server = Server::start(&["--delay-ms", "150"]);
    let mut client = GreeterClient::connect(format!("http://{}", server.addr)).await.expect("connect");
    let started = std::time::Instant::now();
    client.say_hello(HelloRequest { name: "slow".into() }).await.expect("SayHello succeeds");
    assert!(started.elapsed() >= std::time::Duration::from_millis(150), "{:?}", started.elapsed());
}

#[test]
fn a_static_target_cannot_register_and_says_so() {
    let out = Command::new(env!("CARGO_BIN_EXE_greeter-server"))
        .args(["--addr", "127.0.0.1:0", "--register", "static:///127.0.0.1:1", "--ttl-secs", "5"])
        .output()
        .expect("greeter-server runs");
    assert!(!out.status.success(), "registration in a static list must fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot register"), "{stderr}");
    assert!(stderr.contains("only etcd and consul"), "{stderr}");
}

#[test]
fn a_malformed_target_fails_before_binding() {
    let out = Command::new(env!("CARGO_BIN_EXE_greeter-server"))
        .args(["--addr", "127.0.0.1:0", "--register", "no-scheme"])
        .output()
        .expect("greeter-server runs");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no address printed for a server that never started");
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid --register target"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn fails_the_asked_share_and_says_how_many_calls_it_received_on_sigterm() {
    let server = Server::start(&["--fail-fraction", "1", "--drain-delay-ms", "0"]);
    let mut client = GreeterClient::connect(format!("http://{}", server.addr)).await.expect("connect");
    for _ in 0..5 {
        let status = client.say_hello(HelloRequest { name: "x".into() }).await.expect_err("every call fails");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    }
    drop(client);
    let (clean, calls) = server.terminate_with_calls();
    assert!(clean, "greeter-server exits 0 on SIGTERM");
    assert_eq!(calls, 5, "the summary counts failed calls too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn the_tail_fraction_delays_that_share_of_calls() {
    let server = Server::start(&["--tail-fraction", "1", "--tail-ms", "150"]);
    let mut client = GreeterClient::connect(format!("http://{}", server.addr)).await.expect("connect");
    let started = std::time::Instant::now();
    client.say_hello(HelloRequest { name: "tail".into() }).await.expect("SayHello succeeds");
    assert!(started.elapsed() >= std::time::Duration::from_millis(150), "{:?}", started.elapsed());
}

#[test]
fn fractions_outside_zero_to_one_are_refused() {
    for args in [["--fail-fraction=1.5"], ["--fail-fraction=-0.1"], ["--fail-fraction=NaN"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_greeter-server"))
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .output()
            .expect("greeter-server runs");
        assert!(!out.status.success(), "{args:?} must be refused");
        assert!(out.stdout.is_empty(), "no address printed for a server that never started");
        assert!(String::from_utf8_lossy(&out.stderr).contains("between 0 and 1"), "{args:?}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_greeter-server"))
        .args(["--addr", "127.0.0.1:0", "--tail-fraction", "0.5"])
        .output()
        .expect("greeter-server runs");
    assert!(!out.status.success(), "--tail-fraction needs --tail-ms");
}
