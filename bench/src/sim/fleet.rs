//! What is simulated: the fleet's shape, the backends' service model and the policies under test.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use lb_core::policy::{P2c, RoundRobin, Topology, WeightedRoundRobin};
use lb_core::{Endpoint, Locality, Policy};

/// Nanoseconds in a millisecond and a second: virtual time is kept in integer nanoseconds.
pub(crate) const MS: u64 = 1_000_000;
pub(crate) const SEC: u64 = 1_000_000_000;

/// The policies the simulation compares, by the names lb's examples and C ABI use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PolicyKind {
    /// `rr`: round robin.
    RoundRobin,
    /// `p2c`: power of two choices over requests in flight.
    P2cLeastRequest,
    /// `p2c-ewma`: power of two choices over PeakEWMA cost (lb's default).
    P2cPeakEwma,
    /// `wrr-orca`: weighted round robin with gRFC A58 weights from the servers' load reports.
    WrrOrca,
    /// `p2c-util`: power of two choices over the servers' reported utilization.
    P2cUtilization,
}

impl PolicyKind {
    pub(crate) const ALL: [PolicyKind; 5] = [
        PolicyKind::RoundRobin,
        PolicyKind::P2cLeastRequest,
        PolicyKind::P2cPeakEwma,
        PolicyKind::WrrOrca,
        PolicyKind::P2cUtilization,
    ];

    /// The blackout before a load-report weight is used. A58's default is 10 s; the simulation
    /// shortens it (and says so in the report) so that weights are in use after a short warm-up.
    pub(crate) const ORCA_BLACKOUT: Duration = Duration::from_secs(2);

    pub(crate) fn name(self) -> &'static str {
        match self {
            PolicyKind::RoundRobin => "rr",
            PolicyKind::P2cLeastRequest => "p2c",
            PolicyKind::P2cPeakEwma => "p2c-ewma",
            PolicyKind::WrrOrca => "wrr-orca",
            PolicyKind::P2cUtilization => "p2c-util",
        }
    }

    /// How the report's tables name it.
    pub(crate) fn label(self) -> &'static str {
        match self {
            PolicyKind::RoundRobin => "round robin",
            PolicyKind::P2cLeastRequest => "P2C least-request",
            PolicyKind::P2cPeakEwma => "P2C PeakEWMA",
            PolicyKind::WrrOrca => "WRR from load reports (A58)",
            PolicyKind::P2cUtilization => "P2C reported utilization",
        }
    }

    /// True when backends must attach load reports to their responses for this policy.
    pub(crate) fn uses_reports(self) -> bool {
        matches!(self, PolicyKind::WrrOrca | PolicyKind::P2cUtilization)
    }

    /// lb-core's policy object. Pickers built without a seed draw from lb-core's per-thread
    /// generator, which the simulation seeds, so runs replay exactly.
    pub(crate) fn build(self) -> Arc<dyn Policy> {
        match self {
            PolicyKind::RoundRobin => Arc::new(RoundRobin::new()),
            PolicyKind::P2cLeastRequest => Arc::new(P2c::least_request()),
            PolicyKind::P2cPeakEwma => Arc::new(P2c::peak_ewma()),
            PolicyKind::WrrOrca => Arc::new(WeightedRoundRobin::from_load_reports().blackout_period(Self::ORCA_BLACKOUT)),
            PolicyKind::P2cUtilization => Arc::new(P2c::utilization()),
        }
    }

    /// The same policy inside lb-core's topology wrapper for a caller at `caller`.
    pub(crate) fn build_in_zone(self, caller: Locality) -> Arc<dyn Policy> {
        match self {
            PolicyKind::RoundRobin => Arc::new(Topology::new(RoundRobin::new(), caller)),
            PolicyKind::P2cLeastRequest => Arc::new(Topology::new(P2c::least_request(), caller)),
            PolicyKind::P2cPeakEwma => Arc::new(Topology::new(P2c::peak_ewma(), caller)),
            PolicyKind::WrrOrca => Arc::new(Topology::new(
                WeightedRoundRobin::from_load_reports().blackout_period(Self::ORCA_BLACKOUT),
                caller,
            )),
            PolicyKind::P2cUtilization => Arc::new(Topology::new(P2c::utilization(), caller)),
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PolicyKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        PolicyKind::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            let names: Vec<&str> = PolicyKind::ALL.iter().map(|p| p.name()).collect();
            format!("unknown policy `{s}` (expected one of {})", names.join(", "))
        })
    }
}

/// How each client's subset of the backends is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Subsetting {
    /// Every client connects to every backend.
    None,
    /// lb-core's deterministic subsetting (`discover::subsetting::choose`, rendezvous hashing).
    Rendezvous,
    /// A uniformly random subset per client (the baseline lb's is compared with).
    Random,
    /// What-if, not in lb-core: the SRE book's deterministic subsetting, which deals each round
    /// of clients a shuffled copy of the backend list in consecutive blocks, so every backend has
    /// the same number of clients.
    Balanced,
}

impl Subsetting {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Subsetting::None => "none (all backends)",
            Subsetting::Rendezvous => "lb-core deterministic (rendezvous)",
            Subsetting::Random => "random",
            Subsetting::Balanced => "balanced rounds (what-if, not lb-core)",
        }
    }
}

/// The fleet of one run.
#[derive(Clone, Debug)]
pub(crate) struct Fleet {
    pub(crate) clients: usize,
    pub(crate) backends: usize,
    /// Backends per client (0: all).
    pub(crate) subset: usize,
    pub(crate) subsetting: Subsetting,
    /// Requests a backend serves at once.
    pub(crate) workers: u32,
    /// Mean service time of a full-speed backend (exponentially distributed).
    pub(crate) service: Duration,
    /// Requests waiting beyond this are refused with an overload error (a failed request).
    pub(crate) queue_cap: usize,
    /// Offered load as a fraction of the capacity of the fleet at full speed.
    pub(crate) load: f64,
    /// Zones backends and clients are spread over (1: no locality).
    pub(crate) zones: usize,
    /// Clients wrap their policy in lb-core's `Topology` (prefer their own zone).
    pub(crate) topology: bool,
}

impl Fleet {
    /// The fleet's request rate, per second, for its `load`.
    pub(crate) fn rate(&self) -> f64 {
        self.load * self.backends as f64 * f64::from(self.workers) / self.service.as_secs_f64()
    }

    /// The subset size in effect (the whole fleet when subsetting is off or the subset is larger).
    pub(crate) fn per_client(&self) -> usize {
        if self.subset == 0 || self.subsetting == Subsetting::None {
            self.backends
        } else {
            self.subset.min(self.backends)
        }
    }
}

/// The endpoint of backend `b`: id `b<b>` (with `-g<generation>` after a replacement that gives
/// it a new identity), address 10.x.y.z:8080 encoding `b`, and its zone when there are several.
pub(crate) fn endpoint(b: u32, generation: u32, zones: usize) -> Endpoint {
    let id = if generation == 0 { format!("b{b}") } else { format!("b{b}-g{generation}") };
    let mut ep = Endpoint::new(addr(b)).with_id(id);
    if zones > 1 {
        let z = zone_of(b as usize, zones);
        ep = ep.with_locality(Locality::unknown().with_region("r1").with_zone(zone_name(z)).with_node(format!("node-b{b}")));
    }
    ep
}

/// The address that encodes backend `b`.
pub(crate) fn addr(b: u32) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::from(0x0A00_0000 | (b & 0x00FF_FFFF)), 8080))
}

/// The backend an address encodes.
pub(crate) fn backend_of(addr: SocketAddr) -> Option<u32> {
    match addr {
        SocketAddr::V4(v4) => Some(u32::from(*v4.ip()) & 0x00FF_FFFF),
        SocketAddr::V6(_) => None,
    }
}

/// Backends and clients are dealt to zones in turn.
pub(crate) fn zone_of(i: usize, zones: usize) -> usize {
    i % zones.max(1)
}

pub(crate) fn zone_name(z: usize) -> String {
    format!("zone-{}", (b'a' + (z % 26) as u8) as char)
}

/// The client with index `c` identifies itself (for subsetting) as this.
pub(crate) fn client_id(c: usize) -> String {
    format!("client-{c}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_and_policies_parse() {
        for b in [0u32, 1, 999, 65_537] {
            assert_eq!(backend_of(addr(b)), Some(b));
        }
        for p in PolicyKind::ALL {
            assert_eq!(p.name().parse::<PolicyKind>(), Ok(p));
        }
        assert!("bogus".parse::<PolicyKind>().is_err());
        assert_eq!(zone_name(2), "zone-c");
    }
}
