//! Prefill GEMM for bf16 weights on CPUs with AVX512-BF16 (AMD Zen 4 and later, Intel Cooper
//! Lake and Sapphire Rapids and later).
//!
//! `vdpbf16ps` multiplies 32 pairs of bf16 values and adds them into 16 f32 lanes: twice the
//! multiply-adds per instruction of an f32 FMA, with the weights read as stored (no widened
//! copy, no packing). The activations must be bf16 too, and that is the choice
//! [`Bf16Activations`] makes:
//! - [`Bf16Activations::Exact`] (the default) writes each activation as the sum of three bf16
//!   values, `hi = bf16(x)`, `mid = bf16(x − hi)`, `lo = bf16(x − hi − mid)`, which is `x`
//!   itself (24 significant bits, as f32; only subnormal remainders are flushed), and
//!   multiplies all three: products are exact in f32, so the result is an f32 GEMM's, at 2/3 of
//!   the f32 FMA's rate. [`HalfMatrix::matmul_t`](super::HalfMatrix::matmul_t) sends exact
//!   products to [`widen_gemm`](super::widen_gemm) instead (f32 FMAs over weights widened in
//!   registers: faster, and on every CPU this kernel runs on); this mode stays as a tested
//!   reference of the three-part arithmetic.
//! - [`Bf16Activations::Split`] keeps `hi + mid` only: within 2⁻¹⁶·|x| of `x` (16 significant
//!   bits), 1.5× the rate of `Exact`. Enough for most models; on logits of a trained model's
//!   size (|logit| ~20) it moved the last-position logits of the large-logit Gemma fixtures by
//!   up to 3.5e-5 of the largest, beyond the conformance suite's 2e-5.
//! - [`Bf16Activations::Rounded`] rounds each activation to one bf16 value: twice the rate, with the
//!   rounding a bf16 checkpoint sees in its own framework (PyTorch's bf16 matmuls take bf16
//!   inputs) and in llama.cpp (which rounds activations to the weights' type).
//!
//! Products and sums stay f32 in both. This path serves bf16 weights with several activation
//! rows at once (prefill, batches: [`HalfMatrix::matmul_t`](super::HalfMatrix::matmul_t)'s GEMM
//! path); decode keeps f32 activations.
//!
//! Layout: the activations are packed once per call as `[token tiles of 16][column pairs]
//! [parts][16]` (one `u32` holds a pair of adjacent columns' bf16 values), so a vector load
//! gives one column pair of 16 tokens. A tile of 12 weight rows × 32 tokens broadcasts
//! each row's column pair (4 bytes, read in place) against those vectors, keeping 24
//! accumulators in registers. Row tiles run in parallel; each writes its own columns of `y`.

// The packing and tiling helpers serve the x86-64 kernels only.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use rayon::prelude::*;

/// Weight rows per tile of the kernel.
const ROWS: usize = 12;
/// Tokens per vector.
pub(super) const LANES: usize = 16;

/// Whether this CPU runs the bf16 kernel (AVX-512 F and BF16).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// How activations meet bf16 weights in the prefill GEMM (see the [module](self) docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Bf16Activations {
    /// Each activation as three bf16 values whose sum is the f32 value: an f32 GEMM's result.
    #[default]
    Exact,
    /// Each activation as two bf16 values (16 significant bits): 1.5× the rate of `Exact`.
    Split,
    /// Each activation rounded to one bf16 value: twice as fast on CPUs with AVX512-BF16.
    Rounded,
}

impl Bf16Activations {
    /// Parses `exact`, `split` or `rounded` (also `bf16`).
    pub fn from_name(name: &str) -> crate::Result<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "exact" => Ok(Bf16Activations::Exact),
            "split" => Ok(Bf16Activations::Split),
            "rounded" | "bf16" => Ok(Bf16Activations::Rounded),
            _ => Err(crate::Error::invalid_arg(
                "bf16_activations",
                format!("unknown bf16 activation mode {name:?}; expected exact, split or rounded"),
            )),
        }
    }

    /// `exact`, `split` or `rounded`.
    pub fn name(self) -> &'static str {
        match self {
            Bf16Activations::Exact => "exact",
            Bf16Activations::Split => "split",
            Bf16Activations::Rounded => "rounded",
        }
    }

    fn parts(self) -> usize {
        match self {
            Bf16Activations::Exact => 3,
            Bf16Activations::Split => 2,
            Bf16Activations::Rounded => 1,
        }
    }
}

/// `v` rounded to bf16 as the kernel's conversion does: nearest, ties to even, subnormals
/// flushed to (signed) zero, NaN kept a NaN.
pub(crate) fn round_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    if bits & 0x7f80_0000 == 0 {
        return ((bits >> 16) & 0x8000) as u16;
    }
    let lsb = (bits >> 16) & 1;
    (bits.wrapping_add(0x7fff + lsb) >> 16) as u16
}

/// The activations `x` (`[n, cols]`, `cols` even) as bf16 pairs in the kernel's layout:
/// `[n / 16 rounded up][cols / 2][parts][16]`, tokens past `n` zero.
fn pack_activations(x: &[f32], n: usize, cols: usize, mode: Bf16Activations, out: &mut Vec<u32>) {
    let pairs = cols / 2;
    let parts = mode.parts();
    let tiles = n.div_ceil(LANES);
    out.clear();
    out.resize(tiles * pairs * parts * LANES, 0);
    out.par_chunks_mut(pairs * parts * LANES)
        .enumerate()
        .for_each(|(t, tile)| {
            let mut packed = vec![0u32; parts * pairs];
            for l in 0..LANES.min(n - t * LANES) {
                let j = t * LANES + l;
                let row = &x[j * cols..(j + 1) * cols];
                pack_row(row, &mut packed, parts);
                for p in 0..pairs {
                    for k in 0..parts {
                        tile[(p * parts + k) * LANES + l] = packed[k * pairs + p];
                    }
                }
            }
        });
}

/// One activation row as `parts` rows of bf16 pairs (low half the even column) in `out`
/// (`[parts][cols / 2]`): the rounded values, then the rounding remainder of what came before,
/// rounded, and so on.
fn pack_row(x: &[f32], out: &mut [u32], parts: usize) {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU has AVX-512 F and BF16 (checked above).
        return unsafe { x86::pack_row(x, out, parts) };
    }
    pack_row_portable(x, out, parts)
}

fn pack_row_portable(x: &[f32], out: &mut [u32], parts: usize) {
    let pairs = out.len() / parts.max(1);
    for (p, pair) in x.chunks_exact(2).enumerate() {
        let (mut ra, mut rb) = (pair[0], pair[1]);
        for k in 0..parts {
            let (a, b) = (round_bf16(ra), round_bf16(rb));
            out[k * pairs + p] = a as u32 | (b as u32) << 16;
            (ra, rb) = (ra - widen(a), rb - widen(b));
        }
    }
}

fn widen(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// `y = x · wᵀ`: `w` bf16 `[rows, cols]` row-major, `x` `[n, cols]`, `y` `[n, rows]`, with `x`
/// written as bf16 the way `mode` says. Returns `false` (and leaves `y` alone) where the
/// kernel cannot run: no AVX512-BF16 on this CPU, or an odd `cols`.
pub(crate) fn gemm(
    w: &[u16],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    mode: Bf16Activations,
) -> bool {
    if !available() || !cols.is_multiple_of(2) || cols == 0 {
        return false;
    }
    assert!(w.len() >= rows * cols && x.len() >= n * cols && y.len() >= n * rows);
    #[cfg(target_arch = "x86_64")]
    {
        thread_local! {
            static PACKED: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let mut xp = PACKED.with(|s| std::mem::take(&mut *s.borrow_mut()));
        pack_activations(x, n, cols, mode, &mut xp);
        let out = SharedOut {
            ptr: y.as_mut_ptr(),
            n,
            rows,
        };
        let groups = rows.div_ceil(ROWS);
        (0..groups).into_par_iter().for_each(|g| {
            let r0 = g * ROWS;
            let nr = ROWS.min(rows - r0);
            // SAFETY: the CPU has AVX-512 F and BF16 (checked by `available`); the weight rows
            // r0..r0 + nr lie in `w`, the packed tiles in `xp`, and this task alone writes
            // columns r0..r0 + nr of `y` (asserted lengths above).
            unsafe {
                match mode {
                    Bf16Activations::Exact => x86::row_tile::<3>(w, r0, nr, cols, &xp, n, &out),
                    Bf16Activations::Split => x86::row_tile::<2>(w, r0, nr, cols, &xp, n, &out),
                    Bf16Activations::Rounded => x86::row_tile::<1>(w, r0, nr, cols, &xp, n, &out),
                }
            };
        });
        PACKED.with(|s| *s.borrow_mut() = xp);
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (w, rows, x, n, y);
        false
    }
}

/// `y`'s pointer (`[n, rows]`) shared by the row tiles of a GEMM, which write disjoint
/// columns (also used by [`quant_gemm`](super::quant_gemm)).
pub(super) struct SharedOut {
    pub ptr: *mut f32,
    pub n: usize,
    pub rows: usize,
}
// SAFETY: every task writes a disjoint set of elements (its own columns of `y`).
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Writes a tile's results: `acc[r · 2 + v]` holds row `r0 + r` for the 16 tokens of token
    /// tile `t + v` (`nr` rows, `tv` tiles; tokens past `n` dropped).
    ///
    /// # Safety
    /// `r0 + nr ≤ rows`, and no other thread writes these columns meanwhile.
    pub(super) unsafe fn write_tile(
        &self,
        acc: &[[f32; LANES]],
        r0: usize,
        nr: usize,
        t: usize,
        tv: usize,
    ) {
        // Token by token, each token's `nr` values side by side in `y` (a row at a time, the
        // stores hit a new line of `y` at every value: 6.5 % of a 135M prefill against ~1 %).
        for v in 0..tv {
            let j0 = (t + v) * LANES;
            for l in 0..LANES.min(self.n.saturating_sub(j0)) {
                let out = self.ptr.add((j0 + l) * self.rows + r0);
                for (r, row) in acc.iter().skip(v).step_by(2).take(nr).enumerate() {
                    *out.add(r) = row[l];
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{SharedOut, LANES, ROWS};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn pack_row(x: &[f32], out: &mut [u32], parts: usize) {
        let pairs = out.len() / parts.max(1);
        let full = x.len() / 2 / LANES;
        for c in 0..full {
            // Columns 32c..32c + 16 and 32c + 16..32c + 32, rounded into one vector of 32
            // bf16 values in column order; then their remainders, part after part.
            let mut a = _mm512_loadu_ps(x.as_ptr().add(c * 2 * LANES));
            let mut b = _mm512_loadu_ps(x.as_ptr().add(c * 2 * LANES + LANES));
            for k in 0..parts {
                let h: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(b, a));
                _mm512_storeu_si512(out.as_mut_ptr().add(k * pairs + c * LANES) as *mut _, h);
                if k + 1 < parts {
                    let ha =
                        _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(h)));
                    let hb = _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                        _mm512_extracti64x4_epi64::<1>(h),
                    ));
                    a = _mm512_sub_ps(a, _mm512_castsi512_ps(ha));
                    b = _mm512_sub_ps(b, _mm512_castsi512_ps(hb));
                }
            }
        }
        let done = full * LANES;
        if done < pairs {
            // The tail, part by part, through the portable rounding.
            let tail = pairs - done;
            let mut rest = vec![0u32; parts * tail];
            super::pack_row_portable(&x[done * 2..], &mut rest, parts);
            for k in 0..parts {
                out[k * pairs + done..(k + 1) * pairs]
                    .copy_from_slice(&rest[k * tail..(k + 1) * tail]);
            }
        }
    }

    /// Rows `r0..r0 + nr` of `y`'s columns over every token, 32 tokens at a time.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn row_tile<const P: usize>(
        w: &[u16],
        r0: usize,
        nr: usize,
        cols: usize,
        xp: &[u32],
        n: usize,
        y: &SharedOut,
    ) {
        let pairs = cols / 2;
        let tiles = n.div_ceil(LANES);
        let wp = w.as_ptr().add(r0 * cols);
        let mut t = 0;
        while t < tiles {
            let tv = (tiles - t).min(2);
            let xt = xp.as_ptr().add(t * pairs * P * LANES);
            let mut acc = [[0f32; LANES]; 2 * ROWS];
            macro_rules! dispatch {
                ($($r:literal)*) => {
                    match (nr, tv) {
                        $(($r, 2) => tile::<$r, 2, P>(wp, cols, xt, pairs, &mut acc),
                          ($r, _) => tile::<$r, 1, P>(wp, cols, xt, pairs, &mut acc),)*
                        _ => unreachable!("row tiles hold 1 to {ROWS} rows"),
                    }
                };
            }
            dispatch!(1 2 3 4 5 6 7 8 9 10 11 12);
            y.write_tile(&acc, r0, nr, t, tv);
            t += tv;
        }
    }

    /// `R` weight rows (from `w`, `cols` apart) against `V` vectors of 16 tokens (`xt`, tiles
    /// `pairs · P · 16` apart, `P` parts per activation) over every column pair; results into
    /// `acc[r · 2 + v]`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile<const R: usize, const V: usize, const P: usize>(
        w: *const u16,
        cols: usize,
        xt: *const u32,
        pairs: usize,
        acc: &mut [[f32; LANES]; 2 * ROWS],
    ) {
        let mut sums = [[_mm512_setzero_ps(); V]; R];
        for p in 0..pairs {
            let mut xv = [[_mm512_setzero_si512(); P]; V];
            for (v, parts) in xv.iter_mut().enumerate() {
                for (k, x) in parts.iter_mut().enumerate() {
                    let at = (v * pairs + p) * P * LANES + k * LANES;
                    *x = _mm512_loadu_si512(xt.add(at) as *const _);
                }
            }
            for (r, row) in sums.iter_mut().enumerate() {
                let pair = (w.add(r * cols + 2 * p) as *const i32).read_unaligned();
                let wv: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                for (s, parts) in row.iter_mut().zip(&xv) {
                    for x in parts {
                        *s = _mm512_dpbf16_ps(*s, std::mem::transmute::<__m512i, __m512bh>(*x), wv);
                    }
                }
            }
        }
        for (r, row) in sums.iter().enumerate() {
            for (v, s) in row.iter().enumerate() {
                _mm512_storeu_ps(acc[r * 2 + v].as_mut_ptr(), *s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_nearest_even() {
        assert_eq!(round_bf16(1.0), 0x3f80);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties to the even (1.0).
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3·2^-8 lies halfway between 1 + 2^-7 (odd) and 1 + 2^-6: rounds up.
        assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(round_bf16(-2.5), 0xc020);
        assert_eq!(round_bf16(1e-40), 0);
        assert!(widen(round_bf16(f32::NAN)).is_nan());
        assert_eq!(round_bf16(f32::INFINITY), 0x7f80);
    }

    #[test]
    fn packed_rows_match_portable_rounding() {
        let x: Vec<f32> = (0..70)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.173)
            .collect();
        for parts in 1..=3 {
            let (mut fast, mut plain) = (vec![0u32; 35 * parts], vec![0u32; 35 * parts]);
            pack_row(&x, &mut fast, parts);
            pack_row_portable(&x, &mut plain, parts);
            assert_eq!(fast, plain, "{parts} parts");
            // The parts add up to x to 2^-8 (one), 2^-16 (two) of its size, or exactly.
            for (k, &v) in x.iter().enumerate() {
                let half = |w: u32| (w >> (16 * (k % 2))) as u16;
                let back: f32 = (0..parts).map(|p| widen(half(fast[p * 35 + k / 2]))).sum();
                let bound = [2f32.powi(-8), 2f32.powi(-16), 0.0][parts - 1];
                assert!(
                    (back - v).abs() <= v.abs() * bound,
                    "{parts}: {v} as {back}"
                );
            }
        }
    }

    /// Against a plain f64 sum (over the bf16-rounded activations for [`Bf16Activations::Rounded`],
    /// the exact ones otherwise), for shapes that cover every row-tile and token-tail case, many
    /// row tiles and long rows.
    #[test]
    fn gemm_matches_a_plain_sum() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        for mode in [
            Bf16Activations::Exact,
            Bf16Activations::Split,
            Bf16Activations::Rounded,
        ] {
            for (rows, cols, n) in [
                (12, 32, 32),
                (29, 70, 5),
                (37, 64, 47),
                (7, 2, 16),
                (100, 130, 33),
                (600, 40, 17),
                (25, 1100, 20),
            ] {
                let w: Vec<u16> = (0..rows * cols)
                    .map(|i| round_bf16(((i * 7919 % 101) as f32 - 50.0) / 37.0))
                    .collect();
                let x: Vec<f32> = (0..n * cols)
                    .map(|i| ((i * 104_729 % 97) as f32 - 48.0) / 13.0 + (i % 7) as f32 * 1e-3)
                    .collect();
                let mut y = vec![f32::NAN; n * rows];
                assert!(gemm(&w, rows, cols, &x, n, &mut y, mode));
                for j in 0..n {
                    for r in 0..rows {
                        let terms = (0..cols).map(|k| {
                            let a = x[j * cols + k];
                            let a = match mode {
                                Bf16Activations::Rounded => widen(round_bf16(a)),
                                _ => a,
                            };
                            widen(w[r * cols + k]) as f64 * a as f64
                        });
                        let (want, size) = terms.fold((0.0, 0.0), |(s, m), t| (s + t, m + t.abs()));
                        let got = y[j * rows + r] as f64;
                        // Split: 2^-16 per activation; the others: f32 sums of exact
                        // products.
                        let tol = if mode == Bf16Activations::Split {
                            2e-5
                        } else {
                            2e-6
                        };
                        assert!(
                            (got - want).abs() <= tol * size,
                            "{mode:?} {rows}x{cols}, n {n}: y[{j}, {r}] = {got}, want {want}"
                        );
                    }
                }
            }
        }
    }
}
