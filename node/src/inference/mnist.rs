//! `mnist-cnn`: the MIT-licensed pretrained 28x28 MNIST classifier of `digit-recognizer-py` 0.1.0, loaded
//! from its PyTorch checkpoint with burn-store (fetched by `scripts/fetch-assets.sh`, pinned by hash).
//!
//! Input: 784 bytes, the 28x28 grayscale image row-major (0..=255). Output: 10 f32 logits.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::store::{ModuleSnapshot, PytorchStore};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use fleetmesh_protocol::ModelId;
use fleetmesh_protocol::messages::{AgreementRule, DType, ModelManifest, TensorSpec};

use super::cnn::PackedCnn;
use super::{
    InferenceError, Model, check_len, check_weights, classify_images, classify_packed, head_rows,
    manifest_for, pack_conv, pack_dense, weights_error,
};

/// The model's name.
pub const NAME: &str = "mnist-cnn";
/// Pixels per image.
pub const PIXELS: usize = 28 * 28;
/// Path of the checkpoint under the assets folder.
pub const WEIGHTS_PATH: &str = "mnist-cnn/handwriting_model.pth";
/// blake3 of the checkpoint (its sha256 is pinned in scripts/fetch-assets.sh).
pub const WEIGHTS_BLAKE3: &str = "9edfc5ce203cbc38f6e392704c52735df8c13d83ffef74b75ec6411be71be6d1";
/// Path of the 5,000 evaluation images under the assets folder.
pub const EVAL_PATH: &str = "mnist/mnist_5k.csv.gz";

/// The network of the checkpoint: three conv 3x3 + ReLU + max-pool blocks, then two linear layers.
#[derive(Module, Debug)]
pub struct MnistNet {
    conv_layers: Vec<Conv2d>,
    fc_layers: Vec<Linear>,
    pool: MaxPool2d,
}

impl MnistNet {
    /// An uninitialised network of the checkpoint's shape.
    pub fn new(device: &Device) -> Self {
        let conv = |i, o| {
            Conv2dConfig::new([i, o], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        Self {
            conv_layers: vec![conv(1, 32), conv(32, 64), conv(64, 128)],
            fc_layers: vec![
                LinearConfig::new(1152, 256).init(device),
                LinearConfig::new(256, 10).init(device),
            ],
            pool: MaxPool2dConfig::new([2, 2]).init(),
        }
    }

    /// The same network packed for [`PackedCnn`] (each convolution followed by ReLU and the pool).
    pub fn packed(&self) -> Result<PackedCnn, InferenceError> {
        let convs = self
            .conv_layers
            .iter()
            .map(|c| pack_conv(NAME, c, true))
            .collect::<Result<_, _>>()?;
        let dense = vec![
            pack_dense(NAME, &self.fc_layers[0], true)?,
            pack_dense(NAME, &self.fc_layers[1], false)?,
        ];
        PackedCnn::new(28, convs, dense).map_err(|reason| weights_error(NAME, reason))
    }

    /// Logits `[n, 10]` for normalised images `[n, 1, 28, 28]`.
    pub fn forward(&self, mut x: Tensor<4>) -> Tensor<2> {
        for conv in &self.conv_layers {
            x = self.pool.forward(relu(conv.forward(x)));
        }
        let x: Tensor<2> = x.flatten(1, 3);
        head_rows(x, |x| {
            self.fc_layers[1].forward(relu(self.fc_layers[0].forward(x)))
        })
    }
}

/// The MNIST model, ready to run.
pub struct MnistCnn {
    /// What runs jobs.
    packed: PackedCnn,
    /// burn's own forward of the same weights, kept as the reference it is compared with.
    net: Mutex<MnistNet>,
    device: Device,
    manifest: ModelManifest,
    id: ModelId,
    /// The checkpoint it was loaded from (served to peers), if it is still there.
    path: Option<PathBuf>,
}

impl MnistCnn {
    /// Loads the model from `assets/mnist-cnn/handwriting_model.pth`; `None` if it was not fetched.
    pub fn from_assets(assets: &Path) -> Result<Option<Self>, InferenceError> {
        let path = assets.join(WEIGHTS_PATH);
        if !path.exists() {
            return Ok(None);
        }
        Self::from_file(&path).map(Some)
    }

    /// Loads the model from a checkpoint file, which must hash to the pinned value.
    pub fn from_file(path: &Path) -> Result<Self, InferenceError> {
        let weights = std::fs::read(path).map_err(|e| InferenceError::Weights {
            model: NAME.into(),
            reason: format!("{}: {e}", path.display()),
        })?;
        let mut model = Self::load(path, &weights)?;
        model.path = Some(path.to_path_buf());
        Ok(model)
    }

    /// Loads the model from checkpoint bytes (fetched from peers), which must hash to the pinned value.
    /// burn reads PyTorch checkpoints from files, so the bytes pass through a private temporary file.
    pub fn from_bytes(weights: &[u8]) -> Result<Self, InferenceError> {
        let bad = |reason: String| InferenceError::Weights {
            model: NAME.into(),
            reason,
        };
        check_weights(NAME, weights, WEIGHTS_BLAKE3)?;
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| bad(e.to_string()))?;
        let path = std::env::temp_dir().join(format!("fleetmesh-mnist-{}.pth", hex::encode(nonce)));
        std::fs::write(&path, weights).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        let model = Self::load(&path, weights);
        let _ = std::fs::remove_file(&path);
        model
    }

    fn load(path: &Path, weights: &[u8]) -> Result<Self, InferenceError> {
        let bad = |reason: String| InferenceError::Weights {
            model: NAME.into(),
            reason,
        };
        check_weights(NAME, weights, WEIGHTS_BLAKE3)?;
        let device = super::Backend::from_env().device();
        let mut net = MnistNet::new(&device);
        let mut store = PytorchStore::from_file(PathBuf::from(path));
        let applied = net.load_from(&mut store).map_err(|e| bad(e.to_string()))?;
        if !applied.missing.is_empty() {
            return Err(bad(format!(
                "tensors missing from the checkpoint: {:?}",
                applied.missing
            )));
        }
        let manifest = manifest_for(
            NAME,
            1,
            "mnist-cnn-v1",
            weights,
            super::CHUNK_SIZE,
            TensorSpec {
                dtype: DType::U8,
                shape: vec![1, 28, 28],
            },
            TensorSpec {
                dtype: DType::F32,
                shape: vec![10],
            },
            AgreementRule::Exact,
        );
        let id = manifest.id();
        Ok(Self {
            packed: net.packed()?,
            net: Mutex::new(net),
            device,
            manifest,
            id,
            path: None,
        })
    }
}

impl Model for MnistCnn {
    fn manifest(&self) -> &ModelManifest {
        &self.manifest
    }

    fn id(&self) -> ModelId {
        self.id
    }

    fn check_input(&self, input: &[u8]) -> Result<(), InferenceError> {
        check_len(NAME, input, PIXELS)
    }

    fn weights_source(&self) -> Option<super::WeightsSource> {
        self.path.clone().map(super::WeightsSource::File)
    }

    fn run_batch(&self, inputs: &[&[u8]]) -> Result<Vec<Vec<u8>>, InferenceError> {
        for input in inputs {
            self.check_input(input)?;
        }
        Ok(classify_packed(&self.packed, inputs, normalise))
    }
}

/// The checkpoint's input normalisation of a 0..=255 pixel.
fn normalise(p: u8) -> f32 {
    (f32::from(p) / 255.0 - 0.1307) / 0.3081
}

impl MnistCnn {
    /// The packed network jobs run on.
    pub fn packed(&self) -> &PackedCnn {
        &self.packed
    }

    /// Normalised pixels of one image, as [`MnistCnn::packed`] takes them.
    pub fn normalised(image: &[u8]) -> Vec<f32> {
        image.iter().map(|p| normalise(*p)).collect()
    }

    /// Logits from burn's own forward pass on the flex backend (the packed forward's reference: equal
    /// within float rounding, not bit for bit).
    pub fn run_batch_burn(&self, inputs: &[&[u8]]) -> Result<Vec<Vec<u8>>, InferenceError> {
        for input in inputs {
            self.check_input(input)?;
        }
        classify_images(
            NAME,
            &self.net,
            &self.device,
            inputs,
            28,
            normalise,
            MnistNet::forward,
        )
    }
}

/// An evaluation image: 784 pixels and its label.
pub type LabelledImage = (Vec<u8>, u8);

/// Reads the 5,000 evaluation images; `None` if they were not fetched.
pub fn eval_images(assets: &Path) -> Result<Option<Vec<LabelledImage>>, InferenceError> {
    use std::io::Read;
    let path = assets.join(EVAL_PATH);
    if !path.exists() {
        return Ok(None);
    }
    let bad = |reason: String| InferenceError::Weights {
        model: NAME.into(),
        reason,
    };
    let file = std::fs::File::open(&path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let mut csv = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut csv)
        .map_err(|e| bad(e.to_string()))?;
    let rows = csv
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: Vec<u8> = line
                .split(',')
                .map(|x| x.trim().parse::<f32>().map(|f| f as u8))
                .collect::<Result<_, _>>()
                .map_err(|e| bad(format!("evaluation row: {e}")))?;
            match v.split_last() {
                Some((&label, pixels)) if pixels.len() == PIXELS => Ok((pixels.to_vec(), label)),
                _ => Err(bad("evaluation row: expected 785 values".into())),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(rows))
}
