//! In-situ quantization at load: weights rounded to 8-bit (`Q8`) or 4-bit (`Q4`) integers in
//! blocks of 32 along each row, one f32 scale per block (symmetric, like llama.cpp's Q8_0 and
//! Q4_0), multiplied on the CPU by kiln's own kernels.
//!
//! Decode (a few activation rows): each activation row is itself quantized to 8 bits per block
//! of 32 and the products are integer dot products (AVX2 `maddubs`/`madd`, portable code
//! elsewhere) scaled per block, reading 1.125 (Q8) or 0.625 (Q4) bytes per weight. Prefill
//! (many rows): a block of weight rows is dequantized to f32 and multiplied by an f32 GEMM, so
//! activations stay f32 there.

use rayon::prelude::*;

/// Weights per quantization block.
pub const QBLOCK: usize = 32;

/// How weights are quantized at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    /// 8-bit integers per block of 32, one scale each (1.125 bytes per weight).
    Q8,
    /// 4-bit integers per block of 32, one scale each (0.625 bytes per weight).
    Q4,
}

impl Quantization {
    /// `q8` or `q4`.
    pub fn name(self) -> &'static str {
        match self {
            Quantization::Q8 => "q8",
            Quantization::Q4 => "q4",
        }
    }

    /// Parses `q8` or `q4` (also `int8`, `int4`).
    pub fn from_name(name: &str) -> crate::Result<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "q8" | "int8" | "q8_0" => Ok(Quantization::Q8),
            "q4" | "int4" | "q4_0" => Ok(Quantization::Q4),
            _ => Err(crate::Error::invalid_arg(
                "quantize",
                format!("unknown quantization {name:?}; expected q8 or q4"),
            )),
        }
    }
}

/// A row-major `[rows, cols]` matrix quantized per block of [`QBLOCK`] columns.
#[derive(Clone)]
pub struct QuantMatrix {
    kind: Quantization,
    rows: usize,
    cols: usize,
    /// Q8: one byte per weight, stored as `q + 128`. Q4: two weights per byte; within a block,
    /// byte `j` holds weight `j` (low nibble) and `j + 16` (high nibble), each stored as
    /// `q + 8`. Unsigned storage lets the integer kernels multiply unsigned weights by signed
    /// activations directly and subtract `offset · Σx` per block afterwards.
    qs: Vec<u8>,
    /// One per block, row-major (`rows · cols / QBLOCK`).
    scales: Vec<f32>,
}

impl std::fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QuantMatrix({:?}, {}x{})",
            self.kind, self.rows, self.cols
        )
    }
}

/// Activation rows from which the GEMM path is taken.
const GEMM_MIN_ROWS: usize = 4;

impl QuantMatrix {
    /// Whether a row of `cols` values can be quantized (whole blocks only).
    pub fn fits(cols: usize) -> bool {
        cols > 0 && cols % QBLOCK == 0
    }

    /// Quantizes a row-major `[rows, cols]` f32 matrix (`cols` a multiple of [`QBLOCK`]).
    pub fn quantize(kind: Quantization, w: &[f32], rows: usize, cols: usize) -> Self {
        assert!(w.len() == rows * cols, "quantize: shape");
        Self::quantize_rows(kind, rows, cols, |r, dst| {
            dst.copy_from_slice(&w[r * cols..(r + 1) * cols])
        })
    }

    /// Quantizes a `[rows, cols]` matrix produced row by row by `fill` (row `r` as f32 into a
    /// `cols` slice), in parallel over rows: no f32 copy of the whole matrix is ever made.
    pub fn quantize_rows(
        kind: Quantization,
        rows: usize,
        cols: usize,
        fill: impl Fn(usize, &mut [f32]) + Sync,
    ) -> Self {
        assert!(
            Self::fits(cols),
            "quantize: {cols} columns are not whole blocks"
        );
        let bpr = cols / QBLOCK;
        let bytes_per_block = match kind {
            Quantization::Q8 => QBLOCK,
            Quantization::Q4 => QBLOCK / 2,
        };
        let mut qs = vec![0u8; rows * bpr * bytes_per_block];
        let mut scales = vec![0f32; rows * bpr];
        qs.par_chunks_mut(bpr * bytes_per_block)
            .zip(scales.par_chunks_mut(bpr))
            .enumerate()
            .for_each_init(
                || vec![0f32; cols],
                |row, (r, (q_row, s_row))| {
                    fill(r, row);
                    for ((q, scale), src) in q_row
                        .chunks_mut(bytes_per_block)
                        .zip(s_row.iter_mut())
                        .zip(row.chunks(QBLOCK))
                    {
                        *scale = quantize_block(kind, src, q);
                    }
                },
            );
        Self {
            kind,
            rows,
            cols,
            qs,
            scales,
        }
    }

    /// Rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Q8 or Q4.
    pub fn kind(&self) -> Quantization {
        self.kind
    }

    /// Bytes held (integers and scales).
    pub fn byte_len(&self) -> usize {
        self.qs.len() + 4 * self.scales.len()
    }

    /// Row `r` dequantized into `out` (`cols` values).
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) {
        let bpr = self.cols / QBLOCK;
        for (b, dst) in out.chunks_mut(QBLOCK).enumerate() {
            let block = r * bpr + b;
            let d = self.scales[block];
            match self.kind {
                Quantization::Q8 => {
                    let q = &self.qs[block * QBLOCK..(block + 1) * QBLOCK];
                    for (o, &v) in dst.iter_mut().zip(q) {
                        *o = (v as i32 - 128) as f32 * d;
                    }
                }
                Quantization::Q4 => {
                    let q = &self.qs[block * QBLOCK / 2..(block + 1) * QBLOCK / 2];
                    for j in 0..QBLOCK / 2 {
                        dst[j] = ((q[j] & 0x0F) as i32 - 8) as f32 * d;
                        dst[j + QBLOCK / 2] = ((q[j] >> 4) as i32 - 8) as f32 * d;
                    }
                }
            }
        }
    }

    /// `y = x · selfᵀ` for `n` rows of `x` (`[n, cols]`, row-major) → `[n, rows]`.
    pub fn matmul_t(&self, x: &[f32], n: usize) -> Vec<f32> {
        assert_eq!(x.len(), n * self.cols, "matmul_t: activation length");
        let mut y = vec![0f32; n * self.rows];
        if n == 0 || self.rows == 0 {
            return y;
        }
        if n >= GEMM_MIN_ROWS {
            self.gemm(x, n, &mut y);
        } else {
            self.gemv(x, n, &mut y);
        }
        y
    }

    /// Row `r`'s dot product with one activation row `x` (`cols` values; quantized once
    /// here), for [`HostWeight::gemv_many`](crate::nn::linear::HostWeight::gemv_many).
    pub(crate) fn row_dot<'a>(&'a self, x: &[f32]) -> impl Fn(usize) -> f32 + Sync + 'a {
        let (xq, xd, xc) = self.quantize_activations(x, 1);
        let bpr = self.cols / QBLOCK;
        let bytes = bpr * self.bytes_per_block();
        let dot = block_dot_fn(self.kind);
        move |r| {
            dot(
                &self.qs[r * bytes..(r + 1) * bytes],
                &self.scales[r * bpr..(r + 1) * bpr],
                &xq,
                &xd,
                &xc,
            )
        }
    }

    fn bytes_per_block(&self) -> usize {
        match self.kind {
            Quantization::Q8 => QBLOCK,
            Quantization::Q4 => QBLOCK / 2,
        }
    }

    /// `n` activation rows quantized to 8 bits per block, as the weights are laid out: values,
    /// scales, and per group of 4 values −offset · their sum. The kernels start their integer
    /// sums there, which removes what the unsigned weight storage adds, exactly (in f32 it
    /// would cancel catastrophically).
    fn quantize_activations(&self, x: &[f32], n: usize) -> (Vec<i8>, Vec<f32>, Vec<i32>) {
        let cols = self.cols;
        let bpr = cols / QBLOCK;
        let offset = match self.kind {
            Quantization::Q8 => 128,
            Quantization::Q4 => 8,
        };
        let mut xq = vec![0i8; n * cols];
        let mut xd = vec![0f32; n * bpr];
        for ((q, d), src) in xq
            .chunks_mut(QBLOCK)
            .zip(xd.iter_mut())
            .zip(x.chunks(QBLOCK))
        {
            let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
            *d = amax / 127.0;
            let inv = if *d > 0.0 { 1.0 / *d } else { 0.0 };
            for (o, v) in q.iter_mut().zip(src) {
                *o = round(v * inv).clamp(-127, 127) as i8;
            }
        }
        let xc: Vec<i32> = xq
            .chunks(4)
            .map(|g| -offset * g.iter().map(|&v| v as i32).sum::<i32>())
            .collect();
        (xq, xd, xc)
    }

    fn gemv(&self, x: &[f32], n: usize, y: &mut [f32]) {
        let (rows, cols) = (self.rows, self.cols);
        let bpr = cols / QBLOCK;
        let (xq, xd, xc) = self.quantize_activations(x, n);
        let dot = block_dot_fn(self.kind);
        let bytes_per_block = self.bytes_per_block();
        crate::nn::host::for_each_output(rows, n, y, |r, j| {
            dot(
                &self.qs[r * bpr * bytes_per_block..(r + 1) * bpr * bytes_per_block],
                &self.scales[r * bpr..(r + 1) * bpr],
                &xq[j * cols..(j + 1) * cols],
                &xd[j * bpr..(j + 1) * bpr],
                &xc[j * cols / 4..(j + 1) * cols / 4],
            )
        });
    }

    fn gemm(&self, x: &[f32], n: usize, y: &mut [f32]) {
        crate::nn::host::blocked_gemm(self.rows, self.cols, x, n, y, |r, dst| {
            self.row_to_f32(r, dst)
        });
    }
}

/// Quantizes one block of [`QBLOCK`] values into `q` (stored unsigned, see [`QuantMatrix`]);
/// returns its scale. AVX2 where the CPU has it (the same arithmetic, so the same bytes).
fn quantize_block(kind: Quantization, src: &[f32], q: &mut [u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            return x86::quantize_block(kind, src, q);
        }
    }
    quantize_block_portable(kind, src, q)
}

fn quantize_block_portable(kind: Quantization, src: &[f32], q: &mut [u8]) -> f32 {
    let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
    match kind {
        Quantization::Q8 => {
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            for (o, v) in q.iter_mut().zip(src) {
                *o = (round(v * inv).clamp(-127, 127) + 128) as u8;
            }
            d
        }
        Quantization::Q4 => {
            let d = amax / 7.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            let level = |v: f32| (round(v * inv).clamp(-8, 7) + 8) as u8;
            for j in 0..QBLOCK / 2 {
                q[j] = level(src[j]) | (level(src[j + QBLOCK / 2]) << 4);
            }
            d
        }
    }
}

/// Rounds half away from zero, as `f32::round`, without its libm call (inlined; the
/// quantizers run it for every weight at load and every activation at decode).
#[inline(always)]
fn round(v: f32) -> i32 {
    // `as` truncates toward zero (and saturates; NaN gives 0).
    (v + 0.5f32.copysign(v)) as i32
}

/// Σ over blocks of `wd[b] · xd[b] · Σ q·xq` (the signed weights). `xc` holds, per group of 4
/// activations, −offset × their sum (8 per block), for kernels that multiply the stored
/// unsigned values.
type BlockDot = fn(&[u8], &[f32], &[i8], &[f32], &[i32]) -> f32;

fn block_dot_fn(kind: Quantization) -> BlockDot {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            return match kind {
                Quantization::Q8 => x86::dot_q8_vnni,
                Quantization::Q4 => x86::dot_q4_vnni,
            };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return match kind {
                Quantization::Q8 => x86::dot_q8,
                Quantization::Q4 => x86::dot_q4,
            };
        }
    }
    match kind {
        Quantization::Q8 => dot_q8_portable,
        Quantization::Q4 => dot_q4_portable,
    }
}

fn dot_q8_portable(wq: &[u8], wd: &[f32], xq: &[i8], xd: &[f32], _: &[i32]) -> f32 {
    let mut sum = 0f32;
    for (b, (&dw, &dx)) in wd.iter().zip(xd).enumerate() {
        let w = &wq[b * QBLOCK..(b + 1) * QBLOCK];
        let x = &xq[b * QBLOCK..(b + 1) * QBLOCK];
        let acc: i32 = w
            .iter()
            .zip(x)
            .map(|(&a, &c)| (a as i32 - 128) * c as i32)
            .sum();
        sum += dw * dx * acc as f32;
    }
    sum
}

fn dot_q4_portable(wq: &[u8], wd: &[f32], xq: &[i8], xd: &[f32], _: &[i32]) -> f32 {
    let mut sum = 0f32;
    let half = QBLOCK / 2;
    for (b, (&dw, &dx)) in wd.iter().zip(xd).enumerate() {
        let w = &wq[b * half..(b + 1) * half];
        let x = &xq[b * QBLOCK..(b + 1) * QBLOCK];
        let mut acc = 0i32;
        for j in 0..half {
            acc += ((w[j] & 0x0F) as i32 - 8) * x[j] as i32;
            acc += ((w[j] >> 4) as i32 - 8) * x[j + half] as i32;
        }
        sum += dw * dx * acc as f32;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Quantization, QBLOCK};
    use std::arch::x86_64::*;

    /// [`super::quantize_block_portable`] with the block's arithmetic in AVX2 registers:
    /// the same f32 products, the same round-half-away-from-zero and clamp (the same bytes for
    /// finite inputs).
    pub fn quantize_block(kind: Quantization, src: &[f32], q: &mut [u8]) -> f32 {
        // SAFETY: only called after detecting avx2.
        unsafe { quantize_block_impl(kind, src, q) }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn quantize_block_impl(kind: Quantization, src: &[f32], q: &mut [u8]) -> f32 {
        assert!(src.len() >= QBLOCK);
        let sign = _mm256_set1_ps(-0.0);
        let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(src.as_ptr().add(8 * i)));
        let mut m = _mm256_andnot_ps(sign, v[0]);
        for x in &v[1..] {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *x));
        }
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 0x55));
        let amax = _mm_cvtss_f32(m);
        let (levels, lo, hi, offset) = match kind {
            Quantization::Q8 => (127.0f32, -127, 127, 128),
            Quantization::Q4 => (7.0, -8, 7, 8),
        };
        let d = amax / levels;
        let inv = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        let half = _mm256_set1_ps(0.5);
        let mut ints = [0i32; QBLOCK];
        for (i, x) in v.iter().enumerate() {
            let x = _mm256_mul_ps(*x, inv);
            // x + copysign(0.5, x), truncated toward zero.
            let r =
                _mm256_cvttps_epi32(_mm256_add_ps(x, _mm256_or_ps(_mm256_and_ps(x, sign), half)));
            let r = _mm256_min_epi32(
                _mm256_max_epi32(r, _mm256_set1_epi32(lo)),
                _mm256_set1_epi32(hi),
            );
            let r = _mm256_add_epi32(r, _mm256_set1_epi32(offset));
            _mm256_storeu_si256(ints.as_mut_ptr().add(8 * i) as *mut __m256i, r);
        }
        match kind {
            Quantization::Q8 => q.iter_mut().zip(&ints).for_each(|(o, &v)| *o = v as u8),
            Quantization::Q4 => {
                for j in 0..QBLOCK / 2 {
                    q[j] = ints[j] as u8 | ((ints[j + QBLOCK / 2] as u8) << 4);
                }
            }
        }
        d
    }

    /// 32 signed bytes · 32 signed bytes → 8 i32 partial sums as f32.
    #[target_feature(enable = "avx2")]
    unsafe fn dot32_signed(w: __m256i, x: __m256i) -> __m256 {
        // maddubs multiplies unsigned by signed bytes: move w's sign onto x.
        let aw = _mm256_sign_epi8(w, w);
        let sx = _mm256_sign_epi8(x, w);
        let pairs = _mm256_maddubs_epi16(aw, sx);
        let quads = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
        _mm256_cvtepi32_ps(quads)
    }

    /// 32 small unsigned bytes (≤ 15) · 32 signed bytes, plus `start` → 8 i32 sums as f32.
    #[target_feature(enable = "avx2")]
    unsafe fn dot32_nibbles(w: __m256i, x: __m256i, start: __m256i) -> __m256 {
        // 15 · 127 · 2 fits i16: no saturation.
        let pairs = _mm256_maddubs_epi16(w, x);
        let quads = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
        _mm256_cvtepi32_ps(_mm256_add_epi32(quads, start))
    }

    #[target_feature(enable = "avx2")]
    unsafe fn hsum(v: __m256) -> f32 {
        let hi = _mm256_extractf128_ps(v, 1);
        let lo = _mm256_castps256_ps128(v);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_q8_impl(wq: &[u8], wd: &[f32], xq: &[i8], xd: &[f32], xc: &[i32]) -> f32 {
        let blocks = wd.len().min(xd.len());
        assert!(wq.len() >= blocks * QBLOCK && xq.len() >= blocks * QBLOCK);
        let _ = xc; // signed products: nothing to correct
        let mut acc = _mm256_setzero_ps();
        for b in 0..blocks {
            let wu = _mm256_loadu_si256(wq.as_ptr().add(b * QBLOCK) as *const __m256i);
            let x = _mm256_loadu_si256(xq.as_ptr().add(b * QBLOCK) as *const __m256i);
            // Back to signed (q + 128 → q), exact.
            let w = _mm256_xor_si256(wu, _mm256_set1_epi8(-128));
            let d = _mm256_set1_ps(wd[b] * xd[b]);
            acc = _mm256_fmadd_ps(dot32_signed(w, x), d, acc);
        }
        hsum(acc)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_q4_impl(wq: &[u8], wd: &[f32], xq: &[i8], xd: &[f32], xc: &[i32]) -> f32 {
        let blocks = wd.len().min(xd.len());
        let half = QBLOCK / 2;
        assert!(wq.len() >= blocks * half && xq.len() >= blocks * QBLOCK);
        assert!(xc.len() >= blocks * 8);
        let mask = _mm256_set1_epi8(0x0F);
        let mut acc = _mm256_setzero_ps();
        for b in 0..blocks {
            let bytes = _mm_loadu_si128(wq.as_ptr().add(b * half) as *const __m128i);
            // Low nibbles are weights 0..16, high nibbles 16..32.
            let both = _mm256_set_m128i(_mm_srli_epi16(bytes, 4), bytes);
            let w = _mm256_and_si256(both, mask);
            let x = _mm256_loadu_si256(xq.as_ptr().add(b * QBLOCK) as *const __m256i);
            let d = _mm256_set1_ps(wd[b] * xd[b]);
            let start = _mm256_loadu_si256(xc.as_ptr().add(b * 8) as *const __m256i);
            acc = _mm256_fmadd_ps(dot32_nibbles(w, x, start), d, acc);
        }
        hsum(acc)
    }

    /// AVX-512 VNNI on 256-bit vectors: `dpbusd` multiplies unsigned by signed bytes and sums
    /// groups of four into i32 lanes in one instruction (no i16 saturation).
    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    unsafe fn dot_q8_vnni_impl(wq: &[u8], wd: &[f32], xq: &[i8], xd: &[f32], xc: &[i32]) -> f32 {
        let blocks = wd.len().min(xd.len());
        assert!(wq.len() >= blocks * QBLOCK && xq.len() >= blocks * QBLOCK);
        assert!(xc.len() >= blocks * 8);
        let mut acc = _mm256_setzero_ps();
        for b in 0..blocks {
            let w = _mm256_loadu_si256(wq.as_ptr().add(b * QBLOCK) as *const __m256i);
            let x = _mm256_loadu_si256(xq.as_ptr().add(b * QBLOCK) as *const __m256i);
            let start = _mm256_loadu_si256(xc.as_ptr().add(b * 8) as *const __m256i);
            let dot = _mm256_dpbusd_epi32(start, w, x);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(wd[b] * xd[b]), acc);
        }
        hsum(acc)
    }

    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    unsafe fn dot_q4_vnni_impl(wq: &[u8], wd: &[f32], xq: &[i8], xd: &[f32], xc: &[i32]) -> f32 {
        let blocks = wd.len().min(xd.len());
        let half = QBLOCK / 2;
        assert!(wq.len() >= blocks * half && xq.len() >= blocks * QBLOCK);
        assert!(xc.len() >= blocks * 8);
        let mask = _mm256_set1_epi8(0x0F);
        let mut acc = _mm256_setzero_ps();
        for b in 0..blocks {
            let bytes = _mm_loadu_si128(wq.as_ptr().add(b * half) as *const __m128i);
            let both = _mm256_set_m128i(_mm_srli_epi16(bytes, 4), bytes);
            let w = _mm256_and_si256(both, mask);
            let x = _mm256_loadu_si256(xq.as_ptr().add(b * QBLOCK) as *const __m256i);
            let start = _mm256_loadu_si256(xc.as_ptr().add(b * 8) as *const __m256i);
            let dot = _mm256_dpbusd_epi32(start, w, x);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(wd[b] * xd[b]), acc);
        }
        hsum(acc)
    }

    pub fn dot_q8_vnni(wq: &[u8], wd: &[f32], xq: &[i8], xd: &[f32], xc: &[i32]) -> f32 {
        // SAFETY: only handed out by block_dot_fn after detecting avx512vnni and avx512vl
        // (whose CPUs have avx2 and fma).
        unsafe { dot_q8_vnni_impl(wq, wd, xq, xd, xc) }
    }

    pub fn dot_q4_vnni(wq: &[u8], wd: &[f32], xq: &[i8], xd: &[f32], xc: &[i32]) -> f32 {
        // SAFETY: as dot_q8_vnni.
        unsafe { dot_q4_vnni_impl(wq, wd, xq, xd, xc) }
    }

    pub fn dot_q8(wq: &[u8], wd: &[f32], xq: &[i8], xd: &[f32], xc: &[i32]) -> f32 {
        // SAFETY: only handed out by block_dot_fn after detecting avx2 and fma.
        unsafe { dot_q8_impl(wq, wd, xq, xd, xc) }
    }

    pub fn dot_q4(wq: &[u8], wd: &[f32], xq: &[i8], xd: &[f32], xc: &[i32]) -> f32 {
        // SAFETY: only handed out by block_dot_fn after detecting avx2 and fma.
        unsafe { dot_q4_impl(wq, wd, xq, xd, xc) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_products_are_close_and_paths_agree() {
        let (rows, cols) = (70, 96);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| (((i * 7919) % 1013) as f32 / 506.0 - 1.0) * 0.3)
            .collect();
        for (kind, rel) in [(Quantization::Q8, 0.02), (Quantization::Q4, 0.2)] {
            let m = QuantMatrix::quantize(kind, &w, rows, cols);
            // Dequantized rows stay within half a step of the original.
            let mut row = vec![0f32; cols];
            for r in 0..rows {
                m.row_to_f32(r, &mut row);
                for b in 0..cols / QBLOCK {
                    let src = &w[r * cols + b * QBLOCK..r * cols + (b + 1) * QBLOCK];
                    let amax = src.iter().fold(0f32, |a, v| a.max(v.abs()));
                    let step = amax / if kind == Quantization::Q8 { 127.0 } else { 7.0 };
                    for (k, v) in src.iter().enumerate() {
                        assert!((row[b * QBLOCK + k] - v).abs() <= 0.5 * step + 1e-6);
                    }
                }
            }
            for n in [1, 3, 5] {
                let x: Vec<f32> = (0..n * cols)
                    .map(|i| ((i * 31 % 17) as f32 - 8.0) / 8.0)
                    .collect();
                let got = m.matmul_t(&x, n);
                // Exact products with the dequantized weights.
                let mut want = vec![0f32; n * rows];
                for j in 0..n {
                    for r in 0..rows {
                        m.row_to_f32(r, &mut row);
                        want[j * rows + r] =
                            (0..cols).map(|k| row[k] * x[j * cols + k]).sum::<f32>();
                    }
                }
                let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
                let diff = got
                    .iter()
                    .zip(&want)
                    .fold(0f32, |a, (g, e)| a.max((g - e).abs()));
                // n < 4 also quantizes the activations (8 bits per block): a small extra error.
                let tol = if n < GEMM_MIN_ROWS { 0.02 } else { 1e-4 };
                assert!(
                    diff <= tol * scale,
                    "{kind:?} n={n}: {diff} vs scale {scale}"
                );
                // And close to the unquantized product.
                for j in 0..n {
                    for r in 0..rows {
                        let exact: f32 = (0..cols).map(|k| w[r * cols + k] * x[j * cols + k]).sum();
                        assert!((got[j * rows + r] - exact).abs() <= rel * scale + 1e-4);
                    }
                }
            }
            assert!(m.byte_len() < rows * cols * 2);
        }
    }

    #[test]
    fn simd_quantizer_matches_the_portable_one() {
        #[cfg(target_arch = "x86_64")]
        {
            if !std::arch::is_x86_feature_detected!("avx2") {
                return;
            }
            // Random values, exact ties at ±0.5 steps, zeros and a constant block.
            let mut blocks: Vec<Vec<f32>> = (0..200)
                .map(|b| {
                    (0..QBLOCK)
                        .map(|i| ((b * 131 + i * 71) as f32 * 0.618).sin() * (b as f32 + 0.5))
                        .collect()
                })
                .collect();
            blocks.push((0..QBLOCK).map(|i| i as f32 - 15.5).collect());
            blocks.push((0..QBLOCK).map(|i| (i as f32 - 16.0) * 0.5).collect());
            blocks.push(vec![0.0; QBLOCK]);
            blocks.push(vec![-3.0; QBLOCK]);
            for kind in [Quantization::Q8, Quantization::Q4] {
                let bytes = QBLOCK / if kind == Quantization::Q4 { 2 } else { 1 };
                for src in &blocks {
                    let (mut a, mut b) = (vec![0u8; bytes], vec![0u8; bytes]);
                    let da = quantize_block_portable(kind, src, &mut a);
                    let db = x86::quantize_block(kind, src, &mut b);
                    assert_eq!((da.to_bits(), &a), (db.to_bits(), &b), "{kind:?} {src:?}");
                }
            }
        }
    }

    #[test]
    fn portable_and_simd_block_dots_agree() {
        let blocks = 5;
        let wq8: Vec<u8> = (0..blocks * QBLOCK).map(|i| (i * 37 % 255) as u8).collect();
        let wq4: Vec<u8> = (0..blocks * QBLOCK / 2)
            .map(|i| (i * 53 % 256) as u8)
            .collect();
        let xq: Vec<i8> = (0..blocks * QBLOCK)
            .map(|i| ((i * 29 % 255) as i32 - 127) as i8)
            .collect();
        let wd: Vec<f32> = (0..blocks).map(|b| 0.01 * (b + 1) as f32).collect();
        let xd: Vec<f32> = (0..blocks).map(|b| 0.02 / (b + 1) as f32).collect();
        let corr = |off: i32| -> Vec<i32> {
            xq.chunks(4)
                .map(|g| -off * g.iter().map(|&v| v as i32).sum::<i32>())
                .collect()
        };
        let (xc8, xc4) = (corr(128), corr(8));
        let mut kernels: Vec<(BlockDot, BlockDot)> = vec![(
            block_dot_fn(Quantization::Q8),
            block_dot_fn(Quantization::Q4),
        )];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            kernels.push((x86::dot_q8, x86::dot_q4));
        }
        for (k, (q8, q4)) in kernels.into_iter().enumerate() {
            let (a, b) = (
                q8(&wq8, &wd, &xq, &xd, &xc8),
                dot_q8_portable(&wq8, &wd, &xq, &xd, &xc8),
            );
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                "q8 kernel {k}: {a} vs {b}"
            );
            let (a, b) = (
                q4(&wq4, &wd, &xq, &xd, &xc4),
                dot_q4_portable(&wq4, &wd, &xq, &xd, &xc4),
            );
            assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "q4 {a} vs {b}");
        }
    }
}
