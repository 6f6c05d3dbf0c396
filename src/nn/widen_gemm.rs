//! An f32 GEMM over half-precision weights widened in registers, for CPUs with AVX-512 (F, BW,
//! VL).
//!
//! Each 16-bit weight is widened to f32 as it is loaded (bf16: a shift; f16: `vcvtph2ps`) and
//! multiplied by f32 activations with f32 FMAs: the result is an f32 GEMM's, nothing rounded
//! but the sums. A tile is `R` weight rows × `N` tokens: per 16 columns, `R` weight loads and
//! `N` activation loads feed `R · N` FMAs into `R · N` accumulators (3 × 8 = 24 of the 32
//! vector registers), reduced across lanes once at the end of the row. Weights are read in
//! place (no packing), each tile's rows once per group of 8 tokens, from memory for the first
//! group and from the core's caches after; activations are read from the caches.
//!
//! This is the GEMM for a few activation rows (a batch's decode step: one pass over the weights
//! serves every row) and for [`Bf16Activations::Exact`](super::Bf16Activations) prefills:
//! an FMA does 16 multiply-adds against `vdpbf16ps`'s 32, but the exact bf16 kernel needs
//! three of those per product.

// The tiling helpers serve the x86-64 kernel only.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use super::host::HalfKind;

/// Weight rows per tile.
const ROWS: usize = 3;
/// Tokens per tile.
const TOKENS: usize = 8;
/// Weight bytes a parallel call takes at least (a few tiles' rows; fewer calls, fewer
/// synchronisations, for the small matrices of a decode step).
const CALL_BYTES: usize = 48 << 10;

/// Whether this CPU runs the kernel (AVX-512 F, BW and VL, and F16C, which every AVX-512 CPU
/// has).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `y = x · Wᵀ` for `w` (`[rows, cols]` 16-bit values of `kind`), `x: [n, cols]`, `y: [n,
/// rows]`. Returns `false` (and leaves `y` alone) where the CPU has no kernel for it.
pub(crate) fn gemm(
    kind: HalfKind,
    w: &[u16],
    [rows, cols]: [usize; 2],
    x: &[f32],
    n: usize,
    y: &mut [f32],
) -> bool {
    if !available() || cols == 0 {
        return false;
    }
    assert!(w.len() >= rows * cols && x.len() >= n * cols && y.len() >= n * rows);
    #[cfg(target_arch = "x86_64")]
    {
        let out = Out(y.as_mut_ptr());
        let tiles = rows.div_ceil(ROWS);
        let grain = (CALL_BYTES / (ROWS * cols * 2)).max(1);
        super::team::run_ranges(tiles, grain, &|a, b| {
            // Token groups outside, the call's tiles inside: the call's rows (a few dozen
            // kilobytes) come from memory for the first group and from the core's cache for
            // the others, while each group's activations stay in it too.
            let mut j0 = 0;
            while j0 < n {
                let nt = (n - j0).min(TOKENS);
                for t in a..b {
                    let r0 = t * ROWS;
                    // SAFETY: the CPU has the features, checked by `available`; rows r0.. of
                    // `w`, tokens j0..j0 + nt of `x` and `y` lie within the slices (asserted
                    // above); this call alone writes columns r0..r0 + ROWS of `y`.
                    unsafe {
                        x86::rows(
                            kind,
                            w,
                            [r0, (rows - r0).min(ROWS)],
                            cols,
                            x,
                            [j0, nt],
                            rows,
                            &out,
                        )
                    };
                }
                j0 += nt;
            }
        });
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (w, rows, x, n, y);
        false
    }
}

/// `y`'s pointer, shared by calls that write disjoint columns.
struct Out(*mut f32);
// SAFETY: every call writes its own columns of `y` (see `gemm`).
unsafe impl Sync for Out {}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{HalfKind, Out, ROWS};
    use std::arch::x86_64::*;

    /// Rows `r0..r0 + nr` (`nr ≤ ROWS`) against tokens `j0..j0 + nt` (`nt ≤ TOKENS`).
    ///
    /// # Safety
    /// AVX-512 F, BW, VL and F16C; the rows lie in `w`, the tokens in `x`, and `y` (`[n,
    /// rows]`) has room and no other writer of these columns.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    pub(super) unsafe fn rows(
        kind: HalfKind,
        w: &[u16],
        [r0, nr]: [usize; 2],
        cols: usize,
        x: &[f32],
        [j0, nt]: [usize; 2],
        rows: usize,
        y: &Out,
    ) {
        macro_rules! tile {
            ($r:literal, $($t:literal)*) => {
                match nt {
                    $($t => tile::<$r, $t>(kind, w, r0, cols, x, j0, rows, y),)*
                    _ => unreachable!("at most TOKENS tokens"),
                }
            };
        }
        match nr {
            ROWS => tile!(3, 1 2 3 4 5 6 7 8),
            2 => tile!(2, 1 2 3 4 5 6 7 8),
            _ => tile!(1, 1 2 3 4 5 6 7 8),
        }
    }

    /// 16 weights from `p` (`mask`: which of them) widened to f32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    unsafe fn widen(kind: HalfKind, p: *const u16, mask: __mmask16) -> __m512 {
        let h = _mm256_maskz_loadu_epi16(mask, p as *const i16);
        match kind {
            HalfKind::Bf16 => _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)),
            HalfKind::F16 => _mm512_cvtph_ps(h),
        }
    }

    /// `R` rows from `r0` against tokens `j0..j0 + N`.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c")]
    unsafe fn tile<const R: usize, const N: usize>(
        kind: HalfKind,
        w: &[u16],
        r0: usize,
        cols: usize,
        x: &[f32],
        j0: usize,
        rows: usize,
        y: &Out,
    ) {
        // acc[j][r]: token j0 + j against row r0 + r.
        let mut acc = [[_mm512_setzero_ps(); R]; N];
        let wp = w.as_ptr().add(r0 * cols);
        // Whether the rows of a next tile follow in `w` and are still to be read from memory
        // (by the first token group).
        let ahead = j0 == 0 && (r0 + 2 * R) * cols <= w.len();
        let xp = x.as_ptr().add(j0 * cols);
        let mut c = 0;
        while c < cols {
            // Whole vectors, then the last columns masked.
            let mask = if cols - c >= 16 {
                0xffff
            } else {
                (1u16 << (cols - c)) - 1
            };
            let mut wv = [_mm512_setzero_ps(); R];
            for (r, v) in wv.iter_mut().enumerate() {
                *v = widen(kind, wp.add(r * cols + c), mask);
            }
            if c % 32 == 0 && ahead {
                // The next tile's rows at this column, a tile ahead: rows this short (a few
                // dozen lines each, three read side by side) are over before the hardware's
                // prefetchers follow them.
                for r in 0..R {
                    _mm_prefetch::<_MM_HINT_T0>(wp.add((R + r) * cols + c) as *const i8);
                }
            }
            for (j, aj) in acc.iter_mut().enumerate() {
                let xv = _mm512_maskz_loadu_ps(mask, xp.add(j * cols + c));
                for (a, wr) in aj.iter_mut().zip(&wv) {
                    *a = _mm512_fmadd_ps(*wr, xv, *a);
                }
            }
            c += 16;
        }
        for (j, aj) in acc.iter().enumerate() {
            for (r, a) in aj.iter().enumerate() {
                *y.0.add((j0 + j) * rows + r0 + r) = _mm512_reduce_add_ps(*a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_bf16(v: f32) -> u16 {
        half::bf16::from_f32(v).to_bits()
    }

    /// Every tile shape (rows and tokens not multiples of the tile, columns not of 16) against
    /// a plain f64 sum of the widened products, for both kinds.
    #[test]
    fn matches_a_plain_sum() {
        for kind in [HalfKind::Bf16, HalfKind::F16] {
            if !available() {
                eprintln!("skipped: this CPU has no AVX-512 F");
                return;
            }
            for (rows, cols, n) in [
                (1, 16, 1),
                (7, 70, 5),
                (12, 576, 8),
                (29, 33, 17),
                (4, 1, 3),
            ] {
                let w: Vec<u16> = (0..rows * cols)
                    .map(|i| ((i * 7919 % 101) as f32 - 50.0) / 37.0)
                    .map(|v| match kind {
                        HalfKind::Bf16 => round_bf16(v),
                        HalfKind::F16 => half::f16::from_f32(v).to_bits(),
                    })
                    .collect();
                let wide = |b: u16| match kind {
                    HalfKind::Bf16 => half::bf16::from_bits(b).to_f64(),
                    HalfKind::F16 => half::f16::from_bits(b).to_f64(),
                };
                let x: Vec<f32> = (0..n * cols)
                    .map(|i| ((i * 104_729 % 97) as f32 - 48.0) / 13.0 + (i % 7) as f32 * 1e-3)
                    .collect();
                let mut y = vec![f32::NAN; n * rows];
                assert!(gemm(kind, &w, [rows, cols], &x, n, &mut y));
                for j in 0..n {
                    for r in 0..rows {
                        let want: f64 = (0..cols)
                            .map(|c| wide(w[r * cols + c]) * x[j * cols + c] as f64)
                            .sum();
                        let got = y[j * rows + r] as f64;
                        let bound = 1e-5 * (1.0 + want.abs()) * (cols as f64).sqrt();
                        assert!(
                            (got - want).abs() <= bound,
                            "{kind:?} {rows}x{cols} n={n} ({j},{r}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
