//! Connection and behaviour options shared by [`EtcdResolver`](super::EtcdResolver) and
//! [`EtcdRegistrar`](super::EtcdRegistrar).

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use lb_core::backoff::Backoff;

use tracing::debug;

use crate::options::parse_duration;
use crate::{scheme, Error, Target};

/// The default key prefix: instances live at `<prefix>/<service>/<instance-id>`.
pub const DEFAULT_PREFIX: &str = "/lb/services";

/// Environment variables read by [`EtcdBuilder::from_env`] (and so by URI-only configuration).
pub mod env {
    /// User name for etcd authentication.
    pub const USERNAME: &str = "LB_ETCD_USERNAME";
    /// Password for etcd authentication.
    pub const PASSWORD: &str = "LB_ETCD_PASSWORD";
    /// PEM file of the CA that signed etcd's server certificate; setting it enables TLS.
    pub const CA_FILE: &str = "LB_ETCD_CA_FILE";
    /// PEM client certificate (with [`KEY_FILE`]) for mutual TLS.
    pub const CERT_FILE: &str = "LB_ETCD_CERT_FILE";
    /// PEM private key of [`CERT_FILE`].
    pub const KEY_FILE: &str = "LB_ETCD_KEY_FILE";
    /// Server name to verify, when it differs from the host in the target.
    pub const TLS_DOMAIN: &str = "LB_ETCD_TLS_DOMAIN";
}

#[derive(Clone)]
pub(crate) struct Credentials {
    pub(crate) user: String,
    pub(crate) password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).field("password", &"<redacted>").finish()
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Tls {
    pub(crate) ca_pem: Option<Vec<u8>>,
    pub(crate) identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    pub(crate) domain: Option<String>,
}

/// Everything needed to talk to etcd and to lay out keys.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) endpoints: Vec<String>,
    pub(crate) prefix: String,
    pub(crate) credentials: Option<Credentials>,
    pub(crate) tls: Option<Tls>,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) ttl: Duration,
    pub(crate) backoff: (Duration, Duration),
    /// The endpoint that answered last; connections start there.
    pub(crate) preferred: Arc<AtomicUsize>,
}

impl Config {
    /// The directory holding one service's instances, with its trailing slash so that `greeter`
    /// never matches `greeter2`.
    pub(crate) fn service_prefix(&self, service: &str) -> String {
        format!("{}/{}/", self.prefix, service)
    }

    /// A reconnect / re-register backoff with the configured delays.
    pub(crate) fn backoff(&self) -> Backoff {
        Backoff::new(self.backoff.0, self.backoff.1)
    }

    /// A fresh client connected to one etcd endpoint that answers.
    ///
    /// Every reconnect builds a new client: etcd-client's balanced channel can keep a broken
    /// connection after the server restarts, and it sends requests to endpoints it cannot reach
    /// (tonic's balancer treats a not-yet-connected endpoint as ready, tonic #2839), so with one
    /// member down a share of requests would fail. Instead, endpoints are tried one at a time, from
    /// the last one that worked, each proven with a `Status` call; the cluster shares leases and
    /// revisions, so registrations and watches carry over from one member to another.
    pub(crate) async fn connect(&self) -> Result<Client, etcd_client::Error> {
        let n = self.endpoints.len().max(1);
        let start = self.preferred.load(Ordering::Relaxed);
        let mut last_error = None;
        for i in 0..n {
            let idx = (start + i) % n;
            match self.connect_one(idx).await {
                Ok(c) => {
                    self.preferred.store(idx, Ordering::Relaxed);
                    return Ok(c);
                }
                Err(e) => {
                    debug!(endpoint = %self.endpoints.get(idx).map_or("", String::as_str), error = %e, "etcd endpoint unreachable");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| etcd_client::Error::InvalidArgs("no etcd endpoint".into())))
    }

    async fn connect_one(&self, idx: usize) -> Result<Client, etcd_client::Error> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            // HTTP/2 pings notice a dead server on an idle watch (a partition sends no RST).
            .with_keep_alive(Duration::from_secs(5), self.request_timeout)
            .with_keep_alive_while_idle(true);
        if let Some(c) = &self.credentials {
            opts = opts.with_user(c.user.clone(), c.password.clone()).with_auto_token_refresh(true);
        }
        if let Some(tls) = &self.tls {
            let mut t = TlsOptions::new();
            if let Some(ca) = &tls.ca_pem {
                t = t.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &tls.identity_pem {
                t = t.identity(Identity::from_pem(cert, key));
            }
            if let Some(d) = &tls.domain {
                t = t.domain_name(d.clone());
            }
            opts = opts.with_tls(t);
        }
        let endpoint = self.endpoints.get(idx).cloned().unwrap_or_default();
        let attempt = async {
            let mut client = Client::connect([endpoint], Some(opts)).await?;
            match client.status().await {
                Ok(_) => Ok(client),
                // Answered, even if with a refusal: the endpoint is reachable; the caller's own
                // requests report what is wrong.
                Err(e) if !transient(&e) => Ok(client),
                Err(e) => Err(e),
            }
        };
        match tokio::time::timeout(self.connect_timeout.saturating_add(self.request_timeout), attempt).await {
            Ok(r) => r,
            Err(_) => Err(etcd_client::Error::IoError(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connecting to etcd timed out",
            ))),
        }
    }
}

/// True for failures that say "not reachable right now" (transport errors, `UNAVAILABLE`, …), as
/// opposed to refusals (bad credentials, permission denied) that retrying will not fix.
pub(crate) fn transient(e: &etcd_client::Error) -> bool {
    // gRPC status codes (CANCELLED, UNKNOWN, DEADLINE_EXCEEDED, UNAVAILABLE), by number so as not to
    // depend on tonic directly: tonic maps transport failures to these.
    const TRANSPORT_CODES: [i32; 4] = [1, 2, 4, 14];
    match e {
        etcd_client::Error::GRpcStatus(s) => TRANSPORT_CODES.contains(&i32::from(s.code())),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

/// Options for [`EtcdResolver`](super::EtcdResolver) and [`EtcdRegistrar`](super::EtcdRegistrar).
///
/// Credentials and key material come from here or from the environment ([`env`](mod@env)), never from the
/// target URI.
#[derive(Clone, Debug)]
pub struct EtcdBuilder {
    cfg: Config,
    error: Option<String>,
}

impl EtcdBuilder {
    /// Options for the etcd cluster at `endpoints` (`host:port`, or `http://` / `https://` URLs).
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        EtcdBuilder {
            cfg: Config {
                endpoints: endpoints.into_iter().map(|e| e.as_ref().to_string()).collect(),
                prefix: DEFAULT_PREFIX.to_string(),
                credentials: None,
                tls: None,
                connect_timeout: Duration::from_secs(3),
                request_timeout: Duration::from_secs(5),
                ttl: Duration::from_secs(10),
                backoff: (Duration::from_millis(100), Duration::from_secs(5)),
                preferred: Arc::default(),
            },
            error: None,
        }
    }

    /// Key prefix (default [`DEFAULT_PREFIX`]); a trailing `/` is ignored.
    pub fn prefix(mut self, prefix: impl AsRef<str>) -> Self {
        let p = prefix.as_ref().trim_end_matches('/');
        self.cfg.prefix = if p.starts_with('/') || p.is_empty() { p.to_string() } else { format!("/{p}") };
        self
    }

    /// Authenticates as `user`.
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.cfg.credentials = Some(Credentials {
            user: user.into(),
            password: password.into(),
        });
        self
    }

    /// Enables TLS, trusting the CA in this PEM.
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.cfg.tls.get_or_insert_with(Tls::default).ca_pem = Some(pem.into());
        self
    }

    /// Enables TLS, trusting the CA in this PEM file.
    pub fn tls_ca_file(self, path: impl AsRef<Path>) -> Self {
        match std::fs::read(path.as_ref()) {
            Ok(pem) => self.tls_ca_pem(pem),
            Err(e) => self.fail(format!("cannot read etcd CA file {}: {e}", path.as_ref().display())),
        }
    }

    /// Presents this client certificate and key (PEM) for mutual TLS.
    pub fn tls_identity_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.cfg.tls.get_or_insert_with(Tls::default).identity_pem = Some((cert.into(), key.into()));
        self
    }

    /// Presents the client certificate and key in these PEM files.
    pub fn tls_identity_files(self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Self {
        match (std::fs::read(cert.as_ref()), std::fs::read(key.as_ref())) {
            (Ok(c), Ok(k)) => self.tls_identity_pem(c, k),
            (Err(e), _) => self.fail(format!("cannot read etcd client certificate {}: {e}", cert.as_ref().display())),
            (_, Err(e)) => self.fail(format!("cannot read etcd client key {}: {e}", key.as_ref().display())),
        }
    }

    /// The server name to verify when it differs from the endpoint host.
    pub fn tls_domain(mut self, domain: impl Into<String>) -> Self {
        self.cfg.tls.get_or_insert_with(Tls::default).domain = Some(domain.into());
        self
    }

    /// Reads credentials and TLS files from the [`env`](mod@env) variables that are set.
    pub fn from_env(mut self) -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(user) = var(env::USERNAME) {
            self = self.credentials(user, var(env::PASSWORD).unwrap_or_default());
        }
        if let Some(ca) = var(env::CA_FILE) {
            self = self.tls_ca_file(ca);
        }
        match (var(env::CERT_FILE), var(env::KEY_FILE)) {
            (Some(c), Some(k)) => self = self.tls_identity_files(c, k),
            (None, None) => {}
            _ => self = self.fail(format!("{} and {} must be set together", env::CERT_FILE, env::KEY_FILE)),
        }
        if let Some(d) = var(env::TLS_DOMAIN) {
            self = self.tls_domain(d);
        }
        self
    }

    /// Timeout of one connection attempt (default 3 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.cfg.connect_timeout = t;
        self
    }

    /// Timeout of one request (default 5 s).
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.cfg.request_timeout = t;
        self
    }

    /// Lease TTL of registrations (default 10 s; etcd raises anything below its minimum, ~2 s).
    /// Heartbeats go every third of it; a crashed instance disappears after at most this long.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.cfg.ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// Reconnect / re-register backoff: first delay and cap (default 100 ms, 5 s; ±20% jitter).
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.cfg.backoff = (first, max.max(first));
        self
    }

    /// Builds the resolver (uncached: see [`crate::cache`]).
    pub fn build_resolver(self) -> Result<super::EtcdResolver, Error> {
        Ok(super::EtcdResolver { cfg: Arc::new(self.finish()?) })
    }

    /// Builds the registrar.
    pub fn build_registrar(self) -> Result<super::EtcdRegistrar, Error> {
        Ok(super::EtcdRegistrar { cfg: Arc::new(self.finish()?) })
    }

    /// Options from a target URI: its hosts and documented query parameters, then the [`env`](mod@env)
    /// variables. Further builder calls (e.g. [`EtcdBuilder::credentials`]) override them. The
    /// cache keys (`snapshot`, `resync`, `allow_empty`) are checked but left to
    /// [`lb_registry::resolve`](crate::resolve).
    pub fn from_target(target: &Target) -> Result<Self, Error> {
        let hosts = target.hosts();
        if hosts.is_empty() {
            return Err(Error::invalid_target(format!(
                "`{target}` names no etcd endpoint (expected etcd://host:port[,host:port…]/<service>)"
            )));
        }
        if target.path().is_empty() || target.path().contains('/') {
            return Err(Error::invalid_target(format!(
                "`{target}` needs one service name after the hosts, e.g. etcd://127.0.0.1:2379/greeter"
            )));
        }
        if target.params().keys().any(|k| k == "password" || k == "user" || k == "username") {
            return Err(Error::invalid_target(format!(
                "credentials never go in the target URI; set {} / {} or use EtcdBuilder::credentials",
                env::USERNAME,
                env::PASSWORD
            )));
        }
        scheme::ETCD.check(target)?;
        let mut b = EtcdBuilder::new(hosts);
        if let Some(p) = target.param("prefix") {
            b = b.prefix(p);
        }
        if let Some(t) = target.param("ttl") {
            b = b.ttl(parse_duration("ttl", t)?);
        }
        Ok(b.from_env())
    }

    fn fail(mut self, message: String) -> Self {
        self.error.get_or_insert(message);
        self
    }

    fn finish(self) -> Result<Config, Error> {
        if let Some(e) = self.error {
            return Err(Error::invalid_target(e));
        }
        if self.cfg.endpoints.is_empty() {
            return Err(Error::invalid_target("no etcd endpoint given"));
        }
        Ok(self.cfg)
    }
}

pub(crate) type SharedConfig = Arc<Config>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_options() {
        let t = Target::parse("etcd://h1:2379,h2:2379/greeter?prefix=svc/&ttl=3s&resync=off&allow_empty=true&snapshot=/tmp/x.json")
            .expect("valid");
        let cfg = EtcdBuilder::from_target(&t).expect("valid").finish().expect("valid");
        assert_eq!(cfg.endpoints, vec!["h1:2379", "h2:2379"]);
        assert_eq!(cfg.service_prefix("greeter"), "/svc/greeter/");
        assert_eq!(cfg.ttl, Duration::from_secs(3));
    }

    #[test]
    fn bad_targets_are_named() {
        for bad in [
            "etcd:///greeter",
            "etcd://h:1/",
            "etcd://h:1/a/b",
            "etcd://h:1/g?ttl=abc",
            "etcd://h:1/g?resync=5 fortnights",
            "etcd://h:1/g?allow_empty=maybe",
            "etcd://h:1/g?password=hunter2",
            "etcd://h:1/g?refresh=5s",
        ] {
            let t = Target::parse(bad).expect("parses as a URI");
            let err = EtcdBuilder::from_target(&t).and_then(EtcdBuilder::finish).expect_err(bad);
            assert!(err.is_invalid_target(), "{bad}: {err}");
        }
    }
}
