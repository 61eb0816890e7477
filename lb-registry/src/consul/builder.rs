//! [`ConsulBuilder`]: the options of both Consul sides, written once.
//!
//! A resolver and a registrar talk to the same agents with the same token, TLS settings, namespace
//! and tags; only a few options belong to one side (the datacenter and blocking-query timing to
//! discovery, the check's TTL to registration). One builder type, generic over the side's own
//! options, carries the shared ones, so they have one implementation and one documentation;
//! [`ConsulResolverBuilder`](super::ConsulResolverBuilder) and
//! [`ConsulRegistrarBuilder`](super::ConsulRegistrarBuilder) name its two instances.

use std::path::Path;

use super::client::Client;
use super::Common;
use crate::{Error, Target};

/// Options of a Consul [resolver](super::ConsulResolver) (`S` = [`ResolverOptions`]) or
/// [registrar](super::ConsulRegistrar) (`S` = [`RegistrarOptions`]). The methods here are the
/// agent connection both share; each side adds its own.
#[derive(Clone, Debug)]
pub struct ConsulBuilder<S> {
    pub(super) common: Common,
    pub(super) side: S,
}

/// The discovery side's own options of a [`ConsulBuilder`] (set through
/// [`ConsulResolverBuilder`](super::ConsulResolverBuilder)'s methods).
#[derive(Clone, Debug)]
pub struct ResolverOptions {
    pub(super) datacenter: Option<String>,
    pub(super) watch: super::watch::WatchConfig,
}

/// The registration side's own options of a [`ConsulBuilder`] (set through
/// [`ConsulRegistrarBuilder`](super::ConsulRegistrarBuilder)'s methods).
#[derive(Clone, Debug)]
pub struct RegistrarOptions {
    pub(super) ttl: std::time::Duration,
    pub(super) deregister_after: std::time::Duration,
}

/// What a built resolver or registrar runs with: the agent client, the options both sides
/// share, and its side's own.
#[derive(Debug)]
pub(super) struct Settings<S> {
    pub(super) client: Client,
    pub(super) namespace: Option<String>,
    pub(super) tags: Vec<String>,
    pub(super) side: S,
}

impl<S> ConsulBuilder<S> {
    pub(super) fn with_side(side: S) -> Self {
        ConsulBuilder {
            common: Common::default(),
            side,
        }
    }

    /// The builder with a `consul://` target's agent options (authority, `ns`, `tag`; the keys
    /// checked), then `read_side`'s reading of the side's own keys.
    pub(super) fn with_target(mut self, target: &Target, read_side: fn(&mut S, &Target) -> Result<(), Error>) -> Result<Self, Error> {
        self.common = Common::from_target(target)?;
        read_side(&mut self.side, target)?;
        Ok(self)
    }

    /// Fills in the environment's defaults and builds the HTTP client: every error in the options
    /// (an unreadable file, bad key material, contradicting TLS settings) is reported here.
    pub(super) fn settings(self) -> Result<Settings<S>, Error> {
        Ok(Settings {
            client: self.common.client()?,
            namespace: self.common.namespace,
            tags: self.common.tags,
            side: self.side,
        })
    }

    /// Adds a Consul agent address (`host:port`, `http://host:port` or `https://host:port`); several
    /// are tried in turn after failures.
    pub fn address(mut self, addr: impl Into<String>) -> Self {
        self.common.addrs.push(addr.into());
        self
    }

    /// The ACL token, sent as `X-Consul-Token` (default: `CONSUL_HTTP_TOKEN`).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.common.token = Some(token.into());
        self
    }

    /// Enables TLS, trusting the CA in this PEM (default: `CONSUL_CACERT`, else the platform's
    /// roots). See the [module docs](super#tls).
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.common.tls_ca_pem(pem.into());
        self
    }

    /// Enables TLS, trusting the CA in this PEM file. An unreadable file fails `build`.
    pub fn tls_ca_file(mut self, path: impl AsRef<Path>) -> Self {
        self.common.tls_ca_file(path.as_ref());
        self
    }

    /// Enables TLS and presents this client certificate and key (PEM) to agents that verify
    /// clients (`verify_incoming`; default: `CONSUL_CLIENT_CERT` and `CONSUL_CLIENT_KEY`).
    pub fn tls_identity_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.common.tls_identity_pem(cert.into(), key.into());
        self
    }

    /// Enables TLS and presents the client certificate and key in these PEM files.
    pub fn tls_identity_files(mut self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Self {
        self.common.tls_identity_files(cert.as_ref(), key.as_ref());
        self
    }

    /// Enables TLS and verifies the agent's certificate against this name instead of the
    /// address's host (default: `CONSUL_TLS_SERVER_NAME`).
    pub fn tls_domain(mut self, domain: impl Into<String>) -> Self {
        self.common.tls_domain(domain.into());
        self
    }

    /// The namespace (Consul Enterprise).
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.common.namespace = Some(ns.into());
        self
    }

    /// A tag (repeatable): discovery keeps only instances carrying every tag given, registration
    /// registers with them.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.common.tags.push(tag.into());
        self
    }
}
