//! TLS to the Consul agent: the options, their environment defaults, the rustls client
//! configuration, and the hyper connector that speaks plain TCP or TLS by the URI's scheme.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use lb_core::BoxError;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tower_service::Service;

use super::env;
use crate::Error;

/// TLS options set on a builder. Any of them turns TLS on for agent addresses without a scheme.
#[derive(Clone, Default)]
pub(crate) struct TlsOptions {
    pub(crate) ca_pem: Option<Vec<u8>>,
    pub(crate) identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    pub(crate) domain: Option<String>,
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the private key.
        f.debug_struct("TlsOptions")
            .field("ca_pem", &self.ca_pem.as_ref().map(|p| format!("<{} bytes>", p.len())))
            .field("identity_pem", &self.identity_pem.as_ref().map(|_| "<set>"))
            .field("domain", &self.domain)
            .finish()
    }
}

impl TlsOptions {
    pub(crate) fn is_set(&self) -> bool {
        self.ca_pem.is_some() || self.identity_pem.is_some() || self.domain.is_some()
    }
}

/// What the client connects with once TLS is on.
#[derive(Clone)]
pub(crate) struct TlsSettings {
    connector: TlsConnector,
    /// The name to verify instead of the address's host.
    domain: Option<ServerName<'static>>,
    /// Without a client certificate: notes whether an agent asked for one.
    no_identity: Option<Arc<NoClientCert>>,
}

impl TlsSettings {
    /// True when an agent asked for a client certificate and none is configured. With TLS 1.3 the
    /// agent refuses only after the handshake, so the error the request sees ("connection closed",
    /// "not ready") does not say why; this does.
    pub(crate) fn client_cert_wanted(&self) -> bool {
        self.no_identity.as_ref().is_some_and(|n| n.asked.load(Ordering::Relaxed))
    }
}

/// The client-certificate resolver of a client that has none: presents nothing and remembers that
/// an agent asked.
#[derive(Debug, Default)]
struct NoClientCert {
    asked: AtomicBool,
}

impl ResolvesClientCert for NoClientCert {
    fn resolve(&self, _issuers: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.asked.store(true, Ordering::Relaxed);
        None
    }

    fn has_certs(&self) -> bool {
        false
    }
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings").field("domain", &self.domain).finish()
    }
}

fn var(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

fn read(what: &str, path: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(Path::new(path)).map_err(|e| Error::invalid_target(format!("cannot read the Consul {what} {path}: {e}")))
}

/// `CONSUL_HTTP_SSL`, when set: whether scheme-less agent addresses use TLS.
pub(crate) fn env_enabled() -> Result<Option<bool>, Error> {
    match var(env::HTTP_SSL) {
        None => Ok(None),
        Some(v) => match v.trim().to_ascii_lowercase().as_str() {
            "1" | "t" | "true" => Ok(Some(true)),
            "0" | "f" | "false" => Ok(Some(false)),
            _ => Err(Error::invalid_target(format!("{}=`{v}` is not true or false", env::HTTP_SSL))),
        },
    }
}

/// Builds the TLS settings: each option from the builder when set there, else from the Consul
/// environment variables; without a CA, the platform's roots.
pub(crate) fn settings(opts: &TlsOptions) -> Result<TlsSettings, Error> {
    let ca_pem = match &opts.ca_pem {
        Some(pem) => Some(pem.clone()),
        None => var(env::CACERT).map(|path| read(&format!("CA file ({})", env::CACERT), &path)).transpose()?,
    };
    let identity = match &opts.identity_pem {
        Some(pair) => Some(pair.clone()),
        None => match (var(env::CLIENT_CERT), var(env::CLIENT_KEY)) {
            (Some(cert), Some(key)) => Some((
                read(&format!("client certificate ({})", env::CLIENT_CERT), &cert)?,
                read(&format!("client key ({})", env::CLIENT_KEY), &key)?,
            )),
            (None, None) => None,
            _ => {
                return Err(Error::invalid_target(format!(
                    "{} and {} must be set together",
                    env::CLIENT_CERT,
                    env::CLIENT_KEY
                )))
            }
        },
    };
    let domain = opts.domain.clone().or_else(|| var(env::TLS_SERVER_NAME));

    let roots = match &ca_pem {
        Some(pem) => ca_roots(pem)?,
        None => platform_roots()?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::invalid_target(format!("Consul TLS: {e}")))?
        .with_root_certificates(roots);
    let (config, no_identity) = match identity {
        Some((cert, key)) => {
            let (chain, key) = identity_der(&cert, &key)?;
            let config = builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::invalid_target(format!("the Consul client certificate and key do not go together: {e}")))?;
            (config, None)
        }
        None => {
            let none = Arc::new(NoClientCert::default());
            (builder.with_client_cert_resolver(Arc::clone(&none) as Arc<dyn ResolvesClientCert>), Some(none))
        }
    };
    let domain = domain
        .map(|d| {
            ServerName::try_from(d.trim().to_string())
                .map_err(|_| Error::invalid_target(format!("`{d}` is not a server name to verify the Consul agent against")))
        })
        .transpose()?;
    Ok(TlsSettings {
        connector: TlsConnector::from(Arc::new(config)),
        domain,
        no_identity,
    })
}

fn ca_roots(pem: &[u8]) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| Error::invalid_target(format!("the Consul CA is not valid PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| Error::invalid_target(format!("the Consul CA holds a certificate that cannot be used: {e}")))?;
    }
    if roots.is_empty() {
        return Err(Error::invalid_target("the Consul CA PEM holds no certificate (expected -----BEGIN CERTIFICATE-----)"));
    }
    Ok(roots)
}

fn platform_roots() -> Result<RootCertStore, Error> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = found.errors.first().map(|e| format!(" ({e})")).unwrap_or_default();
        return Err(Error::invalid_target(format!(
            "TLS to the Consul agent needs a CA: none was given (tls_ca_file, tls_ca_pem or {}) and the platform has no usable root certificates{why}",
            env::CACERT
        )));
    }
    Ok(roots)
}

fn identity_der(cert: &[u8], key: &[u8]) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::invalid_target(format!("the Consul client certificate is not valid PEM: {e}")))?;
    if chain.is_empty() {
        return Err(Error::invalid_target("the Consul client certificate PEM holds no certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| Error::invalid_target(format!("the Consul client key is not a PEM private key: {e}")))?;
    Ok((chain, key))
}

/// Connects with TCP, then TLS for `https` URIs.
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    http: HttpConnector,
    tls: Option<TlsSettings>,
}

impl Connector {
    pub(crate) fn new(mut http: HttpConnector, tls: Option<TlsSettings>) -> Self {
        http.enforce_http(false);
        Connector { http, tls }
    }
}

impl Service<Uri> for Connector {
    type Response = Stream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mut http = self.http.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            let https = uri.scheme_str() == Some("https");
            let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
            let tcp = http.call(uri).await?;
            if !https {
                return Ok(Stream::Plain(tcp));
            }
            let Some(tls) = tls else {
                return Err("an https agent address without TLS settings".into());
            };
            let name = match tls.domain {
                Some(name) => name,
                None => ServerName::try_from(host.clone()).map_err(|_| format!("`{host}` is not a name TLS can verify"))?,
            };
            let stream = tls
                .connector
                .connect(name, tcp.into_inner())
                .await
                .map_err(|e| format!("TLS handshake with {host}: {e}"))?;
            Ok(Stream::Tls(Box::new(TokioIo::new(stream))))
        })
    }
}

/// A connection to the agent.
#[derive(Debug)]
pub(crate) enum Stream {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        match self {
            Stream::Plain(s) => s.connected(),
            Stream::Tls(s) => s.inner().get_ref().0.connected(),
        }
    }
}

impl Read for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl Write for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }
}
