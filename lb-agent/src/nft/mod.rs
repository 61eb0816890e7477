//! The nftables backend: one private `inet` table, a verdict map per protocol and family and one
//! global backend map per protocol and family.
//!
//! Layout (all inside `table inet <table>`, which the agent owns; no other table is ever touched):
//!
//! ```text
//! prerouting/output (nat, priority -100) → services:
//!     ip daddr . tcp dport vmap @svc_tcp4         10.96.0.10 . 80 : goto slots_3
//!     ip daddr . udp dport vmap @svc_udp4         10.96.0.11 . 53 : goto no_endpoints
//!     ip6 daddr . tcp dport vmap @svc_tcp6        fd00:96::10 . 80 : goto slots_2
//!     ip6 daddr . udp dport vmap @svc_udp6
//! slots_3:
//!     dnat ip to ip daddr . tcp dport . numgen random mod 3 map @be_tcp4
//!                                                 10.96.0.10 . 80 . 0 : 10.0.0.1 . 8080 …
//!     (the same for udp, and for ip6 with @be_tcp6 / @be_udp6)
//! postrouting (nat, priority 100):
//!     ct status dnat ip saddr . ip daddr @hairpin4 masquerade
//!     ct status dnat ip6 saddr . ip6 daddr @hairpin6 masquerade
//! ```
//!
//! A new flow costs two hash lookups whatever the number of services (kube-proxy's iptables mode
//! walks a chain per service). A service with `M` slots shares the `slots_M` chain with every other
//! service of that size, so chains stay few and a change is a handful of map-element writes
//! ([`crate::slots`] keeps unchanged slots in place). Map elements are the only thing that grows
//! with the cluster, and nft writes them in one netlink batch: the anchors measured this layout at
//! ~4 ms to add a service and ~11 ms to remove an endpoint at 10k services, where kube-proxy's
//! chain-per-endpoint layout took 0.38 s per change.
//!
//! # Why one `inet` table rather than one table per family
//!
//! Both families' maps live in one `inet` table, so a dual-stack change (a service's IPv4 and IPv6
//! VIPs share one registry entry) is one `nft -f -` transaction: both VIPs switch together, the
//! fixed cost of an nft run (3–6 ms here) is paid once per sync, not once per family, and the
//! committed state, the startup listing and `cleanup` deal with one object. Per packet nothing is
//! lost: in an `inet` table `ip daddr` carries an implicit `meta nfproto ipv4`, so a packet skips
//! the other family's rule with one compare and still meets one hash lookup of its own. An older
//! agent's `table ip <table>` is deleted in the transaction that first creates the `inet` one.
//!
//! # Session affinity
//!
//! A service with `affinity = "client-ip"` goes to a chain of its own instead of `slots_M`, laid out
//! as kube-proxy's nftables mode does it: one set of client addresses per endpoint (with the
//! service's timeout), a rule per endpoint sending a remembered client to that endpoint's chain,
//! then a `numgen` pick among the endpoints' chains; an endpoint's chain refreshes the client in
//! its set and DNATs. A new flow of such a service therefore costs O(its endpoints) set lookups
//! (services without affinity keep their two lookups). The O(1) alternative, one dynamic map
//! `client . vip . port → endpoint` written from the packet path, crashes nft 1.0.6 for IPv6 keys
//! (its register allocator asserts on a 36-byte key with data) and would leave the clients of a
//! removed endpoint pinned until the agent listed and pruned the map; per-endpoint sets are
//! removed with their endpoint, so its clients move at once. The timeout is part of the names, so
//! a changed timeout builds new sets rather than editing live ones.
//!
//! Every sync is one `nft -f -` transaction (all or nothing), so a crash mid-sync leaves either the
//! old table or the new one. What was committed is kept in memory; the table is listed only once,
//! at startup, because listing it at 10k services costs seconds.

mod load;
mod script;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use crate::backend::{Backend, SyncReport};
use crate::model::{Affinity, Desired, Destination, ServiceKey};
use crate::{conntrack, exec, slots, Error};

/// The nftables backend.
#[derive(Debug)]
pub struct Nft {
    table: String,
    max_slots: usize,
    state: TableState,
    /// A `table ip <table>` of an agent from before dual-stack exists: the next transaction
    /// deletes it.
    legacy: bool,
}

#[derive(Debug)]
enum TableState {
    /// `load` has not run: the table is assumed absent (used by `--dry-run` on a fresh host too).
    Unknown,
    /// No table: the next sync creates it.
    Absent,
    /// The table exists but cannot be trusted: the next sync replaces it.
    Inconsistent,
    /// The table holds exactly this.
    Committed(Committed),
}

/// What the kernel holds, per service and overall.
#[derive(Clone, Debug, Default)]
pub(crate) struct Committed {
    services: BTreeMap<ServiceKey, Entry>,
    slot_chains: BTreeSet<usize>,
    /// How many slots point at each endpoint IP; an IP is in its family's hairpin set while > 0.
    hairpin: HashMap<IpAddr, u32>,
    /// Slots over all services (kept so that counting objects is O(1)).
    slots: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Entry {
    slots: Vec<SocketAddr>,
    /// The destinations the slots were computed from; a sync whose destinations are equal writes
    /// nothing for this service without recomputing its slots.
    from: Vec<Destination>,
    affinity: Option<Affinity>,
}

impl Entry {
    /// The affinity objects this entry has in the kernel (none while it has no endpoint).
    fn affinity_objects(&self) -> Option<u32> {
        self.affinity.filter(|_| !self.slots.is_empty()).map(|a| a.timeout_secs)
    }

    /// The chain its verdict element goes to.
    fn target(&self, key: &ServiceKey) -> String {
        if self.slots.is_empty() {
            script::NO_ENDPOINTS.to_string()
        } else if self.affinity.is_some() {
            script::aff_chain(key)
        } else {
            script::slots_chain(self.slots.len())
        }
    }

    /// The slots held in the global backend map (an affinity service picks in its own chain).
    fn mapped_slots(&self) -> &[SocketAddr] {
        if self.affinity.is_some() {
            &[]
        } else {
            &self.slots
        }
    }
}

fn distinct(slots: &[SocketAddr]) -> BTreeSet<SocketAddr> {
    slots.iter().copied().collect()
}

impl Committed {
    fn insert(&mut self, key: ServiceKey, slots: Vec<SocketAddr>, affinity: Option<Affinity>) {
        let from = reconstruct(&slots);
        self.set(key, Entry { slots, from, affinity });
    }

    fn set(&mut self, key: ServiceKey, entry: Entry) {
        for a in &entry.slots {
            *self.hairpin.entry(a.ip()).or_insert(0) += 1;
        }
        self.slots += entry.slots.len();
        if let Some(old) = self.services.insert(key, entry) {
            self.unref(&old.slots);
        }
    }

    fn remove(&mut self, key: &ServiceKey) {
        if let Some(old) = self.services.remove(key) {
            self.unref(&old.slots);
        }
    }

    fn unref(&mut self, slots: &[SocketAddr]) {
        self.slots -= slots.len();
        for a in slots {
            if let Some(n) = self.hairpin.get_mut(&a.ip()) {
                *n -= 1;
                if *n == 0 {
                    self.hairpin.remove(&a.ip());
                }
            }
        }
    }

    fn objects(&self) -> usize {
        self.services.len() + self.slots + self.hairpin.len()
    }
}

/// Destinations as the slot table implies them (weights = slot counts), for a table read back
/// from the kernel; if the real weights reduce to the same counts nothing is rewritten.
fn reconstruct(slots: &[SocketAddr]) -> Vec<Destination> {
    let mut counts: BTreeMap<SocketAddr, u32> = BTreeMap::new();
    for a in slots {
        *counts.entry(*a).or_insert(0) += 1;
    }
    counts.into_iter().map(|(addr, weight)| Destination { addr, weight }).collect()
}

/// One service's change: the key and its new entry (`None`: the service is gone).
type Change = (ServiceKey, Option<Entry>);
/// UDP flows to delete from conntrack after the transaction.
type Flush = Vec<(ServiceKey, SocketAddr)>;

impl Nft {
    /// A backend owning `table` (family `inet`), with at most `max_slots` slots per service.
    pub fn new(table: impl Into<String>, max_slots: usize) -> Self {
        Nft { table: table.into(), max_slots: max_slots.max(1), state: TableState::Unknown, legacy: false }
    }

    fn preamble(&self, out: &mut String) {
        if self.legacy {
            out.push_str(&format!("delete table ip {}\n", self.table));
        }
    }

    fn cold(&self, desired: &Desired, replace: bool) -> (String, Committed) {
        let mut out = String::new();
        self.preamble(&mut out);
        if replace {
            // `add` makes the `delete` valid whatever is there; both are in the same transaction.
            out.push_str(&format!("add table inet {t}\ndelete table inet {t}\n", t = self.table));
        }
        out.push_str(&script::table_definition(&self.table));
        let mut next = Committed::default();
        let mut elems = script::Elements::default();
        for (key, state) in desired {
            let slots = slots::assign(&[], &state.destinations, self.max_slots);
            let entry = Entry { slots, from: state.destinations.clone(), affinity: state.affinity };
            if let Some(t) = entry.affinity_objects() {
                for ep in distinct(&entry.slots) {
                    script::add_affinity_endpoint(&mut out, &self.table, key, ep, t);
                }
                script::fill_affinity_chain(&mut out, &self.table, key, &entry.slots, t, true);
            } else if !entry.slots.is_empty() && next.slot_chains.insert(entry.slots.len()) {
                script::add_slots_chain(&mut out, &self.table, entry.slots.len());
            }
            for (i, ep) in entry.mapped_slots().iter().enumerate() {
                elems.add_slot(key, i, *ep);
            }
            elems.add_service(key, &entry.target(key));
            next.set(*key, entry);
        }
        let mut ips: Vec<&IpAddr> = next.hairpin.keys().collect();
        ips.sort();
        for ip in ips {
            elems.add_hairpin(*ip);
        }
        elems.write(&mut out, &self.table);
        (out, next)
    }

    /// The incremental transaction from `cur` to `desired` for the services `keys` (every
    /// service that may have changed), and the entries to commit.
    fn incremental<'k>(
        &self,
        cur: &Committed,
        desired: &Desired,
        keys: impl IntoIterator<Item = &'k ServiceKey>,
    ) -> (String, Vec<Change>, Flush) {
        let mut changes: Vec<Change> = Vec::new();
        let mut flush = Vec::new();
        for key in keys {
            let old = cur.services.get(key);
            let Some(state) = desired.get(key) else {
                if let Some(old) = old {
                    changes.push((*key, None));
                    flush.extend(conntrack::stale(key, old.slots.iter().copied(), None).into_iter().map(|e| (*key, e)));
                }
                continue;
            };
            if old.is_some_and(|o| o.from == state.destinations && o.affinity == state.affinity) {
                continue;
            }
            let old_slots = old.map(|o| o.slots.as_slice()).unwrap_or_default();
            let slots = slots::assign(old_slots, &state.destinations, self.max_slots);
            flush.extend(conntrack::stale(key, old_slots.iter().copied(), Some(state)).into_iter().map(|e| (*key, e)));
            // Equal slots from other weights (as after a restart) write nothing below; the entry
            // is still committed so that the real weights are remembered.
            changes.push((*key, Some(Entry { slots, from: state.destinations.clone(), affinity: state.affinity })));
        }

        // Objects are created before the elements that refer to them and deleted after.
        let mut pre = String::new();
        let mut post = String::new();
        let mut elems = script::Elements::default();
        let mut chains = cur.slot_chains.clone();
        let mut hairpin_delta: HashMap<IpAddr, i64> = HashMap::new();
        let empty = Entry::default();
        for (key, entry) in &changes {
            let old = cur.services.get(key);
            let present = old.is_some();
            let old = old.unwrap_or(&empty);
            let new = entry.as_ref().unwrap_or(&empty);
            if present && entry.is_some() && old.slots == new.slots && old.affinity_objects() == new.affinity_objects() {
                continue;
            }
            let (old_be, new_be) = (old.mapped_slots(), new.mapped_slots());
            for (i, ep) in old_be.iter().enumerate() {
                if new_be.get(i) != Some(ep) {
                    elems.del_slot(key, i);
                }
            }
            for (i, ep) in new_be.iter().enumerate() {
                if old_be.get(i) != Some(ep) {
                    elems.add_slot(key, i, *ep);
                }
            }
            for ep in &old.slots {
                *hairpin_delta.entry(ep.ip()).or_insert(0) -= 1;
            }
            for ep in &new.slots {
                *hairpin_delta.entry(ep.ip()).or_insert(0) += 1;
            }
            self.affinity_change(&mut pre, &mut post, key, old, new);
            let (old_target, new_target) = (old.target(key), new.target(key));
            match entry {
                None => elems.del_service(key),
                Some(_) if present && old_target == new_target => {}
                Some(_) => {
                    if present {
                        elems.del_service(key);
                    }
                    if new.affinity.is_none() && !new.slots.is_empty() && chains.insert(new.slots.len()) {
                        script::add_slots_chain(&mut pre, &self.table, new.slots.len());
                    }
                    elems.add_service(key, &new_target);
                }
            }
        }
        let mut deltas: Vec<(IpAddr, i64)> = hairpin_delta.into_iter().filter(|(_, d)| *d != 0).collect();
        deltas.sort();
        for (ip, d) in deltas {
            let before = i64::from(cur.hairpin.get(&ip).copied().unwrap_or(0));
            let after = before + d;
            if before > 0 && after <= 0 {
                elems.del_hairpin(ip);
            } else if before <= 0 && after > 0 {
                elems.add_hairpin(ip);
            }
        }
        let mut out = String::new();
        if !pre.is_empty() || !elems.is_empty() || !post.is_empty() {
            self.preamble(&mut out);
        }
        out.push_str(&pre);
        if !elems.is_empty() {
            elems.write(&mut out, &self.table);
        }
        out.push_str(&post);
        (out, changes, flush)
    }

    /// An affinity service's chains and sets: endpoints that stay keep their sets (their clients
    /// stay with them); a removed endpoint's set goes with it, so its clients pick anew.
    fn affinity_change(&self, pre: &mut String, post: &mut String, key: &ServiceKey, old: &Entry, new: &Entry) {
        let t = &self.table;
        match (old.affinity_objects(), new.affinity_objects()) {
            (None, None) => {}
            (None, Some(t1)) => {
                for ep in distinct(&new.slots) {
                    script::add_affinity_endpoint(pre, t, key, ep, t1);
                }
                script::fill_affinity_chain(pre, t, key, &new.slots, t1, true);
            }
            (Some(t0), Some(t1)) => {
                let (old_eps, new_eps) = (distinct(&old.slots), distinct(&new.slots));
                for ep in &new_eps {
                    if t0 != t1 || !old_eps.contains(ep) {
                        script::add_affinity_endpoint(pre, t, key, *ep, t1);
                    }
                }
                script::fill_affinity_chain(pre, t, key, &new.slots, t1, false);
                for ep in &old_eps {
                    if t0 != t1 || !new_eps.contains(ep) {
                        script::del_affinity_endpoint(post, t, key, *ep, t0);
                    }
                }
            }
            (Some(t0), None) => {
                let chain = script::aff_chain(key);
                post.push_str(&format!("flush chain inet {t} {chain}\n"));
                for ep in distinct(&old.slots) {
                    script::del_affinity_endpoint(post, t, key, ep, t0);
                }
                post.push_str(&format!("delete chain inet {t} {chain}\n"));
            }
        }
    }

    fn sync_keys(&mut self, desired: &Desired, changed: Option<&BTreeSet<ServiceKey>>, dry_run: bool) -> Result<SyncReport, Error> {
        match &self.state {
            TableState::Committed(cur) => {
                let (transaction, changes, flush) = match changed {
                    Some(keys) => self.incremental(cur, desired, keys),
                    None => {
                        let all: BTreeSet<&ServiceKey> = cur.services.keys().chain(desired.keys()).collect();
                        self.incremental(cur, desired, all)
                    }
                };
                if dry_run {
                    return Ok(SyncReport { transaction, commands: conntrack::describe(&flush), objects: cur.objects() });
                }
                if !transaction.is_empty() {
                    self.apply(&transaction)?;
                    self.legacy = false;
                }
                let TableState::Committed(cur) = &mut self.state else { unreachable!("matched above") };
                for (key, entry) in changes {
                    match entry {
                        Some(e) => {
                            if e.affinity.is_none() && !e.slots.is_empty() {
                                cur.slot_chains.insert(e.slots.len());
                            }
                            cur.set(key, e)
                        }
                        None => cur.remove(&key),
                    }
                }
                let objects = cur.objects();
                let commands = conntrack::run(&flush);
                Ok(SyncReport { transaction, commands, objects })
            }
            state => {
                let replace = matches!(state, TableState::Inconsistent);
                let (transaction, next) = self.cold(desired, replace);
                let objects = next.objects();
                if !dry_run {
                    self.apply(&transaction)?;
                    self.legacy = false;
                    self.state = TableState::Committed(next);
                }
                Ok(SyncReport { transaction, commands: Vec::new(), objects })
            }
        }
    }

    fn apply(&self, transaction: &str) -> Result<(), Error> {
        tracing::info!(table = %self.table, bytes = transaction.len(), "applying transaction");
        exec::run("nft", &["-f", "-"], Some(transaction)).map(|_| ())
    }

    /// Which of the agent's tables exist: (`inet`, the pre-dual-stack `ip`).
    fn tables(&self) -> Result<(bool, bool), Error> {
        let list = exec::run("nft", &["list", "tables"], None)?;
        let has = |family: &str| list.lines().any(|l| l.trim() == format!("table {family} {}", self.table));
        Ok((has("inet"), has("ip")))
    }
}

impl Backend for Nft {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn load(&mut self) -> Result<(), Error> {
        let (inet, legacy) = self.tables()?;
        self.legacy = legacy;
        if legacy {
            tracing::info!(table = %self.table, "found the IPv4-only table of an older agent; the first sync replaces it");
        }
        if !inet {
            self.state = TableState::Absent;
            return Ok(());
        }
        let json = exec::run("nft", &["-j", "list", "table", "inet", &self.table], None)?;
        self.state = match load::parse(&json) {
            Ok(c) => {
                tracing::info!(table = %self.table, services = c.services.len(), "learnt committed state from the agent's table");
                TableState::Committed(c)
            }
            Err(reason) => {
                tracing::warn!(table = %self.table, %reason, "agent table is not as committed; the next sync rebuilds it");
                TableState::Inconsistent
            }
        };
        Ok(())
    }

    fn sync(&mut self, desired: &Desired, dry_run: bool) -> Result<SyncReport, Error> {
        self.sync_keys(desired, None, dry_run)
    }

    fn sync_changed(&mut self, desired: &Desired, changed: &BTreeSet<ServiceKey>, dry_run: bool) -> Result<SyncReport, Error> {
        self.sync_keys(desired, Some(changed), dry_run)
    }

    fn cleanup(&mut self, dry_run: bool) -> Result<SyncReport, Error> {
        let (inet, legacy) = self.tables()?;
        let mut transaction = String::new();
        if inet {
            transaction.push_str(&format!("delete table inet {}\n", self.table));
        }
        if legacy {
            transaction.push_str(&format!("delete table ip {}\n", self.table));
        }
        if dry_run || transaction.is_empty() {
            return Ok(SyncReport { transaction, ..SyncReport::default() });
        }
        self.apply(&transaction)?;
        self.state = TableState::Absent;
        self.legacy = false;
        Ok(SyncReport { transaction, ..SyncReport::default() })
    }
}

#[cfg(test)]
mod tests;
