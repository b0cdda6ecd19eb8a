//! P2P model distribution: a node that lacks the model of a job fetches it from peers.
//!
//! A model is its content-addressed [`ModelManifest`] (the [`ModelId`] is the manifest's hash) plus the
//! weights the manifest's chunk list covers. Nodes announce the models they can serve as Kademlia
//! providers (key: the model id). A fetcher looks the providers up (and also asks the job's submitter,
//! which runs the model), takes the manifest from whichever provider answers with one that hashes to the
//! id, then fetches the missing chunks from several providers in parallel. Every chunk is checked against
//! its blake3 in the manifest: a corrupted chunk is refused, its provider is dropped for this fetch, and the
//! chunk is fetched from another. Verified chunks go straight to sled, so a fetch cut short (even by
//! `kill -9`) resumes with what it already has; a complete model is rebuilt from the store at start.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetmesh_protocol::codec::{self, Kind};
use fleetmesh_protocol::messages::{Chunk, ChunkRequest, ManifestRequest, ModelManifest, Reply};
use fleetmesh_protocol::{ChunkId, ModelId};
use futures::StreamExt;
use libp2p::PeerId;
use tracing::{debug, info, warn};

use crate::adversary::ServeBehaviour;
use crate::inference::executor::Executor;
use crate::inference::{self, FETCHABLE_ARCHITECTURES, InferenceError, Model, WeightsSource};
use crate::net::NetClient;
use crate::store::{Store, StoreError};

/// Settings of model distribution.
#[derive(Debug, Clone)]
pub struct ShareConfig {
    /// Chunk requests in flight at once during a fetch.
    pub parallel: usize,
    /// Largest model (weights bytes) this node downloads.
    pub max_download_bytes: u64,
    /// How this node serves chunks.
    pub behaviour: ServeBehaviour,
    /// After a failed fetch, how long before the same model is tried again.
    pub retry_after: Duration,
}

impl Default for ShareConfig {
    fn default() -> Self {
        Self {
            parallel: 4,
            max_download_bytes: 512 * 1024 * 1024,
            behaviour: ServeBehaviour::Honest,
            retry_after: Duration::from_secs(30),
        }
    }
}

/// Why a model could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Nobody announced the model and no hinted peer has it.
    #[error("no peer provides model {0}")]
    NoProviders(String),
    /// No provider answered with a manifest that hashes to the model id.
    #[error("no provider gave a valid manifest for model {0}")]
    NoManifest(String),
    /// This node cannot build the model's architecture from its weights.
    #[error("model {model}: architecture {architecture} cannot be built from fetched weights")]
    Unsupported {
        /// The model.
        model: String,
        /// Its architecture.
        architecture: String,
    },
    /// The model is larger than this node downloads.
    #[error("model {model} has {bytes} bytes of weights, over the {limit}-byte download limit")]
    TooLarge {
        /// The model.
        model: String,
        /// Its size.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// Every provider failed or served a corrupted copy of a chunk.
    #[error("chunk {index} of model {model}: no provider served a valid copy")]
    ChunkUnavailable {
        /// The model.
        model: String,
        /// The chunk's position.
        index: usize,
    },
    /// The assembled weights do not match the manifest, or do not build the model.
    #[error(transparent)]
    Build(#[from] InferenceError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a completed fetch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchReport {
    /// Chunks downloaded now.
    pub fetched: usize,
    /// Chunks already in the store (an earlier, interrupted fetch).
    pub reused: usize,
    /// Chunks refused because their hash did not match.
    pub corrupt_refused: usize,
    /// Providers asked.
    pub providers: usize,
    /// Providers that served at least one of the chunks fetched now.
    pub served_by: usize,
}

enum Source {
    Weights(WeightsSource),
    Store,
}

struct Served {
    manifest: ModelManifest,
    source: Source,
}

struct Inner {
    net: NetClient,
    store: Store,
    executor: Executor,
    cfg: ShareConfig,
    served: Mutex<HashMap<ModelId, Arc<Served>>>,
    /// Fetches in progress (with what to run when each ends well), and when recent ones failed.
    fetching: Mutex<HashMap<ModelId, Fetching>>,
    /// The link's limit on a model's size (the owner's limit on a metered link), besides the config's.
    link_limit: std::sync::atomic::AtomicU64,
}

/// What runs once a wanted model is installed.
type Then = Box<dyn FnOnce() + Send>;

enum Fetching {
    /// Under way, for this submitter (the hinted peer), with what runs once it is installed.
    Running(Option<PeerId>, Vec<Then>),
    /// Failed for a reason that may pass (no provider answered, a chunk was unavailable): tried again
    /// after `retry_after`.
    Failed(Instant),
    /// Its weights did not build, its architecture cannot be built from weights, or it is too large:
    /// never fetched again while this node runs (its chunks are deleted).
    Refused,
}

/// Whether a failed fetch means the model is never tried again while the node runs: its weights did not
/// build, its architecture cannot be built from weights, or it is larger than the node ever downloads
/// (`max_download_bytes`; a metered link's lower limit passes, so that failure is retried).
fn refused_for_good(e: &FetchError, max_download_bytes: u64) -> bool {
    match e {
        FetchError::Build(_) | FetchError::Unsupported { .. } => true,
        FetchError::TooLarge { bytes, .. } => *bytes > max_download_bytes,
        _ => false,
    }
}

/// Fetches one node runs at once (offers for more unknown models are not bid on meanwhile); at most one
/// of them for any one submitter, so a submitter naming many unknown models cannot hold every slot.
pub const MAX_CONCURRENT_FETCHES: usize = 2;
/// Models whose fetch state a node remembers (running, failed lately, refused); when full, failures
/// past their retry time are forgotten, and if none is, no new fetch starts.
pub const MAX_TRACKED_FETCHES: usize = 1_024;
/// Offers waiting on one running fetch (more are not bid on).
const MAX_WAITING: usize = 256;

/// Model distribution for one node (cheap to clone).
#[derive(Clone)]
pub struct Share {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn refuse(why: &str) -> Vec<u8> {
    codec::encode(&Reply::refused(why))
}

impl Share {
    /// Model distribution over `net`, storing fetched models in `store` and installing them in the
    /// `executor`'s registry.
    pub fn new(net: NetClient, store: Store, executor: Executor, cfg: ShareConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                net,
                store,
                executor,
                cfg,
                served: Mutex::new(HashMap::new()),
                fetching: Mutex::new(HashMap::new()),
                link_limit: std::sync::atomic::AtomicU64::new(u64::MAX),
            }),
        }
    }

    /// Sets the largest model the current link allows downloading (the car's owner limits a metered link);
    /// `u64::MAX` for none. Models already here are not affected.
    pub fn set_link_limit(&self, bytes: u64) {
        self.inner
            .link_limit
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// The largest model the current link allows downloading (`u64::MAX`: no limit).
    pub fn link_limit(&self) -> u64 {
        self.inner.link_limit.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Installs the models fetched in earlier runs (complete in the store), and announces every model this
    /// node can serve.
    pub async fn start(&self) {
        // Reading the stored chunks back and building models is disk and CPU work: off the async threads.
        let this = self.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || this.install_stored()).await {
            warn!(error = %e, "cannot install the models fetched earlier");
        }
        for model in self.inner.executor.registry().models() {
            self.serve(model.as_ref()).await;
        }
    }

    /// Installs the complete models the store holds from earlier runs; deletes those that cannot be used.
    fn install_stored(&self) {
        let registry = self.inner.executor.registry();
        for manifest in self.inner.store.manifests() {
            let id = manifest.id();
            if registry.get(&id).is_some() {
                continue;
            }
            match self.assemble(&manifest) {
                Ok(Some(weights)) => match inference::build(&manifest, &weights) {
                    Ok(model) => {
                        info!(model = %manifest.name, id = %id.short(), "installed a model fetched earlier");
                        registry.insert(model);
                    }
                    Err(e) => {
                        warn!(model = %manifest.name, error = %e, "a stored model does not build; deleted");
                        self.discard(&id);
                    }
                },
                Ok(None) => debug!(model = %manifest.name, "partly fetched model; resumes when needed"),
                Err(e) => {
                    warn!(model = %manifest.name, error = %e, "a stored model does not match its manifest; deleted");
                    self.discard(&id);
                }
            }
        }
    }

    /// Deletes a model's stored manifest and chunks (those no other stored or served model lists): what a
    /// fetch that cannot end in a working model leaves behind does not stay on disk.
    fn discard(&self, model: &ModelId) {
        let Some(manifest) = self.inner.store.manifest(model) else {
            return;
        };
        let mut kept: HashSet<ChunkId> = lock(&self.inner.served)
            .values()
            .flat_map(|s| s.manifest.chunks.iter().copied())
            .collect();
        kept.extend(
            self.inner
                .store
                .manifests()
                .iter()
                .filter(|m| m.id() != *model)
                .flat_map(|m| m.chunks.iter().copied()),
        );
        let mut removed = 0usize;
        for chunk in manifest.chunks.iter().filter(|c| !kept.contains(c)) {
            removed += usize::from(self.inner.store.remove_chunk(chunk).is_ok());
        }
        if let Err(e) = self.inner.store.remove_manifest(model) {
            warn!(model = %model.short(), error = %e, "cannot delete a failed model's manifest");
        }
        info!(model = %manifest.name, id = %model.short(), chunks = removed, "deleted a model that cannot be used");
    }

    /// Serves `model` to peers, if its weights can be read back and peers could build it.
    async fn serve(&self, model: &dyn Model) {
        let manifest = model.manifest().clone();
        if !FETCHABLE_ARCHITECTURES.contains(&manifest.architecture.as_str()) {
            return;
        }
        let id = model.id();
        let source = match model.weights_source() {
            Some(source) => Source::Weights(source),
            None => {
                let stored = self
                    .inner
                    .store
                    .off_thread(move |s| Ok(s.manifest(&id).is_some()))
                    .await;
                if !matches!(stored, Ok(true)) {
                    return;
                }
                Source::Store
            }
        };
        lock(&self.inner.served).insert(id, Arc::new(Served { manifest, source }));
        if let Err(e) = self.inner.net.provide(id.as_bytes().to_vec()).await {
            debug!(error = %e, "cannot announce a model");
        }
    }

    /// The weights of a stored manifest, if every chunk is in the store (checked against the manifest).
    fn assemble(&self, manifest: &ModelManifest) -> Result<Option<Vec<u8>>, FetchError> {
        let mut weights = Vec::with_capacity(manifest.weights_len as usize);
        for id in &manifest.chunks {
            match self.inner.store.chunk(id) {
                Some(bytes) => weights.extend_from_slice(&bytes),
                None => return Ok(None),
            }
        }
        let hash = blake3::hash(&weights);
        if weights.len() as u64 != manifest.weights_len || hash.as_bytes() != &manifest.weights_hash {
            return Err(InferenceError::WeightsMismatch {
                model: manifest.name.clone(),
                expected: hex::encode(manifest.weights_hash),
                got: hash.to_hex().to_string(),
            }
            .into());
        }
        Ok(Some(weights))
    }

    // ---------------------------------------------------------------- serving

    /// Answers a [`ManifestRequest`] or [`ChunkRequest`].
    pub fn on_request(&self, data: &[u8]) -> Vec<u8> {
        match codec::peek_kind(data) {
            Ok((Kind::ManifestRequest, false)) => match codec::decode::<ManifestRequest>(data) {
                Ok(req) => match lock(&self.inner.served).get(&req.model) {
                    Some(served) => codec::encode(&served.manifest),
                    None => refuse("model not served here"),
                },
                Err(_) => refuse("malformed manifest request"),
            },
            Ok((Kind::ChunkRequest, false)) => match codec::decode::<ChunkRequest>(data) {
                Ok(req) => self.chunk_answer(&req),
                Err(_) => refuse("malformed chunk request"),
            },
            _ => refuse("expected a manifest or chunk request"),
        }
    }

    fn chunk_answer(&self, req: &ChunkRequest) -> Vec<u8> {
        let Some(served) = lock(&self.inner.served).get(&req.model).cloned() else {
            return refuse("model not served here");
        };
        let m = &served.manifest;
        let index = req.index as usize;
        let Some(id) = m.chunks.get(index) else {
            return refuse("no such chunk");
        };
        let offset = index as u64 * u64::from(m.chunk_size);
        let len = (m.weights_len - offset).min(u64::from(m.chunk_size)) as usize;
        let data = match &served.source {
            Source::Weights(WeightsSource::Memory(bytes)) => bytes
                .get(offset as usize..offset as usize + len)
                .map(<[u8]>::to_vec),
            Source::Weights(WeightsSource::File(path)) => read_range(path, offset, len).ok(),
            Source::Store => self.inner.store.chunk(id),
        };
        let Some(mut data) = data else {
            return refuse("chunk unavailable");
        };
        self.inner.cfg.behaviour.tamper(&mut data);
        codec::encode(&Chunk {
            model: req.model,
            index: req.index,
            data,
        })
    }

    // ---------------------------------------------------------------- fetching

    /// Starts fetching `model` in the background unless it is installed, failed recently, or
    /// [`MAX_CONCURRENT_FETCHES`] other fetches run; `then` runs once it is installed (also when a fetch of
    /// it was already running). `hint` is a peer known to run the model (a job's submitter).
    pub fn want(&self, model: ModelId, hint: Option<PeerId>, then: impl FnOnce() + Send + 'static) {
        if self.inner.executor.registry().get(&model).is_some() {
            return;
        }
        {
            let mut fetching = lock(&self.inner.fetching);
            match fetching.get_mut(&model) {
                Some(Fetching::Running(_, waiting)) => {
                    if waiting.len() < MAX_WAITING {
                        waiting.push(Box::new(then));
                    }
                    return;
                }
                Some(Fetching::Failed(at)) if at.elapsed() < self.inner.cfg.retry_after => return,
                Some(Fetching::Refused) => return,
                _ => {}
            }
            let running: Vec<Option<PeerId>> = fetching
                .values()
                .filter_map(|f| match f {
                    Fetching::Running(for_peer, _) => Some(*for_peer),
                    _ => None,
                })
                .collect();
            if running.len() >= MAX_CONCURRENT_FETCHES || (hint.is_some() && running.contains(&hint)) {
                debug!(model = %model.short(), "fetch limit reached; not fetching now");
                return;
            }
            if fetching.len() >= MAX_TRACKED_FETCHES {
                let retry = self.inner.cfg.retry_after;
                fetching.retain(|_, f| !matches!(f, Fetching::Failed(at) if at.elapsed() >= retry));
                if fetching.len() >= MAX_TRACKED_FETCHES {
                    debug!(model = %model.short(), "too many models tracked; not fetching now");
                    return;
                }
            }
            fetching.insert(model, Fetching::Running(hint, vec![Box::new(then)]));
        }
        let this = self.clone();
        tokio::spawn(async move {
            let result = this.fetch(model, hint).await;
            let waiting = {
                let mut fetching = lock(&this.inner.fetching);
                let waiting = match fetching.remove(&model) {
                    Some(Fetching::Running(_, waiting)) => waiting,
                    _ => Vec::new(),
                };
                let max = this.inner.cfg.max_download_bytes;
                match &result {
                    Err(e) if refused_for_good(e, max) => {
                        warn!(model = %model.short(), error = %e, "model fetch failed; not fetched again");
                        fetching.insert(model, Fetching::Refused);
                    }
                    Err(e) => {
                        warn!(model = %model.short(), error = %e, "model fetch failed");
                        fetching.insert(model, Fetching::Failed(Instant::now()));
                    }
                    Ok(_) => {}
                }
                waiting
            };
            let max = this.inner.cfg.max_download_bytes;
            if result.as_ref().is_err_and(|e| refused_for_good(e, max)) {
                let discarding = this.clone();
                let _ = tokio::task::spawn_blocking(move || discarding.discard(&model)).await;
            }
            if result.is_ok() {
                for then in waiting {
                    then();
                }
            }
        });
    }

    /// Fetches `model` from its providers (and `hint`), installs it, and serves it from now on.
    pub async fn fetch(&self, model: ModelId, hint: Option<PeerId>) -> Result<FetchReport, FetchError> {
        let net = &self.inner.net;
        let mut providers = net
            .get_providers(model.as_bytes().to_vec())
            .await
            .unwrap_or_default();
        if let Some(h) = hint
            && h != net.peer_id()
            && !providers.contains(&h)
        {
            providers.push(h);
        }
        if providers.is_empty() {
            return Err(FetchError::NoProviders(model.to_string()));
        }
        let manifest = match self.inner.store.manifest(&model) {
            Some(m) => m,
            None => self.fetch_manifest(model, &providers).await?,
        };
        let name = manifest.name.clone();
        if !FETCHABLE_ARCHITECTURES.contains(&manifest.architecture.as_str()) {
            return Err(FetchError::Unsupported {
                model: name,
                architecture: manifest.architecture.clone(),
            });
        }
        let limit = self
            .inner
            .cfg
            .max_download_bytes
            .min(self.inner.link_limit.load(std::sync::atomic::Ordering::Relaxed));
        if manifest.weights_len > limit {
            return Err(FetchError::TooLarge {
                model: name,
                bytes: manifest.weights_len,
                limit,
            });
        }
        let chunks = manifest.chunks.clone();
        let stored = manifest.clone();
        let missing: Vec<usize> = self
            .inner
            .store
            .off_thread(move |s| {
                s.put_manifest(&stored)?;
                Ok((0..chunks.len())
                    .filter(|i| s.chunk(&chunks[*i]).is_none())
                    .collect())
            })
            .await?;
        let mut report = FetchReport {
            reused: manifest.chunks.len() - missing.len(),
            providers: providers.len(),
            ..FetchReport::default()
        };
        info!(model = %name, id = %model.short(), chunks = manifest.chunks.len(), have = report.reused,
              providers = providers.len(), "fetching model from peers");
        let progress = progress_bar(&name, manifest.chunks.len(), report.reused);
        let bad: Mutex<HashSet<PeerId>> = Mutex::new(HashSet::new());
        let corrupt = std::sync::atomic::AtomicUsize::new(0);
        let mut results = futures::stream::iter(missing)
            .map(|index| self.fetch_chunk(&manifest, index, &providers, &bad, &corrupt))
            .buffer_unordered(self.inner.cfg.parallel.max(1));
        let mut first_error = None;
        let mut served_by = HashSet::new();
        while let Some(result) = results.next().await {
            match result {
                Ok(peer) => {
                    report.fetched += 1;
                    served_by.insert(peer);
                    progress.inc(1);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        drop(results);
        report.served_by = served_by.len();
        progress.finish_and_clear();
        report.corrupt_refused = corrupt.into_inner();
        if let Some(e) = first_error {
            return Err(e);
        }
        self.inner.store.flush().await?;
        // Reading the chunks back and building the model: off the async worker threads.
        let built = {
            let (this, manifest) = (self.clone(), manifest.clone());
            tokio::task::spawn_blocking(move || {
                let weights = this
                    .assemble(&manifest)?
                    .ok_or_else(|| FetchError::ChunkUnavailable {
                        model: manifest.name.clone(),
                        index: 0,
                    })?;
                Ok::<_, FetchError>(inference::build(&manifest, &weights)?)
            })
            .await
            .map_err(|e| InferenceError::Weights {
                model: name.clone(),
                reason: e.to_string(),
            })??
        };
        self.inner.executor.registry().insert(built.clone());
        self.serve(built.as_ref()).await;
        info!(model = %name, id = %model.short(), fetched = report.fetched, reused = report.reused,
              corrupt_refused = report.corrupt_refused, "model installed");
        Ok(report)
    }

    async fn fetch_manifest(
        &self,
        model: ModelId,
        providers: &[PeerId],
    ) -> Result<ModelManifest, FetchError> {
        let request = codec::encode(&ManifestRequest { model });
        for peer in providers {
            match self.inner.net.request(*peer, request.clone()).await {
                Ok(bytes) => match codec::decode::<ModelManifest>(&bytes) {
                    Ok(m) if m.id() == model => return Ok(m),
                    Ok(_) => {
                        warn!(%peer, model = %model.short(), "provider sent a manifest for another model")
                    }
                    Err(_) => debug!(%peer, model = %model.short(), "provider has no manifest"),
                },
                Err(e) => debug!(%peer, error = %e, "manifest request failed"),
            }
        }
        Err(FetchError::NoManifest(model.to_string()))
    }

    /// Fetches chunk `index`, starting with a provider chosen by the index (spreading chunks over the
    /// providers) and moving on to the next on failure or corruption; returns the provider that served it.
    async fn fetch_chunk(
        &self,
        manifest: &ModelManifest,
        index: usize,
        providers: &[PeerId],
        bad: &Mutex<HashSet<PeerId>>,
        corrupt: &std::sync::atomic::AtomicUsize,
    ) -> Result<PeerId, FetchError> {
        let model = manifest.id();
        let want: ChunkId = manifest.chunks[index];
        let request = codec::encode(&ChunkRequest {
            model,
            index: index as u32,
        });
        for attempt in 0..providers.len() {
            let peer = providers[(index + attempt) % providers.len()];
            if lock(bad).contains(&peer) {
                continue;
            }
            let answer = match self.inner.net.request(peer, request.clone()).await {
                Ok(bytes) => bytes,
                Err(e) => {
                    debug!(%peer, index, error = %e, "chunk request failed");
                    continue;
                }
            };
            match codec::decode::<Chunk>(&answer) {
                Ok(c) if c.model == model && c.index as usize == index && ChunkId::of(&c.data) == want => {
                    self.inner
                        .store
                        .off_thread(move |s| s.put_chunk(&want, &c.data))
                        .await?;
                    return Ok(peer);
                }
                Ok(_) => {
                    warn!(%peer, model = %manifest.name, index, "refused a corrupted chunk; dropping this provider");
                    corrupt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    lock(bad).insert(peer);
                }
                Err(_) => debug!(%peer, index, "provider did not send the chunk"),
            }
        }
        Err(FetchError::ChunkUnavailable {
            model: manifest.name.clone(),
            index,
        })
    }
}

fn read_range(path: &std::path::Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; len];
    file.read_exact(&mut buf)?;
    Ok(buf)
}

/// A progress bar on a terminal's stderr (indicatif draws nothing when stderr is not a terminal; logs
/// say when a fetch starts and ends).
fn progress_bar(name: &str, total: usize, done: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total as u64).with_position(done as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "fetching {prefix} [{bar:30}] {pos}/{len} chunks ({eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("#>-"),
    );
    bar.set_prefix(name.to_string());
    bar
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Share({} models served)", lock(&self.inner.served).len())
    }
}
