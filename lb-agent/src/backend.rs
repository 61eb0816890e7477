//! The interface every kernel backend implements.

use std::collections::BTreeSet;

use crate::model::{Desired, ServiceKey};
use crate::Error;

/// What one sync did (or, in a dry run, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// The exact transaction given to the kernel tool (`nft -f -`, `iptables-restore`,
    /// `ipvsadm-restore`); empty when the kernel already matches.
    pub transaction: String,
    /// Follow-up commands (conntrack deletions), one per line as a shell would run them.
    pub commands: Vec<String>,
    /// Kernel objects the backend owns after the sync (map elements, rules, real servers).
    pub objects: usize,
}

impl SyncReport {
    /// True when nothing was (or would be) written to the kernel.
    pub fn is_noop(&self) -> bool {
        self.transaction.is_empty() && self.commands.is_empty()
    }
}

/// A kernel backend: learns what it committed before, then keeps the kernel equal to [`Desired`].
pub trait Backend: Send {
    /// The backend's name for logs and metrics.
    fn name(&self) -> &'static str;

    /// Learns the state this agent committed earlier (e.g. before a restart), reading only the
    /// agent's own objects. Called once at startup; later syncs work from memory.
    fn load(&mut self) -> Result<(), Error>;

    /// Brings the kernel to `desired` in one atomic transaction, writing only what changed.
    /// With `dry_run`, computes and returns the transaction without applying it.
    fn sync(&mut self, desired: &Desired, dry_run: bool) -> Result<SyncReport, Error>;

    /// Like [`sync`](Backend::sync), told that only the services in `changed` may differ from the
    /// last successful sync, so that a backend able to use the hint does O(changed) work. The
    /// default ignores the hint.
    fn sync_changed(&mut self, desired: &Desired, changed: &BTreeSet<ServiceKey>, dry_run: bool) -> Result<SyncReport, Error> {
        let _ = changed;
        self.sync(desired, dry_run)
    }

    /// Removes everything the agent created; returns what it ran.
    fn cleanup(&mut self, dry_run: bool) -> Result<SyncReport, Error>;
}
