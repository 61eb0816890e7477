//! Weights to slot counts, and consistent slot assignment.
//!
//! The nftables backend picks a new flow's endpoint as `slot = numgen random mod M` in a per-service
//! table of `M` slots; an endpoint's share of new flows is its share of slots. Weights are reduced by
//! their greatest common divisor (equal weights give one slot each, so the table is as small as the
//! service) and, past `max_slots`, scaled down by largest remainder with at least one slot each.
//!
//! Assignment is consistent in the sense of Maglev's "minimal disruption": a slot keeps its endpoint
//! whenever that endpoint still has quota, so removing one of N equal endpoints rewrites only the
//! removed endpoint's slot (filled from the table's last slot as the table shrinks by one). A change
//! therefore costs O(changed slots) map writes, not O(service) — which is what keeps updates flat.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::model::Destination;

/// How many slots each destination gets (same order as `dests`).
pub fn slot_counts(dests: &[Destination], max_slots: usize) -> Vec<usize> {
    if dests.is_empty() {
        return Vec::new();
    }
    let g = dests.iter().map(|d| u64::from(d.weight)).fold(0, gcd).max(1);
    let reduced: Vec<u64> = dests.iter().map(|d| u64::from(d.weight) / g).collect();
    let total: u64 = reduced.iter().sum();
    let cap = max_slots.max(dests.len()) as u64;
    if total <= cap {
        return reduced.into_iter().map(|w| w as usize).collect();
    }
    // Largest remainder, everyone at least one slot.
    let budget = cap - dests.len() as u64;
    let mut counts: Vec<u64> = vec![1; dests.len()];
    let mut rema: Vec<(u64, usize)> = Vec::with_capacity(dests.len());
    let mut used = 0;
    for (i, w) in reduced.iter().enumerate() {
        let exact = w * budget;
        counts[i] += exact / total;
        used += exact / total;
        rema.push((exact % total, i));
    }
    rema.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in rema.into_iter().take((budget - used) as usize) {
        counts[i] += 1;
    }
    counts.into_iter().map(|c| c as usize).collect()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The new slot table: keeps every old slot whose endpoint still has quota, fills the rest.
pub fn assign(old: &[SocketAddr], dests: &[Destination], max_slots: usize) -> Vec<SocketAddr> {
    let counts = slot_counts(dests, max_slots);
    let m: usize = counts.iter().sum();
    let mut quota: HashMap<SocketAddr, usize> = dests.iter().map(|d| d.addr).zip(counts).collect();
    let mut new: Vec<Option<SocketAddr>> = vec![None; m];
    for (slot, addr) in old.iter().take(m).enumerate() {
        if let Some(q) = quota.get_mut(addr).filter(|q| **q > 0) {
            *q -= 1;
            new[slot] = Some(*addr);
        }
    }
    let mut fill = dests.iter().flat_map(|d| {
        let n = quota.get(&d.addr).copied().unwrap_or(0);
        std::iter::repeat_n(d.addr, n)
    });
    new.into_iter()
        .map(|s| s.or_else(|| fill.next()).expect("slot counts add up to the table size"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(last: u8, weight: u32) -> Destination {
        Destination { addr: SocketAddr::from(([10, 0, 0, last], 80)), weight }
    }

    #[test]
    fn weights_become_slot_counts() {
        assert_eq!(slot_counts(&[d(1, 100), d(2, 100), d(3, 100)], 256), vec![1, 1, 1]);
        assert_eq!(slot_counts(&[d(1, 100), d(2, 300)], 256), vec![1, 3]);
        assert_eq!(slot_counts(&[d(1, 1), d(2, 1000)], 100), vec![1, 99]);
        let c = slot_counts(&[d(1, 7), d(2, 11), d(3, 13)], 10);
        assert_eq!(c.iter().sum::<usize>(), 10);
        assert!(c[0] <= c[1] && c[1] <= c[2], "{c:?}");
        assert!(slot_counts(&[], 10).is_empty());
    }

    #[test]
    fn removing_one_of_n_rewrites_only_its_slot() {
        let dests: Vec<_> = (1..=10).map(|i| d(i, 1)).collect();
        let old = assign(&[], &dests, 256);
        assert_eq!(old.len(), 10);
        let removed = old[3];
        let rest: Vec<_> = dests.iter().copied().filter(|x| x.addr != removed).collect();
        let new = assign(&old, &rest, 256);
        assert_eq!(new.len(), 9);
        let moved = (0..9).filter(|&i| new[i] != old[i]).count();
        assert_eq!(moved, 1, "only the removed endpoint's slot changes: {old:?} -> {new:?}");
        assert_eq!(new[3], old[9], "the last slot's endpoint fills the hole");
    }

    #[test]
    fn adding_keeps_every_existing_slot_and_weights_hold() {
        let old = assign(&[], &[d(1, 1), d(2, 1)], 256);
        let new = assign(&old, &[d(1, 1), d(2, 1), d(3, 2)], 256);
        assert_eq!(&new[..2], &old[..]);
        let threes = new.iter().filter(|a| a.ip() == std::net::IpAddr::from([10, 0, 0, 3])).count();
        assert_eq!((new.len(), threes), (4, 2));
    }
}
