//! In-situ quantization at load: weights rounded to 8-bit (`Q8`) or 4-bit (`Q4`) integers in
//! blocks of 32 along each row, one f16 scale per block (symmetric, like llama.cpp's Q8_0 and
//! Q4_0), multiplied on the CPU by kiln's own kernels.
//!
//! Decode (a few activation rows): each activation row is itself quantized to 8 bits per block
//! of 32 and the products are integer dot products (AVX-512 VNNI `dpbusd` or AVX2
//! `maddubs`/`madd`, portable code elsewhere) scaled per block, reading 1.0625 (Q8) or 0.5625
//! (Q4) bytes per weight. Prefill (many rows): the same integer arithmetic as a GEMM over
//! tiles of rows and tokens where the CPU has AVX2 or AVX-512 VNNI
//! ([`quant_gemm`](super::quant_gemm)); elsewhere a block of weight rows is dequantized to f32
//! and multiplied by an f32 GEMM, with f32 activations.

use rayon::prelude::*;

use super::host::{HostBuf, WeightArena};

/// Weights per quantization block.
pub const QBLOCK: usize = 32;

/// How weights are quantized at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    /// 8-bit integers per block of 32, one f16 scale each (1.0625 bytes per weight).
    Q8,
    /// 4-bit integers per block of 32, one f16 scale each (0.5625 bytes per weight).
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
    qs: HostBuf<u8>,
    /// One per block, row-major (`rows · cols / QBLOCK`), as f16 bits.
    scales: HostBuf<u16>,
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
        cols > 0 && cols.is_multiple_of(QBLOCK)
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
        Self::quantize_rows_chunked(kind, rows, cols, rows, fill, |_| {})
    }

    /// [`QuantMatrix::quantize_rows`] `chunk` rows at a time, calling `done` with each chunk's
    /// rows once they are quantized (the loader releases their file pages there, so a large
    /// tensor never has all its source bytes resident at once).
    pub fn quantize_rows_chunked(
        kind: Quantization,
        rows: usize,
        cols: usize,
        chunk: usize,
        fill: impl Fn(usize, &mut [f32]) + Sync,
        done: impl FnMut(std::ops::Range<usize>),
    ) -> Self {
        Self::quantize_rows_in(kind, rows, cols, chunk, None, fill, done)
    }

    /// [`QuantMatrix::quantize_rows_chunked`] with the integers and scales in `arena` (huge
    /// pages: see [`HostBuf`]) where there is one.
    pub(crate) fn quantize_rows_in(
        kind: Quantization,
        rows: usize,
        cols: usize,
        chunk: usize,
        mut arena: Option<&mut WeightArena>,
        fill: impl Fn(usize, &mut [f32]) + Sync,
        mut done: impl FnMut(std::ops::Range<usize>),
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
        let row_bytes = bpr * bytes_per_block;
        let mut qs = HostBuf::<u8>::zeroed(rows * row_bytes, arena.as_deref_mut());
        let mut scales = HostBuf::<u16>::zeroed(rows * bpr, arena);
        let chunk = chunk.max(1);
        for (c, (qc, sc)) in qs
            .chunks_mut(chunk * row_bytes)
            .zip(scales.chunks_mut(chunk * bpr))
            .enumerate()
        {
            let r0 = c * chunk;
            qc.par_chunks_mut(row_bytes)
                .zip(sc.par_chunks_mut(bpr))
                .enumerate()
                .for_each_init(
                    || vec![0f32; cols],
                    |row, (r, (q_row, s_row))| {
                        fill(r0 + r, row);
                        for ((q, scale), src) in q_row
                            .chunks_mut(bytes_per_block)
                            .zip(s_row.iter_mut())
                            .zip(row.chunks(QBLOCK))
                        {
                            *scale = quantize_block(kind, src, q);
                        }
                    },
                );
            done(r0..r0 + qc.len() / row_bytes.max(1));
        }
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
        self.qs.len() + 2 * self.scales.len()
    }

    /// Row `r` dequantized into `out` (`cols` values).
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) {
        let bpr = self.cols / QBLOCK;
        for (b, dst) in out.chunks_mut(QBLOCK).enumerate() {
            let block = r * bpr + b;
            let d = half::f16::from_bits(self.scales[block]).to_f32();
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

    /// One activation row `x` (`cols` values) quantized for [`QuantMatrix::rows_dot`]; the
    /// same for every matrix of this kind and width.
    pub(crate) fn quantize_row(&self, x: &[f32]) -> QActs {
        QActs::new(self.kind, x, 1, self.cols)
    }

    /// Fills `out` with rows `r0..r0 + out.len()` dotted with the activation row `acts` (from
    /// [`QuantMatrix::quantize_row`] of a matrix of this kind and width), for
    /// [`HostWeight::gemv_many`](crate::nn::linear::HostWeight::gemv_many).
    pub(crate) fn rows_dot<'a>(
        &'a self,
        acts: &'a QActs,
    ) -> impl Fn(usize, &mut [f32]) + Sync + 'a {
        assert!(
            acts.kind == self.kind && acts.cols == self.cols,
            "rows_dot: activations"
        );
        self.rows_dot_row(acts.row(0))
    }

    /// [`QuantMatrix::rows_dot`] for one row's activations: four weight rows at a time where
    /// the CPU has a kernel for that (each activation load then serves four rows), one at a
    /// time for the rest.
    fn rows_dot_row<'a>(
        &'a self,
        (xq, xd, xc): (&'a [i8], &'a [f32], &'a [i32]),
    ) -> impl Fn(usize, &mut [f32]) + Sync + 'a {
        let bpr = self.cols / QBLOCK;
        let bytes = bpr * self.bytes_per_block();
        let dot = block_dot_fn(self.kind);
        let dot4 = block_dot4_fn(self.kind);
        move |r0, out: &mut [f32]| {
            let mut done = 0;
            if let Some(dot4) = dot4 {
                // Four long runs of rows, one row of each at a time: every run is read
                // front to back, which the CPU's stream prefetchers follow (four rows next to
                // each other would be four streams of one row each, restarted every fourth
                // row: half the bandwidth, measured).
                done = out.len() / 4 * 4;
                dot4(
                    &self.qs[r0 * bytes..(r0 + done) * bytes],
                    bytes,
                    &self.scales[r0 * bpr..(r0 + done) * bpr],
                    bpr,
                    xq,
                    xd,
                    xc,
                    &mut out[..done],
                );
            }
            let r = r0 + done;
            let out = &mut out[done..];
            let rows = self.qs[r * bytes..(r + out.len()) * bytes].chunks_exact(bytes);
            let scales = self.scales[r * bpr..].chunks_exact(bpr);
            for ((o, q), d) in out.iter_mut().zip(rows).zip(scales) {
                *o = dot(q, d, xq, xd, xc);
            }
        }
    }

    /// The integer GEMM of [`quant_gemm`](super::quant_gemm) (activations quantized per
    /// block, as decode does); `false` where the CPU has neither AVX2 nor AVX-512 VNNI.
    pub(crate) fn gemm_int8(&self, x: &[f32], n: usize, y: &mut [f32]) -> bool {
        super::quant_gemm::gemm(
            self.kind,
            &self.qs,
            &self.scales,
            self.rows,
            self.cols,
            x,
            n,
            y,
        )
    }

    /// The stored integers and f16 scales (for the kernels' tests).
    #[cfg(test)]
    pub(crate) fn raw(&self) -> (&[u8], &[u16]) {
        (&self.qs, &self.scales)
    }

    /// Tasks a thread's share of a decode GEMV over this matrix is split into (see
    /// [`FEW_TASKS_PER_THREAD`](crate::nn::host::FEW_TASKS_PER_THREAD)).
    pub(crate) fn decode_tasks_per_thread(&self) -> usize {
        if block_dot4_fn(self.kind).is_some() {
            crate::nn::host::FEW_TASKS_PER_THREAD
        } else {
            crate::nn::host::TASKS_PER_THREAD
        }
    }

    /// Bytes of one row (integers and scales).
    pub(crate) fn row_bytes(&self) -> usize {
        self.cols / QBLOCK * (self.bytes_per_block() + 2)
    }

    fn bytes_per_block(&self) -> usize {
        match self.kind {
            Quantization::Q8 => QBLOCK,
            Quantization::Q4 => QBLOCK / 2,
        }
    }

    fn gemv(&self, x: &[f32], n: usize, y: &mut [f32]) {
        let bpr = self.cols / QBLOCK;
        let acts = QActs::new(self.kind, x, n, self.cols);
        if n == 1 {
            let dot = self.rows_dot_row(acts.row(0));
            let tasks = self.decode_tasks_per_thread();
            return crate::nn::host::for_row_ranges(y, self.row_bytes(), tasks, dot);
        }
        let dot = block_dot_fn(self.kind);
        let bytes = bpr * self.bytes_per_block();
        crate::nn::host::for_each_output(self.rows, n, y, |r, j| {
            let (xq, xd, xc) = acts.row(j);
            dot(
                &self.qs[r * bytes..(r + 1) * bytes],
                &self.scales[r * bpr..(r + 1) * bpr],
                xq,
                xd,
                xc,
            )
        });
    }

    fn gemm(&self, x: &[f32], n: usize, y: &mut [f32]) {
        if self.gemm_int8(x, n, y) {
            return;
        }
        crate::nn::host::blocked_gemm(self.rows, self.cols, x, n, y, |r, dst| {
            self.row_to_f32(r, dst)
        });
    }
}

/// Activation rows quantized to 8 bits per block of [`QBLOCK`] for the block kernels: values,
/// f32 scales, and per lane of the kernels' i32 sums −offset × the sum of the activations that
/// lane multiplies. The kernels start their integer sums there, which removes what the
/// unsigned weight storage adds, exactly (in f32 it would cancel catastrophically).
///
/// Q8 keeps each block's 32 values in order (8 lanes of 4 per block). Q4 interleaves units of
/// blocks ([`q4_units`]: fours, then a pair and a single for what remains) as the weights'
/// nibbles come out of one load of the unit's 16-byte blocks: every block's values 0..16,
/// then every block's values 16..32 (`[x_b[0..16], x_b+1[0..16], …, x_b[16..32], x_b+1[16..32],
/// …]`), with 4 lanes per block (8 for a single block).
pub(crate) struct QActs {
    kind: Quantization,
    q: Vec<i8>,
    d: Vec<f32>,
    c: Vec<i32>,
    cols: usize,
    c_len: usize,
    /// Sums of each group of 4 values in order (8 per block), while filling.
    groups: Vec<i32>,
}

impl QActs {
    fn new(kind: Quantization, x: &[f32], n: usize, cols: usize) -> Self {
        let mut acts = Self {
            kind,
            q: Vec::new(),
            d: Vec::new(),
            c: Vec::new(),
            cols,
            c_len: 0,
            groups: Vec::new(),
        };
        acts.fill(kind, x, n, cols);
        acts
    }

    /// Quantizes `n` rows of `x` (`cols` values each) for weights of `kind` into these
    /// buffers, reusing their memory (a decode step refills the same ones pass after pass).
    pub(crate) fn fill(&mut self, kind: Quantization, x: &[f32], n: usize, cols: usize) {
        let bpr = cols / QBLOCK;
        let (offset, c_len) = match kind {
            Quantization::Q8 => (128, bpr * 8),
            Quantization::Q4 => (8, q4_units(bpr).map(|(_, u)| 4 * u.max(2)).sum()),
        };
        // The buffers only grow: a decode step fills them for rows of the hidden size and of
        // the MLP's width in turn, and shrinking them would zero the difference at every
        // growth (every value read is written below first).
        fn grow<T: Copy + Default>(v: &mut Vec<T>, len: usize) {
            if v.len() < len {
                v.resize(len, T::default());
            }
        }
        let (q, d, c, groups) = (&mut self.q, &mut self.d, &mut self.c, &mut self.groups);
        grow(q, n * cols);
        grow(d, n * bpr);
        grow(c, n * c_len);
        grow(groups, cols / 4);
        let mut unit = [0i8; 4 * QBLOCK];
        for j in 0..n {
            let qr = &mut q[j * cols..(j + 1) * cols];
            for (((qb, db), src), g) in qr
                .chunks_mut(QBLOCK)
                .zip(&mut d[j * bpr..(j + 1) * bpr])
                .zip(x[j * cols..(j + 1) * cols].chunks(QBLOCK))
                .zip(groups.chunks_mut(QBLOCK / 4))
            {
                *db = quantize_act_block(src, qb, g);
            }
            let cr = &mut c[j * c_len..(j + 1) * c_len];
            match kind {
                Quantization::Q8 => {
                    for (o, g) in cr.iter_mut().zip(groups.iter()) {
                        *o = -offset * g;
                    }
                }
                Quantization::Q4 => {
                    let h = QBLOCK / 2;
                    let mut lane = 0;
                    for (first, u) in q4_units(bpr) {
                        // Each block's first halves, then their second halves.
                        let dst = &mut qr[first * QBLOCK..(first + u) * QBLOCK];
                        unit[..dst.len()].copy_from_slice(dst);
                        for i in 0..u {
                            let src = &unit[i * QBLOCK..(i + 1) * QBLOCK];
                            dst[i * h..(i + 1) * h].copy_from_slice(&src[..h]);
                            dst[(u + i) * h..(u + i + 1) * h].copy_from_slice(&src[h..]);
                        }
                        // Lane l multiplies group l % 4 of block l / 4's first half and the
                        // same group of its second half (a single block: its 8 groups).
                        let g = &groups[first * 8..(first + u) * 8];
                        let lanes = &mut cr[lane..lane + 4 * u.max(2)];
                        for (l, o) in lanes.iter_mut().enumerate() {
                            *o = -offset
                                * if u == 1 {
                                    g[l]
                                } else {
                                    g[l / 4 * 8 + l % 4] + g[l / 4 * 8 + 4 + l % 4]
                                };
                        }
                        lane += lanes.len();
                    }
                    debug_assert!(lane == c_len);
                }
            }
        }
        (self.kind, self.cols, self.c_len) = (kind, cols, c_len);
    }

    /// Empty buffers for [`QActs::fill`].
    pub(crate) fn empty() -> Self {
        Self::new(Quantization::Q8, &[], 0, 0)
    }

    /// The weights' quantization these activations are laid out for.
    pub(crate) fn kind(&self) -> Quantization {
        self.kind
    }

    /// Row `j`'s values, scales and lane starts.
    fn row(&self, j: usize) -> (&[i8], &[f32], &[i32]) {
        let bpr = self.cols / QBLOCK;
        (
            &self.q[j * self.cols..(j + 1) * self.cols],
            &self.d[j * bpr..(j + 1) * bpr],
            &self.c[j * self.c_len..(j + 1) * self.c_len],
        )
    }
}

/// One block of activations rounded to 8 bits by its largest magnitude: values into `q`,
/// the sums of each 4 into `groups`; returns the scale. AVX2 where the CPU has it (the same
/// arithmetic, so the same bytes).
pub(crate) fn quantize_act_block(src: &[f32], q: &mut [i8], groups: &mut [i32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            return x86::quantize_act_block(src, q, groups);
        }
    }
    quantize_act_block_portable(src, q, groups)
}

fn quantize_act_block_portable(src: &[f32], q: &mut [i8], groups: &mut [i32]) -> f32 {
    let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (o, v) in q.iter_mut().zip(src) {
        *o = round(v * inv).clamp(-127, 127) as i8;
    }
    for (g, v) in groups.iter_mut().zip(q.chunks(4)) {
        *g = v.iter().map(|&v| v as i32).sum();
    }
    d
}

/// How the Q4 kernels walk a row of `blocks` blocks: `(first block, blocks in the unit)`, in
/// units of four (one 64-byte load), then a pair (32 bytes) and a single block for the rest.
fn q4_units(blocks: usize) -> impl Iterator<Item = (usize, usize)> {
    let quads = blocks / 4;
    let rest = blocks % 4;
    let pair = (rest >= 2).then_some((4 * quads, 2));
    let single = (rest % 2 == 1).then_some((blocks - 1, 1));
    (0..quads).map(|q| (4 * q, 4)).chain(pair).chain(single)
}

/// A block scale as f16 bits and the f32 value those bits hold (clamped to f16's range; no
/// weight block comes near it).
fn f16_scale(d: f32) -> (u16, f32) {
    let h = half::f16::from_f32(d.min(65504.0));
    (h.to_bits(), h.to_f32())
}

/// Quantizes one block of [`QBLOCK`] values into `q` (stored unsigned, see [`QuantMatrix`]);
/// returns its scale. AVX2 where the CPU has it (the same arithmetic, so the same bytes).
fn quantize_block(kind: Quantization, src: &[f32], q: &mut [u8]) -> u16 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            return x86::quantize_block(kind, src, q);
        }
    }
    quantize_block_portable(kind, src, q)
}

fn quantize_block_portable(kind: Quantization, src: &[f32], q: &mut [u8]) -> u16 {
    let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
    match kind {
        Quantization::Q8 => {
            let (bits, d) = f16_scale(amax / 127.0);
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            for (o, v) in q.iter_mut().zip(src) {
                *o = (round(v * inv).clamp(-127, 127) + 128) as u8;
            }
            bits
        }
        Quantization::Q4 => {
            let (bits, d) = f16_scale(amax / 7.0);
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            let level = |v: f32| (round(v * inv).clamp(-8, 7) + 8) as u8;
            for j in 0..QBLOCK / 2 {
                q[j] = level(src[j]) | (level(src[j + QBLOCK / 2]) << 4);
            }
            bits
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

/// Σ over blocks of `wd[b] · xd[b] · Σ q·xq` (the signed weights; `wd` as f16 bits), with
/// the activations laid out as [`QActs`] describes (`xc`: the lanes' starts, for kernels that
/// multiply the stored unsigned values).
type BlockDot = fn(&[u8], &[u16], &[i8], &[f32], &[i32]) -> f32;

fn block_dot_fn(kind: Quantization) -> BlockDot {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") && has!("f16c") {
            if has!("avx512vnni") && has!("avx512vl") {
                return match kind {
                    Quantization::Q8 if has!("avx512f") && has!("avx512bw") => x86::dot_q8_avx512,
                    Quantization::Q8 => x86::dot_q8_vnni,
                    Quantization::Q4 if has!("avx512f") && has!("avx512bw") => x86::dot_q4_avx512,
                    Quantization::Q4 => x86::dot_q4_vnni,
                };
            }
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

/// [`BlockDot`] for four long runs of weight rows, the same activations: `out.len() / 4`
/// (a multiple of four) rows a run, the rows' integers (`bytes` a row) and scales (`bpr` a
/// row) from the first row of the first run; row `i` of run `k` into `out[k · run + i]`,
/// one row of each run at a time (the row's block count is the activations' `xd.len()`).
type BlockDot4 = fn(&[u8], usize, &[u16], usize, &[i8], &[f32], &[i32], &mut [f32]);

fn block_dot4_fn(kind: Quantization) -> Option<BlockDot4> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2")
            && has!("fma")
            && has!("f16c")
            && has!("avx512f")
            && has!("avx512bw")
            && has!("avx512vnni")
            && has!("avx512vl")
        {
            // Q8 reads twice the bytes per product: its decode is bound by memory, and four
            // runs of rows streamed side by side came out slower than one (22.8-26.2 against
            // 27.7-32.0 tok/s on the 1.1B shape); Q4's kernel is bound by its instructions.
            return match kind {
                Quantization::Q8 => None,
                Quantization::Q4 => Some(x86::runs4_q4_avx512),
            };
        }
    }
    let _ = kind;
    None
}

fn scale(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

fn dot_q8_portable(wq: &[u8], wd: &[u16], xq: &[i8], xd: &[f32], _: &[i32]) -> f32 {
    let mut sum = 0f32;
    for (b, (&dw, &dx)) in wd.iter().zip(xd).enumerate() {
        let w = &wq[b * QBLOCK..(b + 1) * QBLOCK];
        let x = &xq[b * QBLOCK..(b + 1) * QBLOCK];
        let acc: i32 = w
            .iter()
            .zip(x)
            .map(|(&a, &c)| (a as i32 - 128) * c as i32)
            .sum();
        sum += scale(dw) * dx * acc as f32;
    }
    sum
}

fn dot_q4_portable(wq: &[u8], wd: &[u16], xq: &[i8], xd: &[f32], _: &[i32]) -> f32 {
    let mut sum = 0f32;
    let half = QBLOCK / 2;
    let blocks = wd.len().min(xd.len());
    for (first, u) in q4_units(blocks) {
        for b in first..first + u {
            let w = &wq[b * half..(b + 1) * half];
            // Where block b's activations j and j + 16 sit (see QActs).
            let lo = first * QBLOCK + (b - first) * half;
            let hi = lo + u * half;
            let mut acc = 0i32;
            for j in 0..half {
                acc += ((w[j] & 0x0F) as i32 - 8) * xq[lo + j] as i32;
                acc += ((w[j] >> 4) as i32 - 8) * xq[hi + j] as i32;
            }
            sum += scale(wd[b]) * xd[b] * acc as f32;
        }
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
    pub fn quantize_block(kind: Quantization, src: &[f32], q: &mut [u8]) -> u16 {
        // SAFETY: only called after detecting avx2.
        unsafe { quantize_block_impl(kind, src, q) }
    }

    /// A block's 32 values in four registers, and their largest magnitude.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load_block(src: &[f32]) -> ([__m256; 4], f32) {
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
        (v, _mm_cvtss_f32(m))
    }

    /// `x · inv` rounded half away from zero (`x + copysign(0.5, x)` truncated, as
    /// [`super::round`]) and clamped to `lo..=hi`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn round_clamp(x: __m256, inv: __m256, lo: i32, hi: i32) -> __m256i {
        let x = _mm256_mul_ps(x, inv);
        let half = _mm256_or_ps(_mm256_and_ps(x, _mm256_set1_ps(-0.0)), _mm256_set1_ps(0.5));
        let r = _mm256_cvttps_epi32(_mm256_add_ps(x, half));
        _mm256_min_epi32(
            _mm256_max_epi32(r, _mm256_set1_epi32(lo)),
            _mm256_set1_epi32(hi),
        )
    }

    #[target_feature(enable = "avx2")]
    unsafe fn quantize_block_impl(kind: Quantization, src: &[f32], q: &mut [u8]) -> u16 {
        let (v, amax) = load_block(src);
        let (levels, lo, hi, offset) = match kind {
            Quantization::Q8 => (127.0f32, -127, 127, 128),
            Quantization::Q4 => (7.0, -8, 7, 8),
        };
        let (bits, d) = super::f16_scale(amax / levels);
        let inv = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        let mut ints = [0i32; QBLOCK];
        for (i, x) in v.iter().enumerate() {
            let r = _mm256_add_epi32(round_clamp(*x, inv, lo, hi), _mm256_set1_epi32(offset));
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
        bits
    }
    /// [`super::quantize_act_block_portable`] in AVX2 registers.
    pub fn quantize_act_block(src: &[f32], q: &mut [i8], groups: &mut [i32]) -> f32 {
        // SAFETY: only called after detecting avx2.
        unsafe { quantize_act_block_impl(src, q, groups) }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn quantize_act_block_impl(src: &[f32], q: &mut [i8], groups: &mut [i32]) -> f32 {
        assert!(q.len() >= QBLOCK && groups.len() >= QBLOCK / 4);
        let (v, amax) = load_block(src);
        let d = amax / 127.0;
        let inv = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        let r: [__m256i; 4] = std::array::from_fn(|i| round_clamp(v[i], inv, -127, 127));
        // i32 → i16 → i8 packs interleave 128-bit lanes; the permute puts them back in order.
        let w = _mm256_packs_epi32(r[0], r[1]);
        let x = _mm256_packs_epi32(r[2], r[3]);
        let b = _mm256_packs_epi16(w, x);
        let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, b);
        // Sums of 4: signed bytes times 1 in pairs, then pairs of pairs.
        let pairs = _mm256_maddubs_epi16(_mm256_set1_epi8(1), b);
        let sums = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
        _mm256_storeu_si256(groups.as_mut_ptr() as *mut __m256i, sums);
        d
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

    /// Eight blocks' combined scales `wd[i] · xd[i]` (f16 weight scales, f32 activation
    /// scales) in one vector.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn scales8(wd: *const u16, xd: *const f32) -> __m256 {
        _mm256_mul_ps(
            _mm256_cvtph_ps(_mm_loadu_si128(wd as *const __m128i)),
            _mm256_loadu_ps(xd),
        )
    }

    /// [`scales8`] for sixteen blocks.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn scales16(wd: *const u16, xd: *const f32) -> __m512 {
        _mm512_mul_ps(
            _mm512_cvtph_ps(_mm256_loadu_si256(wd as *const __m256i)),
            _mm512_loadu_ps(xd),
        )
    }

    /// `start` + Σ over each group of 4 bytes of unsigned `w` × signed `x`, in i32 lanes:
    /// AVX-512 VNNI's `dpbusd` on 256-bit vectors, one instruction without i16 saturation.
    #[inline]
    #[target_feature(enable = "avx2,avx512vnni,avx512vl")]
    unsafe fn dpbusd(start: __m256i, w: __m256i, x: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(start, w, x)
    }

    /// [`dpbusd`] in AVX2 for weights ≤ 15 (`maddubs` pairs stay within i16: 15·127·2).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn madd_nibbles(start: __m256i, w: __m256i, x: __m256i) -> __m256i {
        let pairs = _mm256_maddubs_epi16(w, x);
        _mm256_add_epi32(start, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    /// Σ over groups of 4 of the signed weights (stored `q + 128`) × `x` in AVX2: `maddubs`
    /// on |q| and x with q's sign (|q| ≤ 127 keeps the pairs within i16); the signed product
    /// needs no start.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn madd_signed(_start: __m256i, w: __m256i, x: __m256i) -> __m256i {
        let w = _mm256_xor_si256(w, _mm256_set1_epi8(-128));
        let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
        _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
    }

    /// The Q8 and Q4 block dot products ([`super::BlockDot`]) over a product of 32 weight
    /// bytes by 32 activation bytes into i32 lanes. Eight blocks' scales are widened and
    /// multiplied in one vector, and four accumulators keep the FMA latency off the loop's
    /// critical path. Q4: one 32-byte load holds two blocks; its low nibbles are both blocks'
    /// weights 0..16 and its high nibbles their weights 16..32, which is how the activations
    /// are interleaved.
    macro_rules! block_kernels {
        ($features:literal, $q8:ident, $q4:ident, $p8:ident, $p4:ident) => {
            #[target_feature(enable = $features)]
            unsafe fn $q8(wq: &[u8], wd: &[u16], xq: &[i8], xd: &[f32], xc: &[i32]) -> f32 {
                let blocks = wd.len().min(xd.len());
                assert!(wq.len() >= blocks * QBLOCK && xq.len() >= blocks * QBLOCK);
                assert!(xc.len() >= blocks * 8);
                let (wq, wd, xq, xd, xc) = (
                    wq.as_ptr(),
                    wd.as_ptr(),
                    xq.as_ptr(),
                    xd.as_ptr(),
                    xc.as_ptr(),
                );
                let product = |b: usize| {
                    $p8(
                        _mm256_loadu_si256(xc.add(b * 8) as *const __m256i),
                        _mm256_loadu_si256(wq.add(b * QBLOCK) as *const __m256i),
                        _mm256_loadu_si256(xq.add(b * QBLOCK) as *const __m256i),
                    )
                };
                let mut acc = [_mm256_setzero_ps(); 4];
                let mut b = 0;
                while b + 8 <= blocks {
                    let p = scales8(wd.add(b), xd.add(b));
                    for i in 0..8 {
                        let d = _mm256_permutevar8x32_ps(p, _mm256_set1_epi32(i as i32));
                        acc[i % 4] =
                            _mm256_fmadd_ps(_mm256_cvtepi32_ps(product(b + i)), d, acc[i % 4]);
                    }
                    b += 8;
                }
                while b < blocks {
                    let d = _mm256_set1_ps(super::scale(*wd.add(b)) * *xd.add(b));
                    acc[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(product(b)), d, acc[0]);
                    b += 1;
                }
                hsum(_mm256_add_ps(
                    _mm256_add_ps(acc[0], acc[1]),
                    _mm256_add_ps(acc[2], acc[3]),
                ))
            }

            #[target_feature(enable = $features)]
            unsafe fn $q4(wq: &[u8], wd: &[u16], xq: &[i8], xd: &[f32], xc: &[i32]) -> f32 {
                let blocks = wd.len().min(xd.len());
                let half = QBLOCK / 2;
                let lanes: usize = super::q4_units(blocks).map(|(_, u)| 4 * u.max(2)).sum();
                assert!(wq.len() >= blocks * half && xq.len() >= blocks * QBLOCK);
                assert!(xc.len() >= lanes);
                let (wq, wd, xq, xd, xc) = (
                    wq.as_ptr(),
                    wd.as_ptr(),
                    xq.as_ptr(),
                    xd.as_ptr(),
                    xc.as_ptr(),
                );
                let mask = _mm256_set1_epi8(0x0F);
                // Two blocks' 32 weight bytes: low nibbles times the activations at `lo`, high
                // nibbles times those at `hi`, started at the lanes `c`.
                let pair = |w: *const u8, lo: *const i8, hi: *const i8, c: *const i32| {
                    let v = _mm256_loadu_si256(w as *const __m256i);
                    let s = _mm256_loadu_si256(c as *const __m256i);
                    let l = _mm256_and_si256(v, mask);
                    let s = $p4(s, l, _mm256_loadu_si256(lo as *const __m256i));
                    let h = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
                    $p4(s, h, _mm256_loadu_si256(hi as *const __m256i))
                };
                // Half `h` of unit of four `q`.
                let quad_half = |q: usize, h: usize| {
                    let x = xq.add(q * 4 * QBLOCK + h * QBLOCK);
                    pair(
                        wq.add(q * 2 * QBLOCK + h * QBLOCK),
                        x,
                        x.add(2 * QBLOCK),
                        xc.add(q * 16 + h * 8),
                    )
                };
                let quads = blocks / 4;
                let mut acc = [_mm256_setzero_ps(); 4];
                let mut q = 0;
                while q + 2 <= quads {
                    let p = scales8(wd.add(4 * q), xd.add(4 * q));
                    for j in 0..4 {
                        let (a, b) = (2 * j as i32, 2 * j as i32 + 1);
                        let idx = _mm256_setr_epi32(a, a, a, a, b, b, b, b);
                        let d = _mm256_permutevar8x32_ps(p, idx);
                        let s = quad_half(q + j / 2, j % 2);
                        acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, acc[j]);
                    }
                    q += 2;
                }
                let block_scale = |b: usize| super::scale(*wd.add(b)) * *xd.add(b);
                let pair_scale = |b: usize| {
                    _mm256_set_m128(_mm_set1_ps(block_scale(b + 1)), _mm_set1_ps(block_scale(b)))
                };
                while q < quads {
                    for h in 0..2 {
                        let d = pair_scale(4 * q + 2 * h);
                        acc[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(quad_half(q, h)), d, acc[h]);
                    }
                    q += 1;
                }
                let (mut b, mut c) = (4 * quads, 16 * quads);
                if blocks - b >= 2 {
                    let x = xq.add(b * QBLOCK);
                    let s = pair(wq.add(b * half), x, x.add(QBLOCK), xc.add(c));
                    acc[2] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), pair_scale(b), acc[2]);
                    b += 2;
                    c += 8;
                }
                if blocks - b == 1 {
                    // A single block: its own 16 bytes, activations in order.
                    let bytes = _mm_loadu_si128(wq.add(b * half) as *const __m128i);
                    let both = _mm256_set_m128i(_mm_srli_epi16(bytes, 4), bytes);
                    let s = $p4(
                        _mm256_loadu_si256(xc.add(c) as *const __m256i),
                        _mm256_and_si256(both, mask),
                        _mm256_loadu_si256(xq.add(b * QBLOCK) as *const __m256i),
                    );
                    let d = _mm256_set1_ps(block_scale(b));
                    acc[3] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, acc[3]);
                }
                hsum(_mm256_add_ps(
                    _mm256_add_ps(acc[0], acc[1]),
                    _mm256_add_ps(acc[2], acc[3]),
                ))
            }
        };
    }

    block_kernels!(
        "avx2,fma,f16c,avx512vnni,avx512vl",
        dot_q8_vnni_impl,
        dot_q4_vnni_impl,
        dpbusd,
        dpbusd
    );
    block_kernels!(
        "avx2,fma,f16c",
        dot_q8_impl,
        dot_q4_impl,
        madd_signed,
        madd_nibbles
    );

    /// Lane l of unit i (of four in a group of 16 blocks) takes block 4i + l / 4's scale.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn q4_scale_index() -> [__m512i; 4] {
        std::array::from_fn(|i| {
            let b = 4 * i as i32;
            let (c, d) = (b + 2, b + 3);
            let a = b + 1;
            _mm512_setr_epi32(b, b, b, b, a, a, a, a, c, c, c, c, d, d, d, d)
        })
    }

    /// Unit `q`'s activations (as [`super::QActs`] lays them out for Q4): the lane starts,
    /// the four blocks' values 0..16 and their values 16..32.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn q4_acts512(xp: *const i8, xcp: *const i32, q: usize) -> (__m512i, __m512i, __m512i) {
        let x = xp.add(q * 4 * QBLOCK);
        (
            _mm512_loadu_si512(xcp.add(q * 16) as *const _),
            _mm512_loadu_si512(x as *const _),
            _mm512_loadu_si512(x.add(2 * QBLOCK) as *const _),
        )
    }

    /// A unit of four Q4 blocks (64 bytes `v`): the low nibbles times `lo` and the high
    /// nibbles times `hi`, summed per lane from the starts `c`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn q4_unit512(v: __m512i, c: __m512i, lo: __m512i, hi: __m512i) -> __m512i {
        let mask = _mm512_set1_epi8(0x0F);
        let s = _mm512_dpbusd_epi32(c, _mm512_and_si512(v, mask), lo);
        _mm512_dpbusd_epi32(s, _mm512_and_si512(_mm512_srli_epi16(v, 4), mask), hi)
    }

    /// The pair of blocks that follows a row's units of four (rows of 4k + 2 blocks, such as
    /// 576 columns), laid out as a row of two blocks would be: its activations and lane starts
    /// (first block `b`, first lane `c`), loaded once for every row.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn q4_pair_acts(xp: *const i8, xcp: *const i32, b: usize, c: usize) -> [__m256i; 3] {
        let x = xp.add(b * QBLOCK);
        [
            _mm256_loadu_si256(xcp.add(c) as *const __m256i),
            _mm256_loadu_si256(x as *const __m256i),
            _mm256_loadu_si256(x.add(QBLOCK) as *const __m256i),
        ]
    }

    /// One row's pair of blocks (32 weight bytes at `w`, its two f16 scales at `wd`, the
    /// activations' two scales at `xd`) against [`q4_pair_acts`], scaled, in f32 lanes (lanes
    /// 0..4 the first block's, 4..8 the second's).
    #[inline]
    #[target_feature(enable = "avx2,avx512vnni,avx512vl,f16c")]
    unsafe fn q4_pair256(
        w: *const u8,
        wd: *const u16,
        xd: *const f32,
        acts: &[__m256i; 3],
    ) -> __m256 {
        let mask = _mm256_set1_epi8(0x0F);
        let v = _mm256_loadu_si256(w as *const __m256i);
        let s = _mm256_dpbusd_epi32(acts[0], _mm256_and_si256(v, mask), acts[1]);
        let s = _mm256_dpbusd_epi32(s, _mm256_and_si256(_mm256_srli_epi16(v, 4), mask), acts[2]);
        let scales = _mm_cvtph_ps(_mm_cvtsi32_si128((wd as *const i32).read_unaligned()));
        let xs = _mm_castpd_ps(_mm_load_sd(xd as *const f64));
        let p = _mm256_castps128_ps256(_mm_mul_ps(scales, xs));
        let d = _mm256_permutevar8x32_ps(p, _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
        _mm256_mul_ps(_mm256_cvtepi32_ps(s), d)
    }

    /// [`dot_q4_vnni_impl`] on 512-bit vectors: one load holds a unit of four blocks, and half
    /// as many instructions per byte lets the core keep more of the stream in flight. What
    /// follows the units of four (a pair, a single block) has the layout a row of that many
    /// blocks would have, so the 256-bit kernel finishes it.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,avx2,fma,f16c")]
    unsafe fn dot_q4_avx512_impl(wq: &[u8], wd: &[u16], xq: &[i8], xd: &[f32], xc: &[i32]) -> f32 {
        let blocks = wd.len().min(xd.len());
        let quads = blocks / 4;
        assert!(wq.len() >= quads * 2 * QBLOCK && xq.len() >= quads * 4 * QBLOCK);
        assert!(xc.len() >= quads * 16);
        let (wp, wdp, xp, xdp, xcp) = (
            wq.as_ptr(),
            wd.as_ptr(),
            xq.as_ptr(),
            xd.as_ptr(),
            xc.as_ptr(),
        );
        let quad = |q: usize| {
            let v = _mm512_loadu_si512(wp.add(q * 2 * QBLOCK) as *const _);
            let (c, lo, hi) = q4_acts512(xp, xcp, q);
            q4_unit512(v, c, lo, hi)
        };
        let idx = q4_scale_index();
        // One accumulator, the units in order: the sums of [`dot4_q4_avx512_impl`] for each of
        // its rows, so that a row's result does not depend on which kernel its call took (the
        // team's tasks, and so which rows go four at a time, vary from run to run).
        let mut sum = _mm512_setzero_ps();
        let mut q = 0;
        while q + 4 <= quads {
            let p = scales16(wdp.add(4 * q), xdp.add(4 * q));
            for (i, idx) in idx.iter().enumerate() {
                let d = _mm512_permutexvar_ps(*idx, p);
                sum = _mm512_fmadd_ps(_mm512_cvtepi32_ps(quad(q + i)), d, sum);
            }
            q += 4;
        }
        while q < quads {
            let p = _mm_mul_ps(
                _mm_cvtph_ps(_mm_loadl_epi64(wdp.add(4 * q) as *const __m128i)),
                _mm_loadu_ps(xdp.add(4 * q)),
            );
            let d = _mm512_permutexvar_ps(idx[0], _mm512_castps128_ps512(p));
            sum = _mm512_fmadd_ps(_mm512_cvtepi32_ps(quad(q)), d, sum);
            q += 1;
        }
        let (mut b, mut c) = (4 * quads, 16 * quads);
        if blocks - b >= 2 {
            assert!(wq.len() >= (b + 2) * QBLOCK / 2 && xq.len() >= (b + 2) * QBLOCK);
            assert!(xc.len() >= c + 8);
            let acts = q4_pair_acts(xp, xcp, b, c);
            let pair = q4_pair256(wp.add(b * QBLOCK / 2), wdp.add(b), xdp.add(b), &acts);
            sum = _mm512_add_ps(sum, _mm512_zextps256_ps512(pair));
            (b, c) = (b + 2, c + 8);
        }
        let rest = if b < blocks {
            dot_q4_vnni_impl(
                &wq[b * QBLOCK / 2..],
                &wd[b..blocks],
                &xq[b * QBLOCK..],
                &xd[b..blocks],
                &xc[c..],
            )
        } else {
            0.0
        };
        _mm512_reduce_add_ps(sum) + rest
    }

    /// [`dot_q8_vnni_impl`] on 512-bit vectors: two blocks a load, sixteen blocks' scales a
    /// vector; an odd last block goes through the 256-bit kernel.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,avx2,fma,f16c")]
    unsafe fn dot_q8_avx512_impl(wq: &[u8], wd: &[u16], xq: &[i8], xd: &[f32], xc: &[i32]) -> f32 {
        let blocks = wd.len().min(xd.len());
        let pairs = blocks / 2;
        assert!(wq.len() >= blocks * QBLOCK && xq.len() >= blocks * QBLOCK);
        assert!(xc.len() >= blocks * 8);
        let (wp, wdp, xp, xdp, xcp) = (
            wq.as_ptr(),
            wd.as_ptr(),
            xq.as_ptr(),
            xd.as_ptr(),
            xc.as_ptr(),
        );
        let pair = |k: usize| {
            _mm512_dpbusd_epi32(
                _mm512_loadu_si512(xcp.add(k * 16) as *const _),
                _mm512_loadu_si512(wp.add(k * 2 * QBLOCK) as *const _),
                _mm512_loadu_si512(xp.add(k * 2 * QBLOCK) as *const _),
            )
        };
        // Lanes 0..8 of pair i (of eight in a group of 16 blocks) take block 2i's scale, lanes
        // 8..16 block 2i + 1's.
        let idx: [__m512i; 8] = std::array::from_fn(|i| {
            let (a, b) = (2 * i as i32, 2 * i as i32 + 1);
            _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b)
        });
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut k = 0;
        while k + 8 <= pairs {
            let p = scales16(wdp.add(2 * k), xdp.add(2 * k));
            for (i, idx) in idx.iter().enumerate() {
                let d = _mm512_permutexvar_ps(*idx, p);
                acc[i % 4] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(pair(k + i)), d, acc[i % 4]);
            }
            k += 8;
        }
        while k < pairs {
            // The pair's two scales widened in a vector (one conversion each in software costs
            // more than the pair's product on rows of a few hundred columns).
            let w = _mm_cvtsi32_si128((wdp.add(2 * k) as *const i32).read_unaligned());
            let x = _mm_castpd_ps(_mm_load_sd(xdp.add(2 * k) as *const f64));
            let p = _mm512_castps128_ps512(_mm_mul_ps(_mm_cvtph_ps(w), x));
            let d = _mm512_permutexvar_ps(idx[0], p);
            acc[k % 4] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(pair(k)), d, acc[k % 4]);
            k += 1;
        }
        let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        let b = 2 * pairs;
        let rest = if b < blocks {
            dot_q8_vnni_impl(
                &wq[b * QBLOCK..],
                &wd[b..blocks],
                &xq[b * QBLOCK..],
                &xd[b..blocks],
                &xc[b * 8..],
            )
        } else {
            0.0
        };
        _mm512_reduce_add_ps(sum) + rest
    }

    /// [`dot_q4_avx512_impl`] for four rows: each unit's activations and lane starts are
    /// loaded once for the four rows' weights; each row keeps its own accumulator.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,avx2,fma,f16c")]
    unsafe fn dot4_q4_avx512_impl(
        wq: &[u8],
        stride: usize,
        wd: &[u16],
        sstride: usize,
        xq: &[i8],
        xd: &[f32],
        xc: &[i32],
    ) -> [f32; 4] {
        let blocks = xd.len();
        let quads = blocks / 4;
        let row_bytes = blocks * QBLOCK / 2;
        assert!(wq.len() >= 3 * stride + row_bytes && wd.len() >= 3 * sstride + blocks);
        assert!(xq.len() >= quads * 4 * QBLOCK && xc.len() >= quads * 16);
        let (wp, wdp, xp, xdp, xcp) = (
            wq.as_ptr(),
            wd.as_ptr(),
            xq.as_ptr(),
            xd.as_ptr(),
            xc.as_ptr(),
        );
        let idx = q4_scale_index();
        // Unit `q` of row `r` against the unit's activations.
        let unit = |r: usize, q: usize, c: __m512i, lo: __m512i, hi: __m512i| {
            let v = _mm512_loadu_si512(wp.add(r * stride + q * 2 * QBLOCK) as *const _);
            q4_unit512(v, c, lo, hi)
        };
        let acts = |q: usize| q4_acts512(xp, xcp, q);
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut q = 0;
        while q + 4 <= quads {
            let xs = _mm512_loadu_ps(xdp.add(4 * q));
            let mut p = [xs; 4];
            for (r, p) in p.iter_mut().enumerate() {
                let w = _mm256_loadu_si256(wdp.add(r * sstride + 4 * q) as *const __m256i);
                *p = _mm512_mul_ps(_mm512_cvtph_ps(w), xs);
            }
            for (i, idx) in idx.iter().enumerate() {
                let (c, lo, hi) = acts(q + i);
                for (r, a) in acc.iter_mut().enumerate() {
                    let d = _mm512_permutexvar_ps(*idx, p[r]);
                    *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(unit(r, q + i, c, lo, hi)), d, *a);
                }
            }
            q += 4;
        }
        while q < quads {
            let xs = _mm_loadu_ps(xdp.add(4 * q));
            let (c, lo, hi) = acts(q);
            for (r, a) in acc.iter_mut().enumerate() {
                let w = _mm_loadl_epi64(wdp.add(r * sstride + 4 * q) as *const __m128i);
                let p = _mm_mul_ps(_mm_cvtph_ps(w), xs);
                let d = _mm512_permutexvar_ps(idx[0], _mm512_castps128_ps512(p));
                *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(unit(r, q, c, lo, hi)), d, *a);
            }
            q += 1;
        }
        let (mut b, mut c) = (4 * quads, 16 * quads);
        if blocks - b >= 2 {
            assert!(xq.len() >= (b + 2) * QBLOCK && xc.len() >= c + 8);
            let acts = q4_pair_acts(xp, xcp, b, c);
            for (r, a) in acc.iter_mut().enumerate() {
                let pair = q4_pair256(
                    wp.add(r * stride + b * QBLOCK / 2),
                    wdp.add(r * sstride + b),
                    xdp.add(b),
                    &acts,
                );
                *a = _mm512_add_ps(*a, _mm512_zextps256_ps512(pair));
            }
            (b, c) = (b + 2, c + 8);
        }
        std::array::from_fn(|r| {
            let rest = if b < blocks {
                dot_q4_vnni_impl(
                    &wq[r * stride + b * QBLOCK / 2..r * stride + row_bytes],
                    &wd[r * sstride + b..r * sstride + blocks],
                    &xq[b * QBLOCK..],
                    &xd[b..blocks],
                    &xc[c..],
                )
            } else {
                0.0
            };
            _mm512_reduce_add_ps(acc[r]) + rest
        })
    }

    /// [`super::BlockDot4`] over [`dot4_q4_avx512_impl`]: the loop over a run's rows inside
    /// the kernel's features, one call a task (a call per four rows cost a fifth of the
    /// product on rows of 576 columns).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vl,avx2,fma,f16c")]
    unsafe fn runs4_q4_avx512_impl(
        wq: &[u8],
        bytes: usize,
        wd: &[u16],
        bpr: usize,
        xq: &[i8],
        xd: &[f32],
        xc: &[i32],
        out: &mut [f32],
    ) {
        let run = out.len() / 4;
        assert!(wq.len() >= 4 * run * bytes && wd.len() >= 4 * run * bpr);
        for i in 0..run {
            let four = dot4_q4_avx512_impl(
                &wq[i * bytes..],
                run * bytes,
                &wd[i * bpr..],
                run * bpr,
                xq,
                xd,
                xc,
            );
            for (k, v) in four.into_iter().enumerate() {
                out[k * run + i] = v;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn runs4_q4_avx512(
        wq: &[u8],
        bytes: usize,
        wd: &[u16],
        bpr: usize,
        xq: &[i8],
        xd: &[f32],
        xc: &[i32],
        out: &mut [f32],
    ) {
        // SAFETY: only handed out by block_dot4_fn after detecting avx512f, avx512bw,
        // avx512vnni, avx512vl, avx2, fma and f16c.
        unsafe { runs4_q4_avx512_impl(wq, bytes, wd, bpr, xq, xd, xc, out) }
    }

    pub fn dot_q8_avx512(wq: &[u8], wd: &[u16], xq: &[i8], xd: &[f32], xc: &[i32]) -> f32 {
        // SAFETY: as dot_q4_avx512.
        unsafe { dot_q8_avx512_impl(wq, wd, xq, xd, xc) }
    }

    pub fn dot_q4_avx512(wq: &[u8], wd: &[u16], xq: &[i8], xd: &[f32], xc: &[i32]) -> f32 {
        // SAFETY: only handed out by block_dot_fn after detecting avx512f, avx512bw,
        // avx512vnni and avx512vl (whose CPUs have avx2, fma and f16c).
        unsafe { dot_q4_avx512_impl(wq, wd, xq, xd, xc) }
    }

    pub fn dot_q8_vnni(wq: &[u8], wd: &[u16], xq: &[i8], xd: &[f32], xc: &[i32]) -> f32 {
        // SAFETY: only handed out by block_dot_fn after detecting avx2, fma, f16c, avx512vnni
        // and avx512vl.
        unsafe { dot_q8_vnni_impl(wq, wd, xq, xd, xc) }
    }

    pub fn dot_q4_vnni(wq: &[u8], wd: &[u16], xq: &[i8], xd: &[f32], xc: &[i32]) -> f32 {
        // SAFETY: as dot_q8_vnni.
        unsafe { dot_q4_vnni_impl(wq, wd, xq, xd, xc) }
    }

    pub fn dot_q8(wq: &[u8], wd: &[u16], xq: &[i8], xd: &[f32], xc: &[i32]) -> f32 {
        // SAFETY: only handed out by block_dot_fn after detecting avx2, fma and f16c.
        unsafe { dot_q8_impl(wq, wd, xq, xd, xc) }
    }

    pub fn dot_q4(wq: &[u8], wd: &[u16], xq: &[i8], xd: &[f32], xc: &[i32]) -> f32 {
        // SAFETY: as dot_q8.
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
                // Decode (n < 4) and the integer GEMM (AVX2, AVX-512 VNNI) also quantize the
                // activations (8 bits per block): a small extra error.
                let int8 = n < GEMM_MIN_ROWS || crate::nn::quant_gemm::available();
                let tol = if int8 { 0.02 } else { 1e-4 };
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
                    assert_eq!((da, &a), (db, &b), "{kind:?} {src:?}");
                }
            }
            // The activations' quantizer too (values, scale and sums of 4).
            for src in &blocks {
                let (mut a, mut b) = (vec![0i8; QBLOCK], vec![0i8; QBLOCK]);
                let (mut ga, mut gb) = (vec![0i32; QBLOCK / 4], vec![0i32; QBLOCK / 4]);
                let da = quantize_act_block_portable(src, &mut a, &mut ga);
                let db = x86::quantize_act_block(src, &mut b, &mut gb);
                assert_eq!((da.to_bits(), &a, &ga), (db.to_bits(), &b, &gb), "{src:?}");
            }
        }
    }

    /// `rows_dot` (four runs of rows through the four-row kernel where the CPU has one, the
    /// rest one at a time) gives every row exactly what the one-row kernel gives it, for row
    /// counts around multiples of four and block counts with and without tails.
    #[test]
    fn four_row_kernels_match_the_one_row_kernel() {
        for kind in [Quantization::Q8, Quantization::Q4] {
            let dot = block_dot_fn(kind);
            for blocks in [1, 4, 5, 6, 7, 16, 17, 18, 64, 66] {
                let cols = blocks * QBLOCK;
                for rows in [3, 4, 8, 13, 19, 40] {
                    let w: Vec<f32> = (0..rows * cols)
                        .map(|i| ((i * 7919 % 1013) as f32 / 506.0 - 1.0) * (1.0 + (i % 7) as f32))
                        .collect();
                    let x: Vec<f32> = (0..cols)
                        .map(|i| ((i * 31 % 17) as f32 - 8.0) / 8.0 * (1.0 + (i / 32) as f32))
                        .collect();
                    let m = QuantMatrix::quantize(kind, &w, rows, cols);
                    let acts = m.quantize_row(&x);
                    let (xq, xd, xc) = acts.row(0);
                    let bytes = cols / QBLOCK * m.bytes_per_block();
                    // From row 1 too: runs that do not start at a multiple of four.
                    for r0 in [0, 1] {
                        let mut got = vec![f32::NAN; rows - r0];
                        m.rows_dot(&acts)(r0, &mut got);
                        for (i, g) in got.iter().enumerate() {
                            let r = r0 + i;
                            let want = dot(
                                &m.qs[r * bytes..(r + 1) * bytes],
                                &m.scales[r * blocks..(r + 1) * blocks],
                                xq,
                                xd,
                                xc,
                            );
                            // Bit for bit: which rows a call takes four at a time depends on
                            // how the team split the pass, and must not change a result.
                            assert_eq!(
                                g.to_bits(),
                                want.to_bits(),
                                "{kind:?} {blocks} blocks, {rows} rows from {r0}: row {r} {g} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Every kernel this CPU can run equals an independent sum over the dequantized integers
    /// with the activations in their natural order, for block counts that exercise the
    /// groups of eight, the lone pairs and an odd last block.
    #[test]
    fn block_kernels_match_a_plain_sum() {
        let mut kernels: Vec<(&str, BlockDot, BlockDot)> =
            vec![("portable", dot_q8_portable, dot_q4_portable)];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                kernels.push(("avx2", x86::dot_q8, x86::dot_q4));
                if has!("avx512vnni") && has!("avx512vl") {
                    kernels.push(("vnni", x86::dot_q8_vnni, x86::dot_q4_vnni));
                    if has!("avx512f") && has!("avx512bw") {
                        kernels.push(("avx512", x86::dot_q8_avx512, x86::dot_q4_avx512));
                    }
                }
            }
        }
        for blocks in [1, 2, 3, 5, 8, 9, 16, 17, 18, 23, 36, 39] {
            let (rows, cols) = (3, blocks * QBLOCK);
            let w: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 7919 % 1013) as f32 / 506.0 - 1.0) * (1.0 + (i % 5) as f32))
                .collect();
            let x: Vec<f32> = (0..cols)
                .map(|i| ((i * 31 % 17) as f32 - 8.0) / 8.0 * (1.0 + (i / 32) as f32))
                .collect();
            for kind in [Quantization::Q8, Quantization::Q4] {
                let m = QuantMatrix::quantize(kind, &w, rows, cols);
                let acts = QActs::new(kind, &x, 1, cols);
                let (xq, xd, xc) = acts.row(0);
                let bytes = cols / QBLOCK * m.bytes_per_block();
                for r in 0..rows {
                    // Integers back from the dequantized row; activations requantized in order.
                    let mut row = vec![0f32; cols];
                    m.row_to_f32(r, &mut row);
                    let mut want = 0f64;
                    for b in 0..blocks {
                        let d = scale(m.scales[r * blocks + b]);
                        let src = &x[b * QBLOCK..(b + 1) * QBLOCK];
                        let dx = src.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
                        // As QActs rounds: by the reciprocal.
                        let inv = if dx > 0.0 { 1.0 / dx } else { 0.0 };
                        let mut dot = 0i64;
                        for k in 0..QBLOCK {
                            let q = if d > 0.0 {
                                (row[b * QBLOCK + k] / d).round()
                            } else {
                                0.0
                            };
                            let xq = round(src[k] * inv).clamp(-127, 127);
                            dot += q as i64 * xq as i64;
                        }
                        want += d as f64 * dx as f64 * dot as f64;
                    }
                    for (name, q8, q4) in &kernels {
                        let dot = if kind == Quantization::Q8 { q8 } else { q4 };
                        let got = dot(
                            &m.qs[r * bytes..(r + 1) * bytes],
                            &m.scales[r * blocks..(r + 1) * blocks],
                            xq,
                            xd,
                            xc,
                        ) as f64;
                        assert!(
                            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                            "{name} {kind:?} {blocks} blocks, row {r}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
