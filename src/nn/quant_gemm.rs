//! Prefill GEMM for Q8/Q4 weights: integer products straight from the quantized blocks, no
//! dequantized copy. AVX-512 VNNI (AMD Zen 4 and later, Intel Ice Lake and later) multiplies
//! 64 byte pairs a `vpdpbusd`; AVX2 elsewhere (`vpmaddubsw` + `vpmaddwd`, 32 a pair of
//! instructions).
//!
//! The activations are quantized to 8 bits per block of 32 exactly as decode quantizes them
//! ([`QActs`](super::quant)' block quantizer), so prefill and decode compute the same sums:
//! per block an exact i32 sum of `stored weight × activation`, started at `−offset ·
//! Σ activations` to remove the unsigned storage's offset (AVX2 multiplies Q8 weights made
//! signed instead, so that its 16-bit pair sums cannot saturate), then scaled by the weight's
//! and the activation's block scales into f32 accumulators. This is what llama.cpp does for its
//! Q8_0/Q4_0 matrices.
//!
//! Layout: the activations are packed once per call as `[token tiles of 16][column quads][16]`
//! (one `u32` holds 4 adjacent columns' 8-bit values), with per tile and block the 16 tokens'
//! scales and sum starts. A tile of 4 weight rows × 32 tokens broadcasts each row's
//! 4 weights (from a Q4 block's nibbles: byte `j` holds weights `j` and `j + 16`) against two
//! vectors of 16 tokens (AVX2: 2 rows × 16 tokens, two vectors of 8).

// The packing and tiling helpers serve the x86-64 kernels only.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use rayon::prelude::*;

use super::bf16_gemm::{SharedOut, LANES};
use super::quant::{quantize_act_block, Quantization, QBLOCK};

/// Weight rows per tile of the kernel.
const ROWS: usize = 4;
/// Column quads per block.
const QUADS: usize = QBLOCK / 4;

/// The instruction sets the kernel comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    /// AVX-512 F, BW and VNNI: `vpdpbusd` on 512-bit vectors, 16 tokens a vector.
    Avx512Vnni,
    /// AVX2: `vpmaddubsw` + `vpmaddwd` on 256-bit vectors, 8 tokens a vector.
    Avx2,
}

/// The best kernel this CPU runs, if any.
fn isa() -> Option<Isa> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") {
            return Some(Isa::Avx512Vnni);
        }
        if has!("avx2") && has!("fma") {
            return Some(Isa::Avx2);
        }
    }
    None
}

/// Whether prefill computes the same sums as decode here: the integer GEMM runs (AVX2 or
/// AVX-512 VNNI).
#[cfg(test)]
pub(crate) fn available() -> bool {
    isa().is_some()
}

/// Activations quantized per block and packed for the kernel.
struct Packed {
    /// `[tiles][cols / 4][16]`: 4 columns' values of 16 tokens.
    q: Vec<u32>,
    /// `[tiles][blocks][16]`: block scales (0 past the last token).
    d: Vec<f32>,
    /// `[tiles][blocks][16]`: `−offset × Σ` of the block's values.
    s: Vec<i32>,
}

fn pack(kind: Quantization, x: &[f32], n: usize, cols: usize) -> Packed {
    let (quads, blocks) = (cols / 4, cols / QBLOCK);
    let tiles = n.div_ceil(LANES);
    let offset = match kind {
        Quantization::Q8 => 128,
        Quantization::Q4 => 8,
    };
    let mut p = Packed {
        q: vec![0; tiles * quads * LANES],
        d: vec![0.0; tiles * blocks * LANES],
        s: vec![0; tiles * blocks * LANES],
    };
    p.q.par_chunks_mut(quads * LANES)
        .zip(p.d.par_chunks_mut(blocks * LANES))
        .zip(p.s.par_chunks_mut(blocks * LANES))
        .enumerate()
        .for_each(|(t, ((q, d), s))| {
            let mut values = [0i8; QBLOCK];
            let mut groups = [0i32; QUADS];
            for l in 0..LANES.min(n - t * LANES) {
                let j = t * LANES + l;
                for b in 0..blocks {
                    let src = &x[j * cols + b * QBLOCK..][..QBLOCK];
                    d[b * LANES + l] = quantize_act_block(src, &mut values, &mut groups);
                    s[b * LANES + l] = -offset * groups.iter().sum::<i32>();
                    for (m, four) in values.chunks_exact(4).enumerate() {
                        let v = u32::from_le_bytes([
                            four[0] as u8,
                            four[1] as u8,
                            four[2] as u8,
                            four[3] as u8,
                        ]);
                        q[(b * QUADS + m) * LANES + l] = v;
                    }
                }
            }
        });
    p
}

/// `y = x · wᵀ` for a quantized `w` (`qs` and f16 `scales` as [`QuantMatrix`](super::QuantMatrix)
/// stores them, `[rows, cols]`), `x` `[n, cols]`, `y` `[n, rows]`, with `x` quantized to 8 bits
/// per block. Returns `false` (and leaves `y` alone) where the CPU has neither AVX2 nor
/// AVX-512 VNNI.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    kind: Quantization,
    qs: &[u8],
    scales: &[u16],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) -> bool {
    match isa() {
        Some(isa) => gemm_with(isa, kind, qs, scales, rows, cols, x, n, y),
        None => false,
    }
}

/// [`gemm`] with the kernel for `isa`, which the CPU must run.
#[allow(clippy::too_many_arguments)]
fn gemm_with(
    isa: Isa,
    kind: Quantization,
    qs: &[u8],
    scales: &[u16],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) -> bool {
    if !cols.is_multiple_of(QBLOCK) || cols == 0 {
        return false;
    }
    let row_bytes = match kind {
        Quantization::Q8 => cols,
        Quantization::Q4 => cols / 2,
    };
    assert!(qs.len() >= rows * row_bytes && scales.len() >= rows * (cols / QBLOCK));
    assert!(x.len() >= n * cols && y.len() >= n * rows);
    #[cfg(target_arch = "x86_64")]
    {
        let packed = pack(kind, x, n, cols);
        let out = SharedOut {
            ptr: y.as_mut_ptr(),
            n,
            rows,
        };
        let groups = rows.div_ceil(ROWS);
        (0..groups).into_par_iter().with_min_len(4).for_each(|g| {
            let r0 = g * ROWS;
            let nr = ROWS.min(rows - r0);
            let job = x86::RowTile {
                qs: &qs[r0 * row_bytes..],
                scales: &scales[r0 * (cols / QBLOCK)..],
                row_bytes,
                nr,
                cols,
                n,
            };
            // SAFETY: the CPU runs `isa` (detected by `isa()`, or asserted by the tests that
            // pass it); the rows r0..r0 + nr lie in `qs` and `scales`, the packed tiles cover
            // `n` tokens, and this task alone writes columns r0..r0 + nr of `y` (asserted
            // lengths above).
            unsafe {
                match (isa, kind) {
                    (Isa::Avx512Vnni, Quantization::Q8) => job.run::<false>(&packed, &out, r0),
                    (Isa::Avx512Vnni, Quantization::Q4) => job.run::<true>(&packed, &out, r0),
                    (Isa::Avx2, Quantization::Q8) => job.run_avx2::<false>(&packed, &out, r0),
                    (Isa::Avx2, Quantization::Q4) => job.run_avx2::<true>(&packed, &out, r0),
                }
            }
        });
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, qs, scales, rows, x, n, y);
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Packed, SharedOut, LANES, QBLOCK, QUADS, ROWS};
    use std::arch::x86_64::*;

    /// Up to [`ROWS`] consecutive weight rows.
    pub(super) struct RowTile<'a> {
        pub qs: &'a [u8],
        pub scales: &'a [u16],
        pub row_bytes: usize,
        pub nr: usize,
        pub cols: usize,
        pub n: usize,
    }

    impl RowTile<'_> {
        /// Columns `r0..r0 + nr` of `y` for every token, 32 at a time.
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        pub(super) unsafe fn run<const Q4: bool>(&self, p: &Packed, y: &SharedOut, r0: usize) {
            let tiles = self.n.div_ceil(LANES);
            let ws = self.scales_f32();
            let ws = ws.as_slice();
            let mut t = 0;
            while t < tiles {
                let tv = (tiles - t).min(2);
                let mut acc = [[0f32; LANES]; 2 * ROWS];
                macro_rules! dispatch {
                    ($($r:literal)*) => {
                        match (self.nr, tv) {
                            $(($r, 2) => self.tile::<$r, 2, Q4>(p, t, ws, &mut acc),
                              ($r, _) => self.tile::<$r, 1, Q4>(p, t, ws, &mut acc),)*
                            _ => unreachable!("row tiles hold 1 to {ROWS} rows"),
                        }
                    };
                }
                dispatch!(1 2 3 4);
                y.write_tile(&acc, r0, self.nr, t, tv);
                t += tv;
            }
        }

        /// The rows' block scales as f32 (`[nr][blocks]`).
        fn scales_f32(&self) -> Vec<f32> {
            let blocks = self.cols / QBLOCK;
            self.scales[..self.nr * blocks]
                .iter()
                .map(|&bits| half::f16::from_bits(bits).to_f32())
                .collect()
        }

        /// [`RowTile::run`] with AVX2: pairs of rows against one tile of 16 tokens (two
        /// vectors of 8) at a time.
        #[target_feature(enable = "avx2,fma")]
        pub(super) unsafe fn run_avx2<const Q4: bool>(&self, p: &Packed, y: &SharedOut, r0: usize) {
            let tiles = self.n.div_ceil(LANES);
            let blocks = self.cols / QBLOCK;
            let ws = self.scales_f32();
            for t in 0..tiles {
                let mut acc = [[0f32; LANES]; 2 * ROWS];
                let mut r = 0;
                while r < self.nr {
                    let ws = &ws[r * blocks..];
                    let out = &mut acc[r * 2..];
                    if self.nr - r >= 2 {
                        self.tile_avx2::<2, Q4>(p, t, r, ws, out);
                        r += 2;
                    } else {
                        self.tile_avx2::<1, Q4>(p, t, r, ws, out);
                        r += 1;
                    }
                }
                y.write_tile(&acc, r0, self.nr, t, 1);
            }
        }

        /// `R` rows from row `r0` of the tile against the 16 tokens of tile `t`; results into
        /// `acc[r · 2]` (16 lanes each). `ws` holds the rows' block scales as f32. Q8 weights
        /// are made signed (`q + 128` XOR 128) and multiplied as `|w| · sign(x, w)`, so that
        /// `vpmaddubsw`'s 16-bit pair sums cannot saturate; Q4's nibbles (0..15) multiply the
        /// activations directly, started at `−8 · Σx`.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn tile_avx2<const R: usize, const Q4: bool>(
            &self,
            p: &Packed,
            t: usize,
            r0: usize,
            ws: &[f32],
            acc: &mut [[f32; LANES]],
        ) {
            let blocks = self.cols / QBLOCK;
            let quads = self.cols / 4;
            let nibbles = _mm256_set1_epi8(0x0F);
            let flip = _mm256_set1_epi8(-128);
            let ones = _mm256_set1_epi16(1);
            let mut sums = [[_mm256_setzero_ps(); 2]; R];
            let wq = self.qs.as_ptr().add(r0 * self.row_bytes);
            for b in 0..blocks {
                let at = (t * blocks + b) * LANES;
                let mut ints = [[_mm256_setzero_si256(); 2]; R];
                if Q4 {
                    for h in 0..2 {
                        let start = _mm256_loadu_si256(p.s.as_ptr().add(at + 8 * h) as *const _);
                        for row in ints.iter_mut() {
                            row[h] = start;
                        }
                    }
                }
                for m in 0..QUADS {
                    let xa = (t * quads + b * QUADS + m) * LANES;
                    let xv = [
                        _mm256_loadu_si256(p.q.as_ptr().add(xa) as *const _),
                        _mm256_loadu_si256(p.q.as_ptr().add(xa + 8) as *const _),
                    ];
                    for (r, row) in ints.iter_mut().enumerate() {
                        if Q4 {
                            let at = r * self.row_bytes + b * QBLOCK / 2 + 4 * (m % 4);
                            let four =
                                _mm256_set1_epi32((wq.add(at) as *const i32).read_unaligned());
                            let w = if m < 4 {
                                _mm256_and_si256(four, nibbles)
                            } else {
                                _mm256_and_si256(_mm256_srli_epi32::<4>(four), nibbles)
                            };
                            for (s, x) in row.iter_mut().zip(&xv) {
                                let pairs = _mm256_maddubs_epi16(w, *x);
                                *s = _mm256_add_epi32(*s, _mm256_madd_epi16(pairs, ones));
                            }
                        } else {
                            let at = r * self.row_bytes + b * QBLOCK + 4 * m;
                            let four =
                                _mm256_set1_epi32((wq.add(at) as *const i32).read_unaligned());
                            let w = _mm256_xor_si256(four, flip);
                            let magnitude = _mm256_sign_epi8(w, w);
                            for (s, x) in row.iter_mut().zip(&xv) {
                                let pairs =
                                    _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(*x, w));
                                *s = _mm256_add_epi32(*s, _mm256_madd_epi16(pairs, ones));
                            }
                        }
                    }
                }
                let xd = [
                    _mm256_loadu_ps(p.d.as_ptr().add(at)),
                    _mm256_loadu_ps(p.d.as_ptr().add(at + 8)),
                ];
                for (r, (row, ints)) in sums.iter_mut().zip(&ints).enumerate() {
                    let wd = _mm256_set1_ps(ws[r * blocks + b]);
                    for ((s, i), d) in row.iter_mut().zip(ints).zip(&xd) {
                        *s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(*i), _mm256_mul_ps(*d, wd), *s);
                    }
                }
            }
            for (r, row) in sums.iter().enumerate() {
                for (h, s) in row.iter().enumerate() {
                    _mm256_storeu_ps(acc[r * 2].as_mut_ptr().add(8 * h), *s);
                }
            }
        }

        /// `R` rows against `V` vectors of 16 tokens starting at tile `t`; results into
        /// `acc[r · 2 + v]`. `ws` holds the rows' block scales as f32.
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        unsafe fn tile<const R: usize, const V: usize, const Q4: bool>(
            &self,
            p: &Packed,
            t: usize,
            ws: &[f32],
            acc: &mut [[f32; LANES]; 2 * ROWS],
        ) {
            let blocks = self.cols / QBLOCK;
            let quads = self.cols / 4;
            let nibbles = _mm512_set1_epi8(0x0F);
            let mut sums = [[_mm512_setzero_ps(); V]; R];
            let wq = self.qs.as_ptr();
            let block_bytes = if Q4 { QBLOCK / 2 } else { QBLOCK };
            for b in 0..blocks {
                if t == 0 {
                    // The next tile's rows at this block: rows of a few hundred bytes, four
                    // read side by side, are over before the hardware's prefetchers follow
                    // them (a hint: an address past the matrix is never read).
                    for r in 0..ROWS {
                        let at = (ROWS + r) * self.row_bytes + b * block_bytes;
                        _mm_prefetch::<_MM_HINT_T0>(wq.wrapping_add(at) as *const i8);
                    }
                }
                let mut ints = [[_mm512_setzero_si512(); V]; R];
                let mut xd = [_mm512_setzero_ps(); V];
                for v in 0..V {
                    let at = ((t + v) * blocks + b) * LANES;
                    let start = _mm512_loadu_si512(p.s.as_ptr().add(at) as *const _);
                    xd[v] = _mm512_loadu_ps(p.d.as_ptr().add(at));
                    for row in ints.iter_mut() {
                        row[v] = start;
                    }
                }
                for m in 0..QUADS {
                    let mut xv = [_mm512_setzero_si512(); V];
                    for (v, x) in xv.iter_mut().enumerate() {
                        let at = ((t + v) * quads + b * QUADS + m) * LANES;
                        *x = _mm512_loadu_si512(p.q.as_ptr().add(at) as *const _);
                    }
                    for (r, row) in ints.iter_mut().enumerate() {
                        let w = if Q4 {
                            // Weights 4m..4m + 4 of the block: low nibbles of bytes 4m.. for
                            // the first half, high nibbles of bytes 4(m − 4).. for the second.
                            let at = r * self.row_bytes + b * QBLOCK / 2 + 4 * (m % 4);
                            let four =
                                _mm512_set1_epi32((wq.add(at) as *const i32).read_unaligned());
                            if m < 4 {
                                _mm512_and_si512(four, nibbles)
                            } else {
                                _mm512_and_si512(_mm512_srli_epi32::<4>(four), nibbles)
                            }
                        } else {
                            let at = r * self.row_bytes + b * QBLOCK + 4 * m;
                            _mm512_set1_epi32((wq.add(at) as *const i32).read_unaligned())
                        };
                        for (s, x) in row.iter_mut().zip(&xv) {
                            *s = _mm512_dpbusd_epi32(*s, w, *x);
                        }
                    }
                }
                for (r, (row, ints)) in sums.iter_mut().zip(&ints).enumerate() {
                    let wd = _mm512_set1_ps(ws[r * blocks + b]);
                    for ((s, i), d) in row.iter_mut().zip(ints).zip(&xd) {
                        *s = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*i), _mm512_mul_ps(*d, wd), *s);
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::QuantMatrix;

    /// Against the decode kernels, which quantize the activations the same way and sum the
    /// same integers: equal up to the order of f32 additions.
    #[test]
    fn gemm_matches_the_decode_kernels() {
        let isas: Vec<Isa> = [Isa::Avx512Vnni, Isa::Avx2]
            .into_iter()
            .filter(|&i| isa() == Some(Isa::Avx512Vnni) || isa() == Some(i))
            .collect();
        if isas.is_empty() {
            eprintln!("skipped: this CPU has neither AVX2 nor AVX-512 VNNI");
            return;
        }
        for (isa, kind) in isas
            .iter()
            .flat_map(|&i| [(i, Quantization::Q8), (i, Quantization::Q4)])
        {
            for (rows, cols, n) in [(4, 32, 16), (13, 96, 5), (37, 64, 47), (9, 320, 33)] {
                let w: Vec<f32> = (0..rows * cols)
                    .map(|i| ((i * 7919 % 101) as f32 - 50.0) / 37.0)
                    .collect();
                let x: Vec<f32> = (0..n * cols)
                    .map(|i| ((i * 104_729 % 97) as f32 - 48.0) / 13.0)
                    .collect();
                let m = QuantMatrix::quantize(kind, &w, rows, cols);
                let mut y = vec![f32::NAN; n * rows];
                let (qs, scales) = m.raw();
                assert!(gemm_with(isa, kind, qs, scales, rows, cols, &x, n, &mut y));
                for j in 0..n {
                    let row = &x[j * cols..(j + 1) * cols];
                    let acts = m.quantize_row(row);
                    let mut want = vec![0f32; rows];
                    m.rows_dot(&acts)(0, &mut want);
                    for r in 0..rows {
                        let got = y[j * rows + r];
                        assert!(
                            (got - want[r]).abs() <= 1e-4 * (1.0 + want[r].abs()),
                            "{isa:?} {kind:?} {rows}x{cols}, n {n}: y[{j}, {r}] = {got}, want {}",
                            want[r]
                        );
                    }
                }
            }
        }
    }
}
