//! A pre-packed forward pass for the image classifiers (`mnist-cnn`, `digits`): 3x3 convolutions with
//! padding 1, each followed by ReLU and optionally a 2x2 max-pool, then fully connected layers.
//!
//! burn's flex backend re-lays out a convolution's weights on every call, copies the input to NHWC, builds
//! im2col with bounds-checked scalar loads, scatters the result back and runs bias, ReLU and max-pool as
//! separate passes. Here the weights are laid out once at load as `[9 * c_in, c_out]` GEMM operands;
//! activations stay NHWC in zero-padded buffers, so an im2col row is three contiguous copies; each layer is
//! one GEMM per unit of work (the `gemm` crate burn's flex backend uses, on one thread), followed by one pass
//! that adds the bias, applies ReLU and pools.
//!
//! **Bits.** Every output element is a sum in one order that depends on nothing but the model:
//! - the work of an image is split into the same two halves (by output rows) whatever the batch size or the
//!   number of threads, so an image's GEMMs have the same shapes alone or inside any batch;
//! - every reduction over K is cut into fixed chunks of at most [`K_CHUNK`] and the chunks are added in
//!   order: gemm 0.19 only blocks K by the CPU's L1 cache geometry when K > 512, so no chunk is split;
//! - no product has a single row or column or a K below 3 (gemm has separate vector paths for those): a
//!   lone image's fully connected layers run as two rows, layers have at least two outputs, short K is
//!   padded with zero terms;
//! - inside a chunk, gemm's kernels (AVX2 or AVX-512) accumulate each element with one fused multiply-add
//!   per term, in K order, from zero.
//!
//! [`reference_logits`] computes the same forward in plain scalar code in that order;
//! `node/tests/inference.rs` checks that the packed forward equals it bit for bit, which shows that the
//! output depends on neither the SIMD kernel nor the cache geometry.

use std::cell::RefCell;

use rayon::prelude::*;

/// The longest run of K that one GEMM call sums (gemm 0.19 does not split K up to 512).
pub const K_CHUNK: usize = 512;

/// Parts an image's convolution work is split into (by output rows), whatever the batch or thread count.
const PARTS: usize = 2;

/// Most rows one fully connected GEMM takes (a larger batch is split into units of at most this).
const DENSE_ROWS: usize = 32;

/// A 3x3 convolution with padding 1, then ReLU, then optionally a 2x2 max-pool with stride 2.
#[derive(Debug, Clone)]
pub struct Conv {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Whether a 2x2 max-pool follows.
    pub pool: bool,
    /// Weights `[9 * c_in, c_out]`, row `(ky * 3 + kx) * c_in + ci`.
    w: Vec<f32>,
    /// Bias `[c_out]`.
    b: Vec<f32>,
}

impl Conv {
    /// Packs burn/PyTorch weights `[c_out, c_in, 3, 3]` and bias `[c_out]`.
    pub fn new(c_in: usize, c_out: usize, pool: bool, weight: &[f32], bias: &[f32]) -> Result<Self, String> {
        if c_out < 2 {
            return Err(format!("conv {c_in}->{c_out}: fewer than two output channels"));
        }
        if weight.len() != c_out * c_in * 9 || bias.len() != c_out {
            return Err(format!(
                "conv {c_in}->{c_out}: weight has {} values, bias {}",
                weight.len(),
                bias.len()
            ));
        }
        let mut w = vec![0.0; 9 * c_in * c_out];
        for co in 0..c_out {
            for ci in 0..c_in {
                for k in 0..9 {
                    w[(k * c_in + ci) * c_out + co] = weight[(co * c_in + ci) * 9 + k];
                }
            }
        }
        Ok(Self {
            c_in,
            c_out,
            pool,
            w,
            b: bias.to_vec(),
        })
    }
}

/// A fully connected layer `y = x W + b`, optionally followed by ReLU.
#[derive(Debug, Clone)]
pub struct Dense {
    /// Inputs.
    pub d_in: usize,
    /// Outputs.
    pub d_out: usize,
    /// Whether ReLU follows.
    pub relu: bool,
    /// Weights `[d_in, d_out]`.
    w: Vec<f32>,
    /// Bias `[d_out]`.
    b: Vec<f32>,
}

impl Dense {
    /// Takes burn's weights `[d_in, d_out]` and bias `[d_out]`.
    pub fn new(d_in: usize, d_out: usize, relu: bool, weight: &[f32], bias: &[f32]) -> Result<Self, String> {
        if d_out < 2 {
            return Err(format!("linear {d_in}->{d_out}: fewer than two outputs"));
        }
        if weight.len() != d_in * d_out || bias.len() != d_out {
            return Err(format!(
                "linear {d_in}->{d_out}: weight has {} values, bias {}",
                weight.len(),
                bias.len()
            ));
        }
        Ok(Self {
            d_in,
            d_out,
            relu,
            w: weight.to_vec(),
            b: bias.to_vec(),
        })
    }
}

/// A classifier of square one-channel images: convolutions, then fully connected layers.
#[derive(Debug, Clone)]
pub struct PackedCnn {
    side: usize,
    convs: Vec<Conv>,
    dense: Vec<Dense>,
}

/// Height (= width) and channels of the activation entering each convolution, and of the features.
fn shapes(side: usize, convs: &[Conv]) -> Vec<(usize, usize)> {
    let mut out = vec![(side, 1)];
    for conv in convs {
        let (s, _) = out[out.len() - 1];
        out.push((if conv.pool { s / 2 } else { s }, conv.c_out));
    }
    out
}

impl PackedCnn {
    /// A network for `side` x `side` images. The first fully connected layer's weights are given in burn's
    /// flatten order (channel, row, column) and re-ordered here for the NHWC features.
    pub fn new(side: usize, convs: Vec<Conv>, mut dense: Vec<Dense>) -> Result<Self, String> {
        let mut c = 1;
        for conv in &convs {
            if conv.c_in != c {
                return Err(format!("conv expects {} channels, gets {c}", conv.c_in));
            }
            c = conv.c_out;
        }
        let all = shapes(side, &convs);
        // Every GEMM of a part then has at least two rows (see `matmul`).
        if all.iter().any(|(s, _)| *s < 2) {
            return Err(format!("images of side {side} shrink below 2x2"));
        }
        let (s, c) = all[convs.len()];
        for pair in dense.windows(2) {
            if pair[0].d_out != pair[1].d_in {
                return Err(format!("linear {} -> {} mismatch", pair[0].d_out, pair[1].d_in));
            }
        }
        let Some(first) = dense.first_mut() else {
            return Err("no fully connected layer".into());
        };
        if first.d_in != s * s * c {
            return Err(format!(
                "linear takes {} features, the convolutions give {}",
                first.d_in,
                s * s * c
            ));
        }
        let mut w = vec![0.0; first.w.len()];
        for ch in 0..c {
            for p in 0..s * s {
                let from = (ch * s * s + p) * first.d_out;
                let to = (p * c + ch) * first.d_out;
                w[to..to + first.d_out].copy_from_slice(&first.w[from..from + first.d_out]);
            }
        }
        first.w = w;
        Ok(Self { side, convs, dense })
    }

    /// Classes the network outputs.
    pub fn classes(&self) -> usize {
        self.dense.last().map_or(0, |d| d.d_out)
    }

    /// Logits `[n * classes]` for `n` images of `side * side` values already normalised.
    pub fn forward(&self, images: &[f32]) -> Vec<f32> {
        let area = self.side * self.side;
        let n = images.len() / area;
        let shapes = shapes(self.side, &self.convs);
        // Zero-padded NHWC activations, one buffer per image.
        let mut act: Vec<Vec<f32>> = images
            .chunks_exact(area)
            .map(|img| {
                let s = self.side + 2;
                let mut buf = vec![0.0; s * s];
                for (y, row) in img.chunks_exact(self.side).enumerate() {
                    buf[(y + 1) * s + 1..(y + 1) * s + 1 + self.side].copy_from_slice(row);
                }
                buf
            })
            .collect();
        for (l, conv) in self.convs.iter().enumerate() {
            let (s_in, _) = shapes[l];
            let (s_out, c_out) = shapes[l + 1];
            let row_len = (s_out + 2) * c_out;
            let mut next: Vec<Vec<f32>> = (0..n).map(|_| vec![0.0; (s_out + 2) * row_len]).collect();
            let mid = s_out.div_ceil(PARTS);
            let mut units = Vec::with_capacity(n * PARTS);
            for (x, out) in act.iter().zip(next.iter_mut()) {
                let (top, bottom) = out.split_at_mut((1 + mid) * row_len);
                units.push((x.as_slice(), &mut top[row_len..], 0..mid));
                units.push((x.as_slice(), &mut bottom[..(s_out - mid) * row_len], mid..s_out));
            }
            units
                .into_par_iter()
                .filter(|(_, _, rows)| !rows.is_empty())
                .for_each(|(x, out, rows)| conv_rows(conv, s_in, x, out, rows));
            act = next;
        }
        // Features: the interior of the last activation, NHWC.
        let (s, c) = shapes[self.convs.len()];
        let mut x: Vec<f32> = Vec::with_capacity(n * s * s * c);
        for buf in &act {
            for y in 0..s {
                let start = ((y + 1) * (s + 2) + 1) * c;
                x.extend_from_slice(&buf[start..start + s * c]);
            }
        }
        // A lone row would take gemm's matrix-vector path: run it as two rows and keep one.
        let rows = if n == 1 {
            x.extend_from_within(..);
            2
        } else {
            n
        };
        for layer in &self.dense {
            x = dense_rows(layer, &x, rows);
        }
        x.truncate(n * self.classes());
        x
    }
}

thread_local! {
    /// im2col and GEMM output scratch of this thread, reused across calls.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `0..k` cut into the fewest near-equal chunks of at most `max` (the earlier chunks the shorter).
fn k_chunks(k: usize, max: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let chunks = k.div_ceil(max.max(1));
    let mut k0 = 0;
    (0..chunks).map(move |i| {
        let len = (k - k0) / (chunks - i);
        k0 += len;
        k0 - len..k0
    })
}

/// The shortest K gemm runs through its FMA kernels (it multiplies K <= 2 by a separate vector path
/// that rounds each product).
const MIN_K: usize = 3;

/// `c[m, n] = a[m, k] b[k, n]` (row-major, `a` with row stride `lda`) with gemm on this thread, K summed
/// in the chunks of [`k_chunks`]`(k, `[`K_CHUNK`]`)`, added in order. K below 3 is padded with zero terms
/// (a fused multiply-add of 0 by 0 leaves the sum as it is).
///
/// # Panics
/// If `m < 2` or `n < 2` (gemm multiplies one row or one column by other paths, whose sums run across
/// SIMD lanes) or a slice is too short for its shape.
pub fn matmul(m: usize, n: usize, k: usize, a: &[f32], lda: usize, b: &[f32], c: &mut [f32]) {
    matmul_strided(m, n, k, a, lda, b, n, c);
}

/// [`matmul`] with `b` read as `[k, n]` rows of stride `ldb >= n` (columns of a wider matrix), so column
/// blocks of one product can run on separate threads; each element's bits are those of [`matmul`].
///
/// # Panics
/// As [`matmul`], and if `ldb < n`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_strided(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
) {
    assert!(
        m >= 2 && n >= 2,
        "one-row or one-column products take another summation path"
    );
    assert!(ldb >= n && a.len() >= (m - 1) * lda + k && b.len() + ldb >= k * ldb + n && c.len() >= m * n);
    if k < MIN_K {
        let mut ap = vec![0.0; m * MIN_K];
        for (i, row) in ap.chunks_exact_mut(MIN_K).enumerate() {
            row[..k].copy_from_slice(&a[i * lda..i * lda + k]);
        }
        let mut bp = vec![0.0; MIN_K * n];
        for t in 0..k {
            bp[t * n..(t + 1) * n].copy_from_slice(&b[t * ldb..t * ldb + n]);
        }
        return matmul(m, n, MIN_K, &ap, MIN_K, &bp, c);
    }
    for (i, chunk) in k_chunks(k, K_CHUNK).enumerate() {
        let (k0, kc) = (chunk.start, chunk.len());
        // SAFETY: the asserts above keep every access of the m x kc, kc x n and m x n views in bounds, and
        // `c` does not overlap `a` or `b` (it is borrowed mutably).
        #[allow(unsafe_code)]
        unsafe {
            gemm::gemm(
                m,
                n,
                kc,
                c.as_mut_ptr(),
                1,
                n as isize,
                i > 0,
                a.as_ptr().add(k0),
                1,
                lda as isize,
                b.as_ptr().add(k0 * ldb),
                1,
                ldb as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
}

/// The sum of `a(t) * b(t)` over `0..k` as [`matmul`] computes one element when K is cut into chunks of at
/// most `max`: a fused multiply-add per term in order from zero within a chunk, the chunks added in order.
fn dot(k: usize, max: usize, a: impl Fn(usize) -> f32, b: impl Fn(usize) -> f32) -> f32 {
    let mut total = 0.0f32;
    for (i, chunk) in k_chunks(k, max).enumerate() {
        let acc = chunk.fold(0.0f32, |acc, t| a(t).mul_add(b(t), acc));
        total = if i == 0 { acc } else { total + acc };
    }
    total
}

/// [`matmul`] in plain scalar code (no SIMD, no cache blocking), K cut into chunks of at most `max`.
pub fn reference_matmul(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], max: usize) -> Vec<f32> {
    (0..m * n)
        .map(|e| {
            let (i, j) = (e / n, e % n);
            dot(k, max, |t| a[i * k + t], |t| b[t * n + j])
        })
        .collect()
}

/// One part of a convolution layer for one image: output rows `rows` (after pooling) written into `out`,
/// the padded output buffer's rows `1 + rows.start ..`, interior columns only.
fn conv_rows(conv: &Conv, s_in: usize, x: &[f32], out: &mut [f32], rows: std::ops::Range<usize>) {
    let (c_in, c_out) = (conv.c_in, conv.c_out);
    let k = 9 * c_in;
    let f = if conv.pool { 2 } else { 1 };
    let s_out = s_in / f;
    // The convolution's own rows and columns this part needs (a pool drops an odd last row and column).
    let (y0, ys, xs) = (rows.start * f, rows.len() * f, s_out * f);
    let m = ys * xs;
    let in_row = (s_in + 2) * c_in;
    SCRATCH.with(|scratch| {
        let (cols, acc) = &mut *scratch.borrow_mut();
        cols.resize(m * k, 0.0);
        acc.resize(m * c_out, 0.0);
        for y in 0..ys {
            for xx in 0..xs {
                let row = &mut cols[(y * xs + xx) * k..][..k];
                for ky in 0..3 {
                    let from = (y0 + y + ky) * in_row + xx * c_in;
                    row[ky * 3 * c_in..(ky + 1) * 3 * c_in].copy_from_slice(&x[from..from + 3 * c_in]);
                }
            }
        }
        matmul(m, c_out, k, cols, k, &conv.w, acc);
        let out_row = (s_out + 2) * c_out;
        for py in 0..rows.len() {
            for px in 0..s_out {
                let dst = &mut out[py * out_row + (px + 1) * c_out..][..c_out];
                if conv.pool {
                    let at =
                        |dy: usize, dx: usize| &acc[((2 * py + dy) * xs + 2 * px + dx) * c_out..][..c_out];
                    let (a, b, c, d) = (at(0, 0), at(0, 1), at(1, 0), at(1, 1));
                    for co in 0..c_out {
                        // Adding the bias is monotonic, so pooling before it gives the same bits.
                        let v = a[co].max(b[co]).max(c[co].max(d[co])) + conv.b[co];
                        dst[co] = v.max(0.0);
                    }
                } else {
                    let a = &acc[(py * xs + px) * c_out..][..c_out];
                    for co in 0..c_out {
                        dst[co] = (a[co] + conv.b[co]).max(0.0);
                    }
                }
            }
        }
    });
}

/// A fully connected layer over `rows` rows (at least two), split into units of at most [`DENSE_ROWS`].
fn dense_rows(layer: &Dense, x: &[f32], rows: usize) -> Vec<f32> {
    let (d_in, d_out) = (layer.d_in, layer.d_out);
    let mut y = vec![0.0; rows * d_out];
    let units = rows.div_ceil(DENSE_ROWS);
    // Units of near-equal size, none of one row.
    let mut spans = Vec::with_capacity(units);
    let mut r0 = 0;
    for i in 0..units {
        let len = (rows - r0) / (units - i);
        spans.push(len);
        r0 += len;
    }
    let mut parts = Vec::with_capacity(units);
    let (mut xs, mut ys) = (x, y.as_mut_slice());
    for len in spans {
        let (xa, xb) = xs.split_at(len * d_in);
        let (ya, yb) = ys.split_at_mut(len * d_out);
        parts.push((xa, ya, len));
        (xs, ys) = (xb, yb);
    }
    parts.into_par_iter().for_each(|(x, y, len)| {
        matmul(len, d_out, d_in, x, d_in, &layer.w, y);
        for row in y.chunks_exact_mut(d_out) {
            for (v, b) in row.iter_mut().zip(&layer.b) {
                *v += b;
                if layer.relu {
                    *v = v.max(0.0);
                }
            }
        }
    });
    y
}

/// The same forward as [`PackedCnn::forward`] for one image, in plain scalar code: each output element is
/// summed with one fused multiply-add per term in K order from zero, K cut into the same chunks, the chunks
/// added in order. Slow; for tests that check the packed forward's bits do not depend on the SIMD kernel or
/// the cache geometry.
pub fn reference_logits(net: &PackedCnn, image: &[f32]) -> Vec<f32> {
    // Activation as [y][x][c] without padding.
    let (mut s, mut c) = (net.side, 1);
    let mut act = image.to_vec();
    for conv in &net.convs {
        let at = |act: &[f32], y: isize, x: isize, ch: usize| {
            if y < 0 || x < 0 || y >= s as isize || x >= s as isize {
                0.0
            } else {
                act[(y as usize * s + x as usize) * c + ch]
            }
        };
        let k = 9 * c;
        let mut full = vec![0.0f32; s * s * conv.c_out];
        for y in 0..s {
            for x in 0..s {
                for co in 0..conv.c_out {
                    let a = |t: usize| {
                        let (kk, ch) = (t / c, t % c);
                        at(
                            &act,
                            y as isize + (kk / 3) as isize - 1,
                            x as isize + (kk % 3) as isize - 1,
                            ch,
                        )
                    };
                    full[(y * s + x) * conv.c_out + co] = dot(k, K_CHUNK, a, |t| conv.w[t * conv.c_out + co]);
                }
            }
        }
        let s_out = if conv.pool { s / 2 } else { s };
        let mut out = vec![0.0f32; s_out * s_out * conv.c_out];
        for y in 0..s_out {
            for x in 0..s_out {
                for co in 0..conv.c_out {
                    let v = if conv.pool {
                        let f =
                            |dy: usize, dx: usize| full[((2 * y + dy) * s + 2 * x + dx) * conv.c_out + co];
                        f(0, 0).max(f(0, 1)).max(f(1, 0).max(f(1, 1)))
                    } else {
                        full[(y * s + x) * conv.c_out + co]
                    };
                    out[(y * s_out + x) * conv.c_out + co] = (v + conv.b[co]).max(0.0);
                }
            }
        }
        (act, s, c) = (out, s_out, conv.c_out);
    }
    for layer in &net.dense {
        act = (0..layer.d_out)
            .map(|o| {
                let v = dot(layer.d_in, K_CHUNK, |t| act[t], |t| layer.w[t * layer.d_out + o]) + layer.b[o];
                if layer.relu { v.max(0.0) } else { v }
            })
            .collect();
    }
    act
}
