//! The `--policy` names of the command-line tools, mapped to `lb_core` policies.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use lb_core::policy::{Maglev, P2c, RingHash, RoundRobin, WeightedRoundRobin};
use lb_core::Policy;

/// A policy name as the command line spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyName {
    /// `rr`: round robin.
    RoundRobin,
    /// `wrr`: smooth weighted round robin.
    WeightedRoundRobin,
    /// `p2c`: power of two choices, least request.
    P2cLeastRequest,
    /// `p2c-ewma`: power of two choices, PeakEWMA.
    P2cPeakEwma,
    /// `hash`: consistent hashing (ring hash).
    RingHash,
    /// `maglev`: consistent hashing (Maglev lookup table).
    Maglev,
    /// `wrr-orca`: weighted round robin from the servers' ORCA load reports (gRFC A58).
    WrrOrca,
    /// `p2c-util`: power of two choices by the servers' reported utilization.
    P2cUtilization,
}

impl PolicyName {
    /// Every name, in the order the help text lists them.
    pub const ALL: [PolicyName; 8] = [
        PolicyName::RoundRobin,
        PolicyName::WeightedRoundRobin,
        PolicyName::P2cLeastRequest,
        PolicyName::P2cPeakEwma,
        PolicyName::RingHash,
        PolicyName::Maglev,
        PolicyName::WrrOrca,
        PolicyName::P2cUtilization,
    ];

    /// Whether the policy hashes a request key (`hash`, `maglev`).
    pub fn is_hashing(self) -> bool {
        matches!(self, PolicyName::RingHash | PolicyName::Maglev)
    }

    /// The command-line spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyName::RoundRobin => "rr",
            PolicyName::WeightedRoundRobin => "wrr",
            PolicyName::P2cLeastRequest => "p2c",
            PolicyName::P2cPeakEwma => "p2c-ewma",
            PolicyName::RingHash => "hash",
            PolicyName::Maglev => "maglev",
            PolicyName::WrrOrca => "wrr-orca",
            PolicyName::P2cUtilization => "p2c-util",
        }
    }

    /// The policy. Topology preference is not added here: `LbChannel::builder().locality(..)`
    /// wraps whatever policy it gets in [`lb_core::policy::Topology`] for the caller's locality.
    pub fn build(self) -> Arc<dyn Policy> {
        match self {
            PolicyName::RoundRobin => Arc::new(RoundRobin::new()),
            PolicyName::WeightedRoundRobin => Arc::new(WeightedRoundRobin::new()),
            PolicyName::P2cLeastRequest => Arc::new(P2c::least_request()),
            PolicyName::P2cPeakEwma => Arc::new(P2c::peak_ewma()),
            PolicyName::RingHash => Arc::new(RingHash::new()),
            PolicyName::Maglev => Arc::new(Maglev::new()),
            PolicyName::WrrOrca => Arc::new(WeightedRoundRobin::from_load_reports()),
            PolicyName::P2cUtilization => Arc::new(P2c::utilization()),
        }
    }
}

impl fmt::Display for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown policy name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownPolicy(String);

impl fmt::Display for UnknownPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = PolicyName::ALL.iter().map(|p| p.as_str()).collect();
        write!(f, "unknown policy `{}` (expected one of: {})", self.0, names.join(", "))
    }
}

impl std::error::Error for UnknownPolicy {}

impl FromStr for PolicyName {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Self, UnknownPolicy> {
        PolicyName::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPolicy(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_listed() {
        for p in PolicyName::ALL {
            assert_eq!(p.as_str().parse::<PolicyName>(), Ok(p));
        }
        let err = "random".parse::<PolicyName>().expect_err("not a policy");
        assert!(err.to_string().contains("p2c-ewma"), "{err}");
    }
}
