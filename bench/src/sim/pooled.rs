//! Clients that each run a real `lb_core::Pool`: discovery updates, the endpoint state machine,
//! connection handling, outlier detection and picker publication are lb-core's own code.
//!
//! The simulation stands in for the network and the registry only:
//! - a connector that "connects" at once to a backend that is up and refuses otherwise, and whose
//!   connections report their end when the backend's process stops (the close signal a real
//!   HTTP/2 connection gives, noticed a little later);
//! - a discovery channel per client, fed the membership as it reaches that client. With
//!   subsetting, the simulation computes the client's subset with lb-core's
//!   `discover::subsetting::choose` — what lb-core's `subset` stream runs on every change — and
//!   sends it as a full set, which the pool diffs against what it has (`EndpointSet::apply`). The
//!   stream itself would also keep a copy of the whole endpoint list per client (about 300 bytes
//!   an endpoint, measured in the cost scenario), which ten thousand simulated clients in one
//!   process cannot afford; the subsets it would emit are the same.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lb_core::discover::{self, subsetting, Updater};
use lb_core::pool::{connect_fn, Connected};
use lb_core::{Endpoint, LoadGuard, Locality, PickContext, Policy, Pool, PoolConfig, Update};
use tokio::sync::Notify;

use crate::engine::pick_excluding;
use crate::fleet::{self, Fleet, PolicyKind, Subsetting};
use crate::rng::{mix, Rng};

/// The connection handle a simulated pool holds: which backend, and which run of its process.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SimConn {
    backend: u32,
    incarnation: u32,
}

/// What the connectors see of the backends, and what they count per client.
#[derive(Debug)]
struct Shared {
    up: Vec<AtomicBool>,
    /// The current run of each backend's process; connections of an older run are closed.
    current: Vec<AtomicU32>,
    /// Woken when `current` moves on, so each connection's close signal rechecks it. (A `Notify`
    /// wakes its waiters in the order they came; tokio's `watch` spreads them over eight lists
    /// drawn at random, and the pool tasks would then run — and draw from lb-core's seeded
    /// generator — in an order that differs from run to run.)
    moved_on: Vec<Notify>,
    /// Connections opened, per client.
    opened: Vec<AtomicU32>,
    /// Connection attempts refused, per client.
    refused: Vec<AtomicU32>,
}

/// One published membership: which backends are registered, under which identity.
#[derive(Debug)]
struct Membership {
    endpoints: Vec<Endpoint>,
}

/// Every client's pool and discovery channel.
pub(crate) struct Pooled {
    pools: Vec<Pool<SimConn>>,
    updaters: Vec<Updater>,
    shared: Arc<Shared>,
    delays: Vec<u64>,
    versions: Vec<Membership>,
    seed: u64,
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled").field("clients", &self.pools.len()).field("versions", &self.versions.len()).finish()
    }
}

impl Pooled {
    /// Spawns one pool per client, hands each its initial subset, and waits until every pool
    /// has connected to all of it.
    pub(crate) async fn start(
        fleet: &Fleet,
        policy: PolicyKind,
        subsets: &[Box<[u32]>],
        propagation: Duration,
        rng: &mut Rng,
    ) -> anyhow::Result<Pooled> {
        let shared = Arc::new(Shared {
            up: (0..fleet.backends).map(|_| AtomicBool::new(true)).collect(),
            current: (0..fleet.backends).map(|_| AtomicU32::new(0)).collect(),
            moved_on: (0..fleet.backends).map(|_| Notify::new()).collect(),
            opened: (0..fleet.clients).map(|_| AtomicU32::new(0)).collect(),
            refused: (0..fleet.clients).map(|_| AtomicU32::new(0)).collect(),
        });
        let all: Vec<Endpoint> = (0..fleet.backends as u32).map(|b| fleet::endpoint(b, 0, fleet.zones)).collect();
        let per_zone: Vec<Arc<dyn Policy>> = (0..fleet.zones)
            .map(|z| if fleet.topology { policy.build_in_zone(caller(z)) } else { policy.build() })
            .collect();
        let mut pools = Vec::with_capacity(fleet.clients);
        let mut updaters = Vec::with_capacity(fleet.clients);
        for (c, subset) in subsets.iter().enumerate() {
            let (tx, rx) = discover::channel();
            let pool = Pool::spawn(
                Box::pin(rx),
                connector(Arc::clone(&shared), c),
                Arc::clone(&per_zone[fleet::zone_of(c, fleet.zones)]),
                PoolConfig::new("sim"),
            );
            tx.send(Update::Reset(subset.iter().map(|&b| all[b as usize].clone()).collect()));
            pools.push(pool);
            updaters.push(tx);
        }
        // Each yield lets the scheduler run a few dozen pool tasks; every task needs a handful of
        // turns (apply the set, connect each endpoint, publish).
        let rounds = 64 * fleet.clients + 1_000;
        let mut ready = 0;
        for _ in 0..rounds {
            tokio::task::yield_now().await;
            while ready < pools.len() && pools[ready].snapshot().healthy() == subsets[ready].len() {
                ready += 1;
            }
            if ready == pools.len() {
                break;
            }
        }
        anyhow::ensure!(ready == pools.len(), "only {ready} of {} pools connected to their backends", pools.len());
        let delays = (0..fleet.clients).map(|_| (rng.unit() * propagation.as_nanos() as f64) as u64).collect();
        Ok(Pooled {
            pools,
            updaters,
            shared,
            delays,
            versions: vec![Membership { endpoints: all }],
            seed: rng.next_u64(),
        })
    }

    /// Picks through client `c`'s pool, as lb's engine does (skipping `exclude`).
    pub(crate) fn pick(&self, c: usize, ctx: &PickContext, exclude: Option<u32>) -> Option<(u32, Option<u32>, LoadGuard)> {
        let snapshot = self.pools[c].snapshot();
        pick_excluding(exclude, |_| {
            let p = snapshot.pick(ctx)?;
            Some((p.connection.backend, Some(p.connection.incarnation), p.guard))
        })
    }

    /// Whether a connection to run `incarnation` of backend `b` still carries requests.
    pub(crate) fn connection_alive(&self, b: usize, incarnation: u32) -> bool {
        self.shared.current[b].load(Ordering::Relaxed) == incarnation
    }

    pub(crate) fn set_up(&self, b: usize, up: bool) {
        self.shared.up[b].store(up, Ordering::Relaxed);
    }

    /// Backend `b`'s process has ended: its connections close (their pools reconnect).
    pub(crate) fn close(&self, b: usize) {
        let next = self.shared.current[b].load(Ordering::Relaxed).wrapping_add(1);
        self.shared.current[b].store(next, Ordering::Relaxed);
        self.shared.moved_on[b].notify_waiters();
    }

    /// Each client's propagation delay, in nanoseconds.
    pub(crate) fn delays(&self) -> &[u64] {
        &self.delays
    }

    /// Records a new membership; returns its version.
    pub(crate) fn publish(&mut self, present: &[bool], generations: &[u32], fleet: &Fleet) -> usize {
        let endpoints = (0..fleet.backends)
            .filter(|&b| present.get(b).copied().unwrap_or(true))
            .map(|b| fleet::endpoint(b as u32, generations.get(b).copied().unwrap_or(0), fleet.zones))
            .collect();
        self.versions.push(Membership { endpoints });
        self.versions.len() - 1
    }

    /// Membership `version` reaches client `c`: send it what its discovery stream would. Returns
    /// the client's new subset.
    pub(crate) fn deliver(&mut self, c: usize, version: usize, fleet: &Fleet) -> Option<Box<[u32]>> {
        let all = &self.versions.get(version)?.endpoints;
        let k = fleet.per_client();
        let chosen: Vec<Endpoint> = match fleet.subsetting {
            _ if k >= all.len() => all.clone(),
            Subsetting::None => all.clone(),
            Subsetting::Rendezvous | Subsetting::Balanced => subsetting::choose(all, k, fleet::client_id(c).as_bytes()),
            Subsetting::Random => {
                // A client that draws a fresh random subset whenever its endpoint list changes.
                let mut rng = Rng::new(mix(self.seed ^ mix(((c as u64) << 32) | version as u64)));
                rng.sample(all.len(), k).into_iter().map(|i| all[i as usize].clone()).collect()
            }
        };
        let subset = chosen.iter().filter_map(|e| fleet::backend_of(e.addr())).collect();
        self.updaters[c].send(Update::Reset(chosen));
        Some(subset)
    }

    /// Connections opened and attempts refused, per client, so far.
    pub(crate) fn connection_counts(&self) -> (Vec<u32>, Vec<u32>) {
        (
            self.shared.opened.iter().map(|a| a.load(Ordering::Relaxed)).collect(),
            self.shared.refused.iter().map(|a| a.load(Ordering::Relaxed)).collect(),
        )
    }
}

/// Where the clients of zone `z` run (a node of their own, so the node tier is empty).
pub(crate) fn caller(z: usize) -> Locality {
    Locality::unknown().with_region("r1").with_zone(fleet::zone_name(z)).with_node(format!("client-node-{z}"))
}

fn connector(shared: Arc<Shared>, client: usize) -> impl lb_core::Connect<Connection = SimConn> {
    connect_fn(move |ep: &Endpoint| {
        let result = match fleet::backend_of(ep.addr()).map(|b| b as usize) {
            Some(b) if b < shared.up.len() && shared.up[b].load(Ordering::Relaxed) => {
                shared.opened[client].fetch_add(1, Ordering::Relaxed);
                let incarnation = shared.current[b].load(Ordering::Relaxed);
                let shared = Arc::clone(&shared);
                let closed = async move {
                    // The backend's next run begins: this connection is over. Registered
                    // before the check, so a wake between the two is not lost.
                    loop {
                        let woken = shared.moved_on[b].notified();
                        tokio::pin!(woken);
                        woken.as_mut().enable();
                        if shared.current[b].load(Ordering::Relaxed) != incarnation {
                            return;
                        }
                        woken.await;
                    }
                };
                Ok(Connected::new(SimConn { backend: b as u32, incarnation }, closed))
            }
            _ => {
                shared.refused[client].fetch_add(1, Ordering::Relaxed);
                Err(io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused"))
            }
        };
        std::future::ready(result)
    })
}
