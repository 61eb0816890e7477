//! The README's "Use it" program, compiled and run by the tests (`tests/readme.rs` checks that the
//! README shows exactly the code below the marker).
//!
//! `cargo run -p lb-examples --bin readme -- static:///127.0.0.1:50051,127.0.0.1:50052`

use lb_examples::pb as helloworld;

// README: begin
use std::time::Duration;

use helloworld::greeter_client::GreeterClient;
use helloworld::HelloRequest;
use lb_tonic::{policy::P2c, LbChannel, Locality};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Any target: static:///, dns:///, etcd://, consul://, kubernetes:/// (see below).
    let target = std::env::args().nth(1).unwrap_or_else(|| "static:///127.0.0.1:50051,127.0.0.1:50052".into());
    // Every call picks a backend: P2C over PeakEWMA (the default), preferring the caller's zone.
    let channel = LbChannel::builder()
        .policy(P2c::peak_ewma())
        .locality(Locality::unknown().with_zone("eu-west-1a"))
        .endpoint_wait_timeout(Duration::from_secs(3)) // the longest a call waits for an endpoint: then UNAVAILABLE
        .request_timeout(Duration::from_secs(2)) // no response headers by then: DEADLINE_EXCEEDED
        .build_from_target(&target)?; // checks every option; needs a Tokio runtime
    // Optional: wait for a connected endpoint (a call would wait up to the endpoint wait anyway).
    if !channel.ready(Duration::from_secs(5)).await {
        eprintln!("no endpoint ready yet: {:?}", channel.endpoints());
    }
    let mut client = GreeterClient::new(channel); // any tonic-generated client
    let reply = client.say_hello(HelloRequest { name: "lb".into() }).await?;
    println!("{}", reply.into_inner().message);
    Ok(())
}
