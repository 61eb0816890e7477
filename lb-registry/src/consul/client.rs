//! The thin HTTP client: one request at a time to the current agent, failing over on transport
//! errors, with the ACL token header and a deadline on every request, over plain HTTP or TLS.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use lb_core::BoxError;

use super::tls::{Connector, TlsSettings};
use crate::Error;

/// A response reduced to what the callers look at.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    /// `X-Consul-Index`, when present and numeric.
    pub(crate) index: Option<u64>,
    /// `X-Consul-Results-Filtered-By-ACLs: true`: the token may not see some of the entries.
    pub(crate) acl_filtered: bool,
    /// `X-Consul-Default-ACL-Policy: deny`: what a request without a token may see is only what
    /// the anonymous token was granted.
    pub(crate) default_deny: bool,
    pub(crate) body: Bytes,
}

impl Reply {
    /// The body as text, for error messages (truncated: it may be an HTML error page).
    pub(crate) fn text(&self) -> String {
        let s = String::from_utf8_lossy(&self.body);
        let s = s.trim();
        if s.len() > 200 {
            let cut = (0..=200).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
            format!("{}…", &s[..cut])
        } else {
            s.to_string()
        }
    }

    pub(crate) fn into_error(self, what: &str) -> BoxError {
        format!("consul {what}: HTTP {} {}", self.status.as_u16(), self.text()).into()
    }
}

/// The ACL token and where it came from, so errors can name it without showing the secret.
#[derive(Clone)]
pub(crate) struct Token {
    secret: Arc<str>,
    from_env: bool,
}

impl Token {
    pub(crate) fn new(secret: String, from_env: bool) -> Self {
        Token {
            secret: Arc::from(secret),
            from_env,
        }
    }
}

impl fmt::Display for Token {
    /// `token …3f9a (from CONSUL_HTTP_TOKEN)`: the last four characters, as consoles show API keys.
    /// The rest of the secret never goes into a message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tail: String = {
            let chars: Vec<char> = self.secret.chars().collect();
            if chars.len() >= 12 {
                chars[chars.len() - 4..].iter().collect()
            } else {
                String::new()
            }
        };
        let from = if self.from_env { super::env::HTTP_TOKEN } else { "the builder's token option" };
        if tail.is_empty() {
            write!(f, "the ACL token from {from}")
        } else {
            write!(f, "the ACL token …{tail} (from {from})")
        }
    }
}

#[derive(Clone)]
pub(crate) struct Client {
    http: HttpClient<Connector, Full<Bytes>>,
    /// `http` or `https`, for every agent.
    scheme: &'static str,
    addrs: Arc<[String]>,
    current: Arc<AtomicUsize>,
    token: Option<Token>,
    tls: Option<TlsSettings>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the token.
        f.debug_struct("Client")
            .field("scheme", &self.scheme)
            .field("addrs", &self.addrs)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Client {
    pub(crate) fn new(addrs: Vec<String>, token: Option<Token>, tls: Option<TlsSettings>) -> Result<Self, Error> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        for a in &addrs {
            let uri = format!("{scheme}://{a}/");
            uri.parse::<hyper::Uri>()
                .map_err(|e| Error::invalid_target(format!("`{a}` is not a Consul agent address: {e}")))?;
        }
        if let Some(t) = &token {
            hyper::header::HeaderValue::from_str(&t.secret)
                .map_err(|_| Error::invalid_target("the Consul ACL token contains characters not allowed in a header"))?;
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let http = HttpClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(Connector::new(connector, tls.clone()));
        Ok(Client {
            http,
            scheme,
            addrs: addrs.into(),
            current: Arc::new(AtomicUsize::new(0)),
            token,
            tls,
        })
    }

    /// The token requests carry, if any.
    pub(crate) fn token(&self) -> Option<&Token> {
        self.token.as_ref()
    }

    /// The agent requests currently go to.
    pub(crate) fn addr(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed) % self.addrs.len().max(1);
        self.addrs.get(i).map_or("", String::as_str)
    }

    /// Sends one request. `path_and_query` starts with `/v1/`. A transport error or timeout moves
    /// later requests to the next agent of the list.
    pub(crate) async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<Reply, BoxError> {
        let addr = self.addr().to_string();
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}://{addr}{path_and_query}", self.scheme))
            .header(hyper::header::USER_AGENT, concat!("lb-registry/", env!("CARGO_PKG_VERSION")));
        if let Some(token) = &self.token {
            req = req.header("X-Consul-Token", &*token.secret);
        }
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(body.unwrap_or_default()))?;
        let result = tokio::time::timeout(timeout, async {
            let resp = self.http.request(req).await?;
            let status = resp.status();
            let index = resp
                .headers()
                .get("x-consul-index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok());
            let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::trim);
            let acl_filtered = header("x-consul-results-filtered-by-acls").is_some_and(|v| v.eq_ignore_ascii_case("true"));
            let default_deny = header("x-consul-default-acl-policy").is_some_and(|v| v.eq_ignore_ascii_case("deny"));
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, BoxError>(Reply { status, index, acl_filtered, default_deny, body })
        })
        .await;
        match result {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => {
                self.fail_over();
                let hint = if self.tls.as_ref().is_some_and(TlsSettings::client_cert_wanted) {
                    " (the agent asked for a client certificate and none is configured: set tls_identity_files, or CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY)"
                } else {
                    ""
                };
                Err(format!("consul agent {addr}: {}{hint}", chain(&*e)).into())
            }
            Err(_) => {
                self.fail_over();
                Err(format!("consul agent {addr}: no answer within {timeout:?}").into())
            }
        }
    }

    fn fail_over(&self) {
        if self.addrs.len() > 1 {
            self.current.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// An error and its sources on one line: hyper's own message ("client error (Connect)") hides the
/// cause ("Connection refused") in the chain.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Percent-encodes a path segment or query value.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
