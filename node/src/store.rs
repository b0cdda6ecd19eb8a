//! The node's durable state in sled: submitted jobs and their verdicts (and revisions), assigned work and
//! its results, receipts and revocations, model manifests and downloaded chunks.
//!
//! Everything a node must not lose to `kill -9` goes through here, and a write that others will rely on
//! (a job id handed to a user, a commitment sent to a submitter) is flushed to disk first. Protocol
//! messages are stored in their canonical encoding and checked again when read back; node-local records
//! are postcard. A record that no longer decodes is skipped with a warning, never a panic.

use std::path::Path;

use fleetmesh_protocol::codec::{self, Message};
use fleetmesh_protocol::messages::{EpochRoot, JobOffer, ModelManifest, Receipt, Revocation};
use fleetmesh_protocol::{ChunkId, JobId, ModelId, NodeId, Signed};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tracing::warn;

use fleetmesh_consensus::submitter::{JobResult, Recheck};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled reported an error (I/O, corruption, or another process holds the database).
    #[error("database {path}: {source}")]
    Sled {
        /// The database folder (or `temporary`).
        path: String,
        /// The sled error.
        source: sled::Error,
    },
    /// A record could not be encoded.
    #[error("cannot encode a {0} record")]
    Encode(&'static str),
    /// A store task on the blocking threads did not finish (it panicked, or the runtime is stopping).
    #[error("store task failed: {0}")]
    Task(String),
}

/// A job this node submitted: the offer now in force (a job re-offered after a restart gets a fresh offer)
/// and, once decided, its verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmittedRecord {
    /// The offer the fleet is working on.
    pub offer: JobOffer,
    /// Replicated by reputation (adaptive replication) rather than by the offer's replica count.
    pub adaptive: bool,
    /// The verdict, once reached.
    pub result: Option<JobResult>,
}

/// A submitted job's verdict corrected after the fact: the worker it was accepted from alone was caught
/// lying, and a recheck by other workers accepted another output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionRecord {
    /// The corrected output.
    pub output: Vec<u8>,
    /// The workers that agreed on it in the recheck.
    pub agreeing: Vec<NodeId>,
    /// The recheck job (its own receipts pay those workers).
    pub recheck: JobId,
    /// When the verdict was revised, ms since the Unix epoch.
    pub revised_ms: u64,
}

/// Work this node accepted as a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkRecord {
    /// The job's offer (input included).
    pub offer: JobOffer,
    /// The computed result, once there is one.
    pub done: Option<DoneRecord>,
    /// The output has been revealed to the submitter.
    pub revealed: bool,
}

/// A computed result waiting to be revealed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DoneRecord {
    /// The output.
    pub output: Vec<u8>,
    /// The commitment's secret salt.
    pub salt: [u8; 32],
    /// Compute time in microseconds.
    pub compute_us: u64,
    /// Energy in µWh.
    pub energy_uwh: u64,
}

/// Bytes of sled's page cache.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// The node's sled database (cheap to clone).
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    path: String,
    submitted: sled::Tree,
    work: sled::Tree,
    receipts: sled::Tree,
    manifests: sled::Tree,
    chunks: sled::Tree,
    vehicle: sled::Tree,
    submit_keys: sled::Tree,
    revocations: sled::Tree,
    revisions: sled::Tree,
    rechecks: sled::Tree,
    /// Sealed epochs' roots by start (8 bytes, big-endian), and [`SEALED_TO`].
    roots: sled::Tree,
    /// Sealed epochs' receipts by (start, leaf index), in leaf order.
    leaves: sled::Tree,
    /// Receipts this node issued that their worker has not acknowledged yet, by (job, worker).
    undelivered: sled::Tree,
}

/// Key (in the roots tree) of the end of the last epoch sealed.
const SEALED_TO: &[u8] = b"sealed-to";

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.path)
    }
}

/// How long [`Store::open`] waits for a lock that a store closed in this process still holds.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Store {
    /// Opens (or creates) the database in `dir`. Fails if another process has it open.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.display().to_string();
        let config = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(200))
            // sled's default page cache is 1 GiB, which a car's node would fill with cold records.
            .cache_capacity(CACHE_BYTES);
        // A store closed in this process a moment ago may still be locked by sled's flusher thread,
        // which ends shortly after the last handle is dropped: wait for it rather than fail.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.to_string().starts_with("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(source) => {
                    return Err(StoreError::Sled {
                        path: path.clone(),
                        source,
                    });
                }
            }
        };
        Self::with_db(db, path)
    }

    /// A database that lives only as long as this value (in-process fleets, tests).
    pub fn temporary() -> Result<Self, StoreError> {
        let path = "temporary".to_string();
        let db = sled::Config::new()
            .temporary(true)
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|source| StoreError::Sled {
                path: path.clone(),
                source,
            })?;
        Self::with_db(db, path)
    }

    fn with_db(db: sled::Db, path: String) -> Result<Self, StoreError> {
        let tree = |name: &str| {
            db.open_tree(name).map_err(|source| StoreError::Sled {
                path: path.clone(),
                source,
            })
        };
        Ok(Self {
            submitted: tree("submitted")?,
            work: tree("work")?,
            receipts: tree("receipts")?,
            manifests: tree("manifests")?,
            chunks: tree("chunks")?,
            vehicle: tree("vehicle")?,
            submit_keys: tree("submit_keys")?,
            revocations: tree("revocations")?,
            revisions: tree("revisions")?,
            rechecks: tree("rechecks")?,
            roots: tree("roots")?,
            leaves: tree("leaves")?,
            undelivered: tree("undelivered")?,
            db,
            path,
        })
    }

    fn err(&self, source: sled::Error) -> StoreError {
        StoreError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    /// Writes everything so far to disk; returns once it is durable.
    ///
    /// (sled's own `flush_async` never completed in our in-process fleet tests, several databases in one
    /// process; the blocking flush on tokio's blocking pool does.)
    pub async fn flush(&self) -> Result<(), StoreError> {
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || db.flush()).await {
            Ok(result) => result.map(|_| ()).map_err(|e| self.err(e)),
            Err(e) => Err(self.err(sled::Error::ReportableBug(format!("flush task failed: {e}")))),
        }
    }

    /// Runs `op` on this store on tokio's blocking threads: what async code calls instead of a store
    /// method, since sled may block on the disk (its log, a page not in the cache) and async worker
    /// threads must not.
    pub async fn off_thread<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.clone();
        match tokio::task::spawn_blocking(move || op(&store)).await {
            Ok(result) => result,
            Err(e) => Err(StoreError::Task(e.to_string())),
        }
    }

    fn put<T: Serialize>(
        &self,
        tree: &sled::Tree,
        what: &'static str,
        key: &[u8],
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = postcard::to_allocvec(value).map_err(|_| StoreError::Encode(what))?;
        tree.insert(key, bytes).map(|_| ()).map_err(|e| self.err(e))
    }

    fn all<T: DeserializeOwned>(&self, tree: &sled::Tree, what: &'static str) -> Vec<(sled::IVec, T)> {
        let mut out = Vec::new();
        for entry in tree.iter() {
            match entry {
                Ok((key, value)) => match postcard::from_bytes(&value) {
                    Ok(record) => out.push((key, record)),
                    Err(e) => {
                        warn!(store = %self.path, what, error = %e, "skipping a record that does not decode")
                    }
                },
                Err(e) => warn!(store = %self.path, what, error = %e, "cannot read the store"),
            }
        }
        out
    }

    fn remove(&self, tree: &sled::Tree, key: &[u8]) -> Result<(), StoreError> {
        tree.remove(key).map(|_| ()).map_err(|e| self.err(e))
    }

    /// Every record of a tree keyed by job id.
    fn by_job<T: DeserializeOwned>(&self, tree: &sled::Tree, what: &'static str) -> Vec<(JobId, T)> {
        self.all(tree, what)
            .into_iter()
            .filter_map(|(k, v)| Some((JobId::from_bytes(k.as_ref().try_into().ok()?), v)))
            .collect()
    }

    // ------------------------------------------------------------ submitted jobs

    /// Records a submitted job under the id its user knows (`original`).
    pub fn put_submitted(&self, original: &JobId, record: &SubmittedRecord) -> Result<(), StoreError> {
        self.put(&self.submitted, "submitted job", original.as_bytes(), record)
    }

    /// The submitted job its user knows as `original`, if stored (and decodable).
    pub fn submitted_one(&self, original: &JobId) -> Option<SubmittedRecord> {
        let bytes = self.submitted.get(original.as_bytes()).ok()??;
        postcard::from_bytes(&bytes).ok()
    }

    /// Forgets a submitted job (its offer could not be published).
    pub fn remove_submitted(&self, original: &JobId) -> Result<(), StoreError> {
        self.remove(&self.submitted, original.as_bytes())
    }

    /// Records that the client's idempotency `key` named the job its user knows as `original`.
    pub fn put_submit_key(&self, key: &str, original: &JobId) -> Result<(), StoreError> {
        self.submit_keys
            .insert(key.as_bytes(), original.as_bytes().as_slice())
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// The job a client's idempotency `key` named, if any.
    pub fn submit_key(&self, key: &str) -> Option<JobId> {
        let bytes = self.submit_keys.get(key.as_bytes()).ok()??;
        let id: [u8; 32] = bytes.as_ref().try_into().ok()?;
        Some(JobId::from_bytes(id))
    }

    /// Every submitted job: (id the user knows, record).
    pub fn submitted(&self) -> Vec<(JobId, SubmittedRecord)> {
        self.by_job(&self.submitted, "submitted job")
    }

    // ------------------------------------------------------------ work

    /// Records work accepted as a worker.
    pub fn put_work(&self, job: &JobId, record: &WorkRecord) -> Result<(), StoreError> {
        self.put(&self.work, "work", job.as_bytes(), record)
    }

    /// Forgets finished work.
    pub fn remove_work(&self, job: &JobId) -> Result<(), StoreError> {
        self.remove(&self.work, job.as_bytes())
    }

    /// Every piece of work this node holds.
    pub fn work(&self) -> Vec<(JobId, WorkRecord)> {
        self.by_job(&self.work, "work")
    }

    // ------------------------------------------------------------ vehicle

    /// Stores the car's departure history (the vehicle room's record, postcard-encoded): what departure
    /// prediction learns from, so it survives restarts.
    pub fn put_departures<T: Serialize>(&self, history: &T) -> Result<(), StoreError> {
        self.put(&self.vehicle, "departure history", b"departures", history)
    }

    /// The stored departure history, if any (and if it decodes as a `T`).
    pub fn departures<T: DeserializeOwned>(&self) -> Option<T> {
        let bytes = self.vehicle.get(b"departures").ok()??;
        match postcard::from_bytes(&bytes) {
            Ok(history) => Some(history),
            Err(e) => {
                warn!(store = %self.path, error = %e, "skipping a departure history that does not decode");
                None
            }
        }
    }

    // ------------------------------------------------------------ receipts

    /// Stores a receipt under (job, worker). A replay changes nothing; of two different receipts for the
    /// same pair the one with the smaller canonical encoding is kept (the ledger's rule), so the store
    /// ends the same whatever the arrival order. Returns whether the stored receipt changed.
    pub fn put_receipt(&self, receipt: &Signed<Receipt>) -> Result<bool, StoreError> {
        let claim = &receipt.body.claim.body;
        self.keep_smaller(
            &self.receipts,
            receipt_key(&claim.job, &claim.worker),
            codec::encode(receipt),
        )
    }

    /// Stores `bytes` under `key` unless what is there is no larger (the ledger's rule for two messages
    /// naming one receipt); returns whether the stored value changed.
    fn keep_smaller(&self, tree: &sled::Tree, key: [u8; 64], bytes: Vec<u8>) -> Result<bool, StoreError> {
        let mut changed = false;
        tree.fetch_and_update(key, |old| match old {
            Some(old) if old <= bytes.as_slice() => Some(old.to_vec()),
            _ => {
                changed = true;
                Some(bytes.clone())
            }
        })
        .map(|_| changed)
        .map_err(|e| self.err(e))
    }

    /// Every stored receipt, each decoded and its signatures checked again.
    pub fn receipts(&self) -> Vec<Signed<Receipt>> {
        self.decoded(&self.receipts, |r: &Signed<Receipt>| r.verify().is_ok())
    }

    /// Stores a revocation under the (job, worker) of the receipt it revokes, by the receipts' rule: of
    /// two different ones the smaller canonical encoding is kept. Returns whether the stored one changed.
    pub fn put_revocation(&self, revocation: &Signed<Revocation>) -> Result<bool, StoreError> {
        let key = receipt_key(&revocation.body.job, &revocation.body.worker);
        self.keep_smaller(&self.revocations, key, codec::encode(revocation))
    }

    /// Every stored revocation, each decoded and its signature checked again.
    pub fn revocations(&self) -> Vec<Signed<Revocation>> {
        self.decoded(&self.revocations, |r: &Signed<Revocation>| r.verify().is_ok())
    }

    /// Notes that `receipt` still has to reach its worker.
    pub fn put_undelivered(&self, receipt: &Signed<Receipt>) -> Result<(), StoreError> {
        let claim = &receipt.body.claim.body;
        self.undelivered
            .insert(receipt_key(&claim.job, &claim.worker), &[])
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Notes that the receipt of (`job`, `worker`) reached its worker (or never will).
    pub fn remove_undelivered(&self, job: &JobId, worker: &NodeId) -> Result<(), StoreError> {
        self.remove(&self.undelivered, &receipt_key(job, worker))
    }

    /// The (job, worker) of every receipt not acknowledged by its worker yet.
    pub fn undelivered(&self) -> Vec<(JobId, NodeId)> {
        self.undelivered
            .iter()
            .keys()
            .filter_map(Result::ok)
            .filter_map(|k| {
                let job = JobId::from_bytes(k.get(..32)?.try_into().ok()?);
                let worker = NodeId::from_public_key_bytes(k.get(32..64)?.try_into().ok()?).ok()?;
                Some((job, worker))
            })
            .collect()
    }

    // ------------------------------------------------------------ sealed epochs

    /// Stores a sealed epoch: its receipts in leaf order, then its root (so a stored root always has all
    /// its leaves), then how far sealing has come. An epoch is sealed once and never changes.
    pub fn put_sealed(&self, root: &Signed<EpochRoot>, leaves: &[Signed<Receipt>]) -> Result<(), StoreError> {
        let start = root.body.start_ms.to_be_bytes();
        for (i, r) in leaves.iter().enumerate() {
            let key = [start.as_slice(), &(i as u32).to_be_bytes()].concat();
            self.leaves
                .insert(key, codec::encode(r))
                .map_err(|e| self.err(e))?;
        }
        self.roots
            .insert(start, codec::encode(root))
            .map_err(|e| self.err(e))?;
        self.put_sealed_to(root.body.end_ms)
    }

    /// Records that every epoch ending by `end_ms` is sealed (epochs without receipts have no root).
    pub fn put_sealed_to(&self, end_ms: u64) -> Result<(), StoreError> {
        self.roots
            .insert(SEALED_TO, &end_ms.to_be_bytes())
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// The end of the last epoch sealed, if any was.
    pub fn sealed_to(&self) -> Option<u64> {
        let bytes = self.roots.get(SEALED_TO).ok()??;
        Some(u64::from_be_bytes(bytes.as_ref().try_into().ok()?))
    }

    /// The root of the first sealed epoch that starts at or after `after_ms`.
    pub fn root_after(&self, after_ms: u64) -> Option<Signed<EpochRoot>> {
        self.roots
            .range(after_ms.to_be_bytes()..)
            .filter_map(Result::ok)
            .find(|(k, _)| k.len() == 8)
            .and_then(|(_, v)| codec::decode(&v).ok())
    }

    /// Every sealed root whose epoch ends after `since_ms`.
    pub fn roots_since(&self, since_ms: u64) -> Vec<Signed<EpochRoot>> {
        self.roots
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| k.len() == 8)
            .filter_map(|(_, v)| codec::decode::<Signed<EpochRoot>>(&v).ok())
            .filter(|r| r.body.end_ms > since_ms)
            .collect()
    }

    /// The receipts of the sealed epoch starting at `start_ms`, in leaf order.
    pub fn sealed_leaves(&self, start_ms: u64) -> Vec<Signed<Receipt>> {
        self.leaves
            .scan_prefix(start_ms.to_be_bytes())
            .filter_map(Result::ok)
            .filter_map(|(_, v)| codec::decode(&v).ok())
            .collect()
    }

    // ------------------------------------------------------------ revisions

    /// Records the revised verdict of the submitted job its user knows as `original`.
    pub fn put_revision(&self, original: &JobId, record: &RevisionRecord) -> Result<(), StoreError> {
        self.put(&self.revisions, "revision", original.as_bytes(), record)
    }

    /// The revised verdict of `original`, if it was revised.
    pub fn revision(&self, original: &JobId) -> Option<RevisionRecord> {
        let bytes = self.revisions.get(original.as_bytes()).ok()??;
        postcard::from_bytes(&bytes).ok()
    }

    /// Every revised verdict, by the id its user knows.
    pub fn revisions(&self) -> Vec<(JobId, RevisionRecord)> {
        self.by_job(&self.revisions, "revision")
    }

    /// Records that the submitted job `job` rechecks another (until it is decided).
    pub fn put_recheck(&self, job: &JobId, recheck: &Recheck) -> Result<(), StoreError> {
        self.put(&self.rechecks, "recheck", job.as_bytes(), recheck)
    }

    /// Every undecided recheck, by its job.
    pub fn rechecks(&self) -> Vec<(JobId, Recheck)> {
        self.by_job(&self.rechecks, "recheck")
    }

    /// Forgets a recheck (decided).
    pub fn remove_recheck(&self, job: &JobId) -> Result<(), StoreError> {
        self.remove(&self.rechecks, job.as_bytes())
    }

    // ------------------------------------------------------------ models

    /// Stores a model manifest (keyed by its id).
    pub fn put_manifest(&self, manifest: &ModelManifest) -> Result<(), StoreError> {
        self.manifests
            .insert(manifest.id().as_bytes(), codec::encode(manifest))
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Forgets a stored manifest.
    pub fn remove_manifest(&self, id: &ModelId) -> Result<(), StoreError> {
        self.remove(&self.manifests, id.as_bytes())
    }

    /// The manifest with this id, if stored.
    pub fn manifest(&self, id: &ModelId) -> Option<ModelManifest> {
        let bytes = self.manifests.get(id.as_bytes()).ok()??;
        codec::decode::<ModelManifest>(&bytes)
            .ok()
            .filter(|m| m.id() == *id)
    }

    /// Every stored manifest.
    pub fn manifests(&self) -> Vec<ModelManifest> {
        self.decoded(&self.manifests, |_: &ModelManifest| true)
    }

    /// Stores a verified chunk.
    pub fn put_chunk(&self, id: &ChunkId, bytes: &[u8]) -> Result<(), StoreError> {
        self.chunks
            .insert(id.as_bytes(), bytes)
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// A stored chunk, if it is there and still matches its id.
    pub fn chunk(&self, id: &ChunkId) -> Option<Vec<u8>> {
        let bytes = self.chunks.get(id.as_bytes()).ok()??;
        (ChunkId::of(&bytes) == *id).then(|| bytes.to_vec())
    }

    /// Forgets a chunk.
    pub fn remove_chunk(&self, id: &ChunkId) -> Result<(), StoreError> {
        self.remove(&self.chunks, id.as_bytes())
    }

    fn decoded<T: Message>(&self, tree: &sled::Tree, keep: impl Fn(&T) -> bool) -> Vec<T> {
        let mut out = Vec::new();
        for entry in tree.iter() {
            match entry.map(|(_, v)| codec::decode::<T>(&v)) {
                Ok(Ok(msg)) if keep(&msg) => out.push(msg),
                Ok(_) => {
                    warn!(store = %self.path, kind = ?T::KIND, "skipping a stored message that no longer checks")
                }
                Err(e) => warn!(store = %self.path, error = %e, "cannot read the store"),
            }
        }
        out
    }
}

fn receipt_key(job: &JobId, worker: &NodeId) -> [u8; 64] {
    let mut key = [0u8; 64];
    key[..32].copy_from_slice(job.as_bytes());
    key[32..].copy_from_slice(worker.as_bytes());
    key
}
