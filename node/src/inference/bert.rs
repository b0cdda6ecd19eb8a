//! A packed forward pass for the `minilm` BERT encoder: all tokens of a batch in one matrix for the
//! per-token layers (embeddings, projections, feed-forward, layer norms), attention computed per sentence
//! and head, so a batch of sentences of any lengths is one pass and no padding is ever computed.
//!
//! **Bits.** As in [`super::cnn`]: every matrix product goes through [`super::cnn::matmul`] (K cut into
//! fixed chunks of at most 512, gemm on one thread, at least two rows), whose rows do not depend on the
//! other rows of the product, so a sentence's output is the same alone or in any batch, at any position,
//! with any number of threads. Element-wise functions are computed from basic IEEE operations in a fixed
//! order ([`gelu`], [`exp`]), never with the platform's libm.

use rayon::prelude::*;

use super::cnn::matmul;

/// Embedding width.
pub const DIM: usize = 384;
/// Attention heads.
pub const HEADS: usize = 12;
/// Width of one head.
const HEAD: usize = DIM / HEADS;
/// Feed-forward width.
pub const INTERMEDIATE: usize = 1536;
/// Most tokens of one sentence (position embeddings).
pub const MAX_POSITIONS: usize = 512;
/// Rows of one GEMM unit of work for the per-token layers.
const ROWS_PER_UNIT: usize = 64;

/// Layer norm parameters.
#[derive(Debug, Clone)]
pub struct Norm {
    /// Scale `[DIM]`.
    pub gamma: Vec<f32>,
    /// Shift `[DIM]`.
    pub beta: Vec<f32>,
    /// Added to the variance.
    pub eps: f32,
}

/// A linear layer `y = x W + b`, weights `[d_in, d_out]`.
#[derive(Debug, Clone)]
pub struct Linear {
    /// Weights `[d_in, d_out]`.
    pub w: Vec<f32>,
    /// Bias `[d_out]`.
    pub b: Vec<f32>,
}

/// One encoder layer.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Query, key and value projections fused into one `[DIM, 3 * DIM]` layer.
    pub qkv: Linear,
    /// Attention output projection.
    pub out: Linear,
    /// Norm after attention.
    pub norm1: Norm,
    /// Feed-forward up-projection `[DIM, INTERMEDIATE]`.
    pub up: Linear,
    /// Feed-forward down-projection `[INTERMEDIATE, DIM]`.
    pub down: Linear,
    /// Norm after the feed-forward block.
    pub norm2: Norm,
}

impl Linear {
    /// Query, key and value projections `[DIM, DIM]` fused into one `[DIM, 3 * DIM]` layer.
    pub fn fuse_qkv(q: &Linear, k: &Linear, v: &Linear) -> Self {
        let mut w = Vec::with_capacity(DIM * 3 * DIM);
        for row in 0..DIM {
            for part in [q, k, v] {
                w.extend_from_slice(&part.w[row * DIM..(row + 1) * DIM]);
            }
        }
        let b = [q.b.as_slice(), &k.b, &v.b].concat();
        Self { w, b }
    }
}

/// The encoder with its embeddings.
#[derive(Debug, Clone)]
pub struct PackedBert {
    /// Word embeddings `[vocab, DIM]`.
    pub word: Vec<f32>,
    /// Position embeddings `[MAX_POSITIONS, DIM]`.
    pub position: Vec<f32>,
    /// The embedding of token type 0 `[DIM]` (every token has type 0).
    pub token_type: Vec<f32>,
    /// Norm of the embeddings.
    pub norm: Norm,
    /// The encoder layers.
    pub layers: Vec<Layer>,
}

/// `exp(x)` from basic IEEE operations: `x = k ln 2 + r` with |r| <= ln 2 / 2 (k rounded half to even by
/// adding and subtracting 1.5 * 2^23), a degree-7 Taylor polynomial for `exp(r)` (relative error below
/// 2e-7 before the final rounding), scaled by `2^k` through the exponent bits. Arguments below -87 give 0
/// (softmax only asks for x <= 0). Branch-free, so a loop over a row of values is vectorised.
#[inline]
pub fn exp(x: f32) -> f32 {
    let xc = x.clamp(-87.0, 88.0);
    // ln 2 split so that k * LN2_HI is exact for |k| < 2^10.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0;
    let k = (xc * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = (xc - k * LN2_HI) - k * LN2_LO;
    let mut p = 1.0 / 5040.0;
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p * r + c;
    }
    // 2^k for k in [-126, 127].
    let scale = f32::from_bits(((k as i32 + 127) as u32) << 23);
    if x < -87.0 { 0.0 } else { p * scale }
}

/// `erf(x)` by Abramowitz and Stegun's formula 7.1.26: `1 - t (a1 + t (a2 + ... + t a5)) exp(-x^2)` with
/// `t = 1 / (1 + p |x|)`, odd in x; absolute error below 1.5e-7 for the formula, below 5e-7 in f32
/// (4.7e-7 measured against a double-precision series; GELU's error below 1e-6).
#[inline]
pub fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_8, -1.453_152_1, 1.061_405_4];
    let z = x.abs();
    let t = 1.0 / (1.0 + P * z);
    let mut poly = A[4];
    for a in [A[3], A[2], A[1], A[0]] {
        poly = poly * t + a;
    }
    let y = 1.0 - poly * t * exp(-z * z);
    if x < 0.0 { -y } else { y }
}

/// GELU with the exact (erf) form BERT was trained with: `x/2 (1 + erf(x / sqrt 2))`.
#[inline]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `y[rows, d_out] = x[rows, d_in] W + b`, rows cut into units of at most [`ROWS_PER_UNIT`] (never one
/// row) run on rayon's threads; each row's bits are the same whatever the cut.
fn linear(layer: &Linear, x: &[f32], rows: usize, d_in: usize) -> Vec<f32> {
    let d_out = layer.b.len();
    let mut y = vec![0.0; rows * d_out];
    let units = rows.div_ceil(ROWS_PER_UNIT).max(if rows >= 4 { 2 } else { 1 });
    let mut parts = Vec::with_capacity(units);
    let (mut xs, mut ys, mut left) = (x, y.as_mut_slice(), rows);
    for i in 0..units {
        let len = left / (units - i);
        let (xa, xb) = xs.split_at(len * d_in);
        let (ya, yb) = ys.split_at_mut(len * d_out);
        parts.push((xa, ya, len));
        (xs, ys, left) = (xb, yb, left - len);
    }
    parts.into_par_iter().for_each(|(x, y, len)| {
        matmul(len, d_out, d_in, x, d_in, &layer.w, y);
        for row in y.chunks_exact_mut(d_out) {
            for (v, b) in row.iter_mut().zip(&layer.b) {
                *v += b;
            }
        }
    });
    y
}

/// Layer norm of every row of `x` in place (mean, then the mean of squared deviations, in index order).
fn layer_norm(norm: &Norm, x: &mut [f32]) {
    for row in x.chunks_exact_mut(DIM) {
        let mean = row.iter().fold(0.0f32, |s, v| s + v) / DIM as f32;
        let var = row.iter().fold(0.0f32, |s, v| s + (v - mean) * (v - mean)) / DIM as f32;
        let inv = 1.0 / (var + norm.eps).sqrt();
        for ((v, g), b) in row.iter_mut().zip(&norm.gamma).zip(&norm.beta) {
            *v = (*v - mean) * inv * g + b;
        }
    }
}

/// Attention of one head over one sentence: `qkv` rows of the sentence (`l` x `3 * DIM`); returns the
/// context `[l, HEAD]`.
fn attend(qkv: &[f32], l: usize, head: usize) -> Vec<f32> {
    let stride = 3 * DIM;
    let q0 = head * HEAD;
    let (k0, v0) = (DIM + q0, 2 * DIM + q0);
    // K^T [HEAD, l] and V [l, HEAD], contiguous.
    let mut kt = vec![0.0; HEAD * l];
    let mut v = vec![0.0; l * HEAD];
    let mut q = vec![0.0; l * HEAD];
    for j in 0..l {
        let row = &qkv[j * stride..(j + 1) * stride];
        for t in 0..HEAD {
            kt[t * l + j] = row[k0 + t];
        }
        v[j * HEAD..(j + 1) * HEAD].copy_from_slice(&row[v0..v0 + HEAD]);
        q[j * HEAD..(j + 1) * HEAD].copy_from_slice(&row[q0..q0 + HEAD]);
    }
    let mut scores = vec![0.0; l * l];
    matmul(l, l, HEAD, &q, HEAD, &kt, &mut scores);
    let scale = 1.0 / (HEAD as f32).sqrt();
    for row in scores.chunks_exact_mut(l) {
        let mut max = f32::NEG_INFINITY;
        for s in row.iter_mut() {
            *s *= scale;
            max = max.max(*s);
        }
        let mut sum = 0.0f32;
        for s in row.iter_mut() {
            *s = exp(*s - max);
            sum += *s;
        }
        for s in row.iter_mut() {
            *s /= sum;
        }
    }
    let mut ctx = vec![0.0; l * HEAD];
    matmul(l, HEAD, l, &scores, l, &v, &mut ctx);
    ctx
}

impl PackedBert {
    /// Token embeddings `[sum of lengths, DIM]` of sentences given as token ids (each of 2 to
    /// [`MAX_POSITIONS`] ids, every id inside the vocabulary; the caller checks).
    pub fn forward(&self, sentences: &[Vec<u32>]) -> Vec<f32> {
        let rows: usize = sentences.iter().map(Vec::len).sum();
        let mut x = Vec::with_capacity(rows * DIM);
        for ids in sentences {
            for (p, id) in ids.iter().enumerate() {
                let word = &self.word[*id as usize * DIM..][..DIM];
                let pos = &self.position[p * DIM..][..DIM];
                x.extend(
                    word.iter()
                        .zip(pos)
                        .zip(&self.token_type)
                        .map(|((w, p), t)| (w + p) + t),
                );
            }
        }
        layer_norm(&self.norm, &mut x);
        let mut spans = Vec::with_capacity(sentences.len());
        let mut start = 0;
        for ids in sentences {
            spans.push((start, ids.len()));
            start += ids.len();
        }
        for layer in &self.layers {
            let qkv = linear(&layer.qkv, &x, rows, DIM);
            let units: Vec<(usize, usize, usize)> = spans
                .iter()
                .flat_map(|&(s, l)| (0..HEADS).map(move |h| (s, l, h)))
                .collect();
            let heads: Vec<Vec<f32>> = units
                .par_iter()
                .map(|&(s, l, h)| attend(&qkv[s * 3 * DIM..(s + l) * 3 * DIM], l, h))
                .collect();
            let mut ctx = vec![0.0; rows * DIM];
            for (&(s, l, h), out) in units.iter().zip(&heads) {
                for i in 0..l {
                    ctx[(s + i) * DIM + h * HEAD..][..HEAD].copy_from_slice(&out[i * HEAD..(i + 1) * HEAD]);
                }
            }
            let mut attended = linear(&layer.out, &ctx, rows, DIM);
            for (a, r) in attended.iter_mut().zip(&x) {
                *a += r;
            }
            layer_norm(&layer.norm1, &mut attended);
            let mut inner = linear(&layer.up, &attended, rows, DIM);
            inner.par_chunks_mut(INTERMEDIATE).for_each(|row| {
                for v in row {
                    *v = gelu(*v);
                }
            });
            x = linear(&layer.down, &inner, rows, INTERMEDIATE);
            for (o, r) in x.iter_mut().zip(&attended) {
                *o += r;
            }
            layer_norm(&layer.norm2, &mut x);
        }
        x
    }

    /// Sentence embeddings: the mean of each sentence's token embeddings, scaled to unit length.
    pub fn embed(&self, sentences: &[Vec<u32>]) -> Vec<Vec<f32>> {
        if sentences.is_empty() {
            return Vec::new();
        }
        let tokens = self.forward(sentences);
        let mut out = Vec::with_capacity(sentences.len());
        let mut start = 0;
        for ids in sentences {
            let l = ids.len();
            let mut mean = vec![0.0f32; DIM];
            for row in tokens[start * DIM..(start + l) * DIM].chunks_exact(DIM) {
                for (m, v) in mean.iter_mut().zip(row) {
                    *m += v;
                }
            }
            for m in &mut mean {
                *m /= l as f32;
            }
            let norm = mean.iter().fold(0.0f32, |s, v| s + v * v).sqrt().max(1e-12);
            for m in &mut mean {
                *m /= norm;
            }
            out.push(mean);
            start += l;
        }
        out
    }
}
