//! `consul-double --addr 127.0.0.1:0 [--acl-token TOKEN [--unprivileged-token TOKEN]…]
//! [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]]`: runs the Consul HTTP API double (a test double, not Consul) until
//! killed. The first line on stdout is the bound address, so a test that spawns it can read the
//! port. `--acl-token` turns ACLs on (default policy deny) with that management token;
//! `--unprivileged-token` (repeatable) adds a token without any policy. With `--tls-cert` and `--tls-key` (PEM) it serves HTTPS only; `--tls-client-ca` makes it
//! require client certificates signed by that CA (Consul's `verify_incoming`).

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use lb_doubles::consul::rustls;
use lb_doubles::consul::{ConsulDouble, DoubleConfig};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn usage() -> ! {
    eprintln!("usage: consul-double [--addr 127.0.0.1:0] [--acl-token TOKEN [--unprivileged-token TOKEN]...] [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]]");
    std::process::exit(2)
}

fn fail(message: String) -> ! {
    eprintln!("consul-double: {message}");
    std::process::exit(2)
}

fn certs(path: &str) -> Vec<CertificateDer<'static>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .unwrap_or_else(|e| fail(format!("cannot read certificates from {path}: {e}")));
    if certs.is_empty() {
        fail(format!("{path} holds no certificate"));
    }
    certs
}

fn tls_config(cert: &str, key: &str, client_ca: Option<&str>) -> Arc<rustls::ServerConfig> {
    let chain = certs(cert);
    let key = PrivateKeyDer::from_pem_file(key).unwrap_or_else(|e| fail(format!("cannot read a private key from {key}: {e}")));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| fail(format!("TLS: {e}")));
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs(ca) {
                roots.add(cert).unwrap_or_else(|e| fail(format!("{ca}: {e}")));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap_or_else(|e| fail(format!("client verification: {e}")));
            builder.with_client_cert_verifier(verifier)
        }
    };
    Arc::new(builder.with_single_cert(chain, key).unwrap_or_else(|e| fail(format!("server certificate: {e}"))))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut config = DoubleConfig::default();
    let (mut cert, mut key, mut client_ca) = (None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => {
                let addr: SocketAddr = args.next().and_then(|a| a.parse().ok()).unwrap_or_else(|| usage());
                config.addr = addr;
            }
            "--acl-token" => config.acl_token = Some(args.next().unwrap_or_else(|| usage())),
            "--unprivileged-token" => config.unprivileged_tokens.push(args.next().unwrap_or_else(|| usage())),
            "--tls-cert" => cert = Some(args.next().unwrap_or_else(|| usage())),
            "--tls-key" => key = Some(args.next().unwrap_or_else(|| usage())),
            "--tls-client-ca" => client_ca = Some(args.next().unwrap_or_else(|| usage())),
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    let started = match (cert, key) {
        (None, None) if client_ca.is_none() => ConsulDouble::start_with(config).await,
        (Some(cert), Some(key)) => ConsulDouble::start_tls(config, tls_config(&cert, &key, client_ca.as_deref())).await,
        _ => usage(),
    };
    let double = match started {
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
