//! Registration: one key per instance, attached to a lease kept alive by heartbeats.
//!
//! The keep-alive task owns the lease. It heartbeats every third of the TTL and watches its own key,
//! and treats any of these as a lost registration: the keep-alive stream failing or reporting the
//! lease gone (etcd down past the TTL, restarted with empty data, lease revoked), no heartbeat
//! answered within the TTL, or its key deleted. It then reconnects and registers again with
//! exponential backoff (reusing the lease when etcd still knows it, granting a new one otherwise),
//! for as long as the [`Registration`] lives. This is the failure the Go frameworks' registries have
//! (go-zero #1926 and #4201, kitex registry-etcd #11: the keep-alive channel closes and nothing
//! registers again). Stopping revokes the lease, which deletes the key at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, PutOptions, WatchOptions};
use lb_core::Endpoint;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::config::SharedConfig;
use super::schema;
use crate::{Error, Registration};

/// Registration in etcd under `<prefix>/<service>/<instance-id>` (the id is the endpoint's id).
#[derive(Clone, Debug)]
pub struct EtcdRegistrar {
    pub(super) cfg: SharedConfig,
}

impl EtcdRegistrar {
    /// Options for the etcd cluster at `endpoints`;
    /// [`build_registrar`](super::EtcdBuilder::build_registrar) ends them.
    pub fn builder(endpoints: impl IntoIterator<Item = impl AsRef<str>>) -> super::EtcdBuilder {
        super::EtcdBuilder::new(endpoints)
    }

    /// Registers `instance` under `service` and keeps it registered until the returned
    /// [`Registration`] is deregistered or dropped. Fails only if the first registration fails:
    /// refused (credentials, permissions), or etcd unreachable for longer than the connect timeout
    /// plus the request timeout (a leader election in between is ridden out).
    pub async fn register_instance(&self, service: &str, instance: Endpoint) -> Result<Registration, Error> {
        if service.is_empty() || service.contains('/') {
            return Err(Error::invalid_target(format!("`{service}` is not a service name (non-empty, no `/`)")));
        }
        let key = format!("{}{}", self.cfg.service_prefix(service), instance.id());
        let reg = Reg {
            cfg: Arc::clone(&self.cfg),
            value: schema::encode(&instance),
            description: format!("{key} -> {}", instance.addr()),
            key,
        };
        // A cluster in the middle of a leader election, or a member restarting, answers
        // "unavailable" for a moment: retry those (not refusals) for up to one connect plus one
        // request timeout before reporting the failure.
        let deadline = Instant::now() + self.cfg.connect_timeout.saturating_add(self.cfg.request_timeout);
        let mut backoff = self.cfg.backoff();
        let (client, lease, rev) = loop {
            let attempt = async {
                let mut c = reg.cfg.connect().await?;
                let (l, r) = reg.establish(&mut c, None).await?;
                Ok::<_, etcd_client::Error>((c, l, r))
            };
            match attempt.await {
                Ok(done) => break done,
                Err(e) => {
                    let delay = backoff.next();
                    if !super::config::transient(&e) || Instant::now() + delay >= deadline {
                        return Err(Error::registry(format!("cannot register {} in etcd", reg.description), e));
                    }
                    debug!(instance = %reg.description, error = %e, retry_in_ms = delay.as_millis() as u64, "first registration failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        };
        info!(instance = %reg.description, lease, ttl_s = reg.ttl_secs(), "registered in etcd");
        let (stop_tx, stop_rx) = oneshot::channel();
        let description = reg.description.clone();
        let task = tokio::spawn(reg.run(client, lease, rev, stop_rx));
        Ok(Registration::from_task(description, stop_tx, task))
    }
}

impl crate::Registrar for EtcdRegistrar {
    fn register(&self, service: &str, instance: Endpoint) -> Pin<Box<dyn Future<Output = Result<Registration, Error>> + Send + 'static>> {
        let this = self.clone();
        let service = service.to_string();
        Box::pin(async move { this.register_instance(&service, instance).await })
    }
}

struct Reg {
    cfg: SharedConfig,
    key: String,
    value: Vec<u8>,
    description: String,
}

enum Outcome {
    Stopped,
    Lost(String),
}

impl Reg {
    fn ttl_secs(&self) -> i64 {
        self.cfg.ttl.as_secs().max(1) as i64
    }

    async fn timed<T>(&self, f: impl Future<Output = Result<T, etcd_client::Error>>) -> Result<T, etcd_client::Error> {
        match tokio::time::timeout(self.cfg.request_timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(etcd_client::Error::IoError(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "etcd request timed out",
            ))),
        }
    }

    /// Puts the key under a live lease: `lease` if etcd still knows it, a new one otherwise.
    /// Returns the lease and the revision of the put.
    async fn establish(&self, client: &mut Client, lease: Option<i64>) -> Result<(i64, i64), etcd_client::Error> {
        let alive = match lease {
            Some(id) => {
                let ttl = self.timed(client.lease_time_to_live(id, None)).await?.ttl();
                (ttl > 0).then_some(id)
            }
            None => None,
        };
        let id = match alive {
            Some(id) => id,
            None => self.timed(client.lease_grant(self.ttl_secs(), None)).await?.id(),
        };
        let put = self
            .timed(client.put(self.key.clone(), self.value.clone(), Some(PutOptions::new().with_lease(id))))
            .await?;
        Ok((id, put.header().map_or(0, |h| h.revision())))
    }

    async fn run(self, mut client: Client, mut lease: i64, mut rev: i64, mut stop: oneshot::Receiver<()>) {
        let mut backoff = self.cfg.backoff();
        loop {
            match self.keep(&mut client, lease, rev, &mut stop).await {
                Outcome::Stopped => {
                    self.revoke(&mut client, lease).await;
                    return;
                }
                Outcome::Lost(why) => warn!(instance = %self.description, lease, reason = %why, "etcd registration lost; registering again"),
            }
            // Re-register until it works or we are told to stop; never give up.
            loop {
                let delay = backoff.next();
                tokio::select! {
                    _ = &mut stop => {
                        self.revoke(&mut client, lease).await;
                        return;
                    }
                    _ = tokio::time::sleep(delay) => {}
                }
                let attempt = async {
                    let mut c = self.cfg.connect().await?;
                    let (l, r) = self.establish(&mut c, Some(lease)).await?;
                    Ok::<_, etcd_client::Error>((c, l, r))
                };
                let result = tokio::select! {
                    _ = &mut stop => {
                        self.revoke(&mut client, lease).await;
                        return;
                    }
                    r = attempt => r,
                };
                match result {
                    Ok((c, l, r)) => {
                        info!(instance = %self.description, lease = l, reused_lease = l == lease, "registered in etcd again");
                        (client, lease, rev) = (c, l, r);
                        backoff.reset();
                        break;
                    }
                    Err(e) => debug!(instance = %self.description, error = %e, retry_in_ms = delay.as_millis() as u64, "re-registration failed"),
                }
            }
        }
    }

    /// Heartbeats and watches the key until the registration is lost or `stop` fires.
    async fn keep(&self, client: &mut Client, lease: i64, rev: i64, stop: &mut oneshot::Receiver<()>) -> Outcome {
        let (mut keeper, mut acks) = match self.timed(client.lease_keep_alive(lease)).await {
            Ok(k) => k,
            Err(e) => return Outcome::Lost(format!("cannot start keep-alive: {e}")),
        };
        let opts = WatchOptions::new().with_start_revision(rev + 1);
        let (_watcher, mut watch) = match self.timed(client.watch(self.key.clone(), Some(opts))).await {
            Ok(w) => w.split(),
            Err(e) => return Outcome::Lost(format!("cannot watch own key: {e}")),
        };
        let ttl = self.cfg.ttl;
        let period = (ttl / 3).max(Duration::from_millis(300));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_ack = Instant::now();
        loop {
            tokio::select! {
                _ = &mut *stop => return Outcome::Stopped,
                _ = tick.tick() => {
                    if last_ack.elapsed() >= ttl {
                        return Outcome::Lost(format!("no heartbeat answered for {ttl:?}"));
                    }
                    if let Err(e) = keeper.keep_alive().await {
                        return Outcome::Lost(format!("heartbeat failed: {e}"));
                    }
                }
                ack = acks.message() => match ack {
                    Ok(Some(r)) if r.ttl() > 0 => last_ack = Instant::now(),
                    Ok(Some(_)) => return Outcome::Lost("lease expired or revoked".into()),
                    Ok(None) => return Outcome::Lost("keep-alive stream closed".into()),
                    Err(e) => return Outcome::Lost(format!("keep-alive stream failed: {e}")),
                },
                msg = watch.message() => match msg {
                    Ok(Some(r)) => {
                        if r.canceled() {
                            return Outcome::Lost(format!("own-key watch cancelled: {}", r.cancel_reason()));
                        }
                        if r.events().iter().any(|e| e.event_type() == EventType::Delete) {
                            return Outcome::Lost("key deleted".into());
                        }
                    }
                    Ok(None) => return Outcome::Lost("own-key watch closed".into()),
                    Err(e) => return Outcome::Lost(format!("own-key watch failed: {e}")),
                },
            }
        }
    }

    /// Revokes the lease, giving up after two request timeouts so that a shutdown during an etcd
    /// outage is not held up: the lease then expires on its own.
    async fn revoke(&self, client: &mut Client, lease: i64) {
        let attempt = async {
            let first = self.timed(client.lease_revoke(lease)).await.map(|_| ());
            if first.is_ok() {
                return first;
            }
            // The connection may be to a member that is gone; any other member can revoke.
            let mut fresh = self.cfg.connect().await?;
            self.timed(fresh.lease_revoke(lease)).await.map(|_| ())
        };
        let result = match tokio::time::timeout(self.cfg.request_timeout.saturating_mul(2), attempt).await {
            Ok(r) => r,
            Err(_) => Err(etcd_client::Error::IoError(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "revoking timed out",
            ))),
        };
        match result {
            Ok(()) => info!(instance = %self.description, lease, "deregistered from etcd"),
            // The lease expires on its own within the TTL.
            Err(e) => warn!(instance = %self.description, lease, error = %e, "cannot revoke the etcd lease; it will expire within its TTL"),
        }
    }
}
