//! `minilm`: all-MiniLM-L6-v2 sentence embeddings — a 6-layer BERT encoder in burn, weights from the
//! model's safetensors, the `tokenizers` crate for WordPiece, attention-masked mean pooling and L2
//! normalisation (fetched by `scripts/fetch-assets.sh minilm`, pinned by hash). Its three files (weights,
//! tokenizer, config) travel to peers as one [`super::bundle`] under one manifest.
//!
//! Input: UTF-8 text (at most [`MAX_TEXT`] bytes; tokens past 128 are truncated as the model was trained).
//! Output: 384 f32 (little-endian), unit length.

use std::path::Path;
use std::sync::Mutex;

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::store::{ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use fleetmesh_protocol::ModelId;
use fleetmesh_protocol::messages::{AgreementRule, DType, ModelManifest, TensorSpec};

use super::bert::{self, PackedBert};
use super::{InferenceError, Model, bias_values, check_weights, manifest_for, values};

/// The model's name.
pub const NAME: &str = "minilm";
/// Longest accepted input text in bytes.
pub const MAX_TEXT: usize = 2048;
/// Embedding width.
pub const DIM: usize = bert::DIM;
use bert::{HEADS, INTERMEDIATE, MAX_POSITIONS};
const LAYERS: usize = 6;
const VOCAB: usize = 30_522;
/// blake3 of `model.safetensors` (its sha256 is pinned in scripts/fetch-assets.sh).
pub const WEIGHTS_BLAKE3: &str = "8087e9bf97c265f8435ed268733ecf3791825ad24850fd5d84d89e32ee3a589a";
/// blake3 of `tokenizer.json`.
pub const TOKENIZER_BLAKE3: &str = "82483bb4f0bdb81779f295ecc5a93285d2156834e994a2169f9800e4c8f250c1";
/// blake3 of `config.json`.
pub const CONFIG_BLAKE3: &str = "02ba870d29dc00b373fe71bd273baca30586d6577def4130456e756c7b286890";
/// The architecture its manifest names: the three files travel as one [`super::bundle`].
pub const ARCHITECTURE: &str = "bert-minilm-l6-v2-bundle";
/// The bundle of the model's files that peers are served, written beside them in the assets folder.
pub const BUNDLE_FILE: &str = "minilm.bundle";
/// The model's files, in bundle order, with the blake3 each must have.
pub const FILES: [(&str, &str); 3] = [
    ("model.safetensors", WEIGHTS_BLAKE3),
    ("tokenizer.json", TOKENIZER_BLAKE3),
    ("config.json", CONFIG_BLAKE3),
];

#[derive(Module, Debug)]
struct Embeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    layer_norm: LayerNorm,
}

#[derive(Module, Debug)]
struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
}

#[derive(Module, Debug)]
struct DenseNorm {
    dense: Linear,
    layer_norm: LayerNorm,
}

#[derive(Module, Debug)]
struct Attention {
    self_attn: SelfAttention,
    output: DenseNorm,
}

#[derive(Module, Debug)]
struct Dense {
    dense: Linear,
}

#[derive(Module, Debug)]
struct Layer {
    attention: Attention,
    intermediate: Dense,
    output: DenseNorm,
}

#[derive(Module, Debug)]
struct Encoder {
    layer: Vec<Layer>,
}

/// The BERT encoder of all-MiniLM-L6-v2.
#[derive(Module, Debug)]
pub struct Bert {
    embeddings: Embeddings,
    encoder: Encoder,
}

fn norm(device: &Device) -> LayerNorm {
    LayerNormConfig::new(DIM).with_epsilon(1e-12).init(device)
}

fn dense_norm(d_in: usize, device: &Device) -> DenseNorm {
    DenseNorm {
        dense: LinearConfig::new(d_in, DIM).init(device),
        layer_norm: norm(device),
    }
}

impl Bert {
    fn new(device: &Device) -> Self {
        let layer = (0..LAYERS)
            .map(|_| Layer {
                attention: Attention {
                    self_attn: SelfAttention {
                        query: LinearConfig::new(DIM, DIM).init(device),
                        key: LinearConfig::new(DIM, DIM).init(device),
                        value: LinearConfig::new(DIM, DIM).init(device),
                    },
                    output: dense_norm(DIM, device),
                },
                intermediate: Dense {
                    dense: LinearConfig::new(DIM, INTERMEDIATE).init(device),
                },
                output: dense_norm(INTERMEDIATE, device),
            })
            .collect();
        Self {
            embeddings: Embeddings {
                word_embeddings: EmbeddingConfig::new(VOCAB, DIM).init(device),
                position_embeddings: EmbeddingConfig::new(MAX_POSITIONS, DIM).init(device),
                token_type_embeddings: EmbeddingConfig::new(2, DIM).init(device),
                layer_norm: norm(device),
            },
            encoder: Encoder { layer },
        }
    }

    /// Token embeddings `[b, l, 384]` for token ids `[b, l]` with attention mask `[b, l]` (1 = token).
    fn forward(&self, ids: Tensor<2, Int>, mask: Tensor<2>) -> Tensor<3> {
        let [b, l] = ids.dims();
        let device = ids.device();
        let positions = Tensor::<1, Int>::arange(0..l as i64, &device)
            .reshape([1, l])
            .repeat_dim(0, b);
        let types = Tensor::<2, Int>::zeros([b, l], &device);
        let e = &self.embeddings;
        let mut x = e.word_embeddings.forward(ids)
            + e.position_embeddings.forward(positions)
            + e.token_type_embeddings.forward(types);
        x = e.layer_norm.forward(x);
        // Additive mask: 0 where attended, a large negative number on padding.
        let bias: Tensor<4> = (mask.ones_like() - mask).mul_scalar(-1e9).reshape([b, 1, 1, l]);
        let head = DIM / HEADS;
        let scale = 1.0 / (head as f64).sqrt();
        for layer in &self.encoder.layer {
            let a = &layer.attention.self_attn;
            let split = |t: Tensor<3>| t.reshape([b, l, HEADS, head]).swap_dims(1, 2);
            let q = split(a.query.forward(x.clone()));
            let k = split(a.key.forward(x.clone()));
            let v = split(a.value.forward(x.clone()));
            let scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale) + bias.clone();
            let ctx = softmax(scores, 3).matmul(v).swap_dims(1, 2).reshape([b, l, DIM]);
            let out = &layer.attention.output;
            let attended = out.layer_norm.forward(out.dense.forward(ctx) + x);
            let inner = gelu(layer.intermediate.dense.forward(attended.clone()));
            let out = &layer.output;
            x = out.layer_norm.forward(out.dense.forward(inner) + attended);
        }
        x
    }

    /// The same encoder packed for [`PackedBert`], which runs jobs.
    fn packed(&self) -> Result<PackedBert, InferenceError> {
        let v = |t: Tensor<2>| values(NAME, t);
        let linear = |l: &Linear| -> Result<bert::Linear, InferenceError> {
            Ok(bert::Linear {
                w: v(l.weight.val())?,
                b: bias_values(NAME, l.bias.as_ref(), "a linear layer")?,
            })
        };
        let norm = |n: &LayerNorm| -> Result<bert::Norm, InferenceError> {
            Ok(bert::Norm {
                gamma: values(NAME, n.gamma.val())?,
                beta: bias_values(NAME, n.beta.as_ref(), "a layer norm")?,
                eps: 1e-12,
            })
        };
        let e = &self.embeddings;
        let layers = self
            .encoder
            .layer
            .iter()
            .map(|l| {
                let a = &l.attention.self_attn;
                Ok(bert::Layer {
                    qkv: bert::Linear::fuse_qkv(&linear(&a.query)?, &linear(&a.key)?, &linear(&a.value)?),
                    out: linear(&l.attention.output.dense)?,
                    norm1: norm(&l.attention.output.layer_norm)?,
                    up: linear(&l.intermediate.dense)?,
                    down: linear(&l.output.dense)?,
                    norm2: norm(&l.output.layer_norm)?,
                })
            })
            .collect::<Result<_, InferenceError>>()?;
        let types = v(e.token_type_embeddings.weight.val())?;
        Ok(PackedBert {
            word: v(e.word_embeddings.weight.val())?,
            position: v(e.position_embeddings.weight.val())?,
            token_type: types[..DIM].to_vec(),
            norm: norm(&e.layer_norm)?,
            layers,
        })
    }
}

/// The minilm model, ready to run.
pub struct MiniLm {
    /// What runs jobs.
    packed: PackedBert,
    /// burn's own forward of the same weights, kept as the reference it is compared with.
    net: Mutex<Bert>,
    tokenizer: tokenizers::Tokenizer,
    device: Device,
    manifest: ModelManifest,
    id: ModelId,
    /// Where peers are served the bundle of its three files from: a file written next to the assets (in
    /// memory if that folder is read-only); none for a copy fetched from peers (served from the store).
    source: Option<super::WeightsSource>,
}

impl MiniLm {
    /// Loads the model from `assets/minilm/`; `None` if it was not fetched.
    pub fn from_assets(assets: &Path) -> Result<Option<Self>, InferenceError> {
        let dir = assets.join("minilm");
        if !dir.join("model.safetensors").exists() {
            return Ok(None);
        }
        Self::from_dir(&dir).map(Some)
    }

    /// Loads the model from a folder with `model.safetensors`, `tokenizer.json` and `config.json`, each
    /// hash-pinned.
    pub fn from_dir(dir: &Path) -> Result<Self, InferenceError> {
        let files = FILES
            .iter()
            .map(|(name, _)| {
                std::fs::read(dir.join(name)).map_err(|e| InferenceError::Weights {
                    model: NAME.into(),
                    reason: format!("{name}: {e}"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let named: Vec<(&str, &[u8])> = FILES
            .iter()
            .map(|(n, _)| *n)
            .zip(files.iter().map(Vec::as_slice))
            .collect();
        let bundle = super::bundle::pack(&named);
        drop(named);
        drop(files);
        let mut model = Self::from_bundle(&bundle)?;
        // The bundle is what peers are served: kept on disk beside the files rather than in memory.
        let path = dir.join(BUNDLE_FILE);
        let on_disk = std::fs::read(&path).is_ok_and(|b| b == bundle) || {
            // A name of its own: nodes of one process (or several) may write it at the same time.
            static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp = dir.join(format!("{BUNDLE_FILE}.{}-{n}.tmp", std::process::id()));
            let written = std::fs::write(&tmp, &bundle).and_then(|()| std::fs::rename(&tmp, &path));
            if written.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            written.is_ok()
        };
        model.source = Some(if on_disk {
            super::WeightsSource::File(path)
        } else {
            super::WeightsSource::Memory(std::sync::Arc::from(bundle))
        });
        Ok(model)
    }

    /// Builds the model from the bundle of its three files (fetched from peers): each file must be the
    /// pinned one, in [`FILES`] order (so one bundle, one model id, is all that builds).
    pub fn from_bundle(bundle: &[u8]) -> Result<Self, InferenceError> {
        let bad = |reason: String| InferenceError::Weights {
            model: NAME.into(),
            reason,
        };
        let files = super::bundle::unpack(bundle).map_err(|e| bad(e.to_string()))?;
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        if names != FILES.map(|(n, _)| n) {
            return Err(bad(format!(
                "the bundle holds {names:?}, expected {:?}",
                FILES.map(|(n, _)| n)
            )));
        }
        for (name, blake3) in FILES {
            let bytes = super::bundle::file(&files, name).ok_or_else(|| bad(format!("{name} missing")))?;
            check_weights(NAME, bytes, blake3)?;
        }
        let weights = super::bundle::file(&files, FILES[0].0)
            .unwrap_or_default()
            .to_vec();
        let tokenizer_json = super::bundle::file(&files, FILES[1].0).unwrap_or_default();
        let mut tokenizer =
            tokenizers::Tokenizer::from_bytes(tokenizer_json).map_err(|e| bad(e.to_string()))?;
        // The file pads every input to 128 tokens; pooling uses the mask, so padding is only waste.
        tokenizer.with_padding(None);

        let device = super::Backend::from_env().device();
        let mut net = Bert::new(&device);
        let mut store = SafetensorsStore::from_bytes(Some(weights))
            .with_from_adapter(PyTorchToBurnAdapter)
            .with_key_remapping(r"LayerNorm", "layer_norm")
            .with_key_remapping(r"\.attention\.self\.", ".attention.self_attn.")
            .allow_partial(true);
        let applied = net.load_from(&mut store).map_err(|e| bad(e.to_string()))?;
        if !applied.missing.is_empty() {
            return Err(bad(format!(
                "tensors missing from the weights: {:?}",
                applied.missing
            )));
        }
        let manifest = manifest_for(
            NAME,
            1,
            ARCHITECTURE,
            bundle,
            super::CHUNK_SIZE,
            TensorSpec {
                dtype: DType::Utf8,
                shape: vec![MAX_TEXT as u32],
            },
            TensorSpec {
                dtype: DType::F32,
                shape: vec![DIM as u32],
            },
            AgreementRule::Exact,
        );
        let id = manifest.id();
        Ok(Self {
            packed: net.packed()?,
            net: Mutex::new(net),
            tokenizer,
            device,
            manifest,
            id,
            source: None,
        })
    }

    /// The token ids of a text, as the model sees them.
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, InferenceError> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| InferenceError::Weights {
                model: NAME.into(),
                reason: format!("tokenizer: {e}"),
            })?;
        Ok(encoding.get_ids().to_vec())
    }
}

impl Model for MiniLm {
    fn manifest(&self) -> &ModelManifest {
        &self.manifest
    }

    fn id(&self) -> ModelId {
        self.id
    }

    fn weights_source(&self) -> Option<super::WeightsSource> {
        self.source.clone()
    }

    fn check_input(&self, input: &[u8]) -> Result<(), InferenceError> {
        if input.is_empty() || input.len() > MAX_TEXT {
            return Err(InferenceError::WrongInputLength {
                model: NAME.into(),
                expected: MAX_TEXT,
                got: input.len(),
            });
        }
        std::str::from_utf8(input).map_err(|e| InferenceError::OutOfRange {
            model: NAME.into(),
            index: e.valid_up_to(),
            value: "invalid UTF-8".into(),
        })?;
        Ok(())
    }

    fn run_batch(&self, inputs: &[&[u8]]) -> Result<Vec<Vec<u8>>, InferenceError> {
        let tokenised = self.tokenise(inputs)?;
        Ok(self
            .packed
            .embed(&tokenised)
            .iter()
            .map(|row| row.iter().flat_map(|v| v.to_le_bytes()).collect())
            .collect())
    }
}

impl MiniLm {
    /// Checks and tokenises every input (each must give 2 to `MAX_POSITIONS` ids inside the vocabulary).
    fn tokenise(&self, inputs: &[&[u8]]) -> Result<Vec<Vec<u32>>, InferenceError> {
        let mut tokenised = Vec::with_capacity(inputs.len());
        for input in inputs {
            self.check_input(input)?;
            let ids = self.token_ids(std::str::from_utf8(input).unwrap_or_default())?;
            if ids.len() < 2 || ids.len() > MAX_POSITIONS || ids.iter().any(|id| *id as usize >= VOCAB) {
                return Err(InferenceError::Weights {
                    model: NAME.into(),
                    reason: format!("the tokenizer gave {} ids outside the model's range", ids.len()),
                });
            }
            tokenised.push(ids);
        }
        Ok(tokenised)
    }

    /// Embeddings from burn's own forward pass on the flex backend (the packed forward's reference: equal
    /// within float rounding, not bit for bit).
    pub fn run_batch_burn(&self, inputs: &[&[u8]]) -> Result<Vec<Vec<u8>>, InferenceError> {
        let tokenised = self.tokenise(inputs)?;
        // Texts of equal token length run together as one unpadded batch; every forward pass has at least
        // two rows in each matmul ([CLS] and [SEP] make two tokens), so a text's output bits do not depend
        // on what else is in the batch (tested), and no padding is ever computed.
        let mut outputs = vec![Vec::new(); inputs.len()];
        let mut by_len: std::collections::BTreeMap<usize, Vec<usize>> = std::collections::BTreeMap::new();
        for (i, ids) in tokenised.iter().enumerate() {
            by_len.entry(ids.len()).or_default().push(i);
        }
        for (l, members) in by_len {
            let b = members.len();
            let ids: Vec<i64> = members
                .iter()
                .flat_map(|i| tokenised[*i].iter().map(|t| i64::from(*t)))
                .collect();
            let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, l]), &self.device);
            let mask = Tensor::<2>::ones([b, l], &self.device);
            let tokens = {
                let net = self.net.lock().map_err(|_| InferenceError::Stopped)?;
                net.forward(ids, mask)
            };
            let pooled: Tensor<2> = tokens.mean_dim(1).reshape([b, DIM]);
            let norm = pooled.clone().powf_scalar(2.0).sum_dim(1).sqrt().clamp_min(1e-12);
            let embedded = values(NAME, pooled / norm)?;
            for (row, i) in embedded.chunks_exact(DIM).zip(members) {
                outputs[i] = row.iter().flat_map(|v| v.to_le_bytes()).collect();
            }
        }
        Ok(outputs)
    }
}
