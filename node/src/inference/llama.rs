//! A packed forward pass for llama-architecture language models read from GGUF (SmolLM2 is one): RMS norm,
//! grouped-query attention with rotary positions, SwiGLU feed-forward, tied or separate output head, with
//! a KV cache per sequence and batched decoding.
//!
//! **Bits.** Every matrix product goes through [`super::cnn::matmul_strided`] (K cut into fixed chunks of
//! at most 512, gemm on one thread, at least two rows; a lone row is computed as a pair), and a row's
//! result never depends on the other rows or on how the columns are cut into blocks. Attention is computed
//! per query row by scalar code with a fixed summation order over the cached keys, the same whether the
//! row comes from a prefill or one decoding step; norms, SiLU, softmax and the rotary table use basic IEEE
//! operations only ([`super::bert::exp`], [`sin_cos`], `sqrt`), never the platform's libm. So a sequence's
//! logits are the same bits alone or at any position of a batch, with any number of threads, and
//! decoding token by token gives the bits of one prefill of the whole sequence.

use rayon::prelude::*;

use super::bert::exp;
use super::cnn::matmul_strided;
use super::gguf::{Gguf, GgufError, dequantize};

/// Rows of one GEMM unit of work.
const ROWS_PER_UNIT: usize = 64;
/// Columns of one GEMM unit of work.
const COLS_PER_UNIT: usize = 512;
/// Most sequence positions a model may declare (its context); bounds the rotary table and KV caches.
pub const MAX_CONTEXT: usize = 32_768;
/// Widest attention head accepted (the rotary table holds `context * head_dim / 2` pairs).
pub const MAX_HEAD_DIM: usize = 256;
/// Most parameters of a model this node builds: 4 GB as f32. A GGUF from a peer that declares more is
/// refused before anything is dequantised.
pub const MAX_PARAMS: u64 = 1 << 30;

/// The shape of a llama model, read from GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Width of the residual stream.
    pub dim: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention: `heads` is a multiple of it).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Width of the feed-forward block.
    pub ffn: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Most positions of one sequence.
    pub context: usize,
    /// Base of the rotary frequencies.
    pub rope_base: f64,
    /// Added to the mean square in RMS norms.
    pub eps: f32,
}

impl Config {
    /// Reads and checks the shape of a `llama` GGUF model.
    pub fn from_gguf(g: &Gguf) -> Result<Self, GgufError> {
        let arch = g.string("general.architecture")?;
        if arch != "llama" {
            return Err(GgufError::Missing {
                key: "general.architecture".into(),
                expected: "llama",
            });
        }
        let get = |key: &str, max: u64| -> Result<usize, GgufError> {
            let v = g.uint(key)?;
            if v == 0 || v > max {
                return Err(GgufError::TooLarge {
                    what: "model dimension",
                    got: v,
                    max,
                });
            }
            Ok(v as usize)
        };
        let dim = get("llama.embedding_length", 16_384)?;
        let heads = get("llama.attention.head_count", 256)?;
        let kv_heads = get("llama.attention.head_count_kv", 256)?;
        let tokens = g.strings("tokenizer.ggml.tokens")?.len();
        let vocab = match g.uint("llama.vocab_size") {
            Ok(v) => v as usize,
            Err(_) => tokens,
        };
        let bad = |key: &str, expected| GgufError::Missing {
            key: key.into(),
            expected,
        };
        if dim % heads != 0 || heads % kv_heads != 0 || (dim / heads) % 2 != 0 || dim / heads > MAX_HEAD_DIM {
            return Err(bad(
                "llama.attention.head_count",
                "a head count dividing the width into even heads, a multiple of the KV head count",
            ));
        }
        if vocab != tokens || vocab < 2 {
            return Err(bad("llama.vocab_size", "the number of tokens"));
        }
        if let Ok(rot) = g.uint("llama.rope.dimension_count")
            && rot as usize != dim / heads
        {
            return Err(bad("llama.rope.dimension_count", "the head width"));
        }
        let layers = get("llama.block_count", 1_024)?;
        let ffn = get("llama.feed_forward_length", 65_536)?;
        let (d, kv, f, v) = (
            dim as u64,
            (dim / heads * kv_heads) as u64,
            ffn as u64,
            vocab as u64,
        );
        // Embeddings and head (counted twice: a tied head is stored transposed), then the blocks.
        let params = 2 * v * d + layers as u64 * (2 * d * d + 2 * d * kv + 3 * d * f + 2 * d);
        if params > MAX_PARAMS {
            return Err(GgufError::TooLarge {
                what: "model parameters",
                got: params,
                max: MAX_PARAMS,
            });
        }
        let rope_base = g.float("llama.rope.freq_base").unwrap_or(10_000.0);
        let eps = g.float("llama.attention.layer_norm_rms_epsilon")?;
        if rope_base <= 1.0 || !(0.0..1.0).contains(&eps) {
            return Err(bad(
                "llama.rope.freq_base",
                "a base above 1 and an epsilon in [0, 1)",
            ));
        }
        Ok(Self {
            dim,
            layers,
            heads,
            kv_heads,
            head_dim: dim / heads,
            ffn,
            vocab,
            context: get("llama.context_length", MAX_CONTEXT as u64)?,
            rope_base,
            eps: eps as f32,
        })
    }

    /// Width of the keys (and values) of one position.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// One transformer block, weights as `[d_in, d_out]` row-major.
#[derive(Debug, Clone)]
struct Block {
    attn_norm: Vec<f32>,
    /// Query, key and value projections side by side: `[dim, dim + 2 kv_dim]`.
    qkv: Vec<f32>,
    out: Vec<f32>,
    ffn_norm: Vec<f32>,
    /// Gate and up projections side by side: `[dim, 2 ffn]`.
    gate_up: Vec<f32>,
    down: Vec<f32>,
}

/// A llama model ready to run.
#[derive(Debug, Clone)]
pub struct Llama {
    /// Its shape.
    pub config: Config,
    /// Token embeddings `[vocab, dim]`.
    embed: Vec<f32>,
    /// Output head `[dim, vocab]`.
    head: Vec<f32>,
    norm: Vec<f32>,
    blocks: Vec<Block>,
    /// `(cos, sin)` of every position and frequency: `[context, head_dim / 2]`.
    rope: Vec<(f32, f32)>,
}

/// The keys and values of one sequence's past positions, per block.
#[derive(Debug, Clone, Default)]
pub struct Cache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
}

impl Cache {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Transposes a GGUF matrix stored as `rows` rows of `cols` (PyTorch's `[out, in]`) into `[cols, rows]`.
fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; w.len()];
    for (r, row) in w.chunks_exact(cols).enumerate() {
        for (c, v) in row.iter().enumerate() {
            t[c * rows + r] = *v;
        }
    }
    t
}

/// Side by side: `[d_in, a_out]` and `[d_in, b_out]` into `[d_in, a_out + b_out + ...]`.
fn side_by_side(parts: &[(&[f32], usize)], d_in: usize) -> Vec<f32> {
    let width: usize = parts.iter().map(|p| p.1).sum();
    let mut out = Vec::with_capacity(d_in * width);
    for row in 0..d_in {
        for (w, cols) in parts {
            out.extend_from_slice(&w[row * cols..(row + 1) * cols]);
        }
    }
    out
}

/// `sin(x)` and `cos(x)` for `0 <= x < 2^20` from basic IEEE operations: `x = k pi/2 + r` with `pi/2` in
/// three parts (Cody and Waite), Taylor series of degree 21 / 20 for |r| <= pi/4 (error below 1e-16).
pub fn sin_cos(x: f64) -> (f64, f64) {
    const P1: f64 = 1.570_796_326_734_125_6; // 33 significant bits of pi/2
    const P2: f64 = 6.077_100_506_303_966e-11;
    const P3: f64 = 2.022_266_248_795_951e-21;
    let k = (x * std::f64::consts::FRAC_2_PI + 0.5).floor();
    let r = ((x - k * P1) - k * P2) - k * P3;
    let r2 = r * r;
    let (mut s, mut c) = (0.0f64, 0.0f64);
    // Horner from the highest term: sin r = r (1 - r^2/(2*3) (1 - r^2/(4*5) (...))).
    for n in (1..=10).rev() {
        let n = n as f64;
        s = r2 / ((2.0 * n) * (2.0 * n + 1.0)) * (1.0 - s);
        c = r2 / ((2.0 * n - 1.0) * (2.0 * n)) * (1.0 - c);
    }
    let (s, c) = (r * (1.0 - s), 1.0 - c);
    match (k as u64) % 4 {
        0 => (s, c),
        1 => (c, -s),
        2 => (-s, -c),
        _ => (-c, s),
    }
}

/// `base^(-2i/d)` for `i` in `0..d/2`: the rotary frequencies, from basic IEEE operations: the logarithm
/// of the base by its binary exponent and an atanh series, the powers by an exp series after reduction.
fn rope_frequencies(base: f64, d: usize) -> Vec<f64> {
    let ln = ln(base);
    (0..d / 2)
        .map(|i| exp64(-(2.0 * i as f64 / d as f64) * ln))
        .collect()
}

/// `ln(x)` for finite `x > 0`: `x = m 2^e` with `m` in `[1, 2)`, `ln m = 2 atanh((m-1)/(m+1))`.
fn ln(x: f64) -> f64 {
    let bits = x.to_bits();
    let e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut sum = 0.0;
    for k in (0..40).rev() {
        sum = sum * s2 + 1.0 / (2 * k + 1) as f64;
    }
    2.0 * s * sum + e as f64 * std::f64::consts::LN_2
}

/// `exp(x)` for `|x| < 700`: `x = k ln 2 + r`, a Taylor series for `exp(r)`, scaled by `2^k`.
fn exp64(x: f64) -> f64 {
    let k = (x / std::f64::consts::LN_2).round();
    let r = x - k * std::f64::consts::LN_2;
    let mut p = 1.0;
    for n in (1..=24).rev() {
        p = 1.0 + p * r / n as f64;
    }
    p * f64::from_bits(((k as i64 + 1023) as u64) << 52)
}

/// `y[rows, d_out] = x[rows, d_in] w` for `w` `[d_in, d_out]`, in units of at most [`ROWS_PER_UNIT`]
/// rows (never one: a lone row is computed as a pair) and [`COLS_PER_UNIT`] columns on rayon's threads.
fn linear(w: &[f32], x: &[f32], rows: usize, d_in: usize, d_out: usize) -> Vec<f32> {
    if rows == 1 {
        let pair = [x, x].concat();
        let mut y = linear(w, &pair, 2, d_in, d_out);
        y.truncate(d_out);
        return y;
    }
    let mut row_units = Vec::new();
    let (units, mut start, mut left) = (rows.div_ceil(ROWS_PER_UNIT), 0, rows);
    for i in 0..units {
        let len = left / (units - i);
        row_units.push((start, len));
        (start, left) = (start + len, left - len);
    }
    // Column blocks of at least two columns (the last block takes a lone leftover column).
    let mut col_units = Vec::new();
    let mut c0 = 0;
    while c0 < d_out {
        let mut len = COLS_PER_UNIT.min(d_out - c0);
        if d_out - c0 - len == 1 {
            len += 1;
        }
        col_units.push((c0, len));
        c0 += len;
    }
    let work: Vec<((usize, usize), (usize, usize))> = row_units
        .iter()
        .flat_map(|r| col_units.iter().map(move |c| (*r, *c)))
        .collect();
    let parts: Vec<Vec<f32>> = work
        .par_iter()
        .map(|&((r0, m), (c0, n))| {
            let mut part = vec![0.0; m * n];
            matmul_strided(m, n, d_in, &x[r0 * d_in..], d_in, &w[c0..], d_out, &mut part);
            part
        })
        .collect();
    let mut y = vec![0.0; rows * d_out];
    for (((r0, m), (c0, n)), part) in work.iter().zip(&parts) {
        for i in 0..*m {
            y[(r0 + i) * d_out + c0..][..*n].copy_from_slice(&part[i * n..(i + 1) * n]);
        }
    }
    y
}

/// RMS norm of every row of `x` (width `w.len()`), times `w`: the mean square summed in index order.
fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let dim = w.len();
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(dim) {
        let ms = row.iter().fold(0.0f32, |s, v| s + v * v) / dim as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        out.extend(row.iter().zip(w).map(|(v, g)| (v * inv) * g));
    }
    out
}

/// A dot product in a fixed order: eight interleaved partial sums, added pairwise at the end.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut tail = 0.0f32;
    for t in chunks * 8..a.len() {
        tail += a[t] * b[t];
    }
    (((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))) + tail
}

/// What one forward call computes for a sequence.
pub struct Step<'a> {
    /// The sequence's new tokens (at least one), at positions `cache.len()..`.
    pub tokens: &'a [u32],
    /// Its past keys and values; the new positions are appended.
    pub cache: &'a mut Cache,
    /// Logits of every new position (teacher forcing) instead of only the last.
    pub all_logits: bool,
}

impl Llama {
    /// Builds the model from a GGUF file's bytes (already parsed into `g`), dequantising every weight.
    pub fn from_gguf(bytes: &[u8], g: &Gguf) -> Result<Self, GgufError> {
        let config = Config::from_gguf(g)?;
        let (dim, kv, ffn, vocab) = (
            config.dim as u64,
            config.kv_dim() as u64,
            config.ffn as u64,
            config.vocab as u64,
        );
        let load = |name: &str, dims: &[u64]| -> Result<Vec<f32>, GgufError> {
            Ok(dequantize(bytes, g.tensor(name, dims)?))
        };
        // A matrix stored as PyTorch `[out, in]` (GGUF dims `[in, out]`), returned as `[in, out]`.
        let matrix = |name: &str, d_in: u64, d_out: u64| -> Result<Vec<f32>, GgufError> {
            Ok(transpose(
                &load(name, &[d_in, d_out])?,
                d_out as usize,
                d_in as usize,
            ))
        };
        let embed = load("token_embd.weight", &[dim, vocab])?;
        let head = if g.tensors.contains_key("output.weight") {
            matrix("output.weight", dim, vocab)?
        } else {
            transpose(&embed, vocab as usize, dim as usize)
        };
        let blocks = (0..config.layers)
            .into_par_iter()
            .map(|i| {
                let name = |part: &str| format!("blk.{i}.{part}.weight");
                let q = matrix(&name("attn_q"), dim, dim)?;
                let k = matrix(&name("attn_k"), dim, kv)?;
                let v = matrix(&name("attn_v"), dim, kv)?;
                let gate = matrix(&name("ffn_gate"), dim, ffn)?;
                let up = matrix(&name("ffn_up"), dim, ffn)?;
                let (d, kv, f) = (dim as usize, kv as usize, ffn as usize);
                Ok(Block {
                    attn_norm: load(&name("attn_norm"), &[dim])?,
                    qkv: side_by_side(&[(&q, d), (&k, kv), (&v, kv)], d),
                    out: matrix(&name("attn_output"), dim, dim)?,
                    ffn_norm: load(&name("ffn_norm"), &[dim])?,
                    gate_up: side_by_side(&[(&gate, f), (&up, f)], d),
                    down: matrix(&name("ffn_down"), ffn, dim)?,
                })
            })
            .collect::<Result<Vec<_>, GgufError>>()?;
        let freqs = rope_frequencies(config.rope_base, config.head_dim);
        let rope = (0..config.context)
            .flat_map(|pos| {
                freqs.iter().map(move |f| {
                    let (s, c) = sin_cos(pos as f64 * f);
                    (c as f32, s as f32)
                })
            })
            .collect();
        Ok(Self {
            norm: load("output_norm.weight", &[dim])?,
            config,
            embed,
            head,
            blocks,
            rope,
        })
    }

    /// A new, empty cache for one sequence.
    pub fn cache(&self) -> Cache {
        Cache {
            k: vec![Vec::new(); self.config.layers],
            v: vec![Vec::new(); self.config.layers],
            len: 0,
        }
    }

    /// Rotates the query or key heads of one row at position `pos` (pairs `(2i, 2i+1)`, as the GGUF
    /// weights' row order expects).
    fn rotate(&self, row: &mut [f32], pos: usize) {
        let half = self.config.head_dim / 2;
        let table = &self.rope[pos * half..(pos + 1) * half];
        for head in row.chunks_exact_mut(self.config.head_dim) {
            for (pair, (c, s)) in head.chunks_exact_mut(2).zip(table) {
                let (x0, x1) = (pair[0], pair[1]);
                pair[0] = x0 * c - x1 * s;
                pair[1] = x0 * s + x1 * c;
            }
        }
    }

    /// Runs the new tokens of several sequences through the model in one pass, appending their keys and
    /// values to their caches, and returns for each sequence the logits `[vocab]` of its last new position
    /// (or of every new position, one after the other, with `all_logits`).
    ///
    /// # Panics
    /// If a sequence has no new token, a token is outside the vocabulary, or a sequence would pass the
    /// model's context (callers check: [`Llama::fits`]).
    pub fn forward(&self, steps: &mut [Step<'_>]) -> Vec<Vec<f32>> {
        let cfg = &self.config;
        let (dim, kv_dim, hd) = (cfg.dim, cfg.kv_dim(), cfg.head_dim);
        let qkv_w = dim + 2 * kv_dim;
        let mut spans = Vec::with_capacity(steps.len());
        let mut rows = 0;
        for s in steps.iter() {
            assert!(!s.tokens.is_empty() && self.fits(s.cache.len, s.tokens.len()));
            spans.push((rows, s.tokens.len(), s.cache.len));
            rows += s.tokens.len();
        }
        let mut x = Vec::with_capacity(rows * dim);
        for s in steps.iter() {
            for t in s.tokens {
                x.extend_from_slice(&self.embed[*t as usize * dim..][..dim]);
            }
        }
        let group = cfg.heads / cfg.kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        for (b, block) in self.blocks.iter().enumerate() {
            let h = rms_norm(&x, &block.attn_norm, cfg.eps);
            let mut qkv = linear(&block.qkv, &h, rows, dim, qkv_w);
            for &(r0, len, past) in &spans {
                for i in 0..len {
                    let row = &mut qkv[(r0 + i) * qkv_w..][..dim + kv_dim];
                    self.rotate(row, past + i);
                }
            }
            for (s, &(r0, len, _)) in steps.iter_mut().zip(&spans) {
                for i in 0..len {
                    let row = &qkv[(r0 + i) * qkv_w..][..qkv_w];
                    s.cache.k[b].extend_from_slice(&row[dim..dim + kv_dim]);
                    s.cache.v[b].extend_from_slice(&row[dim + kv_dim..]);
                }
            }
            // One unit per (sequence, new row, head): scores over every cached position up to the row's.
            let units: Vec<(usize, usize, usize)> = spans
                .iter()
                .enumerate()
                .flat_map(|(s, &(_, len, _))| {
                    (0..len).flat_map(move |i| (0..cfg.heads).map(move |h| (s, i, h)))
                })
                .collect();
            let caches: Vec<&Cache> = steps.iter().map(|s| &*s.cache).collect();
            let heads: Vec<Vec<f32>> = units
                .par_iter()
                .map(|&(s, i, head)| {
                    let (r0, _, past) = spans[s];
                    let q = &qkv[(r0 + i) * qkv_w + head * hd..][..hd];
                    let kvh = head / group;
                    let (keys, values) = (&caches[s].k[b], &caches[s].v[b]);
                    let n = past + i + 1;
                    let mut scores: Vec<f32> = (0..n)
                        .map(|j| dot(q, &keys[j * kv_dim + kvh * hd..][..hd]) * scale)
                        .collect();
                    let max = scores.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
                    let mut sum = 0.0f32;
                    for v in &mut scores {
                        *v = exp(*v - max);
                        sum += *v;
                    }
                    let mut ctx = vec![0.0f32; hd];
                    for (j, p) in scores.iter().enumerate() {
                        let v = &values[j * kv_dim + kvh * hd..][..hd];
                        for (c, x) in ctx.iter_mut().zip(v) {
                            *c += p * x;
                        }
                    }
                    let inv = 1.0 / sum;
                    ctx.iter_mut().for_each(|c| *c *= inv);
                    ctx
                })
                .collect();
            let mut ctx = vec![0.0; rows * dim];
            for (&(s, i, head), out) in units.iter().zip(&heads) {
                ctx[(spans[s].0 + i) * dim + head * hd..][..hd].copy_from_slice(out);
            }
            let attended = linear(&block.out, &ctx, rows, dim, dim);
            for (r, a) in x.iter_mut().zip(&attended) {
                *r += a;
            }
            let h = rms_norm(&x, &block.ffn_norm, cfg.eps);
            let gu = linear(&block.gate_up, &h, rows, dim, 2 * cfg.ffn);
            let act: Vec<f32> = gu
                .par_chunks(2 * cfg.ffn)
                .flat_map_iter(|row| {
                    let (gate, up) = row.split_at(cfg.ffn);
                    gate.iter()
                        .zip(up)
                        .map(|(g, u)| (g / (1.0 + exp(-g))) * u)
                        .collect::<Vec<_>>()
                })
                .collect();
            let down = linear(&block.down, &act, rows, cfg.ffn, dim);
            for (r, d) in x.iter_mut().zip(&down) {
                *r += d;
            }
        }
        for s in steps.iter_mut() {
            s.cache.len += s.tokens.len();
        }
        // The head runs on the rows whose logits are wanted only.
        let mut picked = Vec::new();
        let mut counts = Vec::with_capacity(steps.len());
        for (s, &(r0, len, _)) in steps.iter().zip(&spans) {
            let first = if s.all_logits { r0 } else { r0 + len - 1 };
            picked.extend_from_slice(&x[first * dim..(r0 + len) * dim]);
            counts.push(r0 + len - first);
        }
        let n = picked.len() / dim;
        let h = rms_norm(&picked, &self.norm, cfg.eps);
        let logits = linear(&self.head, &h, n, dim, cfg.vocab);
        let mut out = Vec::with_capacity(steps.len());
        let mut at = 0;
        for c in counts {
            out.push(logits[at * cfg.vocab..(at + c) * cfg.vocab].to_vec());
            at += c;
        }
        out
    }

    /// Whether `new` more positions fit after `past` in the model's context.
    pub fn fits(&self, past: usize, new: usize) -> bool {
        past.checked_add(new).is_some_and(|n| n <= self.config.context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sin_cos_and_exp_match_the_platform_within_rounding() {
        for i in 0..10_000 {
            let x = i as f64 * 0.8191;
            let (s, c) = sin_cos(x);
            assert!((s - x.sin()).abs() < 1e-12 && (c - x.cos()).abs() < 1e-12, "{x}");
        }
        for x in [1e-3, 0.5, 2.0, 10.0, 1e5, 123_456.789] {
            assert!((ln(x) - x.ln()).abs() < 1e-14 * x.ln().abs().max(1.0), "{x}");
        }
        for x in [-30.0, -1.0, -1e-3, 0.0, 0.7, 11.0] {
            assert!((exp64(x) - f64::exp(x)).abs() <= 1e-13 * f64::exp(x), "{x}");
        }
        let f = rope_frequencies(100_000.0, 64);
        assert_eq!(f[0], 1.0);
        assert!((f[31] - 100_000f64.powf(-62.0 / 64.0)).abs() < 1e-17);
    }

    fn config(dim: u64, heads: u64, layers: u64, ffn: u64) -> Result<Config, GgufError> {
        use super::super::gguf::Value;
        let mut metadata = std::collections::BTreeMap::new();
        let mut set = |k: &str, v: Value| metadata.insert(k.to_string(), v);
        set("general.architecture", Value::String("llama".into()));
        set("llama.embedding_length", Value::Uint(dim));
        set("llama.attention.head_count", Value::Uint(heads));
        set("llama.attention.head_count_kv", Value::Uint(heads));
        set("llama.block_count", Value::Uint(layers));
        set("llama.feed_forward_length", Value::Uint(ffn));
        set("llama.context_length", Value::Uint(2048));
        set("llama.attention.layer_norm_rms_epsilon", Value::Float(1e-5));
        set(
            "tokenizer.ggml.tokens",
            Value::Array(vec![Value::String("a".into()), Value::String("b".into())]),
        );
        Config::from_gguf(&Gguf {
            version: 3,
            metadata,
            tensors: std::collections::BTreeMap::new(),
        })
    }

    #[test]
    fn a_model_declaring_too_many_parameters_or_too_wide_heads_is_refused_before_loading() {
        let ok = config(576, 9, 30, 1536).unwrap();
        assert_eq!((ok.head_dim, ok.kv_dim(), ok.vocab), (64, 576, 2));
        assert!(matches!(
            config(16_384, 64, 1_024, 65_536),
            Err(GgufError::TooLarge { .. })
        ));
        assert!(
            matches!(config(4_096, 1, 2, 64), Err(GgufError::Missing { .. })),
            "head of 4,096"
        );
        assert!(
            matches!(config(576, 7, 30, 1536), Err(GgufError::Missing { .. })),
            "576 / 7 heads"
        );
    }

    #[test]
    fn a_row_computes_the_same_bits_alone_in_a_pair_and_in_any_column_cut() {
        let (d_in, d_out) = (70, 1030);
        let w: Vec<f32> = (0..d_in * d_out)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let x: Vec<f32> = (0..5 * d_in)
            .map(|i| ((i * 104_729) % 997) as f32 / 997.0 - 0.5)
            .collect();
        let all = linear(&w, &x, 5, d_in, d_out);
        let one = linear(&w, &x[2 * d_in..3 * d_in], 1, d_in, d_out);
        assert_eq!(one, all[2 * d_out..3 * d_out]);
        let reference =
            super::super::cnn::reference_matmul(5, d_out, d_in, &x, &w, super::super::cnn::K_CHUNK);
        assert_eq!(all, reference);
    }
}
