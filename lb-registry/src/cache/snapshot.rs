//! The on-disk snapshot format: a versioned JSON document of the whole set, replaced atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lb_core::{Endpoint, EndpointState, Locality};
use serde::{Deserialize, Serialize};

pub(super) const SNAPSHOT_VERSION: u64 = 1;

/// Reads a snapshot: `Ok(None)` when there is no file or it lists nothing, the endpoints and the
/// file's age otherwise. Entries that do not parse (a hand-edited file) are skipped.
pub(super) fn read(path: &Path) -> Result<Option<(Vec<Endpoint>, Duration)>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    let snap: SnapshotFile = serde_json::from_slice(&bytes).map_err(|e| format!("corrupt: {e}"))?;
    if snap.v != SNAPSHOT_VERSION {
        return Err(format!("unknown version {}", snap.v));
    }
    let endpoints: Vec<Endpoint> = snap.endpoints.into_iter().filter_map(SnapEndpoint::into_endpoint).collect();
    if endpoints.is_empty() {
        return Ok(None);
    }
    let age = Duration::from_millis(unix_ms().saturating_sub(snap.saved_at_unix_ms));
    Ok(Some((endpoints, age)))
}

pub(super) fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

pub(super) fn write_atomically(path: &Path, snap: &SnapshotFile) -> std::io::Result<()> {
    use std::io::Write as _;
    let bytes = serde_json::to_vec(snap).map_err(std::io::Error::other)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SnapshotFile {
    pub(super) v: u64,
    pub(super) target: String,
    pub(super) saved_at_unix_ms: u64,
    pub(super) endpoints: Vec<SnapEndpoint>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SnapEndpoint {
    id: String,
    addr: String,
    weight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    state: String,
}

impl SnapEndpoint {
    pub(super) fn from_endpoint(e: &Endpoint) -> Self {
        let l = e.locality();
        SnapEndpoint {
            id: e.id().to_string(),
            addr: e.addr().to_string(),
            weight: e.weight(),
            zone: l.zone.as_deref().map(str::to_string),
            region: l.region.as_deref().map(str::to_string),
            node: l.node.as_deref().map(str::to_string),
            metadata: e.metadata().clone(),
            state: match e.state() {
                EndpointState::Ready => "ready",
                EndpointState::Serving => "serving",
                EndpointState::Terminating => "terminating",
            }
            .to_string(),
        }
    }

    // The file is ours, but it may have been edited or truncated by hand: skip what does not parse.
    pub(super) fn into_endpoint(self) -> Option<Endpoint> {
        let addr = self.addr.parse().ok()?;
        let mut loc = Locality::unknown();
        if let Some(z) = &self.zone {
            loc = loc.with_zone(z);
        }
        if let Some(r) = &self.region {
            loc = loc.with_region(r);
        }
        if let Some(n) = &self.node {
            loc = loc.with_node(n);
        }
        let state = match self.state.as_str() {
            "serving" => EndpointState::Serving,
            "terminating" => EndpointState::Terminating,
            _ => EndpointState::Ready,
        };
        let mut ep = Endpoint::new(addr)
            .with_id(self.id)
            .with_weight(self.weight)
            .with_locality(loc)
            .with_state(state);
        for (k, v) in self.metadata {
            ep = ep.with_metadata(k, v);
        }
        Some(ep)
    }
}

