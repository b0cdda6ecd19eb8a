//! The inference engine: real models on burn's `flex` CPU backend, a registry keyed by [`ModelId`], and an
//! executor on dedicated worker threads ([`executor`]).
//!
//! Every model takes and returns bytes in the layout its manifest declares (inputs are validated before
//! any tensor is built), so the same bytes travel in job offers and come back in result reveals.

pub mod bert;
pub mod bundle;
pub mod cnn;
pub mod digits;
pub mod executor;
pub mod generation;
pub mod gguf;
pub mod llama;
pub mod minilm;
pub mod mnist;
pub mod smollm2;

use std::collections::BTreeMap;
use std::sync::Arc;

use fleetmesh_protocol::messages::{AgreementRule, ModelManifest, NumericClass, TensorSpec};
use fleetmesh_protocol::{ChunkId, ModelId};

/// Chunk size of model weights for P2P distribution.
pub const CHUNK_SIZE: u32 = 256 * 1024;

/// Why inference could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InferenceError {
    /// No model with that name or id is installed.
    #[error("unknown model {0}")]
    UnknownModel(String),
    /// The input does not have the model's input length.
    #[error("{model}: input has {got} bytes, expected {expected}")]
    WrongInputLength {
        /// The model.
        model: String,
        /// Bytes expected.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// An input value is outside the model's range (NaN, infinity, or above the maximum pixel value).
    #[error("{model}: input value {value} at index {index} is out of range")]
    OutOfRange {
        /// The model.
        model: String,
        /// Position of the value.
        index: usize,
        /// The value, as text.
        value: String,
    },
    /// More inputs than the executor accepts in one job.
    #[error("job of {got} inputs exceeds the limit of {max}")]
    Oversize {
        /// Inputs given.
        got: usize,
        /// Most accepted.
        max: usize,
    },
    /// The weights do not hash to the value the manifest pins.
    #[error("{model}: weights hash {got} does not match the manifest's {expected}")]
    WeightsMismatch {
        /// The model.
        model: String,
        /// blake3 the manifest pins.
        expected: String,
        /// blake3 of the weights found.
        got: String,
    },
    /// The weights file could not be read or applied to the model.
    #[error("{model}: cannot load weights: {reason}")]
    Weights {
        /// The model.
        model: String,
        /// What went wrong.
        reason: String,
    },
    /// The job was cancelled (preemption) before it finished.
    #[error("cancelled")]
    Cancelled,
    /// The executor has shut down.
    #[error("the inference executor has stopped")]
    Stopped,
}

/// A model the engine can run.
pub trait Model: Send + Sync {
    /// The model's content-addressed description.
    fn manifest(&self) -> &ModelManifest;

    /// The model's id (hash of the manifest).
    fn id(&self) -> ModelId;

    /// Checks one input; inputs that pass never make [`Model::run_batch`] fail.
    fn check_input(&self, input: &[u8]) -> Result<(), InferenceError>;

    /// Runs a batch of checked inputs, returning one output per input, in order.
    fn run_batch(&self, inputs: &[&[u8]]) -> Result<Vec<Vec<u8>>, InferenceError>;

    /// [`Model::run_batch`] for a model whose batch may run long (text generation): it polls `stop` as it
    /// goes and returns [`InferenceError::Cancelled`] soon after `stop` says so, and hands each input's
    /// output so far to `partial(index, bytes)` as it grows (in the output's layout). Others run to the end
    /// and report nothing partial.
    fn run_batch_until(
        &self,
        inputs: &[&[u8]],
        _stop: &dyn Fn() -> bool,
        _partial: &dyn Fn(usize, &[u8]),
    ) -> Result<Vec<Vec<u8>>, InferenceError> {
        self.run_batch(inputs)
    }

    /// Whether [`Model::run_batch_until`] reports partial outputs (a worker then streams them to the
    /// job's submitter).
    fn streams(&self) -> bool {
        false
    }

    /// Where the weights can be read back to serve them to peers; `None` for a model that peers could
    /// not build from its weights alone.
    fn weights_source(&self) -> Option<WeightsSource> {
        None
    }

    /// The most units of work a job of this (checked) input may take, for pricing: 1 for a classifier or an
    /// embedding, the most new tokens for a generation. A submitter's offer rewards its price per unit
    /// times this.
    fn max_units(&self, _input: &[u8]) -> u64 {
        1
    }

    /// The units of work an output took (1, or the tokens generated): a worker claims its price per unit
    /// times this, never more than [`Model::max_units`] of the input.
    fn output_units(&self, _output: &[u8]) -> u64 {
        1
    }

    /// For a text-generation model: the job input that asks for `prompt`; `None` for a model that takes
    /// no prompt.
    fn prompt_input(&self, _prompt: &Prompt) -> Option<Result<Vec<u8>, InferenceError>> {
        None
    }

    /// A check of a claimed output cheaper than running the job again (a generation's teacher-forced
    /// check): `None` for a model that has none, or cannot run it here; `Some(Err(why))` when `output`
    /// is not one this model could have produced for the (checked) `input`. A submitter runs it on every
    /// revealed output of such a model and treats a refuted one as a lie.
    fn verify_output(&self, _input: &[u8], _output: &[u8]) -> Option<Result<(), String>> {
        None
    }

    /// Whether [`Model::verify_output`] has a check to run (a submitter skips the others at no cost).
    fn verifies_outputs(&self) -> bool {
        false
    }

    /// An output as text (a generation's text), for a model whose outputs read as text.
    fn output_text(&self, _output: &[u8]) -> Option<String> {
        None
    }
}

/// A text-generation request, as the API and the CLI take it.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    /// The user's message, or the text to continue with `raw`.
    pub text: String,
    /// Continue `text` as it is instead of answering it through the chat template.
    pub raw: bool,
    /// Most new tokens.
    pub max_tokens: u16,
    /// Sampling temperature; 0 picks the most likely token.
    pub temperature: f32,
    /// Candidates considered when sampling.
    pub top_k: u16,
    /// Seed of the sampling draws.
    pub seed: u64,
}

impl Prompt {
    /// A greedy chat request.
    pub fn chat(text: &str, max_tokens: u16) -> Self {
        Self {
            text: text.into(),
            raw: false,
            max_tokens,
            temperature: 0.0,
            top_k: 0,
            seed: 0,
        }
    }
}

/// Where a model's weights (the bytes its manifest's chunks cover) can be read.
#[derive(Debug, Clone)]
pub enum WeightsSource {
    /// In memory.
    Memory(Arc<[u8]>),
    /// In a file.
    File(std::path::PathBuf),
}

/// Architectures a node can build from weights fetched from peers.
pub const FETCHABLE_ARCHITECTURES: [&str; 4] = [
    "digits-cnn-v1",
    "mnist-cnn-v1",
    "llama-gguf-v1",
    minilm::ARCHITECTURE,
];

/// Builds the model a manifest describes from its weights (already checked against the manifest's hash),
/// and checks that the result is exactly the model the manifest names.
pub fn build(manifest: &ModelManifest, weights: &[u8]) -> Result<Arc<dyn Model>, InferenceError> {
    let model: Arc<dyn Model> = match manifest.architecture.as_str() {
        "digits-cnn-v1" => Arc::new(digits::Digits::from_weights_chunked(
            weights,
            manifest.chunk_size,
        )?),
        "mnist-cnn-v1" => Arc::new(mnist::MnistCnn::from_bytes(weights)?),
        "llama-gguf-v1" => Arc::new(smollm2::SmolLm2::from_bytes(weights)?),
        minilm::ARCHITECTURE => Arc::new(minilm::MiniLm::from_bundle(weights)?),
        other => {
            return Err(InferenceError::Weights {
                model: manifest.name.clone(),
                reason: format!("architecture {other} cannot be built from fetched weights"),
            });
        }
    };
    if model.id() != manifest.id() {
        return Err(InferenceError::Weights {
            model: manifest.name.clone(),
            reason: "the weights build a model other than the manifest describes".into(),
        });
    }
    Ok(model)
}

/// Builds the manifest of a model from its weights, distributed in chunks of `chunk_size` bytes: chunk
/// hashes, weights hash, specs and rule.
#[allow(clippy::too_many_arguments)]
pub fn manifest_for(
    name: &str,
    version: u32,
    architecture: &str,
    weights: &[u8],
    chunk_size: u32,
    input: TensorSpec,
    output: TensorSpec,
    rule: AgreementRule,
) -> ModelManifest {
    ModelManifest {
        name: name.into(),
        version,
        architecture: architecture.into(),
        weights_hash: *blake3::hash(weights).as_bytes(),
        weights_len: weights.len() as u64,
        chunk_size,
        chunks: weights.chunks(chunk_size as usize).map(ChunkId::of).collect(),
        input,
        output,
        rule,
    }
}

/// Checks that an input has exactly `expected` bytes.
pub(crate) fn check_len(model: &str, input: &[u8], expected: usize) -> Result<(), InferenceError> {
    if input.len() != expected {
        return Err(InferenceError::WrongInputLength {
            model: model.into(),
            expected,
            got: input.len(),
        });
    }
    Ok(())
}

/// Checks that `weights` are the ones `expected_blake3` pins.
pub fn check_weights(model: &str, weights: &[u8], expected_blake3: &str) -> Result<(), InferenceError> {
    let got = blake3::hash(weights).to_hex().to_string();
    if got != expected_blake3 {
        return Err(InferenceError::WeightsMismatch {
            model: model.into(),
            expected: expected_blake3.into(),
            got,
        });
    }
    Ok(())
}

/// The burn CPU backend inference runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// burn's `flex` CPU backend (default; fastest measured here).
    Flex,
    /// burn's NdArray backend (deprecated in burn 0.22; built with the `ndarray` feature, with BLAS when
    /// built with the `blas` feature).
    #[cfg(feature = "ndarray")]
    NdArray,
}

impl Backend {
    /// The backend chosen by `FLEETMESH_BURN_BACKEND` (`flex` or `ndarray`); flex when unset or unknown,
    /// and flex (with a warning) for `ndarray` in a build without the `ndarray` feature.
    pub fn from_env() -> Self {
        match std::env::var("FLEETMESH_BURN_BACKEND").as_deref() {
            #[cfg(feature = "ndarray")]
            Ok("ndarray") => Backend::NdArray,
            #[cfg(not(feature = "ndarray"))]
            Ok("ndarray") => {
                tracing::warn!(
                    "FLEETMESH_BURN_BACKEND=ndarray needs a build with `--features ndarray`; using flex"
                );
                Backend::Flex
            }
            _ => Backend::Flex,
        }
    }

    /// A device of this backend.
    #[allow(deprecated)]
    pub fn device(self) -> burn::tensor::Device {
        match self {
            Backend::Flex => burn::tensor::Device::flex(),
            #[cfg(feature = "ndarray")]
            Backend::NdArray => burn::tensor::Device::ndarray(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Backend::Flex => "burn-flex-0.22.1",
            #[cfg(feature = "ndarray")]
            Backend::NdArray => "burn-ndarray-0.22.1",
        }
    }
}

/// The numeric class of this node's engine: outputs compared exactly must come from one class.
///
/// What decides the bits: the code of the forward passes (`packed-v2`: every model runs [`cnn`] or
/// [`bert`], whose sums have a fixed order: K in fixed chunks of at most 512, so gemm never blocks K by the
/// L1 cache's geometry, and one fused multiply-add per term, equal to plain scalar code in tests) and the
/// vector extension gemm's kernels use (AVX-512 or AVX2, both with FMA; a CPU without FMA multiplies and
/// adds separately and gets other bits). The AVX-512 and AVX2 kernels should then agree, but only the
/// AVX-512 path has been run here, so they stay separate classes.
pub fn numeric_class() -> NumericClass {
    let arch = std::env::consts::ARCH;
    #[cfg(target_arch = "x86_64")]
    let simd = if std::arch::is_x86_feature_detected!("avx512f") {
        "avx512"
    } else if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        "avx2"
    } else {
        "sse2"
    };
    #[cfg(not(target_arch = "x86_64"))]
    let simd = "base";
    NumericClass {
        backend: Backend::from_env().name().into(),
        features: if cfg!(target_arch = "x86_64") {
            "gemm-0.19-x86v4+packed-v2"
        } else {
            "gemm-0.19+packed-v2"
        }
        .into(),
        arch: format!("{arch}-{simd}"),
    }
}

/// The installed models, by id and by name. Models fetched from peers are added while the node runs.
/// Cloning copies the current set (each node of an in-process fleet has its own).
#[derive(Default)]
pub struct Registry {
    by_id: std::sync::RwLock<BTreeMap<ModelId, Arc<dyn Model>>>,
}

impl Clone for Registry {
    fn clone(&self) -> Self {
        Self {
            by_id: std::sync::RwLock::new(self.read().clone()),
        }
    }
}

impl Registry {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<ModelId, Arc<dyn Model>>> {
        // The map is never left half-updated, so a poisoned lock still holds a valid map.
        self.by_id
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The registry with the embedded default model and any fetched models found in `assets`.
    pub fn with_defaults(assets: Option<&std::path::Path>) -> Result<Self, InferenceError> {
        let registry = Registry::default();
        registry.insert(Arc::new(digits::Digits::embedded()?));
        if let Some(dir) = assets {
            if let Some(mnist) = mnist::MnistCnn::from_assets(dir)? {
                registry.insert(Arc::new(mnist));
            }
            if let Some(minilm) = minilm::MiniLm::from_assets(dir)? {
                registry.insert(Arc::new(minilm));
            }
            if let Some(llm) = smollm2::SmolLm2::from_assets(dir)? {
                registry.insert(Arc::new(llm));
            }
        }
        Ok(registry)
    }

    /// A registry with only the model named `name` (the embedded one, or from `assets`), for a command
    /// that runs one model and should not pay for loading the others; `None` if it is not installed.
    pub fn with_one(name: &str, assets: &std::path::Path) -> Result<Option<Self>, InferenceError> {
        let model: Option<Arc<dyn Model>> = match name {
            digits::NAME => Some(Arc::new(digits::Digits::embedded()?)),
            mnist::NAME => mnist::MnistCnn::from_assets(assets)?.map(|m| Arc::new(m) as Arc<dyn Model>),
            minilm::NAME => minilm::MiniLm::from_assets(assets)?.map(|m| Arc::new(m) as Arc<dyn Model>),
            smollm2::NAME => smollm2::SmolLm2::from_assets(assets)?.map(|m| Arc::new(m) as Arc<dyn Model>),
            _ => None,
        };
        Ok(model.map(|m| {
            let registry = Registry::default();
            registry.insert(m);
            registry
        }))
    }

    /// Adds a model.
    pub fn insert(&self, model: Arc<dyn Model>) {
        let mut map = self
            .by_id
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.insert(model.id(), model);
    }

    /// The model with this id.
    pub fn get(&self, id: &ModelId) -> Option<Arc<dyn Model>> {
        self.read().get(id).cloned()
    }

    /// The model with this name (the highest version if several).
    pub fn by_name(&self, name: &str) -> Option<Arc<dyn Model>> {
        self.read()
            .values()
            .filter(|m| m.manifest().name == name)
            .max_by_key(|m| m.manifest().version)
            .cloned()
    }

    /// Every installed model.
    pub fn models(&self) -> Vec<Arc<dyn Model>> {
        self.read().values().cloned().collect()
    }
}

/// Reads an f32 output back (little-endian), e.g. to take the argmax of logits.
pub fn f32s(output: &[u8]) -> Vec<f32> {
    output
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Index of the largest value.
pub fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold(0, |best, (i, v)| if *v > values[best] { i } else { best })
}

/// Runs the fully connected head of a classifier on features `[n, d]`. flex multiplies a lone row with
/// another summation order than rows inside a batch, so a single row is duplicated into a batch of two and
/// the first result kept: an input's output bits are then the same alone as inside any batch. (Convolutions
/// need no such care: their matmuls have `n * height * width` rows.)
pub(crate) fn head_rows(
    x: burn::tensor::Tensor<2>,
    head: impl Fn(burn::tensor::Tensor<2>) -> burn::tensor::Tensor<2>,
) -> burn::tensor::Tensor<2> {
    if x.dims()[0] == 1 {
        head(burn::tensor::Tensor::cat(vec![x.clone(), x], 0)).narrow(0, 0, 1)
    } else {
        head(x)
    }
}

/// Runs checked grayscale images `[n, 1, side, side]` (pixels mapped by `scale`) through a classifier and
/// returns each row of logits as little-endian f32 bytes.
pub(crate) fn classify_images<N>(
    model: &str,
    net: &std::sync::Mutex<N>,
    device: &burn::tensor::Device,
    inputs: &[&[u8]],
    side: usize,
    scale: impl Fn(u8) -> f32,
    forward: impl Fn(&N, burn::tensor::Tensor<4>) -> burn::tensor::Tensor<2>,
) -> Result<Vec<Vec<u8>>, InferenceError> {
    use burn::tensor::{Tensor, TensorData};
    if inputs.is_empty() {
        return Ok(Vec::new());
    }
    let flat: Vec<f32> = inputs
        .iter()
        .flat_map(|img| img.iter().map(|p| scale(*p)))
        .collect();
    let x = Tensor::from_data(TensorData::new(flat, [inputs.len(), 1, side, side]), device);
    let logits = {
        let net = net.lock().map_err(|_| InferenceError::Stopped)?;
        forward(&net, x)
    };
    let classes = logits.dims()[1];
    Ok(rows_to_bytes(&values(model, logits)?, classes, inputs.len()))
}

/// The values of a float tensor (weights to pack, or a forward pass's output).
pub(crate) fn values<const D: usize>(
    model: &str,
    t: burn::tensor::Tensor<D>,
) -> Result<Vec<f32>, InferenceError> {
    t.into_data()
        .try_into_vec::<f32>()
        .map_err(|e| weights_error(model, format!("{e:?}")))
}

/// A weights error of `model`.
pub(crate) fn weights_error(model: &str, reason: String) -> InferenceError {
    InferenceError::Weights {
        model: model.into(),
        reason,
    }
}

/// The values of a layer's bias (or a norm's shift), which the packed forwards need.
pub(crate) fn bias_values(
    model: &str,
    bias: Option<&burn::module::Param<burn::tensor::Tensor<1>>>,
    layer: &str,
) -> Result<Vec<f32>, InferenceError> {
    let bias = bias.ok_or_else(|| weights_error(model, format!("{layer} without bias")))?;
    values(model, bias.val())
}

/// Packs a burn convolution (3x3, padding 1, with bias) for [`cnn::PackedCnn`].
pub(crate) fn pack_conv(
    model: &str,
    conv: &burn::nn::conv::Conv2d,
    pool: bool,
) -> Result<cnn::Conv, InferenceError> {
    let [c_out, c_in, _, _] = conv.weight.dims();
    cnn::Conv::new(
        c_in,
        c_out,
        pool,
        &values(model, conv.weight.val())?,
        &bias_values(model, conv.bias.as_ref(), "a convolution")?,
    )
    .map_err(|reason| weights_error(model, reason))
}

/// Packs a burn linear layer (with bias) for [`cnn::PackedCnn`].
pub(crate) fn pack_dense(
    model: &str,
    linear: &burn::nn::Linear,
    relu: bool,
) -> Result<cnn::Dense, InferenceError> {
    let [d_in, d_out] = linear.weight.dims();
    cnn::Dense::new(
        d_in,
        d_out,
        relu,
        &values(model, linear.weight.val())?,
        &bias_values(model, linear.bias.as_ref(), "a linear layer")?,
    )
    .map_err(|reason| weights_error(model, reason))
}

/// Runs checked grayscale images (pixels mapped by `scale`) through a packed classifier and returns each
/// row of logits as little-endian f32 bytes.
pub(crate) fn classify_packed(
    net: &cnn::PackedCnn,
    inputs: &[&[u8]],
    scale: impl Fn(u8) -> f32,
) -> Vec<Vec<u8>> {
    if inputs.is_empty() {
        return Vec::new();
    }
    let flat: Vec<f32> = inputs
        .iter()
        .flat_map(|img| img.iter().map(|p| scale(*p)))
        .collect();
    rows_to_bytes(&net.forward(&flat), net.classes(), inputs.len())
}

/// Splits a `[n, width]` float output into per-row little-endian byte strings, keeping the first `keep` rows.
pub(crate) fn rows_to_bytes(values: &[f32], width: usize, keep: usize) -> Vec<Vec<u8>> {
    values
        .chunks_exact(width)
        .take(keep)
        .map(|row| row.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect()
}
