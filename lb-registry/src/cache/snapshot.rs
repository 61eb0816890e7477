//! The on-disk snapshot: a versioned JSON document of the whole set, replaced atomically.
//!
//! ```json
//! {"v":1,"target":"etcd://10.0.0.1:2379/greeter","saved_at_unix_ms":1767225600000,
//!  "endpoints":[{"id":"i-7","addr":"10.0.7.1:50051","weight":100}]}
//! ```
//!
//! Each entry is an [`EndpointDocument`]. Writes go to a temporary file that is then renamed over
//! the old one, so a crash never leaves half a file; a [`Writer`] serializes the writes of one
//! cache and never lets an older set replace a newer one on disk.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lb_core::Endpoint;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::document::EndpointDocument;

pub(super) const SNAPSHOT_VERSION: u64 = 1;

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SnapshotFile {
    pub(super) v: u64,
    pub(super) target: String,
    pub(super) saved_at_unix_ms: u64,
    pub(super) endpoints: Vec<EndpointDocument>,
}

impl SnapshotFile {
    pub(super) fn new<'a>(target: &str, endpoints: impl Iterator<Item = &'a Endpoint>) -> Self {
        SnapshotFile {
            v: SNAPSHOT_VERSION,
            target: target.to_string(),
            saved_at_unix_ms: unix_ms(),
            endpoints: endpoints.map(EndpointDocument::from_endpoint).collect(),
        }
    }
}

/// A snapshot that was read: its endpoints and how old it is.
#[derive(Debug)]
pub(super) struct Loaded {
    pub(super) endpoints: Vec<Endpoint>,
    pub(super) age: Duration,
    /// Entries skipped because a value did not parse (a hand-edited file).
    pub(super) skipped: usize,
}

/// Reads the snapshot of `target`: `Ok(None)` when there is no file or it lists nothing. A file
/// written for another target is an error: serving another service's endpoints is worse than
/// serving none.
pub(super) fn read(path: &Path, target: &str) -> Result<Option<Loaded>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    let snap: SnapshotFile = serde_json::from_slice(&bytes).map_err(|e| format!("corrupt: {e}"))?;
    if snap.v != SNAPSHOT_VERSION {
        return Err(format!("unknown version {}", snap.v));
    }
    if snap.target != target {
        return Err(format!("it was written for `{}`, not `{target}`", crate::document::truncate(&snap.target)));
    }
    let total = snap.endpoints.len();
    let endpoints: Vec<Endpoint> = snap.endpoints.into_iter().filter_map(|d| d.into_endpoint().ok()).collect();
    if endpoints.is_empty() {
        return Ok(None);
    }
    Ok(Some(Loaded {
        skipped: total - endpoints.len(),
        age: Duration::from_millis(unix_ms().saturating_sub(snap.saved_at_unix_ms)),
        endpoints,
    }))
}

pub(super) fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// Writes one cache's snapshot file. Writes are numbered by the generation of the set they hold;
/// a lock held during each write orders them, and a write older than what is on disk is dropped.
#[derive(Debug)]
pub(super) struct Writer {
    path: PathBuf,
    /// The generation on disk (0: none written by this cache). Read without the write lock, so
    /// the cache's task never waits for a write in progress to learn whether one is needed.
    written: watch::Sender<u64>,
    writing: Mutex<()>,
}

impl Writer {
    pub(super) fn new(path: PathBuf) -> Self {
        Writer {
            path,
            written: watch::Sender::new(0),
            writing: Mutex::new(()),
        }
    }

    /// Follows the generation on disk.
    #[cfg(test)]
    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.written.subscribe()
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The generation on disk.
    pub(super) fn written(&self) -> u64 {
        *self.written.borrow()
    }

    /// Writes `file`, the set at `generation`, unless a set at least as new is on disk. Blocks.
    pub(super) fn write(&self, generation: u64, file: &SnapshotFile) -> std::io::Result<()> {
        // A poisoned lock only means an earlier write panicked; writing again is still right.
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        if self.written() >= generation {
            return Ok(());
        }
        write_atomically(&self.path, file)?;
        self.written.send_replace(generation);
        Ok(())
    }
}

pub(super) fn write_atomically(path: &Path, snap: &SnapshotFile) -> std::io::Result<()> {
    use std::io::Write as _;
    // Unique per write: two caches in one process may share a path by mistake, and must not
    // interleave their bytes in one temporary file.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let bytes = serde_json::to_vec(snap).map_err(std::io::Error::other)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}.{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
