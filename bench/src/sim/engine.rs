//! The discrete-event core: virtual time, backends as queues, and the life of every request.
//!
//! Time is an integer count of virtual nanoseconds. Requests arrive as one Poisson process for
//! the whole fleet (the merge of every client's own Poisson process, each client as likely as any
//! other to be the sender), so arrivals need no queue of their own; everything else — a service
//! ending, a picker's periodic rebuild, a discovery update reaching a client, a closed connection
//! being noticed — is an event in one binary heap, ties broken by insertion order. Nothing depends
//! on the wall clock or on hash-map order, so a run replays exactly from its seed.
//!
//! lb-core reads `tokio::time::Instant` (a [`Load`](lb_core::Load)'s epoch and the end of a
//! request, load reports' arrival, the pool task's timers). The simulation runs on a
//! single-threaded runtime whose clock is paused, and moves that clock forward with the virtual
//! time in steps of [`QUANTUM`]: tokio's `advance` costs a trip through the scheduler, far more
//! than a pick, so advancing it at every event would make the clock the simulation's main cost.
//! Where lb-core takes the time as an argument (`Picker::pick_at`, `Load::start_at`,
//! `LoadGuard::set_latency`), the exact virtual time is passed; what reads the clock itself sees
//! it at most one quantum late, against time constants (PeakEWMA's 10 s decay, A58's 1 s weight
//! period) ten thousand times longer.
//!
//! A backend is `workers` servers in front of one FIFO queue of at most `queue_cap` requests;
//! service times are exponential (an M/M/c queue, slower by the backend's `speed` factor). A
//! request that finds the queue full is refused at once as overloaded: a failed request.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lb_core::policy::Candidate;
use lb_core::{Endpoint, Load, LoadGuard, LoadReport, Outcome, PickContext, Picker, Policy};
use tokio::time::Instant;

use crate::fleet::{self, Fleet, PolicyKind, Subsetting, SEC};
use crate::pooled::{self, Pooled};
use crate::rng::Rng;
use crate::stats::Latencies;

/// How far the tokio clock may trail the virtual time: 100 µs.
pub(crate) const QUANTUM: u64 = 100_000;
/// How often a backend's load report is recomputed (the window its figures cover).
const REPORT_PERIOD: u64 = SEC;
/// How many times lb's engine sends a request that was handed back unsent to another endpoint
/// (`Balance::DEFAULT_MAX_REROUTES`).
pub(crate) const MAX_REROUTES: usize = 3;
/// How many picks of an excluded endpoint the engine repeats before giving up on a snapshot
/// (lb-core's `balance::pick`).
pub(crate) const PICK_ATTEMPTS: usize = 4;
/// Zones tracked in the routing matrix.
pub(crate) const MAX_ZONES: usize = 4;

/// One backend: `workers` servers, a bounded FIFO queue, its load-report window, and counters.
#[derive(Debug)]
pub(crate) struct Backend {
    workers: u32,
    busy: u32,
    queue: VecDeque<u32>,
    in_service: Vec<u32>,
    /// Mean service time in nanoseconds (the fleet's, times the backend's slowness).
    pub(crate) mean_service: f64,
    pub(crate) zone: usize,
    /// Accepting requests and connections.
    pub(crate) up: bool,
    // ∫ busy servers dt, in server-nanoseconds, up to `last_change`.
    busy_acc: u64,
    last_change: u64,
    pub(crate) served: u64,
    pub(crate) rejected: u64,
    // The load-report window being accumulated, and the last report.
    win_start: u64,
    win_acc: u64,
    win_done: u32,
    win_rejected: u32,
    report: LoadReport,
}

impl Backend {
    fn new(workers: u32, mean_service: f64, zone: usize) -> Self {
        Backend {
            workers,
            busy: 0,
            queue: VecDeque::new(),
            in_service: Vec::with_capacity(workers as usize),
            mean_service,
            zone,
            up: true,
            busy_acc: 0,
            last_change: 0,
            served: 0,
            rejected: 0,
            win_start: 0,
            win_acc: 0,
            win_done: 0,
            win_rejected: 0,
            report: LoadReport::default(),
        }
    }

    pub(crate) fn workers(&self) -> u32 {
        self.workers
    }

    /// Server-nanoseconds of work done up to `t` (`t` at or after the last change).
    fn busy_integral(&self, t: u64) -> u64 {
        self.busy_acc + u64::from(self.busy) * t.saturating_sub(self.last_change)
    }

    /// Closes the report windows that ended by `t`. Called before every change of `busy`, so
    /// `last_change` is never after a window's end and the integral there is exact.
    fn roll(&mut self, t: u64) {
        // Bounded: one turn per report period elapsed since the backend's last change.
        while t >= self.win_start + REPORT_PERIOD {
            let end = self.win_start + REPORT_PERIOD;
            let acc = self.busy_integral(end);
            let secs = REPORT_PERIOD as f64 / SEC as f64;
            self.report = LoadReport {
                application_utilization: (acc - self.win_acc) as f64 / (f64::from(self.workers) * REPORT_PERIOD as f64),
                rps_fractional: f64::from(self.win_done) / secs,
                eps: f64::from(self.win_rejected) / secs,
                ..LoadReport::default()
            };
            self.win_start = end;
            self.win_acc = acc;
            self.win_done = 0;
            self.win_rejected = 0;
        }
    }

    fn change_busy(&mut self, t: u64, up: bool) {
        self.roll(t);
        self.busy_acc = self.busy_integral(t);
        self.last_change = t;
        if up {
            self.busy += 1;
        } else {
            self.busy -= 1;
        }
    }
}

/// A request in flight: who sent it, where, since when, and lb-core's guard counting it.
#[derive(Debug)]
struct Req {
    backend: u32,
    start: u64,
    guard: LoadGuard,
}

/// Requests in flight, by slot; a slot's generation tells a stale completion event (its
/// request failed when its backend died) from the slot's next request.
#[derive(Debug, Default)]
struct Slab {
    slots: Vec<(u32, Option<Req>)>,
    free: Vec<u32>,
}

impl Slab {
    fn insert(&mut self, r: Req) -> (u32, u32) {
        match self.free.pop() {
            Some(i) => {
                let slot = &mut self.slots[i as usize];
                slot.0 = slot.0.wrapping_add(1);
                slot.1 = Some(r);
                (i, slot.0)
            }
            None => {
                self.slots.push((0, Some(r)));
                ((self.slots.len() - 1) as u32, 0)
            }
        }
    }

    fn take(&mut self, i: u32, generation: u32) -> Option<Req> {
        let slot = self.slots.get_mut(i as usize)?;
        if slot.0 != generation {
            return None;
        }
        let r = slot.1.take()?;
        self.free.push(i);
        Some(r)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// A service ends: request slot and generation.
    Complete(u32, u32),
    /// A direct client rebuilds its picker (policies whose picker follows load reports).
    Rebuild(u32),
    /// Membership version `.1` reaches client `.0`.
    Deliver(u32, u32),
    /// Clients notice that backend `.0`'s connections closed.
    Close(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Ev {
    t: u64,
    seq: u64,
    kind: Kind,
}

/// What happened to requests, fleet-wide.
#[derive(Clone, Debug, Default)]
pub(crate) struct Counters {
    /// Requests the clients made.
    pub(crate) requests: u64,
    pub(crate) completed: u64,
    /// Refused by a backend whose queue was full.
    pub(crate) overloaded: u64,
    /// No endpoint could take them (none healthy, or every pick refused).
    pub(crate) unavailable: u64,
    /// Lost when their backend died with them in its queue.
    pub(crate) died: u64,
    /// Sends that a backend refused before processing (a stopped server, a closed connection)
    /// and lb's engine re-sent to another endpoint.
    pub(crate) resent: u64,
    /// Requests routed from a client in zone `[i]` to a backend in zone `[j]`.
    pub(crate) by_zone: [[u64; MAX_ZONES]; MAX_ZONES],
}

impl Counters {
    pub(crate) fn failed(&self) -> u64 {
        self.overloaded + self.unavailable + self.died
    }

    /// `self - earlier`, field by field.
    pub(crate) fn since(&self, earlier: &Counters) -> Counters {
        let mut by_zone = [[0; MAX_ZONES]; MAX_ZONES];
        for (i, row) in by_zone.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = self.by_zone[i][j] - earlier.by_zone[i][j];
            }
        }
        Counters {
            requests: self.requests - earlier.requests,
            completed: self.completed - earlier.completed,
            overloaded: self.overloaded - earlier.overloaded,
            unavailable: self.unavailable - earlier.unavailable,
            died: self.died - earlier.died,
            resent: self.resent - earlier.resent,
            by_zone,
        }
    }
}

/// A client whose picker the simulation builds itself from lb-core's policy (steady fleets).
struct DirectClient {
    picker: Box<dyn Picker>,
    backends: Box<[u32]>,
    loads: Box<[Arc<Load>]>,
}

impl DirectClient {
    fn build(backends: Box<[u32]>, endpoints: &[Arc<Endpoint>], policy: &dyn Policy, since: Instant) -> Self {
        let loads: Box<[Arc<Load>]> = backends.iter().map(|_| Arc::new(Load::default())).collect();
        let picker = policy.build(&candidates(&backends, &loads, endpoints, since));
        DirectClient { picker, backends, loads }
    }
}

fn candidates(backends: &[u32], loads: &[Arc<Load>], endpoints: &[Arc<Endpoint>], since: Instant) -> Vec<Candidate> {
    backends
        .iter()
        .zip(loads)
        .map(|(&b, load)| Candidate {
            endpoint: Arc::clone(&endpoints[b as usize]),
            load: Arc::clone(load),
            healthy: true,
            ready_since: Some(since),
        })
        .collect()
}

/// The simulated clients.
enum Clients {
    /// Pickers built by the simulation; membership never changes.
    Direct { clients: Vec<DirectClient>, policy: Arc<dyn Policy>, endpoints: Vec<Arc<Endpoint>> },
    /// One real `lb_core::Pool` per client, fed by discovery updates.
    Pooled(Pooled),
}

/// How clients are simulated.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Mode {
    /// The simulation builds each client's picker from lb-core's policy over the client's subset.
    Direct,
    /// Each client runs a real `lb_core::Pool`; updates reach a client `propagation × U(0,1)`
    /// (fixed per client) after they are published.
    Pooled { propagation: Duration },
}

/// One simulation: a fleet, its clients, its backends and virtual time.
pub(crate) struct Sim {
    pub(crate) fleet: Fleet,
    pub(crate) policy: PolicyKind,
    now: u64,
    base: Instant,
    clock_at: u64,
    events: BinaryHeap<Reverse<Ev>>,
    seq: u64,
    arrivals: Rng,
    service: Rng,
    next_arrival: u64,
    arrival_mean: f64,
    pub(crate) backends: Vec<Backend>,
    clients: Clients,
    /// Each client's backends when subsetting (for connection counts and deploy accounting).
    pub(crate) subsets: Vec<Box<[u32]>>,
    reqs: Slab,
    pub(crate) counters: Counters,
    /// Latencies of requests completed since the last [`Sim::take_latencies`].
    latencies: Latencies,
    reports: bool,
    rebuild_every: Option<u64>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim").field("now", &self.now).field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl Sim {
    /// Builds the fleet. `slowness[b]` multiplies backend `b`'s service time (1.0 when absent).
    /// Must run inside a current-thread runtime whose clock is paused.
    pub(crate) async fn new(fleet: Fleet, policy: PolicyKind, seed: u64, slowness: &[f64], mode: Mode) -> anyhow::Result<Sim> {
        anyhow::ensure!(fleet.clients > 0 && fleet.backends > 0, "a fleet needs clients and backends");
        anyhow::ensure!(fleet.zones >= 1 && fleet.zones <= MAX_ZONES, "zones must be 1 to {MAX_ZONES}");
        anyhow::ensure!(fleet.load > 0.0 && fleet.load.is_finite(), "the offered load must be positive");
        // lb-core's own randomness (P2C samples, round robin's start, topology's tier draw,
        // reconnect jitter) comes from its per-thread generator: seed it for this run.
        lb_core::policy::seed_thread_rng(seed);
        let root = Rng::new(seed);
        let base = Instant::now();
        let service_ns = fleet.service.as_nanos() as f64;
        let backends: Vec<Backend> = (0..fleet.backends)
            .map(|b| Backend::new(fleet.workers, service_ns * slowness.get(b).copied().unwrap_or(1.0), fleet::zone_of(b, fleet.zones)))
            .collect();
        let subsets = choose_subsets(&fleet, &mut root.fork(1));
        let built = policy.build();
        let rebuild_every = built.rebuild_every().map(|d| d.as_nanos() as u64);
        let clients = match mode {
            Mode::Direct => {
                let endpoints: Vec<Arc<Endpoint>> = (0..fleet.backends as u32).map(|b| Arc::new(fleet::endpoint(b, 0, fleet.zones))).collect();
                // Each client's loads and picker are allocated together, so one client's state
                // sits in a few neighbouring pages, as it would in its own process.
                let clients = subsets
                    .iter()
                    .map(|s| DirectClient::build(s.clone(), &endpoints, &*built, base))
                    .collect();
                Clients::Direct { clients, policy: built, endpoints }
            }
            Mode::Pooled { propagation } => {
                Clients::Pooled(pooled::Pooled::start(&fleet, policy, &subsets, propagation, &mut root.fork(2)).await?)
            }
        };
        let rate = fleet.rate();
        let mut sim = Sim {
            fleet,
            policy,
            now: 0,
            base,
            clock_at: 0,
            events: BinaryHeap::new(),
            seq: 0,
            arrivals: root.fork(3),
            service: root.fork(4),
            next_arrival: 0,
            arrival_mean: SEC as f64 / rate,
            backends,
            clients,
            subsets,
            reqs: Slab::default(),
            counters: Counters::default(),
            latencies: Latencies::default(),
            reports: policy.uses_reports(),
            rebuild_every,
        };
        sim.next_arrival = sim.arrivals.exp(sim.arrival_mean) as u64;
        if let (Some(period), Clients::Direct { clients, .. }) = (sim.rebuild_every, &sim.clients) {
            // Each client's pool would have started at its own moment: spread the rebuilds.
            let mut offsets = root.fork(5);
            for c in 0..clients.len() as u32 {
                let at = offsets.below(period as usize) as u64;
                sim.schedule(at, Kind::Rebuild(c));
            }
        }
        Ok(sim)
    }

    fn instant(&self, t: u64) -> Instant {
        self.base + Duration::from_nanos(t)
    }

    fn schedule(&mut self, t: u64, kind: Kind) {
        self.seq += 1;
        self.events.push(Reverse(Ev { t, seq: self.seq, kind }));
    }

    /// Latencies of the requests completed since the last call.
    pub(crate) fn take_latencies(&mut self) -> Latencies {
        std::mem::take(&mut self.latencies)
    }

    /// Runs until virtual time `end`.
    pub(crate) async fn run_until(&mut self, end: u64) -> anyhow::Result<()> {
        // A run's events are finite (every request ends); this only guards against a bug that
        // would schedule events without letting time move.
        let mut budget: u64 = 1 << 40;
        loop {
            budget = budget.checked_sub(1).context("the simulation stopped making progress")?;
            let next_event = self.events.peek().map_or(u64::MAX, |Reverse(e)| e.t);
            let t = next_event.min(self.next_arrival);
            if t > end {
                self.now = end;
                self.sync_clock().await;
                return Ok(());
            }
            self.now = t;
            if t >= self.clock_at + QUANTUM {
                self.sync_clock().await;
            }
            if self.next_arrival <= next_event {
                self.next_arrival = t + (self.arrivals.exp(self.arrival_mean) as u64).max(1);
                let c = self.arrivals.below(self.fleet.clients) as u32;
                self.arrive(c);
            } else if let Some(Reverse(ev)) = self.events.pop() {
                self.handle(ev.kind);
            }
        }
    }

    /// Moves tokio's paused clock to the virtual time, rounded down to the quantum, and lets the
    /// pool tasks (pooled mode) run.
    async fn sync_clock(&mut self) {
        let target = self.now - self.now % QUANTUM;
        if target > self.clock_at {
            tokio::time::advance(Duration::from_nanos(target - self.clock_at)).await;
            self.clock_at = target;
        }
    }

    fn handle(&mut self, kind: Kind) {
        match kind {
            Kind::Complete(slot, generation) => self.complete(slot, generation),
            Kind::Rebuild(c) => {
                let since = self.base;
                if let Clients::Direct { clients, policy, endpoints } = &mut self.clients {
                    let client = &mut clients[c as usize];
                    client.picker = policy.build(&candidates(&client.backends, &client.loads, endpoints, since));
                }
                if let Some(period) = self.rebuild_every {
                    self.schedule(self.now + period, Kind::Rebuild(c));
                }
            }
            Kind::Deliver(c, version) => {
                if let Clients::Pooled(p) = &mut self.clients {
                    if let Some(subset) = p.deliver(c as usize, version as usize, &self.fleet) {
                        self.subsets[c as usize] = subset;
                    }
                }
            }
            Kind::Close(b) => {
                if let Clients::Pooled(p) = &self.clients {
                    p.close(b as usize);
                }
            }
        }
    }

    /// One request from client `c`: pick, send, and — when the backend refuses it unsent — re-pick
    /// elsewhere, as lb's engine does.
    fn arrive(&mut self, c: u32) {
        self.counters.requests += 1;
        let now = self.instant(self.now);
        let ctx = PickContext::default();
        let mut exclude: Option<u32> = None;
        for attempt in 0..=MAX_REROUTES {
            let picked = match &self.clients {
                Clients::Direct { clients, .. } => {
                    let client = &clients[c as usize];
                    pick_excluding(exclude, |_| {
                        let i = client.picker.pick_at(&ctx, now)?;
                        Some((client.backends[i], None, client.loads[i].start_at(now)))
                    })
                }
                Clients::Pooled(p) => p.pick(c as usize, &ctx, exclude),
            };
            let Some((b, incarnation, guard)) = picked else {
                self.counters.unavailable += 1;
                return;
            };
            let accepted = self.backends[b as usize].up
                && match (&self.clients, incarnation) {
                    (Clients::Pooled(p), Some(inc)) => p.connection_alive(b as usize, inc),
                    _ => true,
                };
            if !accepted {
                // Refused before processing: the guard drops as cancelled (it counts for
                // nothing), and the engine sends the request elsewhere.
                drop(guard);
                if attempt < MAX_REROUTES {
                    self.counters.resent += 1;
                    exclude = Some(b);
                    continue;
                }
                self.counters.unavailable += 1;
                return;
            }
            let cz = fleet::zone_of(c as usize, self.fleet.zones);
            let bz = self.backends[b as usize].zone;
            self.counters.by_zone[cz.min(MAX_ZONES - 1)][bz.min(MAX_ZONES - 1)] += 1;
            self.enqueue(Req { backend: b, start: self.now, guard });
            return;
        }
    }

    fn enqueue(&mut self, mut r: Req) {
        let b = r.backend as usize;
        let be = &mut self.backends[b];
        if be.busy < be.workers {
            let (slot, generation) = self.reqs.insert(r);
            self.start_service(b, slot, generation);
        } else if be.queue.len() < self.fleet.queue_cap {
            let (slot, _) = self.reqs.insert(r);
            self.backends[b].queue.push_back(slot);
        } else {
            be.roll(self.now);
            be.rejected += 1;
            be.win_rejected += 1;
            self.counters.overloaded += 1;
            r.guard.set_outcome(Outcome::Failure);
            r.guard.set_latency(Duration::ZERO);
        }
    }

    fn start_service(&mut self, b: usize, slot: u32, generation: u32) {
        let be = &mut self.backends[b];
        be.change_busy(self.now, true);
        be.in_service.push(slot);
        let d = (self.service.exp(be.mean_service) as u64).max(1);
        self.schedule(self.now + d, Kind::Complete(slot, generation));
    }

    fn complete(&mut self, slot: u32, generation: u32) {
        // A stale event: the request died with its backend.
        let Some(mut r) = self.reqs.take(slot, generation) else { return };
        let b = r.backend as usize;
        let latency = self.now - r.start;
        let be = &mut self.backends[b];
        be.change_busy(self.now, false);
        if let Some(k) = be.in_service.iter().position(|&s| s == slot) {
            be.in_service.swap_remove(k);
        }
        be.served += 1;
        be.win_done += 1;
        r.guard.set_outcome(Outcome::Success);
        r.guard.set_latency(Duration::from_nanos(latency));
        if self.reports {
            r.guard.set_report(be.report);
        }
        drop(r);
        self.counters.completed += 1;
        self.latencies.push(latency);
        if let Some(next) = self.backends[b].queue.pop_front() {
            let generation = self.reqs.slots[next as usize].0;
            self.start_service(b, next, generation);
        }
    }

    /// Stops backend `b`: it refuses new requests and connections. A graceful stop finishes
    /// what it holds; otherwise every request it holds fails now. Clients notice the closed
    /// connections `notice` later.
    pub(crate) fn stop_backend(&mut self, b: usize, graceful: bool, notice: Duration) {
        let be = &mut self.backends[b];
        be.up = false;
        if let Clients::Pooled(p) = &self.clients {
            p.set_up(b, false);
        }
        if !graceful {
            let held: Vec<u32> = be.in_service.drain(..).chain(be.queue.drain(..)).collect();
            let busy = be.busy;
            for _ in 0..busy {
                self.backends[b].change_busy(self.now, false);
            }
            for slot in held {
                let generation = self.reqs.slots[slot as usize].0;
                if let Some(mut r) = self.reqs.take(slot, generation) {
                    r.guard.set_outcome(Outcome::Failure);
                    self.counters.died += 1;
                }
            }
        }
        self.schedule(self.now + notice.as_nanos() as u64, Kind::Close(b as u32));
    }

    /// Starts backend `b` again (a fresh process: new connections from now on).
    pub(crate) fn start_backend(&mut self, b: usize) {
        self.backends[b].up = true;
        if let Clients::Pooled(p) = &self.clients {
            p.set_up(b, true);
        }
    }

    /// Publishes a new membership (pooled mode): every client receives it after its own
    /// propagation delay. `replaced` backends come back under a new identity (`generation`).
    pub(crate) fn publish(&mut self, present: &[bool], generations: &[u32]) {
        let Clients::Pooled(p) = &mut self.clients else { return };
        let version = p.publish(present, generations, &self.fleet);
        let delays: Vec<u64> = p.delays().to_vec();
        for (c, d) in delays.into_iter().enumerate() {
            self.schedule(self.now + d, Kind::Deliver(c as u32, version as u32));
        }
    }

    /// Connections opened and connection attempts refused so far, per client (pooled mode).
    pub(crate) fn connections(&self) -> Option<(Vec<u32>, Vec<u32>)> {
        match &self.clients {
            Clients::Pooled(p) => Some(p.connection_counts()),
            Clients::Direct { .. } => None,
        }
    }

    /// Clients per backend: how many subsets include it.
    pub(crate) fn connections_per_backend(&self) -> Vec<u32> {
        let mut per = vec![0u32; self.fleet.backends];
        for s in &self.subsets {
            for &b in s.iter() {
                per[b as usize] += 1;
            }
        }
        per
    }
}

/// Picks until the result is not `exclude`, at most [`PICK_ATTEMPTS`] times, dropping the guards
/// of rejected picks (they count for nothing), as lb-core's engine does.
pub(crate) fn pick_excluding(
    exclude: Option<u32>,
    mut pick: impl FnMut(usize) -> Option<(u32, Option<u32>, LoadGuard)>,
) -> Option<(u32, Option<u32>, LoadGuard)> {
    for attempt in 0..PICK_ATTEMPTS {
        let p = pick(attempt)?;
        if Some(p.0) != exclude {
            return Some(p);
        }
    }
    None
}

/// Every client's backends, by the fleet's subsetting.
fn choose_subsets(fleet: &Fleet, rng: &mut Rng) -> Vec<Box<[u32]>> {
    let k = fleet.per_client();
    let m = fleet.backends;
    match fleet.subsetting {
        _ if k >= m => (0..fleet.clients).map(|_| (0..m as u32).collect()).collect(),
        Subsetting::None => (0..fleet.clients).map(|_| (0..m as u32).collect()).collect(),
        Subsetting::Rendezvous => {
            let all: Vec<Endpoint> = (0..m as u32).map(|b| fleet::endpoint(b, 0, 1)).collect();
            (0..fleet.clients)
                .map(|c| {
                    lb_core::discover::subsetting::choose(&all, k, fleet::client_id(c).as_bytes())
                        .iter()
                        .filter_map(|e| fleet::backend_of(e.addr()))
                        .collect()
                })
                .collect()
        }
        Subsetting::Random => (0..fleet.clients).map(|_| rng.sample(m, k).into_boxed_slice()).collect(),
        Subsetting::Balanced => {
            // Rounds of m / k clients share one shuffle of the backends, each client taking the
            // next k of it; a round covers every backend once (when k divides m).
            let per_round = (m / k).max(1);
            let mut order: Vec<u32> = Vec::new();
            (0..fleet.clients)
                .map(|c| {
                    let (round, pos) = (c / per_round, c % per_round);
                    if pos == 0 {
                        order = rng.fork(round as u64).sample(m, m);
                    }
                    order[pos * k..(pos * k + k).min(m)].to_vec().into_boxed_slice()
                })
                .collect()
        }
    }
}
