//! `consul-double --addr 127.0.0.1:0 [--acl-token TOKEN]`: runs the Consul HTTP API double (a test
//! double, not Consul) until killed. The first line on stdout is the bound address, so a test that
//! spawns it can read the port.

use std::io::Write;
use std::net::SocketAddr;

use lb_doubles::consul::{ConsulDouble, DoubleConfig};

fn usage() -> ! {
    eprintln!("usage: consul-double [--addr 127.0.0.1:0] [--acl-token TOKEN]");
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut config = DoubleConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => {
                let addr: SocketAddr = args.next().and_then(|a| a.parse().ok()).unwrap_or_else(|| usage());
                config.addr = addr;
            }
            "--acl-token" => config.acl_token = Some(args.next().unwrap_or_else(|| usage())),
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    let double = match ConsulDouble::start_with(config).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("consul-double: cannot bind: {e}");
            std::process::exit(1)
        }
    };
    let mut out = std::io::stdout().lock();
    // The address line is the contract with tests that spawn this binary.
    if writeln!(out, "{}", double.addr()).and_then(|()| out.flush()).is_err() {
        std::process::exit(1)
    }
    drop(out);
    let _ = tokio::signal::ctrl_c().await;
    drop(double);
}
