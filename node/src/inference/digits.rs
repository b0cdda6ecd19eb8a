//! `digits`: the embedded default model, a small CNN for the 8x8 handwritten digits of the UCI data set
//! (committed under `node/assets/digits/`, CC BY 4.0), trained by this crate (`fleetmesh train-digits`).
//!
//! Input: 64 bytes, the 8x8 image row-major, each pixel 0..=16. Output: 10 f32 logits (little-endian).

use std::io::Read;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
#[cfg(feature = "train")]
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
#[cfg(feature = "train")]
use burn::optim::{AdamConfig, GradientsParams};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
#[cfg(feature = "train")]
use burn::tensor::{Int, TensorData};
use fleetmesh_protocol::ModelId;
use fleetmesh_protocol::messages::{AgreementRule, DType, ModelManifest, TensorSpec};

use super::cnn::PackedCnn;
use super::{
    InferenceError, Model, check_len, classify_packed, head_rows, manifest_for, pack_conv, pack_dense,
    weights_error,
};

/// The data set, gzipped CSV (1,797 rows of 64 pixels and a label).
pub const DATA_GZ: &[u8] = include_bytes!("../../assets/digits/digits.csv.gz");
/// The trained weights (safetensors), made by `fleetmesh train-digits`.
pub const WEIGHTS: &[u8] = include_bytes!("../../assets/digits/digits-cnn.safetensors");
/// Pixels per image.
pub const PIXELS: usize = 64;
/// Largest pixel value.
pub const MAX_PIXEL: u8 = 16;
/// The model's name.
pub const NAME: &str = "digits";

/// One labelled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// 64 pixels, 0..=16.
    pub pixels: Vec<u8>,
    /// The digit 0..=9.
    pub label: u8,
}

/// Which rows train the model and which are held out: every fifth row (index % 5 == 4) is held out.
pub fn is_held_out(index: usize) -> bool {
    index % 5 == 4
}

/// Parses the embedded data set.
pub fn dataset() -> Result<Vec<Sample>, InferenceError> {
    let bad = |reason: String| InferenceError::Weights {
        model: NAME.into(),
        reason,
    };
    let mut csv = String::new();
    flate2::read::GzDecoder::new(DATA_GZ)
        .read_to_string(&mut csv)
        .map_err(|e| bad(format!("data set: {e}")))?;
    csv.lines()
        .enumerate()
        .map(|(i, line)| {
            let values: Vec<u8> = line
                .split(',')
                .map(|v| v.trim().parse::<u8>())
                .collect::<Result<_, _>>()
                .map_err(|e| bad(format!("data set row {i}: {e}")))?;
            match values.split_last() {
                Some((&label, pixels)) if pixels.len() == PIXELS && label <= 9 => Ok(Sample {
                    pixels: pixels.to_vec(),
                    label,
                }),
                _ => Err(bad(format!("data set row {i}: expected 65 values"))),
            }
        })
        .collect()
}

/// The held-out samples (never seen in training).
pub fn held_out() -> Result<Vec<Sample>, InferenceError> {
    Ok(dataset()?
        .into_iter()
        .enumerate()
        .filter(|(i, _)| is_held_out(*i))
        .map(|(_, s)| s)
        .collect())
}

/// The network: conv 1->16 -> conv 16->32 -> max-pool -> linear 512->64 -> linear 64->10.
#[derive(Module, Debug)]
pub struct DigitsNet {
    conv1: Conv2d,
    conv2: Conv2d,
    pool: MaxPool2d,
    fc1: Linear,
    fc2: Linear,
}

impl DigitsNet {
    /// A freshly initialised network on `device`.
    pub fn new(device: &Device) -> Self {
        let pad = PaddingConfig2d::Explicit(1, 1, 1, 1);
        Self {
            conv1: Conv2dConfig::new([1, 16], [3, 3])
                .with_padding(pad.clone())
                .init(device),
            conv2: Conv2dConfig::new([16, 32], [3, 3]).with_padding(pad).init(device),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            fc1: LinearConfig::new(32 * 4 * 4, 64).init(device),
            fc2: LinearConfig::new(64, 10).init(device),
        }
    }

    /// Logits `[n, 10]` for images `[n, 1, 8, 8]` scaled to 0..1.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = relu(self.conv1.forward(x));
        let x = self.pool.forward(relu(self.conv2.forward(x)));
        let x: Tensor<2> = x.flatten(1, 3);
        head_rows(x, |x| self.fc2.forward(relu(self.fc1.forward(x))))
    }

    /// The same network packed for [`PackedCnn`], which runs jobs.
    pub fn packed(&self) -> Result<PackedCnn, InferenceError> {
        let convs = vec![
            pack_conv(NAME, &self.conv1, false)?,
            pack_conv(NAME, &self.conv2, true)?,
        ];
        let dense = vec![
            pack_dense(NAME, &self.fc1, true)?,
            pack_dense(NAME, &self.fc2, false)?,
        ];
        PackedCnn::new(8, convs, dense).map_err(|reason| weights_error(NAME, reason))
    }
}

#[cfg(feature = "train")]
fn to_floats(pixels: &[u8]) -> Vec<f32> {
    pixels
        .iter()
        .map(|p| f32::from(*p) / f32::from(MAX_PIXEL))
        .collect()
}

#[cfg(feature = "train")]
fn images(rows: &[Vec<f32>], n: usize, device: &Device) -> Tensor<4> {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [n, 1, 8, 8]), device)
}

/// Trains a new network on the training rows; returns its safetensors bytes and held-out accuracy.
///
/// `progress` is called after each epoch with (epoch, mean loss, held-out accuracy). Built with the
/// `train` feature (burn's autodiff and optimisers).
#[cfg(feature = "train")]
pub fn train(
    epochs: usize,
    seed: u64,
    mut progress: impl FnMut(usize, f32, f32),
) -> Result<(Vec<u8>, f32), InferenceError> {
    let data = dataset()?;
    let (train, test): (Vec<_>, Vec<_>) = data.into_iter().enumerate().partition(|(i, _)| !is_held_out(*i));
    let train: Vec<Sample> = train.into_iter().map(|(_, s)| s).collect();
    let test: Vec<Sample> = test.into_iter().map(|(_, s)| s).collect();

    let device = Device::flex().autodiff(); // training always on flex
    device.seed(seed);
    let mut model = DigitsNet::new(&device);
    let mut optim = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let batch = 32;
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut rng = seed | 1;
    let mut accuracy = 0.0;
    for epoch in 1..=epochs {
        // Fisher-Yates with xorshift: a reproducible shuffle per seed.
        for i in (1..order.len()).rev() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            order.swap(i, (rng % (i as u64 + 1)) as usize);
        }
        let mut total = 0.0;
        let mut steps = 0;
        for chunk in order.chunks(batch) {
            let rows: Vec<Vec<f32>> = chunk.iter().map(|i| to_floats(&train[*i].pixels)).collect();
            let labels: Vec<i64> = chunk.iter().map(|i| i64::from(train[*i].label)).collect();
            let x = images(&rows, chunk.len(), &device);
            let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [chunk.len()]), &device);
            let loss = loss_fn.forward(model.forward(x), y);
            total += loss.clone().into_scalar::<f32>();
            steps += 1;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-3, model, grads);
        }
        let inference = Digits::from_net(&model.clone().valid(), Vec::new(), super::CHUNK_SIZE)?;
        accuracy = inference.accuracy(&test)?;
        progress(epoch, total / steps as f32, accuracy);
    }
    let mut store = SafetensorsStore::from_bytes(None);
    model
        .valid()
        .save_into(&mut store)
        .map_err(|e| InferenceError::Weights {
            model: NAME.into(),
            reason: e.to_string(),
        })?;
    let bytes = store.get_bytes().map_err(|e| InferenceError::Weights {
        model: NAME.into(),
        reason: e.to_string(),
    })?;
    Ok((bytes, accuracy))
}

/// The digits model, ready to run.
pub struct Digits {
    net: PackedCnn,
    manifest: ModelManifest,
    id: ModelId,
    weights: std::sync::Arc<[u8]>,
}

impl Digits {
    /// The model with the weights embedded in the binary.
    pub fn embedded() -> Result<Self, InferenceError> {
        Self::from_weights(WEIGHTS)
    }

    /// The model with these safetensors weights.
    pub fn from_weights(weights: &[u8]) -> Result<Self, InferenceError> {
        Self::from_weights_chunked(weights, super::CHUNK_SIZE)
    }

    /// The model with these safetensors weights, distributed in chunks of `chunk_size` bytes (another
    /// chunking is another manifest, so another model id: tests use a small one to spread the 154 kB of
    /// weights over many chunks and providers).
    pub fn from_weights_chunked(weights: &[u8], chunk_size: u32) -> Result<Self, InferenceError> {
        if chunk_size == 0 || chunk_size > fleetmesh_protocol::messages::MAX_CHUNK_SIZE {
            return Err(InferenceError::Weights {
                model: NAME.into(),
                reason: format!("chunk size {chunk_size} out of range"),
            });
        }
        let device = super::Backend::from_env().device();
        let mut net = DigitsNet::new(&device);
        let mut store = SafetensorsStore::from_bytes(Some(weights.to_vec()));
        net.load_from(&mut store).map_err(|e| InferenceError::Weights {
            model: NAME.into(),
            reason: e.to_string(),
        })?;
        Self::from_net(&net, weights.to_vec(), chunk_size)
    }

    fn from_net(net: &DigitsNet, weights: Vec<u8>, chunk_size: u32) -> Result<Self, InferenceError> {
        let manifest = manifest_for(
            NAME,
            1,
            "digits-cnn-v1",
            &weights,
            chunk_size,
            TensorSpec {
                dtype: DType::U8,
                shape: vec![1, 8, 8],
            },
            TensorSpec {
                dtype: DType::F32,
                shape: vec![10],
            },
            AgreementRule::Exact,
        );
        let id = manifest.id();
        Ok(Self {
            net: net.packed()?,
            manifest,
            id,
            weights: weights.into(),
        })
    }

    /// The packed network jobs run on.
    pub fn packed(&self) -> &PackedCnn {
        &self.net
    }

    /// Fraction of `samples` whose predicted digit is the label.
    pub fn accuracy(&self, samples: &[Sample]) -> Result<f32, InferenceError> {
        let mut correct = 0;
        for chunk in samples.chunks(256) {
            let inputs: Vec<&[u8]> = chunk.iter().map(|s| s.pixels.as_slice()).collect();
            let outputs = self.run_batch(&inputs)?;
            correct += outputs
                .iter()
                .zip(chunk)
                .filter(|(out, s)| super::argmax(&super::f32s(out)) == usize::from(s.label))
                .count();
        }
        Ok(correct as f32 / samples.len().max(1) as f32)
    }
}

impl Model for Digits {
    fn manifest(&self) -> &ModelManifest {
        &self.manifest
    }

    fn id(&self) -> ModelId {
        self.id
    }

    fn weights_source(&self) -> Option<super::WeightsSource> {
        Some(super::WeightsSource::Memory(self.weights.clone()))
    }

    fn check_input(&self, input: &[u8]) -> Result<(), InferenceError> {
        check_len(NAME, input, PIXELS)?;
        match input.iter().position(|p| *p > MAX_PIXEL) {
            Some(index) => Err(InferenceError::OutOfRange {
                model: NAME.into(),
                index,
                value: input[index].to_string(),
            }),
            None => Ok(()),
        }
    }

    fn run_batch(&self, inputs: &[&[u8]]) -> Result<Vec<Vec<u8>>, InferenceError> {
        for input in inputs {
            self.check_input(input)?;
        }
        Ok(classify_packed(&self.net, inputs, |p| {
            f32::from(p) / f32::from(MAX_PIXEL)
        }))
    }
}
