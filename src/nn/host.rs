//! Half-precision weights kept as stored (f16 or bf16, usually memory-mapped straight from the
//! safetensors file) and multiplied on the CPU by kiln's own kernels.
//!
//! burn-flex widens bf16 operands to f32 on every matmul (the whole matrix, every call), and
//! keeping f32 copies doubles the bytes each decode step must stream. These kernels read the
//! half-precision rows directly: a decode step (a few rows of activations) is a dot product per
//! output row, widened 8 lanes at a time in registers (AVX2/FMA/F16C where the CPU has them,
//! portable code elsewhere), parallel over output rows; a prefill chunk (many rows) widens the
//! weight a block of rows at a time into a reused buffer and runs an f32 GEMM on it.

use std::sync::Arc;

use half::{bf16, f16};
use memmap2::{Mmap, MmapRaw};
use rayon::prelude::*;

use super::bf16_gemm::Bf16Activations;

/// The storage format of a [`HalfMatrix`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HalfKind {
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
}

/// Where the 16-bit values live.
#[derive(Clone)]
enum Bytes {
    /// `len` values at byte `start` of a memory-mapped file (2-byte aligned).
    Mapped {
        map: Arc<Mmap>,
        start: usize,
        len: usize,
    },
    /// A copy (the file's data was not 2-byte aligned).
    Owned(Arc<Vec<u16>>),
    /// `len` values at byte `start` of a [`WeightArena`] chunk, written once before the
    /// matrix was made and never again.
    Resident {
        map: Arc<MmapRaw>,
        start: usize,
        len: usize,
    },
}

/// Anonymous memory that half-precision weights are copied into at load
/// ([`crate::WeightMemory::Resident`]), in chunks of 64 MiB (a larger matrix gets a chunk of
/// its own), with the kernel asked for transparent huge pages.
///
/// Why: a decode step streams every weight once, and with 4 KiB pages each 4 KiB of weights is
/// a TLB miss; under virtualisation a miss walks two page tables. On the 2-core VM kiln is
/// measured on, decode ran about 10 % faster from them than from a file cached in small pages
/// (docs/performance.md). The file's pages are dropped from the process as
/// each matrix is copied, so memory use stays one copy of the weights.
pub(crate) struct WeightArena {
    /// The chunk being filled and the bytes used in it.
    current: Option<(Arc<MmapRaw>, usize)>,
    /// Bytes of a chunk.
    chunk_bytes: usize,
}

impl Default for WeightArena {
    fn default() -> Self {
        Self {
            current: None,
            chunk_bytes: 64 << 20,
        }
    }
}

impl WeightArena {
    /// Start of every matrix: a cache line.
    const ALIGN: usize = 64;

    /// A fresh chunk of at least `len` bytes.
    fn chunk(len: usize) -> std::io::Result<Arc<MmapRaw>> {
        // Whole huge pages, so that the kernel can back all of it with them.
        let len = len.max(1).next_multiple_of(2 << 20);
        let map = MmapRaw::from(memmap2::MmapOptions::new().len(len).map_anon()?);
        #[cfg(target_os = "linux")]
        {
            // Advice only: without transparent huge pages the chunk keeps small pages.
            let _ = map.advise(memmap2::Advice::HugePage);
        }
        Ok(Arc::new(map))
    }

    /// `len` fresh (zeroed) bytes of the arena, 64-byte aligned: the chunk and the byte offset.
    pub(crate) fn alloc(&mut self, len: usize) -> std::io::Result<(Arc<MmapRaw>, usize)> {
        let fits =
            |(m, used): &(Arc<MmapRaw>, usize)| used.next_multiple_of(Self::ALIGN) + len <= m.len();
        Ok(match &mut self.current {
            Some(cur) if fits(cur) => {
                let start = cur.1.next_multiple_of(Self::ALIGN);
                cur.1 = start + len;
                (cur.0.clone(), start)
            }
            // A matrix that would leave most of a fresh chunk unused gets a map of its own.
            _ if len > self.chunk_bytes / 2 => (Self::chunk(len)?, 0),
            _ => {
                let map = Self::chunk(self.chunk_bytes)?;
                self.current = Some((map.clone(), len));
                (map, 0)
            }
        })
    }

    /// Copies `src` (little-endian 16-bit values, as in the file) into the arena: the chunk and
    /// the byte offset of the copy.
    pub(crate) fn copy(&mut self, src: &[u8]) -> std::io::Result<(Arc<MmapRaw>, usize)> {
        let n = src.len();
        let (map, start) = self.alloc(n)?;
        struct Dst(*mut u8);
        // SAFETY: each task writes its own byte range of the chunk (below).
        unsafe impl Send for Dst {}
        unsafe impl Sync for Dst {}
        // SAFETY: `alloc` handed out `start..start + n` inside the chunk to this copy alone.
        let dst = Dst(unsafe { map.as_mut_ptr().add(start) });
        const PART: usize = 1 << 20;
        src.par_chunks(PART).enumerate().for_each(|(i, part)| {
            let d = &dst;
            // SAFETY: part `i` goes to `i·PART..`, disjoint from every other part, in bounds.
            unsafe { std::ptr::copy_nonoverlapping(part.as_ptr(), d.0.add(i * PART), part.len()) }
        });
        Ok((map, start))
    }
}

/// Values kiln computes at load and every decode step streams (quantized blocks and their
/// scales): a range of a [`WeightArena`] chunk, so that they get huge pages as the mapped and
/// resident half-precision weights do, or a plain vector (no arena, or no memory for one).
///
/// Why: with the kernel's transparent huge pages in `madvise` mode (the common default), a
/// vector's large allocation gets 4 KiB pages; a decode step then takes a TLB miss every 4 KiB
/// and the CPU's stream prefetchers stop at every page boundary. GEMV over 268 MB here:
/// Q8 30.6 → 53.0 GB/s and Q4 26.5 → 34.3 GB/s (medians) with huge pages.
pub(crate) enum HostBuf<T> {
    Vec(Vec<T>),
    /// `len` values at byte `start` of the chunk, owned by this buffer alone.
    Arena {
        map: Arc<MmapRaw>,
        start: usize,
        len: usize,
        _values: std::marker::PhantomData<T>,
    },
}

impl<T: bytemuck::Pod> HostBuf<T> {
    /// `len` zeros, in `arena` when there is one and it can have the memory; without one, a
    /// buffer of 4 MiB or more gets a map of its own (smaller ones are vectors: a huge page
    /// each would be mostly empty).
    pub(crate) fn zeroed(len: usize, arena: Option<&mut WeightArena>) -> Self {
        const { assert!(std::mem::align_of::<T>() <= WeightArena::ALIGN) };
        let bytes = len * std::mem::size_of::<T>();
        // Every allocation larger than half a chunk of 0 bytes gets its own map.
        let mut own = WeightArena {
            current: None,
            chunk_bytes: 0,
        };
        let arena = match arena {
            Some(a) => Some(a),
            None if bytes >= 4 << 20 => Some(&mut own),
            None => None,
        };
        if let Some(arena) = arena {
            if let Ok((map, start)) = arena.alloc(bytes) {
                prefault(&map, start, bytes);
                // Fresh anonymous memory reads as zeros, and zero bits are a valid `T` (Pod).
                return HostBuf::Arena {
                    map,
                    start,
                    len,
                    _values: std::marker::PhantomData,
                };
            }
        }
        HostBuf::Vec(vec![T::zeroed(); len])
    }
}

/// Touches `start..start + len` of `map` a huge page at a time, in parallel: the kernel zeroes
/// each fresh 2 MiB page in its fault, and threads writing into the same page would wait for
/// one another's faults.
fn prefault(map: &MmapRaw, start: usize, len: usize) {
    const PAGE: usize = 2 << 20;
    let first = start / PAGE * PAGE;
    let pages: Vec<usize> = (first..start + len).step_by(PAGE).collect();
    let base = map.as_mut_ptr() as usize;
    pages.par_iter().for_each(|&p| {
        let at = p.max(start);
        // SAFETY: `at` lies in `start..start + len`, this buffer's fresh range; writing the
        // zero that is already there changes nothing but makes the page resident.
        unsafe { std::ptr::write_volatile((base + at) as *mut u8, 0) };
    });
}

impl<T> std::ops::Deref for HostBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            HostBuf::Vec(v) => v,
            HostBuf::Arena {
                map, start, len, ..
            } => {
                // SAFETY: `alloc` gave this buffer alone `start..start + len·size_of::<T>()`,
                // inside the chunk, aligned for `T`; the chunk lives as long as `map`.
                unsafe { std::slice::from_raw_parts(map.as_ptr().add(*start) as *const T, *len) }
            }
        }
    }
}

impl<T> std::ops::DerefMut for HostBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            HostBuf::Vec(v) => v,
            HostBuf::Arena {
                map, start, len, ..
            } => {
                // SAFETY: as in `deref`; `&mut self` is the only access to this range (no other
                // buffer shares it, and `clone` copies the values out).
                unsafe {
                    std::slice::from_raw_parts_mut(map.as_mut_ptr().add(*start) as *mut T, *len)
                }
            }
        }
    }
}

impl<T: Clone> Clone for HostBuf<T> {
    fn clone(&self) -> Self {
        HostBuf::Vec(self.to_vec())
    }
}

/// A row-major `[rows, cols]` matrix of f16 or bf16 values (PyTorch's `[out, in]` layout).
#[derive(Clone)]
pub struct HalfMatrix {
    kind: HalfKind,
    rows: usize,
    cols: usize,
    bytes: Bytes,
    /// How activations meet bf16 weights in the GEMM path.
    activations: Bf16Activations,
}

impl std::fmt::Debug for HalfMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HalfMatrix({:?}, {}x{})",
            self.kind, self.rows, self.cols
        )
    }
}

/// Output rows per parallel task in the GEMV path.
const ROWS_PER_TASK: usize = 64;
/// Weight bytes a parallel task of [`for_row_ranges`] aims to stream: small tasks spend a
/// visible share of their time being scheduled (a 64-row task of 4-bit rows is 2 µs), and each
/// task's streams ramp up anew (Q4 decode reads a task as four runs of rows). 1 MiB against
/// 256 KiB, alternating on the 1.1B shape: Q4 decode 48.1–49.7 against 47.0–48.6 tok/s (ahead
/// in four of four), bf16, Q8 and the 135M shape level. Passes still split into at least 8
/// tasks per thread ([`TASKS_PER_THREAD`]).
const TASK_BYTES: usize = 1 << 20;
/// Tasks a thread's share of a GEMV pass is split into at least: the grain of the team's
/// claims, and so of stealing at the pass's end.
pub(crate) const TASKS_PER_THREAD: usize = 8;
/// [`TASKS_PER_THREAD`] for the Q4 kernel of four runs (AVX-512): its runs are short streams
/// (a task of 60 rows of 576 columns is four runs of ~5 KB) and each task starts four anew.
/// Two tasks a thread, alternating per pass in decode on the 135M shape: q/k/v 21–26 against
/// 17–21 GB/s, gate/up 32–38 against 26–28, down 33–36 against 24–28; Q4 decode, six
/// alternating pairs, 0.97–1.19× (median 1.11×), the 1.1B shape level (0.97–1.04×). (Q8's
/// one-row kernel got slower with it: gate/up 17–29 against 30–34 GB/s.)
pub(crate) const FEW_TASKS_PER_THREAD: usize = 2;
/// Columns from which the decode GEMV reads four rows a call ([`runs4_fn`]). The one-row kernel
/// reloads the f32 activation row for every weight row, and once that row no longer stays in
/// L1 beside the weights streaming through, the weights stream slower: one row a call over
/// 512 MB, alternating, 31 GB/s at 2048 columns, 30 at 5632 (the 1.1B shape's down
/// projection), 25 at 8192, against 34 for four rows a call at each (membw 36). Shorter rows
/// take four runs too when each run has at least [`FOUR_RUN_MIN_ROWS`] rows.
const FOUR_RUN_MIN_COLS: usize = 2048;
/// Rows a run needs for a call of rows shorter than [`FOUR_RUN_MIN_COLS`] to be read as four
/// runs. Four streams a thread keep more of the memory's requests in flight than one: over
/// 128 MB of 576- or 1536-column bf16 rows, alternating, 52-60 against 44-55 GB/s when the
/// VM's memory was fast (membw 50-60), 1.02-1.05x when slow (membw 34). Runs of fewer rows
/// (the 135M shape's o and down projections come in calls of 36 rows) are streams too short
/// for the prefetchers to follow: per pass in decode, o 27-30 against 30-33 GB/s.
const FOUR_RUN_MIN_ROWS: usize = 16;
/// Weight rows widened at once in the GEMM path.
const GEMM_BLOCK: usize = 1024;
/// Activation rows from which the GEMM path is taken.
const GEMM_MIN_ROWS: usize = 4;

impl HalfMatrix {
    /// The matrix stored at `start..start + 2·rows·cols` of `map`; copies when the data is not
    /// 2-byte aligned. The caller has checked the length.
    pub(crate) fn from_map(
        kind: HalfKind,
        rows: usize,
        cols: usize,
        map: Arc<Mmap>,
        start: usize,
    ) -> Self {
        let len = rows * cols;
        let bytes = if (map.as_ptr() as usize + start).is_multiple_of(2) {
            Bytes::Mapped { map, start, len }
        } else {
            let raw = &map[start..start + 2 * len];
            Bytes::Owned(Arc::new(
                raw.chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]))
                    .collect(),
            ))
        };
        Self {
            kind,
            rows,
            cols,
            bytes,
            activations: Bf16Activations::default(),
        }
    }

    /// The matrix stored as `src` (`2·rows·cols` little-endian bytes), copied into `arena`.
    pub(crate) fn copied(
        kind: HalfKind,
        rows: usize,
        cols: usize,
        src: &[u8],
        arena: &mut WeightArena,
    ) -> std::io::Result<Self> {
        let len = rows * cols;
        assert_eq!(src.len(), 2 * len, "HalfMatrix::copied: length");
        let (map, start) = arena.copy(src)?;
        Ok(Self {
            kind,
            rows,
            cols,
            bytes: Bytes::Resident { map, start, len },
            activations: Bf16Activations::default(),
        })
    }

    /// A matrix from values already in memory.
    pub fn from_bits(kind: HalfKind, rows: usize, cols: usize, bits: Vec<u16>) -> Self {
        assert_eq!(bits.len(), rows * cols, "HalfMatrix::from_bits: length");
        Self {
            kind,
            rows,
            cols,
            bytes: Bytes::Owned(Arc::new(bits)),
            activations: Bf16Activations::default(),
        }
    }

    /// How activations meet this matrix's values in its GEMM path, where they are bf16 and the
    /// CPU has AVX512-BF16 (see [`Bf16Activations`]); no effect otherwise.
    pub fn with_bf16_activations(mut self, activations: Bf16Activations) -> Self {
        self.activations = activations;
        self
    }

    /// Rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// f16 or bf16.
    pub fn kind(&self) -> HalfKind {
        self.kind
    }

    /// Bytes of weight data.
    pub fn byte_len(&self) -> usize {
        2 * self.rows * self.cols
    }

    /// The raw 16-bit values, row-major.
    pub fn bits(&self) -> &[u16] {
        match &self.bytes {
            Bytes::Mapped { map, start, len } => {
                let raw = &map[*start..*start + 2 * len];
                // Alignment checked in from_map; u16 has no invalid bit patterns.
                bytemuck::cast_slice(raw)
            }
            Bytes::Owned(v) => v.as_slice(),
            Bytes::Resident { map, start, len } => {
                debug_assert!(start + 2 * len <= map.len() && start % 2 == 0);
                // SAFETY: the range was written by `WeightArena::copy` before this matrix was
                // made and is never written again; the chunk lives as long as `map`; the start
                // is 64-byte aligned; u16 has no invalid bit patterns.
                unsafe { std::slice::from_raw_parts(map.as_ptr().add(*start) as *const u16, *len) }
            }
        }
    }

    /// Rows `r0..r1` as a matrix of their own (no copy).
    pub fn slice_rows(&self, r0: usize, r1: usize) -> Self {
        assert!(r0 <= r1 && r1 <= self.rows, "slice_rows out of range");
        let bytes = match &self.bytes {
            Bytes::Mapped { map, start, .. } => Bytes::Mapped {
                map: map.clone(),
                start: start + 2 * r0 * self.cols,
                len: (r1 - r0) * self.cols,
            },
            Bytes::Owned(v) => Bytes::Owned(Arc::new(v[r0 * self.cols..r1 * self.cols].to_vec())),
            Bytes::Resident { map, start, .. } => Bytes::Resident {
                map: map.clone(),
                start: start + 2 * r0 * self.cols,
                len: (r1 - r0) * self.cols,
            },
        };
        Self {
            kind: self.kind,
            rows: r1 - r0,
            cols: self.cols,
            bytes,
            activations: self.activations,
        }
    }

    /// Row `r` widened to f32 into `out` (`cols` values).
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) {
        let row = &self.bits()[r * self.cols..(r + 1) * self.cols];
        widen(self.kind, row, out);
    }

    /// `y = x · selfᵀ` for `n` rows of `x` (`[n, cols]`, row-major) → `[n, rows]`.
    pub fn matmul_t(&self, x: &[f32], n: usize) -> Vec<f32> {
        assert_eq!(x.len(), n * self.cols, "matmul_t: activation length");
        let mut y = vec![0f32; n * self.rows];
        if n == 0 || self.rows == 0 {
            return y;
        }
        // Several rows: the f32 GEMM over weights widened in registers, where it gives the
        // result asked for (bf16 weights take the faster bf16 kernels from a few rows on
        // unless the activations must stay exact).
        let widened = n > 1
            && (n < GEMM_MIN_ROWS
                || self.kind == HalfKind::F16
                || self.activations == Bf16Activations::Exact
                || !super::bf16_gemm::available());
        if widened
            && super::widen_gemm::gemm(self.kind, self.bits(), [self.rows, self.cols], x, n, &mut y)
        {
            return y;
        }
        if n >= GEMM_MIN_ROWS {
            self.gemm(x, n, &mut y);
        } else {
            self.gemv(x, n, &mut y);
        }
        y
    }

    /// Few activation rows: one dot product per (activation row, weight row), parallel over
    /// blocks of weight rows; each weight row is read once from memory for all activation rows.
    fn gemv(&self, x: &[f32], n: usize, y: &mut [f32]) {
        if n == 1 {
            return for_row_ranges(y, 2 * self.cols, TASKS_PER_THREAD, self.rows_dot(x));
        }
        let (rows, cols, kind) = (self.rows, self.cols, self.kind);
        let w = self.bits();
        let dot = dot_fn(kind);
        for_each_output(rows, n, y, |r, j| {
            dot(&w[r * cols..(r + 1) * cols], &x[j * cols..(j + 1) * cols])
        });
    }

    /// Fills `out` with rows `r0..r0 + out.len()` dotted with one activation row `x` (`cols`
    /// values): the decode GEMV's call (one weight's [`gemv`](Self::gemv), or several fused in
    /// [`HostWeight::gemv_many`](crate::nn::linear::HostWeight::gemv_many)).
    pub(crate) fn rows_dot<'a>(&'a self, x: &'a [f32]) -> impl Fn(usize, &mut [f32]) + Sync + 'a {
        let (cols, rows, w) = (self.cols, rows_fn(self.kind), self.bits());
        let runs4 = runs4_fn(self.kind);
        move |r0, out| {
            let w = &w[r0 * cols..(r0 + out.len()) * cols];
            let four = cols >= FOUR_RUN_MIN_COLS || out.len() >= 4 * FOUR_RUN_MIN_ROWS;
            let runs = match runs4.filter(|_| four) {
                Some(runs4) => {
                    // Four runs, the rows' quarters, each streamed in order (four neighbouring
                    // rows a call streamed slower, as for Q4).
                    let n = out.len() / 4 * 4;
                    runs4(&w[..n * cols], cols, x, &mut out[..n]);
                    n
                }
                None => 0,
            };
            rows(&w[runs * cols..], cols, x, &mut out[runs..]);
        }
    }

    /// Many activation rows: widen a block of weight rows to f32, then an f32 GEMM per block.
    fn gemm(&self, x: &[f32], n: usize, y: &mut [f32]) {
        let w = self.bits();
        let cols = self.cols;
        if self.kind == HalfKind::Bf16
            && super::bf16_gemm::gemm(w, self.rows, cols, x, n, y, self.activations)
        {
            return;
        }
        blocked_gemm(self.rows, cols, x, n, y, |r, dst| {
            widen(self.kind, &w[r * cols..(r + 1) * cols], dst)
        });
    }
}

/// Fills `y` (`[n, rows]`) with `value(r, j)`, output feature `r` of activation row `j`, in
/// parallel over blocks of output features: each task handles every activation row of its
/// weight rows, so a weight row is read once from memory for all of them. For a few
/// activation rows; one row goes through [`for_row_ranges`].
pub(crate) fn for_each_output(
    rows: usize,
    n: usize,
    y: &mut [f32],
    value: impl Fn(usize, usize) -> f32 + Sync,
) {
    // Results per task are written as [task rows, n] then scattered into y [n, rows].
    let mut out = vec![0f32; rows * n];
    out.par_chunks_mut(ROWS_PER_TASK * n)
        .enumerate()
        .for_each(|(t, chunk)| {
            let r0 = t * ROWS_PER_TASK;
            for (i, slot) in chunk.chunks_mut(n).enumerate() {
                for (j, s) in slot.iter_mut().enumerate() {
                    *s = value(r0 + i, j);
                }
            }
        });
    for r in 0..rows {
        for j in 0..n {
            y[j * rows + r] = out[r * n + j];
        }
    }
}

/// Fills `y` (one activation row's outputs) in parallel calls over consecutive rows: `fill(r0,
/// out)` writes rows `r0..r0 + out.len()`. Each thread streams one contiguous share of the rows
/// (see [`team`](super::team)), handed out in calls of about [`TASK_BYTES`] of weights
/// (`row_bytes` per row) but at most an eighth of a thread's share.
pub(crate) fn for_row_ranges(
    y: &mut [f32],
    row_bytes: usize,
    tasks_per_thread: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync,
) {
    let by_bytes = TASK_BYTES / row_bytes.max(1);
    let balanced = y.len() / (tasks_per_thread.max(1) * rayon::current_num_threads());
    let rows = by_bytes.min(balanced).max(16);
    super::team::for_ranges(y, rows, fill);
}

/// `y = x · Wᵀ` (`x: [n, cols]`, `y: [n, rows]`) for a weight produced row by row by `fill`
/// (row `r` as f32 into a `cols` slice): blocks of [`GEMM_BLOCK`] rows are widened into a
/// reused buffer and multiplied by gemm. (Transposing each block to the `[cols, block]` layout
/// of burn-flex's own f32 weights was measured slower: 28.8 against 36.9 tok/s prefill on the
/// TinyLlama shape.)
pub(crate) fn blocked_gemm(
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    fill: impl Fn(usize, &mut [f32]) + Sync,
) {
    let threads = rayon::current_num_threads();
    // A scratch buffer kept per thread: a fresh one per call costs page faults and zeroing.
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let mut block = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    block.resize(GEMM_BLOCK.min(rows) * cols, 0.0);
    let mut out_t = Vec::new();
    for r0 in (0..rows).step_by(GEMM_BLOCK) {
        let r1 = (r0 + GEMM_BLOCK).min(rows);
        let b = &mut block[..(r1 - r0) * cols];
        b.par_chunks_mut(cols)
            .enumerate()
            .for_each(|(i, dst)| fill(r0 + i, dst));
        // t [n, r1 - r0] (column-major: token index fastest) = x [n, cols] · bᵀ [cols, r1 - r0]:
        // the weight block is gemm's right-hand side, packed in narrow panels straight from
        // its rows; then t is scattered into y's columns r0..r1.
        let nb = r1 - r0;
        out_t.resize(n * nb, 0.0);
        // SAFETY: the pointers and strides describe the buffers above: dst is out_t
        // (element (i, j) at out_t[j·n + i]), lhs is x (element (i, k) at x[i·cols + k]), rhs
        // is b transposed (element (k, j) at b[j·cols + k]); all lie within their slices.
        unsafe {
            gemm::gemm(
                n,
                nb,
                cols,
                out_t.as_mut_ptr(),
                n as isize,
                1,
                false,
                x.as_ptr(),
                1,
                cols as isize,
                b.as_ptr(),
                cols as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(threads),
            );
        }
        for (i, row) in y.chunks_mut(rows).enumerate() {
            for (j, v) in row[r0..r1].iter_mut().enumerate() {
                *v = out_t[j * n + i];
            }
        }
    }
    SCRATCH.with(|s| *s.borrow_mut() = block);
}

/// Whether this CPU has AVX2 and FMA (checked once; the standard library caches it).
#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// `Σ a·b` over f32 slices of equal length (LoRA projections): AVX2/FMA
/// where the CPU has them (the crate is built for baseline x86-64, whose SSE2 code would run
/// at half the width), else portable code.
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the features were just detected.
        return unsafe { x86::dot_f32_impl(a, b) };
    }
    dot_f32_portable(a, b)
}

/// Cached keys or values as the attention kernels read them: f32 values, or f16 bits (a cache
/// kept at half the bytes, see [`KvPrecision`](crate::nn::KvPrecision)).
#[derive(Debug, Clone, Copy)]
pub enum KvSlice<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// f16 values, as bits.
    F16(&'a [u16]),
}

impl<'a> KvSlice<'a> {
    /// Values held.
    pub fn len(&self) -> usize {
        match self {
            KvSlice::F32(v) => v.len(),
            KvSlice::F16(v) => v.len(),
        }
    }

    /// Whether no value is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values from `n` on.
    pub fn skip(self, n: usize) -> KvSlice<'a> {
        match self {
            KvSlice::F32(v) => KvSlice::F32(&v[n..]),
            KvSlice::F16(v) => KvSlice::F16(&v[n..]),
        }
    }

    /// Value `i` as f32.
    pub fn get(&self, i: usize) -> f32 {
        match self {
            KvSlice::F32(v) => v[i],
            KvSlice::F16(v) => half::f16::from_bits(v[i]).to_f32(),
        }
    }
}

/// Attention scores of one token's query heads over cached keys laid out head after head
/// (each key/value head's positions one run of memory, `head_stride` values from one head's run
/// to the next): `scores[h·n + t] = q[h·d..][..d] · rows[(h / group)·head_stride + t·d..][..d]`,
/// for the `heads = q.len() / d` heads and `n = scores.len() / heads` positions. Each run is
/// streamed front to back once, for all the query heads of its group. f16 keys are widened as
/// they are read (exactly: every f16 value is an f32 value).
pub(crate) fn head_scores(
    q: &[f32],
    d: usize,
    group: usize,
    rows: KvSlice<'_>,
    head_stride: usize,
    scores: &mut [f32],
) {
    let heads = q.len() / d.max(1);
    let n = scores.len() / heads.max(1);
    check_head_rows(heads, d, group, n, rows.len(), head_stride, "head_scores");
    #[cfg(target_arch = "x86_64")]
    if d.is_multiple_of(16) && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was just detected; the layout was checked.
        unsafe {
            match rows {
                KvSlice::F32(r) => x86::head_scores_512::<false>(
                    q,
                    d,
                    group,
                    r.as_ptr().cast(),
                    head_stride,
                    scores,
                ),
                KvSlice::F16(r) => x86::head_scores_512::<true>(
                    q,
                    d,
                    group,
                    r.as_ptr().cast(),
                    head_stride,
                    scores,
                ),
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        match rows {
            // SAFETY: the features were just detected; the layout was checked.
            KvSlice::F32(r) => {
                return unsafe { x86::head_scores_impl(q, d, group, r, head_stride, scores) }
            }
            KvSlice::F16(r) if std::arch::is_x86_feature_detected!("f16c") => {
                // SAFETY: as above, and F16C.
                return unsafe { x86::head_scores_f16_impl(q, d, group, r, head_stride, scores) };
            }
            KvSlice::F16(_) => {}
        }
    }
    match rows {
        KvSlice::F32(r) => head_scores_with(q, d, group, r, head_stride, scores, dot_f32_portable),
        KvSlice::F16(r) => head_scores_with(q, d, group, r, head_stride, scores, |a, b: &[u16]| {
            a.iter()
                .zip(b)
                .map(|(a, &b)| a * half::f16::from_bits(b).to_f32())
                .sum()
        }),
    }
}

/// [`head_scores`]' loop over the dot product `dot` (inlined into each kernel, so that it is
/// compiled with that kernel's target features).
#[inline(always)]
fn head_scores_with<T>(
    q: &[f32],
    d: usize,
    group: usize,
    rows: &[T],
    head_stride: usize,
    scores: &mut [f32],
    dot: impl Fn(&[f32], &[T]) -> f32,
) {
    let heads = q.len() / d;
    let n = scores.len() / heads;
    for h0 in (0..heads).step_by(group) {
        let run = &rows[(h0 / group) * head_stride..];
        for t in 0..n {
            let k = &run[t * d..(t + 1) * d];
            for h in h0..(h0 + group).min(heads) {
                scores[h * n + t] = dot(&q[h * d..(h + 1) * d], k);
            }
        }
    }
}

/// Attention's weighted sums for every head of one token over cached values laid out as
/// [`head_scores`] reads keys: `out[h·d..][..d] = Σₜ p[h·n + t] · rows[(h / group)·head_stride +
/// t·d..][..d]`, for the `heads = out.len() / d` heads and `n = p.len() / heads` positions.
pub(crate) fn head_weighted(
    p: &[f32],
    d: usize,
    group: usize,
    rows: KvSlice<'_>,
    head_stride: usize,
    out: &mut [f32],
) {
    let heads = out.len() / d.max(1);
    let n = p.len() / heads.max(1);
    check_head_rows(heads, d, group, n, rows.len(), head_stride, "head_weighted");
    #[cfg(target_arch = "x86_64")]
    if d.is_multiple_of(16) && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the feature was just detected; the layout was checked.
        let done = unsafe {
            match rows {
                KvSlice::F32(r) => x86::head_weighted_512::<false>(
                    p,
                    d,
                    group,
                    r.as_ptr().cast(),
                    head_stride,
                    out,
                ),
                KvSlice::F16(r) => {
                    x86::head_weighted_512::<true>(p, d, group, r.as_ptr().cast(), head_stride, out)
                }
            }
        };
        if done {
            return;
        }
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        match rows {
            // SAFETY: the features were just detected; the layout was checked.
            KvSlice::F32(r) => {
                return unsafe { x86::head_weighted_impl(p, d, group, r, head_stride, out) }
            }
            KvSlice::F16(r) if std::arch::is_x86_feature_detected!("f16c") => {
                // SAFETY: as above, and F16C.
                return unsafe { x86::head_weighted_f16_impl(p, d, group, r, head_stride, out) };
            }
            KvSlice::F16(_) => {}
        }
    }
    match rows {
        KvSlice::F32(r) => head_weighted_with(p, d, group, r, head_stride, out, |y, a, x| {
            y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x)
        }),
        KvSlice::F16(r) => {
            head_weighted_with(p, d, group, r, head_stride, out, |y, a, x: &[u16]| {
                y.iter_mut()
                    .zip(x)
                    .for_each(|(y, &x)| *y += a * half::f16::from_bits(x).to_f32())
            })
        }
    }
}

/// [`head_weighted`]'s loop over `axpy` (`y += a·x`), inlined as [`head_scores_with`] is.
#[inline(always)]
fn head_weighted_with<T>(
    p: &[f32],
    d: usize,
    group: usize,
    rows: &[T],
    head_stride: usize,
    out: &mut [f32],
    axpy: impl Fn(&mut [f32], f32, &[T]),
) {
    let heads = out.len() / d;
    let n = p.len() / heads;
    out.fill(0.0);
    for h0 in (0..heads).step_by(group) {
        let run = &rows[(h0 / group) * head_stride..];
        for t in 0..n {
            let v = &run[t * d..(t + 1) * d];
            for h in h0..(h0 + group).min(heads) {
                axpy(&mut out[h * d..(h + 1) * d], p[h * n + t], v);
            }
        }
    }
}

/// The layout [`head_scores`] and [`head_weighted`] read: `n` positions of `d` values for each
/// key/value head, the heads `head_stride` values apart, in `rows` values.
fn check_head_rows(
    heads: usize,
    d: usize,
    group: usize,
    n: usize,
    rows: usize,
    head_stride: usize,
    what: &str,
) {
    assert!(group >= 1 && d >= 1, "{what}: empty heads");
    let kv_heads = heads.div_ceil(group);
    if n > 0 && kv_heads > 0 {
        assert!(
            kv_heads == 1 || n * d <= head_stride,
            "{what}: heads overlap"
        );
        assert!(
            rows >= (kv_heads - 1) * head_stride + n * d,
            "{what}: rows too short"
        );
    }
}

/// The largest value of `s` (NaN values ignored, `-inf` when empty), sixteen running maxima side
/// by side so that the compiler vectorizes it (a plain fold is one dependent compare a value).
pub(crate) fn max_f32(s: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = s.chunks_exact(16);
    for c in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = m.max(v);
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    lanes.into_iter().fold(tail, f32::max)
}

/// `s[i] = exp(s[i] - max)` for every `i`, returning their sum: a softmax's exponentials
/// (`max` at least every value). AVX2/FMA where the CPU has them, with a polynomial `exp`
/// within 2 ulp of the exact one (the standard library's scalar `exp` took most of a decode
/// step's softmax time); the standard library's elsewhere.
pub(crate) fn exp_shifted(s: &mut [f32], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the features were just detected.
        return unsafe { x86::exp_shifted_impl(s, max) };
    }
    let mut sum = 0f32;
    for v in s.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    sum
}

/// `x / (1 + e^-x)` in place (SiLU), 8 at a time through [`exp_shifted`]'s polynomial where the
/// CPU has AVX2 and FMA (a decode step of the 135M shape spent ~3 % of its time in the scalar
/// `exp` of its MLPs).
pub(crate) fn silu(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the features were just detected.
        return unsafe { x86::silu_impl(x) };
    }
    x.iter_mut().for_each(|v| *v /= 1.0 + (-*v).exp());
}

/// GELU in its tanh form (`gelu_pytorch_tanh`, `gelu_new`) in place: `0.5·x·(1 + tanh(u))`,
/// `u = √(2/π)·(x + 0.044715·x³)`, computed as the equal `x / (1 + e^(−2u))`, 8 at a time
/// through [`exp_shifted`]'s polynomial where the CPU has AVX2 and FMA (a scalar `tanh` a value
/// made Gemma's prefill on the 135M shape ~40 % slower than Llama's).
pub(crate) fn gelu_tanh(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the features were just detected.
        return unsafe { x86::gelu_tanh_impl(x) };
    }
    x.iter_mut().for_each(|v| {
        let u = GELU_C * (*v + 0.044715 * *v * *v * *v);
        *v = 0.5 * *v * (1.0 + u.tanh());
    });
}

/// √(2/π).
const GELU_C: f32 = 0.797_884_6;

/// `y += a·x` (AVX2/FMA where the CPU has them).
pub(crate) fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the features were just detected; the kernel stays within the shorter slice.
        return unsafe { x86::axpy_impl(y, a, x) };
    }
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
}

/// [`dot_f32`] in 8 independent lanes so that the compiler vectorises it (one running sum
/// would serialise every addition).
fn dot_f32_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Widens 16-bit values of `kind` into f32.
pub(crate) fn widen(kind: HalfKind, src: &[u16], dst: &mut [f32]) {
    match kind {
        HalfKind::F16 => {
            use half::slice::HalfFloatSliceExt;
            let s: &[f16] = bytemuck::cast_slice(src);
            s.convert_to_f32_slice(dst);
        }
        HalfKind::Bf16 => {
            // The crate is built for baseline x86-64, whose 4-lane code made this a fifth of a
            // quantized load's time.
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the feature was just detected.
                return unsafe { x86::widen_bf16_avx2(src, dst) };
            }
            for (d, &b) in dst.iter_mut().zip(src) {
                *d = f32::from_bits((b as u32) << 16);
            }
        }
    }
}

type DotFn = fn(&[u16], &[f32]) -> f32;
/// Rows `w` (`cols` values each) dotted with `x` into `out`, a row each.
type RowsFn = fn(&[u16], usize, &[f32], &mut [f32]);
/// [`RowsFn`] for four runs of `out.len() / 4` rows (a multiple of four): row `i` of run `k`
/// into `out[k · run + i]`, one row of each run at a time.
type Runs4Fn = fn(&[u16], usize, &[f32], &mut [f32]);

/// A kernel of four rows a call for `kind` where the CPU has one (AVX-512): each block of `x`
/// is loaded once for the four rows.
fn runs4_fn(kind: HalfKind) -> Option<Runs4Fn> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        return Some(match kind {
            HalfKind::F16 => x86::runs4_f16_512,
            HalfKind::Bf16 => x86::runs4_bf16_512,
        });
    }
    let _ = kind;
    None
}

/// [`dot_fn`]'s kernel over consecutive rows, the loop inside the kernel where the CPU has an
/// AVX-512 one.
fn rows_fn(kind: HalfKind) -> RowsFn {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        return match kind {
            HalfKind::F16 => x86::rows_f16_512,
            HalfKind::Bf16 => x86::rows_bf16_512,
        };
    }
    match kind {
        HalfKind::F16 => |w, cols, x, out| rows_with(dot_fn(HalfKind::F16), w, cols, x, out),
        HalfKind::Bf16 => |w, cols, x, out| rows_with(dot_fn(HalfKind::Bf16), w, cols, x, out),
    }
}

fn rows_with(dot: DotFn, w: &[u16], cols: usize, x: &[f32], out: &mut [f32]) {
    for (o, row) in out.iter_mut().zip(w.chunks_exact(cols.max(1))) {
        *o = dot(row, x);
    }
}

/// The fastest dot product this CPU runs for `kind`.
fn dot_fn(kind: HalfKind) -> DotFn {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return match kind {
                HalfKind::F16 => x86::dot_f16_512,
                HalfKind::Bf16 => x86::dot_bf16_512,
            };
        }
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            return match kind {
                HalfKind::F16 => x86::dot_f16,
                HalfKind::Bf16 => x86::dot_bf16,
            };
        }
    }
    match kind {
        HalfKind::F16 => dot_f16_portable,
        HalfKind::Bf16 => dot_bf16_portable,
    }
}

fn dot_f16_portable(w: &[u16], x: &[f32]) -> f32 {
    dot_half_portable(w, x, |b| f16::from_bits(b).to_f32())
}

fn dot_bf16_portable(w: &[u16], x: &[f32]) -> f32 {
    dot_half_portable(w, x, |b| bf16::from_bits(b).to_f32())
}

/// `Σ widen(w)·x` in 8 independent lanes (see [`dot_f32_portable`]).
fn dot_half_portable(w: &[u16], x: &[f32], widen: impl Fn(u16) -> f32) -> f32 {
    let x = &x[..w.len()];
    let (cw, cx) = (w.chunks_exact(8), x.chunks_exact(8));
    let tail: f32 = cw
        .remainder()
        .iter()
        .zip(cx.remainder())
        .map(|(&a, b)| widen(a) * b)
        .sum();
    let mut acc = [0f32; 8];
    for (a, b) in cw.zip(cx) {
        for (l, s) in acc.iter_mut().enumerate() {
            *s += widen(a[l]) * b[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Sum of the 8 lanes.
    #[target_feature(enable = "avx2")]
    unsafe fn hsum(v: __m256) -> f32 {
        let hi = _mm256_extractf128_ps(v, 1);
        let lo = _mm256_castps256_ps128(v);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_f16_impl(w: &[u16], x: &[f32]) -> f32 {
        let n = w.len().min(x.len());
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                let h = _mm_loadu_si128(wp.add(i + 8 * k) as *const __m128i);
                let wv = _mm256_cvtph_ps(h);
                *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xp.add(i + 8 * k)), *a);
            }
            i += 32;
        }
        while i + 8 <= n {
            let h = _mm_loadu_si128(wp.add(i) as *const __m128i);
            acc[0] = _mm256_fmadd_ps(_mm256_cvtph_ps(h), _mm256_loadu_ps(xp.add(i)), acc[0]);
            i += 8;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut sum = hsum(s);
        while i < n {
            sum += half::f16::from_bits(w[i]).to_f32() * x[i];
            i += 1;
        }
        sum
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_bf16_impl(w: &[u16], x: &[f32]) -> f32 {
        let n = w.len().min(x.len());
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        let widen = |p: *const u16| {
            let h = _mm_loadu_si128(p as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
        };
        while i + 32 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                let wv = widen(wp.add(i + 8 * k));
                *a = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xp.add(i + 8 * k)), *a);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(widen(wp.add(i)), _mm256_loadu_ps(xp.add(i)), acc[0]);
            i += 8;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut sum = hsum(s);
        while i < n {
            sum += f32::from_bits((w[i] as u32) << 16) * x[i];
            i += 1;
        }
        sum
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_f32_impl(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(ap.add(i)), _mm256_loadu_ps(bp.add(i)), s0);
            s1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(ap.add(i + 8)),
                _mm256_loadu_ps(bp.add(i + 8)),
                s1,
            );
            i += 16;
        }
        if i + 8 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(ap.add(i)), _mm256_loadu_ps(bp.add(i)), s0);
            i += 8;
        }
        let mut sum = hsum(_mm256_add_ps(s0, s1));
        while i < n {
            sum += a[i] * b[i];
            i += 1;
        }
        sum
    }

    /// [`super::head_scores`]; the caller has checked the layout.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn head_scores_impl(
        q: &[f32],
        d: usize,
        group: usize,
        rows: &[f32],
        head_stride: usize,
        scores: &mut [f32],
    ) {
        // SAFETY (the closure): this function's features.
        super::head_scores_with(q, d, group, rows, head_stride, scores, |a, b| unsafe {
            dot_f32_impl(a, b)
        });
    }

    /// [`super::head_weighted`]; the caller has checked the layout.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn head_weighted_impl(
        p: &[f32],
        d: usize,
        group: usize,
        rows: &[f32],
        head_stride: usize,
        out: &mut [f32],
    ) {
        // SAFETY (the closure): this function's features.
        super::head_weighted_with(p, d, group, rows, head_stride, out, |y, a, x| unsafe {
            axpy_impl(y, a, x)
        });
    }

    /// `a · b` for f16 `b` (bits), eight values a step through F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_f32_f16_impl(a: &[f32], b: &[u16]) -> f32 {
        let n = a.len().min(b.len());
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let wide = |i: usize| _mm256_cvtph_ps(_mm_loadu_si128(bp.add(i) as *const __m128i));
        let mut i = 0;
        while i + 16 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(ap.add(i)), wide(i), s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(ap.add(i + 8)), wide(i + 8), s1);
            i += 16;
        }
        if i + 8 <= n {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(ap.add(i)), wide(i), s0);
            i += 8;
        }
        let mut sum = hsum(_mm256_add_ps(s0, s1));
        while i < n {
            sum += a[i] * half::f16::from_bits(b[i]).to_f32();
            i += 1;
        }
        sum
    }

    /// `y += a·x` for f16 `x` (bits), eight values a step through F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn axpy_f16_impl(y: &mut [f32], a: f32, x: &[u16]) {
        let n = y.len().min(x.len());
        let (yp, xp) = (y.as_mut_ptr(), x.as_ptr());
        let av = _mm256_set1_ps(a);
        let mut i = 0;
        while i + 8 <= n {
            let xv = _mm256_cvtph_ps(_mm_loadu_si128(xp.add(i) as *const __m128i));
            _mm256_storeu_ps(
                yp.add(i),
                _mm256_fmadd_ps(av, xv, _mm256_loadu_ps(yp.add(i))),
            );
            i += 8;
        }
        while i < n {
            y[i] += a * half::f16::from_bits(x[i]).to_f32();
            i += 1;
        }
    }

    /// [`super::head_scores`] over f16 keys; the caller has checked the layout.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn head_scores_f16_impl(
        q: &[f32],
        d: usize,
        group: usize,
        rows: &[u16],
        head_stride: usize,
        scores: &mut [f32],
    ) {
        // SAFETY (the closure): this function's features.
        super::head_scores_with(q, d, group, rows, head_stride, scores, |a, b| unsafe {
            dot_f32_f16_impl(a, b)
        });
    }

    /// [`super::head_weighted`] over f16 values; the caller has checked the layout.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn head_weighted_f16_impl(
        p: &[f32],
        d: usize,
        group: usize,
        rows: &[u16],
        head_stride: usize,
        out: &mut [f32],
    ) {
        // SAFETY (the closure): this function's features.
        super::head_weighted_with(p, d, group, rows, head_stride, out, |y, a, x| unsafe {
            axpy_f16_impl(y, a, x)
        });
    }

    /// Sixteen cached values at byte address `$p` as f32: f32 values, or f16 bits widened
    /// (`$f16`, a constant: one of the two branches is compiled).
    macro_rules! kv16 {
        ($f16:expr, $p:expr) => {
            if $f16 {
                _mm512_cvtph_ps(_mm256_loadu_si256($p as *const __m256i))
            } else {
                _mm512_loadu_ps($p as *const f32)
            }
        };
    }

    /// [`super::head_scores`] for heads of a multiple of 16 values, sixteen positions at a
    /// time: each of a head's sixteen dot products runs in its own register (the positions
    /// read in order, the block read from L1 again for the other heads of the group), and the
    /// sixteen sums are folded into one vector of scores ([`fold16`]) instead of one
    /// horizontal sum each.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn head_scores_512<const F16: bool>(
        q: &[f32],
        d: usize,
        group: usize,
        rows: *const u8,
        head_stride: usize,
        scores: &mut [f32],
    ) {
        let heads = q.len() / d;
        let n = scores.len() / heads;
        let block16 = match d / 16 {
            1 => scores_block16::<1, F16>,
            2 => scores_block16::<2, F16>,
            3 => scores_block16::<3, F16>,
            4 => scores_block16::<4, F16>,
            5 => scores_block16::<5, F16>,
            6 => scores_block16::<6, F16>,
            7 => scores_block16::<7, F16>,
            8 => scores_block16::<8, F16>,
            _ => scores_block16_any::<F16>,
        };
        // Bytes a cached value takes.
        let e = if F16 { 2 } else { 4 };
        let (qp, sp) = (q.as_ptr(), scores.as_mut_ptr());
        for h0 in (0..heads).step_by(group) {
            let run = rows.add((h0 / group) * head_stride * e);
            let group_heads = h0..(h0 + group).min(heads);
            let mut t = 0;
            while t + 16 <= n {
                let block = run.add(t * d * e);
                for h in group_heads.clone() {
                    block16(qp.add(h * d), d, block, sp.add(h * n + t));
                }
                t += 16;
            }
            for t in t..n {
                let k = run.add(t * d * e);
                for h in group_heads.clone() {
                    let qh = qp.add(h * d);
                    let mut acc = _mm512_setzero_ps();
                    for j in (0..d).step_by(16) {
                        acc = _mm512_fmadd_ps(
                            _mm512_loadu_ps(qh.add(j)),
                            kv16!(F16, k.add(j * e)),
                            acc,
                        );
                    }
                    *sp.add(h * n + t) = _mm512_reduce_add_ps(acc);
                }
            }
        }
    }

    /// One head's scores over sixteen positions of `16·C` values (`block`, in order, f32 or
    /// f16 bits) into `out`: the query's `C` vectors stay in registers, each position's sum in
    /// its own.
    #[target_feature(enable = "avx512f")]
    unsafe fn scores_block16<const C: usize, const F16: bool>(
        q: *const f32,
        _d: usize,
        block: *const u8,
        out: *mut f32,
    ) {
        let e = if F16 { 2 } else { 4 };
        let qv: [__m512; C] = std::array::from_fn(|j| _mm512_loadu_ps(q.add(16 * j)));
        let mut acc = [_mm512_setzero_ps(); 16];
        for (i, a) in acc.iter_mut().enumerate() {
            let k = block.add(i * 16 * C * e);
            for (j, qv) in qv.iter().enumerate() {
                *a = _mm512_fmadd_ps(*qv, kv16!(F16, k.add(16 * j * e)), *a);
            }
        }
        let lanes = _mm512_loadu_si512(FOLD16_LANE.as_ptr() as *const _);
        _mm512_storeu_ps(out, _mm512_permutexvar_ps(lanes, fold16(acc)));
    }

    /// [`scores_block16`] for heads of any multiple of 16 values (the query read from L1).
    #[target_feature(enable = "avx512f")]
    unsafe fn scores_block16_any<const F16: bool>(
        q: *const f32,
        d: usize,
        block: *const u8,
        out: *mut f32,
    ) {
        let e = if F16 { 2 } else { 4 };
        let mut acc = [_mm512_setzero_ps(); 16];
        for (i, a) in acc.iter_mut().enumerate() {
            let k = block.add(i * d * e);
            for j in (0..d).step_by(16) {
                *a = _mm512_fmadd_ps(_mm512_loadu_ps(q.add(j)), kv16!(F16, k.add(j * e)), *a);
            }
        }
        let lanes = _mm512_loadu_si512(FOLD16_LANE.as_ptr() as *const _);
        _mm512_storeu_ps(out, _mm512_permutexvar_ps(lanes, fold16(acc)));
    }

    /// Lane `i` of [`fold16`]'s result holds the sum of `a[4·(i mod 4) + i / 4]`: gathering
    /// these lanes in order puts `a[i]`'s sum in lane `i`.
    const FOLD16_LANE: [i32; 16] = {
        let mut p = [0; 16];
        let mut i = 0;
        while i < 16 {
            p[i] = 4 * (i as i32 % 4) + i as i32 / 4;
            i += 1;
        }
        p
    };

    /// The sums of sixteen vectors' lanes as one vector: lane `4k + m` is the sum of all lanes
    /// of `a[4m + k]`. Each step adds pairs of halves of two vectors (512 → 256-bit halves,
    /// 256 → 128, then within 128-bit lanes 2 floats, 1 float).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn fold16(a: [__m512; 16]) -> __m512 {
        // Quarters 0-1 of b[i] hold a[2i]'s partial sums, quarters 2-3 a[2i + 1]'s.
        let b: [__m512; 8] = std::array::from_fn(|i| {
            let (x, y) = (a[2 * i], a[2 * i + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b01_00_01_00>(x, y),
                _mm512_shuffle_f32x4::<0b11_10_11_10>(x, y),
            )
        });
        // Quarter k of c[i]: a[4i + k]'s.
        let c: [__m512; 4] = std::array::from_fn(|i| {
            let (x, y) = (b[2 * i], b[2 * i + 1]);
            _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y),
                _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y),
            )
        });
        // Quarter k of e[i]: lanes 0 and 2 a[8i + k]'s, lanes 1 and 3 a[8i + 4 + k]'s.
        let e: [__m512; 2] = std::array::from_fn(|i| {
            let (x, y) = (c[2 * i], c[2 * i + 1]);
            _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y))
        });
        let (x, y) = (_mm512_castps_pd(e[0]), _mm512_castps_pd(e[1]));
        _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)),
        )
    }

    /// [`super::head_weighted`] for heads of `16·c` values with `c` in 1..=8 or 16 (returns
    /// false for others): the outputs of up to 16 / `c` heads of a group stay in registers
    /// while their value run streams by once.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn head_weighted_512<const F16: bool>(
        p: &[f32],
        d: usize,
        group: usize,
        rows: *const u8,
        head_stride: usize,
        out: &mut [f32],
    ) -> bool {
        let f = match d / 16 {
            1 => weighted_block::<1, 16, F16>,
            2 => weighted_block::<2, 8, F16>,
            3 => weighted_block::<3, 5, F16>,
            4 => weighted_block::<4, 4, F16>,
            5 => weighted_block::<5, 3, F16>,
            6 => weighted_block::<6, 2, F16>,
            7 => weighted_block::<7, 2, F16>,
            8 => weighted_block::<8, 2, F16>,
            16 => weighted_block::<16, 1, F16>,
            _ => return false,
        };
        let per = match d / 16 {
            c @ 1..=8 => 16 / c,
            _ => 1,
        };
        let e = if F16 { 2 } else { 4 };
        let heads = out.len() / d;
        let n = p.len() / heads;
        let mut h = 0;
        while h < heads {
            // Heads h..h + k: one block, within one group.
            let k = per.min(group - h % group).min(heads - h);
            f(
                p.as_ptr().add(h * n),
                n,
                k,
                rows.add((h / group) * head_stride * e),
                out.as_mut_ptr().add(h * d),
            );
            h += k;
        }
        true
    }

    /// `out[i·16C..][..16C] = Σₜ p[i·n + t] · run[t·16C..][..16C]` for the `k ≤ H` heads `i` of
    /// one block (`run` f32 values or f16 bits).
    #[target_feature(enable = "avx512f")]
    unsafe fn weighted_block<const C: usize, const H: usize, const F16: bool>(
        p: *const f32,
        n: usize,
        k: usize,
        run: *const u8,
        out: *mut f32,
    ) {
        let e = if F16 { 2 } else { 4 };
        let mut acc = [[_mm512_setzero_ps(); C]; H];
        for t in 0..n {
            let row = run.add(t * 16 * C * e);
            let vals: [__m512; C] = std::array::from_fn(|j| kv16!(F16, row.add(16 * j * e)));
            for (i, acc) in acc.iter_mut().enumerate() {
                if i < k {
                    let w = _mm512_set1_ps(*p.add(i * n + t));
                    for (a, v) in acc.iter_mut().zip(&vals) {
                        *a = _mm512_fmadd_ps(w, *v, *a);
                    }
                }
            }
        }
        for (i, acc) in acc.iter().enumerate().take(k) {
            for (j, a) in acc.iter().enumerate() {
                _mm512_storeu_ps(out.add(i * 16 * C + 16 * j), *a);
            }
        }
    }

    /// `exp` of 8 values ≤ 0 (Cephes' single-precision polynomial: `2^k · e^r` with
    /// `|r| ≤ ln 2 / 2`); values below -87 give `e^-87` (≈ 1.6e-38) instead of smaller ones.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
        let k = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        // r = x - k·ln 2, with ln 2 in two parts so that the product is exact enough.
        let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut y = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_199_9e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            0.166_666_65,
            0.5,
        ] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
        }
        let y = _mm256_fmadd_ps(
            y,
            _mm256_mul_ps(r, r),
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        let scale = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(k),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(y, _mm256_castsi256_ps(scale))
    }

    /// [`super::exp_shifted`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_shifted_impl(s: &mut [f32], max: f32) -> f32 {
        let n = s.len();
        let p = s.as_mut_ptr();
        let m = _mm256_set1_ps(max);
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), m));
            _mm256_storeu_ps(p.add(i), e);
            acc = _mm256_add_ps(acc, e);
            i += 8;
        }
        let mut sum = hsum(acc);
        if i < n {
            // The tail through the same polynomial, padded with exp(-87).
            let mut tail = [-87.0f32; 8];
            tail[..n - i].copy_from_slice(&s[i..]);
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(tail.as_ptr()), m));
            let mut out = [0f32; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), e);
            s[i..].copy_from_slice(&out[..n - i]);
            sum += out[..n - i].iter().sum::<f32>();
        }
        sum
    }

    /// `f` over `x` in place, 8 values a vector, the tail through a zero-padded vector. Inlined
    /// into its callers, whose target features its intrinsics then run with.
    #[inline(always)]
    unsafe fn map8(x: &mut [f32], f: impl Fn(__m256) -> __m256) {
        let n = x.len();
        let p = x.as_mut_ptr();
        let mut i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(p.add(i), f(_mm256_loadu_ps(p.add(i))));
            i += 8;
        }
        if i < n {
            let mut tail = [0f32; 8];
            tail[..n - i].copy_from_slice(&x[i..]);
            let mut out = [0f32; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), f(_mm256_loadu_ps(tail.as_ptr())));
            x[i..].copy_from_slice(&out[..n - i]);
        }
    }

    /// [`super::silu`], with `x` raised to -88 first (e^88 < f32::MAX): below it the result is
    /// -88 / e^88 ≈ -5e-37 instead of a smaller negative number.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn silu_impl(x: &mut [f32]) {
        let (one, floor) = (_mm256_set1_ps(1.0), _mm256_set1_ps(-88.0));
        let f = |v: __m256| {
            // NaN stays NaN: max takes its second operand when one is NaN.
            let v = _mm256_max_ps(floor, v);
            let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), v));
            _mm256_div_ps(v, _mm256_add_ps(one, e))
        };
        map8(x, f);
    }

    /// [`super::gelu_tanh`]: `e^(−2u)` with `−2u` kept within [−87, 88] (below, the result is
    /// `x`; above, 0); NaN stays NaN through `x`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gelu_tanh_impl(x: &mut [f32]) {
        let one = _mm256_set1_ps(1.0);
        let (lo, hi) = (_mm256_set1_ps(-87.0), _mm256_set1_ps(88.0));
        let (c, k) = (
            _mm256_set1_ps(-2.0 * super::GELU_C),
            _mm256_set1_ps(0.044715),
        );
        let f = |v: __m256| {
            // −2u = −2c·(v + k·v³)
            let inner = _mm256_fmadd_ps(_mm256_mul_ps(k, _mm256_mul_ps(v, v)), v, v);
            let z = _mm256_mul_ps(c, inner);
            // Past e^88 the result is below |x|·1e-38: zero.
            let gone = _mm256_cmp_ps::<_CMP_GE_OQ>(z, hi);
            let z = _mm256_min_ps(_mm256_max_ps(z, lo), hi);
            _mm256_andnot_ps(gone, _mm256_div_ps(v, _mm256_add_ps(one, exp8(z))))
        };
        map8(x, f);
    }

    /// [`super::axpy`].
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) unsafe fn axpy_impl(y: &mut [f32], a: f32, x: &[f32]) {
        let n = y.len().min(x.len());
        let (yp, xp) = (y.as_mut_ptr(), x.as_ptr());
        let av = _mm256_set1_ps(a);
        let mut i = 0;
        while i + 8 <= n {
            let v = _mm256_fmadd_ps(av, _mm256_loadu_ps(xp.add(i)), _mm256_loadu_ps(yp.add(i)));
            _mm256_storeu_ps(yp.add(i), v);
            i += 8;
        }
        while i < n {
            *yp.add(i) += a * *xp.add(i);
            i += 1;
        }
    }

    /// `Σ w·x` with 16-lane vectors: the 8-lane kernels above spend about twice the
    /// instructions per cache line of weights, which caps them below what a fast memory system
    /// delivers (a C model on Zen 4 with 2 threads: 32-33 GB/s for the 8-lane bf16 kernel
    /// whatever the bandwidth, 33-48 GB/s for this one; at 30-35 GB/s both are memory-bound).
    /// Same products; the sums are grouped as [`dot4_half_512`] groups each of its rows (two
    /// accumulators over blocks of 32 values, then the tail in order), so that a row's result
    /// does not depend on which kernel its call took: the team's tasks, and so which rows go
    /// four at a time, vary from run to run.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn dot_half_512<const BF16: bool>(w: &[u16], x: &[f32]) -> f32 {
        let n = w.len().min(x.len());
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 2];
        let mut i = 0;
        while i + 32 <= n {
            for (k, a) in acc.iter_mut().enumerate() {
                let wv = widen16::<BF16>(wp.add(i + 16 * k));
                *a = _mm512_fmadd_ps(wv, _mm512_loadu_ps(xp.add(i + 16 * k)), *a);
            }
            i += 32;
        }
        let mut sum = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
        for (&v, &x) in w[i..n].iter().zip(&x[i..n]) {
            sum += half_to_f32::<BF16>(v) * x;
        }
        sum
    }

    /// 16 half-precision values at `p` as f32 (`vcvtph2ps` for f16, a shift for bf16).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn widen16<const BF16: bool>(p: *const u16) -> __m512 {
        let h = _mm256_loadu_si256(p as *const __m256i);
        if BF16 {
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        } else {
            _mm512_cvtph_ps(h)
        }
    }

    /// One half-precision value as f32 (the kernels' scalar tails).
    fn half_to_f32<const BF16: bool>(v: u16) -> f32 {
        if BF16 {
            f32::from_bits((v as u32) << 16)
        } else {
            half::f16::from_bits(v).to_f32()
        }
    }

    /// Four rows against one `x`, two accumulators a row.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn dot4_half_512<const BF16: bool>(w: [&[u16]; 4], x: &[f32]) -> [f32; 4] {
        let n = w.iter().fold(x.len(), |n, r| n.min(r.len()));
        let p = w.map(|r| r.as_ptr());
        let xp = x.as_ptr();
        let widen = |p: *const u16| widen16::<BF16>(p);
        // acc[k][r]: row r's sum of lanes 16k..16k+16 of every 32-value block.
        let mut acc = [[_mm512_setzero_ps(); 4]; 2];
        let mut i = 0;
        while i + 32 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                let xv = _mm512_loadu_ps(xp.add(i + 16 * k));
                for (a, p) in acc.iter_mut().zip(p) {
                    *a = _mm512_fmadd_ps(widen(p.add(i + 16 * k)), xv, *a);
                }
            }
            i += 32;
        }
        let mut out: [f32; 4] =
            std::array::from_fn(|r| _mm512_reduce_add_ps(_mm512_add_ps(acc[0][r], acc[1][r])));
        for (o, row) in out.iter_mut().zip(w) {
            for (&v, &x) in row[i..n].iter().zip(&x[i..n]) {
                *o += half_to_f32::<BF16>(v) * x;
            }
        }
        out
    }

    /// [`super::Runs4Fn`] over [`dot4_half_512`]: the loop over the runs' rows inside the
    /// kernel's features (a call through a pointer per four rows costs as much as a short
    /// row's product).
    #[target_feature(enable = "avx512f")]
    unsafe fn runs4_half_512<const BF16: bool>(w: &[u16], cols: usize, x: &[f32], out: &mut [f32]) {
        let run = out.len() / 4;
        assert!(w.len() >= 4 * run * cols && x.len() >= cols);
        let row = |r: usize| &w[r * cols..(r + 1) * cols];
        for i in 0..run {
            let four = dot4_half_512::<BF16>([i, run + i, 2 * run + i, 3 * run + i].map(row), x);
            for (k, v) in four.into_iter().enumerate() {
                out[k * run + i] = v;
            }
        }
    }

    /// [`super::RowsFn`] over [`dot_half_512`], as [`runs4_half_512`].
    #[target_feature(enable = "avx512f")]
    unsafe fn rows_half_512<const BF16: bool>(w: &[u16], cols: usize, x: &[f32], out: &mut [f32]) {
        assert!(w.len() >= out.len() * cols);
        for (r, o) in out.iter_mut().enumerate() {
            *o = dot_half_512::<BF16>(&w[r * cols..(r + 1) * cols], x);
        }
    }

    pub fn runs4_f16_512(w: &[u16], cols: usize, x: &[f32], out: &mut [f32]) {
        // SAFETY: only handed out by runs4_fn after detecting avx512f.
        unsafe { runs4_half_512::<false>(w, cols, x, out) }
    }

    pub fn runs4_bf16_512(w: &[u16], cols: usize, x: &[f32], out: &mut [f32]) {
        // SAFETY: only handed out by runs4_fn after detecting avx512f.
        unsafe { runs4_half_512::<true>(w, cols, x, out) }
    }

    pub fn rows_f16_512(w: &[u16], cols: usize, x: &[f32], out: &mut [f32]) {
        // SAFETY: only handed out by rows_fn after detecting avx512f.
        unsafe { rows_half_512::<false>(w, cols, x, out) }
    }

    pub fn rows_bf16_512(w: &[u16], cols: usize, x: &[f32], out: &mut [f32]) {
        // SAFETY: only handed out by rows_fn after detecting avx512f.
        unsafe { rows_half_512::<true>(w, cols, x, out) }
    }

    pub fn dot_f16_512(w: &[u16], x: &[f32]) -> f32 {
        // SAFETY: only handed out by dot_fn after detecting avx512f.
        unsafe { dot_half_512::<false>(w, x) }
    }

    pub fn dot_bf16_512(w: &[u16], x: &[f32]) -> f32 {
        // SAFETY: only handed out by dot_fn after detecting avx512f.
        unsafe { dot_half_512::<true>(w, x) }
    }

    /// bf16 → f32 for `min(src.len(), dst.len())` values, 8 at a time.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn widen_bf16_avx2(src: &[u16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
        let mut i = 0;
        while i + 8 <= n {
            let h = _mm_loadu_si128(sp.add(i) as *const __m128i);
            let v = _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h));
            _mm256_storeu_si256(dp.add(i) as *mut __m256i, v);
            i += 8;
        }
        for (d, &b) in dst[i..n].iter_mut().zip(&src[i..n]) {
            *d = f32::from_bits((b as u32) << 16);
        }
    }

    pub fn dot_f16(w: &[u16], x: &[f32]) -> f32 {
        // SAFETY: only handed out by dot_fn after detecting avx2, fma and f16c.
        unsafe { dot_f16_impl(w, x) }
    }

    pub fn dot_bf16(w: &[u16], x: &[f32]) -> f32 {
        // SAFETY: only handed out by dot_fn after detecting avx2 and fma.
        unsafe { dot_bf16_impl(w, x) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(w: &[f32], rows: usize, cols: usize, x: &[f32], n: usize) -> Vec<f32> {
        let mut y = vec![0f32; n * rows];
        for j in 0..n {
            for r in 0..rows {
                y[j * rows + r] = (0..cols)
                    .map(|k| w[r * cols + k] as f64 * x[j * cols + k] as f64)
                    .sum::<f64>() as f32;
            }
        }
        y
    }

    /// Buffers in an arena start zeroed (the part of a huge page the previous one touched
    /// too), keep what is written into them apart from their neighbours, and clone into
    /// vectors of the same values; quantizing into an arena gives the same bytes.
    #[test]
    fn arena_buffers_are_zeroed_and_separate() {
        let mut arena = WeightArena {
            chunk_bytes: 4 << 20,
            ..WeightArena::default()
        };
        let mut bufs: Vec<HostBuf<u16>> = [5, 1000, 3 << 20, 77]
            .iter()
            .map(|&n| HostBuf::zeroed(n, Some(&mut arena)))
            .collect();
        assert!(bufs.iter().all(|b| matches!(b, HostBuf::Arena { .. })));
        for (i, b) in bufs.iter_mut().enumerate() {
            assert!(b.iter().all(|&v| v == 0));
            assert_eq!(b.as_ptr() as usize % WeightArena::ALIGN, 0);
            b.iter_mut()
                .enumerate()
                .for_each(|(k, v)| *v = (k * 31 + i) as u16);
        }
        for (i, b) in bufs.iter().enumerate() {
            assert!(b.iter().enumerate().all(|(k, &v)| v == (k * 31 + i) as u16));
            let c = b.clone();
            assert!(matches!(c, HostBuf::Vec(_)));
            assert_eq!(&c[..], &b[..]);
        }
        // Without an arena: a large buffer gets a map of its own, a small one is a vector.
        let large = HostBuf::<u8>::zeroed(4 << 20, None);
        assert!(matches!(large, HostBuf::Arena { .. }) && large.iter().all(|&v| v == 0));
        assert!(matches!(HostBuf::<u8>::zeroed(1000, None), HostBuf::Vec(_)));
        let (rows, cols) = (37, 96);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 9.0)
            .collect();
        for kind in [crate::nn::Quantization::Q8, crate::nn::Quantization::Q4] {
            let fill =
                |r: usize, dst: &mut [f32]| dst.copy_from_slice(&w[r * cols..(r + 1) * cols]);
            let plain = crate::nn::QuantMatrix::quantize_rows(kind, rows, cols, fill);
            let pooled = crate::nn::QuantMatrix::quantize_rows_in(
                kind,
                rows,
                cols,
                8,
                Some(&mut arena),
                fill,
                |_| {},
            );
            assert_eq!(plain.raw(), pooled.raw());
        }
    }

    #[test]
    fn arena_copies_keep_the_bits() {
        // Chunks of 4 MiB (one huge page is 2 MiB: chunks are whole huge pages).
        let mut arena = WeightArena {
            chunk_bytes: 4 << 20,
            ..WeightArena::default()
        };
        let make = |n: usize, seed: u32| -> Vec<u16> {
            (0..n as u32)
                .map(|i| (i.wrapping_mul(7919) ^ seed) as u16)
                .collect()
        };
        let le = |bits: &[u16]| -> Vec<u8> { bits.iter().flat_map(|b| b.to_le_bytes()).collect() };
        // Small matrices share a chunk (odd lengths: the next start is rounded up); one larger
        // than a chunk gets a map of its own.
        let shapes = [(3, 5), (64, 33), (1, 1), (40_000, 64), (7, 9)];
        let mut kept = Vec::new();
        for (i, &(rows, cols)) in shapes.iter().enumerate() {
            let bits = make(rows * cols, i as u32 * 1000);
            let m = HalfMatrix::copied(HalfKind::Bf16, rows, cols, &le(&bits), &mut arena).unwrap();
            kept.push((m, bits));
        }
        for (m, bits) in &kept {
            assert_eq!(m.bits(), &bits[..]);
            assert_eq!(m.bits().as_ptr() as usize % WeightArena::ALIGN, 0);
            let (r0, r1) = (m.rows() / 3, m.rows());
            let part = m.slice_rows(r0, r1);
            assert_eq!(part.bits(), &bits[r0 * m.cols()..r1 * m.cols()]);
        }
        // The small ones share one chunk.
        let chunk_of = |m: &HalfMatrix| match &m.bytes {
            Bytes::Resident { map, .. } => Arc::as_ptr(map),
            _ => unreachable!("copied matrices are resident"),
        };
        assert_eq!(chunk_of(&kept[0].0), chunk_of(&kept[1].0));
        assert_eq!(chunk_of(&kept[0].0), chunk_of(&kept[4].0));
        assert_ne!(chunk_of(&kept[0].0), chunk_of(&kept[3].0));
    }

    #[test]
    fn f32_kernels_match_portable_code() {
        for n in [0, 1, 7, 8, 15, 16, 17, 64, 77] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot_f32(&a, &b) as f64 - want).abs() < 1e-4, "dot n={n}");
            assert!((dot_f32_portable(&a, &b) as f64 - want).abs() < 1e-4);
        }
    }

    /// Every half-precision dot product this CPU can run against the portable one, for lengths
    /// that exercise the unrolled loops and the tails.
    #[test]
    fn half_dots_agree() {
        let mut kernels: Vec<(&str, DotFn, DotFn)> =
            vec![("portable", dot_f16_portable, dot_bf16_portable)];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                kernels.push(("avx2", x86::dot_f16, x86::dot_bf16));
            }
            if has!("avx512f") {
                kernels.push(("avx512", x86::dot_f16_512, x86::dot_bf16_512));
            }
        }
        for n in [0, 3, 8, 16, 17, 32, 63, 64, 65, 80, 130, 576, 2048] {
            let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let f: Vec<u16> = v.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
            let b: Vec<u16> = v.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
            let want_f: f64 = (0..n)
                .map(|i| f16::from_bits(f[i]).to_f64() * x[i] as f64)
                .sum();
            let want_b: f64 = (0..n)
                .map(|i| bf16::from_bits(b[i]).to_f64() * x[i] as f64)
                .sum();
            for (name, df, db) in &kernels {
                assert!(
                    (df(&f, &x) as f64 - want_f).abs() < 1e-4,
                    "{name} f16 n={n}"
                );
                assert!(
                    (db(&b, &x) as f64 - want_b).abs() < 1e-4,
                    "{name} bf16 n={n}"
                );
            }
        }
    }

    #[test]
    fn widening_is_exact() {
        for n in [0, 5, 8, 21, 64, 2051] {
            let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.7).sin() * 1e3).collect();
            let b: Vec<u16> = v.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
            let f: Vec<u16> = v.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
            let (mut wb, mut wf) = (vec![f32::NAN; n], vec![f32::NAN; n]);
            widen(HalfKind::Bf16, &b, &mut wb);
            widen(HalfKind::F16, &f, &mut wf);
            for i in 0..n {
                assert_eq!(wb[i], bf16::from_bits(b[i]).to_f32());
                assert_eq!(wf[i], f16::from_bits(f[i]).to_f32());
            }
        }
    }

    #[test]
    fn lane_max_matches_a_fold() {
        for n in [0usize, 1, 5, 16, 17, 40, 333] {
            let mut s: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 1013) as f32 / 101.0 - 5.0)
                .collect();
            let want = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max_f32(&s), want, "{n}");
            if n > 3 {
                // The largest value anywhere, NaN values skipped.
                s[n / 2] = 1e9;
                s[1] = f32::NAN;
                assert_eq!(max_f32(&s), 1e9, "{n}");
            }
        }
    }

    #[test]
    fn four_run_kernel_matches_a_plain_sum() {
        // Long rows (four runs in any call) and short ones (four runs in calls of at least
        // 4 * FOUR_RUN_MIN_ROWS rows).
        let shapes = [
            (FOUR_RUN_MIN_COLS + 37, 13),
            (101, 4 * FOUR_RUN_MIN_ROWS + 7),
        ];
        for ((cols, rows), kind) in shapes
            .into_iter()
            .flat_map(|s| [(s, HalfKind::F16), (s, HalfKind::Bf16)])
        {
            let vals: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 7919) % 1013) as f32 / 1013.0 - 0.5)
                .collect();
            let bits: Vec<u16> = vals
                .iter()
                .map(|&v| match kind {
                    HalfKind::F16 => half::f16::from_f32(v).to_bits(),
                    HalfKind::Bf16 => half::bf16::from_f32(v).to_bits(),
                })
                .collect();
            let m = HalfMatrix::from_bits(kind, rows, cols, bits);
            let x: Vec<f32> = (0..cols)
                .map(|i| ((i * 31) % 97) as f32 / 97.0 - 0.3)
                .collect();
            let mut wide = vec![0f32; cols];
            let want: Vec<f64> = (0..rows)
                .map(|r| {
                    m.row_to_f32(r, &mut wide);
                    wide.iter()
                        .zip(&x)
                        .map(|(&w, &x)| w as f64 * x as f64)
                        .sum()
                })
                .collect();
            let f = m.rows_dot(&x);
            let mut whole = vec![f32::NAN; rows];
            f(0, &mut whole);
            // Calls of every length from row 0 and row 1: four runs plus one-row leftovers.
            // Each row's result is the same bits whichever kernel its call took (the team's
            // split of a pass varies from run to run).
            for r0 in [0, 1] {
                for n in 1..=rows - r0 {
                    let mut out = vec![f32::NAN; n];
                    f(r0, &mut out);
                    for (i, o) in out.iter().enumerate() {
                        let e = want[r0 + i];
                        assert!(
                            (*o as f64 - e).abs() < 1e-4,
                            "{kind:?} {r0}+{n}: row {} {o} vs {e}",
                            r0 + i
                        );
                        assert_eq!(
                            o.to_bits(),
                            whole[r0 + i].to_bits(),
                            "{kind:?} {r0}+{n}: row {} differs from the whole call's",
                            r0 + i
                        );
                    }
                }
            }
            // Through the public GEMV too (one activation row takes the same path).
            let y = m.matmul_t(&x, 1);
            for (r, (y, e)) in y.iter().zip(&want).enumerate() {
                assert!(
                    (*y as f64 - e).abs() < 1e-4,
                    "{kind:?} gemv row {r}: {y} vs {e}"
                );
            }
        }
    }

    #[test]
    fn gelu_tanh_matches_the_tanh_form() {
        let mut x: Vec<f32> = (-2000..2000).map(|i| i as f32 * 0.007).collect();
        x.extend([
            -1e30, -200.0, -20.0, -9.0, 9.0, 20.0, 200.0, 1e30, 0.0, -0.0, 1e-30,
        ]);
        let exact: Vec<f64> = x
            .iter()
            .map(|&v| {
                let v = v as f64;
                let u = (2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v);
                // 0.5·v·(1 + tanh u), written without its cancellation far below zero.
                v / (1.0 + (-2.0 * u).exp())
            })
            .collect();
        for len in [x.len(), 1, 7, 8, 9, 17] {
            let mut y = x[..len].to_vec();
            gelu_tanh(&mut y);
            for ((v, y), e) in x.iter().zip(&y).zip(&exact) {
                // A few ULP of the result, times the conditioning of e^(−2u) (f32's u alone
                // carries |2u| ULP into it); below 1e-30 (x far below zero) any tiny value.
                let u = 0.8 * (*v as f64 + 0.044715 * (*v as f64).powi(3));
                let tol = 8.0 * f32::EPSILON as f64 * e.abs() * (1.0 + (2.0 * u).abs().min(200.0))
                    + 1e-30;
                let e = if e.is_nan() {
                    v.signum() as f64 * 0.0
                } else {
                    *e
                };
                assert!(
                    (*y as f64 - e).abs() <= tol,
                    "gelu_tanh({v}) = {y}, exact {e}"
                );
            }
        }
        let mut nan = [f32::NAN; 9];
        gelu_tanh(&mut nan);
        assert!(nan.iter().all(|v| v.is_nan()));
    }

    #[test]
    fn silu_matches_the_exact_form() {
        let mut x: Vec<f32> = (-2000..2000).map(|i| i as f32 * 0.07).collect();
        x.extend([-1e30, -200.0, -88.5, 88.5, 200.0, 1e30, 0.0, -0.0, 1e-30]);
        let exact: Vec<f64> = x
            .iter()
            .map(|&v| v as f64 / (1.0 + (-(v as f64)).exp()))
            .collect();
        // Every length up to a few vectors, so the tails are covered.
        for len in [x.len(), 1, 7, 8, 9, 17] {
            let mut y = x[..len].to_vec();
            silu(&mut y);
            for ((v, y), e) in x.iter().zip(&y).zip(&exact) {
                let tol = 4.0 * f32::EPSILON as f64 * e.abs() + 1e-35;
                assert!((*y as f64 - e).abs() <= tol, "silu({v}) = {y}, exact {e}");
            }
        }
        let mut nan = [f32::NAN; 9];
        silu(&mut nan);
        assert!(nan.iter().all(|v| v.is_nan()));
    }

    #[test]
    fn shifted_exponentials_are_accurate() {
        for n in [0, 1, 7, 8, 9, 100, 1001] {
            let mut s: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 90.0) * 0.37)
                .collect();
            let max = s
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max)
                .max(-1.0);
            let want: Vec<f64> = s.iter().map(|&v| ((v - max) as f64).exp()).collect();
            let sum = exp_shifted(&mut s, max);
            for (i, (&got, &w)) in s.iter().zip(&want).enumerate() {
                assert!(
                    (got as f64 - w).abs() <= 3e-7 * w + 1e-37,
                    "n={n} i={i}: {got} vs {w}"
                );
            }
            let total: f64 = want.iter().sum();
            assert!(
                (sum as f64 - total).abs() <= 1e-6 * total + 1e-37,
                "n={n} sum"
            );
        }
        // Down to the underflow bound and at zero.
        let mut s = vec![0.0f32, -1e-3, -10.0, -50.0, -86.0, -87.0];
        let want: Vec<f64> = s.iter().map(|&v| (v as f64).exp()).collect();
        exp_shifted(&mut s, 0.0);
        for (&got, &w) in s.iter().zip(&want) {
            assert!((got as f64 - w).abs() <= 3e-7 * w, "{got} vs {w}");
        }
    }

    /// Attention's row kernels against plain sums, for head sizes that exercise the 32-, 8-
    /// and 1-value paths and a stride wider than the rows (several heads per position), over
    /// f32 and f16 caches, through the kernel this CPU dispatches to and through the AVX2 and
    /// portable ones.
    #[test]
    fn head_kernels_match_plain_sums() {
        // Sizes of the AVX2 kernels and of the AVX-512 ones (heads of 16·c values: blocks of
        // sixteen positions and the rest, every block of value heads).
        let sizes = [
            (1, 1, 1),
            (5, 3, 3),
            (8, 4, 2),
            (24, 2, 1),
            (64, 9, 3),
            (77, 4, 4),
            (16, 20, 20),
            (48, 6, 2),
            (80, 4, 4),
            (96, 6, 6),
            (128, 8, 8),
            (144, 2, 1),
            (256, 2, 2),
        ];
        type Kernels = fn(&[f32], &[f32], usize, usize, KvSlice<'_>, usize, &mut [f32], &mut [f32]);
        let dispatched: Kernels = |q, p, d, group, rows, stride, scores, out| {
            head_scores(q, d, group, rows, stride, scores);
            head_weighted(p, d, group, rows, stride, out);
        };
        let portable: Kernels = |q, p, d, group, rows, stride, scores, out| match rows {
            KvSlice::F32(r) => {
                head_scores_with(q, d, group, r, stride, scores, dot_f32_portable);
                head_weighted_with(p, d, group, r, stride, out, |y, a, x| {
                    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x)
                });
            }
            KvSlice::F16(r) => {
                let w = |v: u16| half::f16::from_bits(v).to_f32();
                head_scores_with(q, d, group, r, stride, scores, |a, b: &[u16]| {
                    a.iter().zip(b).map(|(a, &b)| a * w(b)).sum()
                });
                head_weighted_with(p, d, group, r, stride, out, |y, a, x: &[u16]| {
                    y.iter_mut().zip(x).for_each(|(y, &x)| *y += a * w(x))
                });
            }
        };
        let mut kernels = vec![("dispatched", dispatched), ("portable", portable)];
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() && std::arch::is_x86_feature_detected!("f16c") {
            let avx2: Kernels = |q, p, d, group, rows, stride, scores, out| unsafe {
                // SAFETY: the features were detected above.
                match rows {
                    KvSlice::F32(r) => {
                        x86::head_scores_impl(q, d, group, r, stride, scores);
                        x86::head_weighted_impl(p, d, group, r, stride, out);
                    }
                    KvSlice::F16(r) => {
                        x86::head_scores_f16_impl(q, d, group, r, stride, scores);
                        x86::head_weighted_f16_impl(p, d, group, r, stride, out);
                    }
                }
            };
            kernels.push(("avx2", avx2));
        }
        for ((d, heads, group), n) in sizes.into_iter().flat_map(|s| [(s, 11), (s, 16), (s, 37)]) {
            let kv = heads / group;
            // Each head's run with room for 5 positions more than held.
            let stride = (n + 5) * d;
            let vals: Vec<f32> = (0..(kv - 1) * stride + n * d)
                .map(|i| (i as f32 * 0.013).sin())
                .collect();
            let bits: Vec<u16> = vals
                .iter()
                .map(|&v| half::f16::from_f32(v).to_bits())
                .collect();
            let rounded: Vec<f32> = bits
                .iter()
                .map(|&b| half::f16::from_bits(b).to_f32())
                .collect();
            let q: Vec<f32> = (0..heads * d).map(|i| (i as f32 * 0.29).cos()).collect();
            let p: Vec<f32> = (0..heads * n).map(|t| 1.0 / (t + 1) as f32).collect();
            let cases = [
                ("f32", KvSlice::F32(&vals), &vals),
                ("f16", KvSlice::F16(&bits), &rounded),
            ];
            for ((what, kernel), (kind, rows, exact)) in kernels
                .iter()
                .flat_map(|k| cases.iter().map(move |c| (k, c)))
            {
                let mut scores = vec![f32::NAN; heads * n];
                let mut out = vec![f32::NAN; heads * d];
                kernel(&q, &p, d, group, *rows, stride, &mut scores, &mut out);
                for h in 0..heads {
                    let off = (h / group) * stride;
                    for t in 0..n {
                        let want: f64 = (0..d)
                            .map(|i| q[h * d + i] as f64 * exact[off + t * d + i] as f64)
                            .sum();
                        let got = scores[h * n + t] as f64;
                        assert!(
                            (got - want).abs() < 1e-4,
                            "{what} {kind} scores d={d} n={n} h={h} t={t}"
                        );
                    }
                    for i in 0..d {
                        let want: f64 = (0..n)
                            .map(|t| p[h * n + t] as f64 * exact[off + t * d + i] as f64)
                            .sum();
                        let got = out[h * d + i] as f64;
                        assert!(
                            (got - want).abs() < 1e-4,
                            "{what} {kind} values d={d} n={n} h={h} i={i}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn kernels_match_f64_reference() {
        // Odd sizes exercise the tails; n = 1..3 the GEMV path, 4 and 9 the GEMM path; the
        // second shape spans three GEMM blocks.
        for (rows, cols) in [(300, 77), (2 * GEMM_BLOCK + 5, 24)] {
            check_shape(rows, cols);
        }
    }

    fn check_shape(rows: usize, cols: usize) {
        let vals: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.5)
            .collect();
        for kind in [HalfKind::F16, HalfKind::Bf16] {
            let bits: Vec<u16> = vals
                .iter()
                .map(|&v| match kind {
                    HalfKind::F16 => f16::from_f32(v).to_bits(),
                    HalfKind::Bf16 => bf16::from_f32(v).to_bits(),
                })
                .collect();
            let stored: Vec<f32> = bits
                .iter()
                .map(|&b| match kind {
                    HalfKind::F16 => f16::from_bits(b).to_f32(),
                    HalfKind::Bf16 => bf16::from_bits(b).to_f32(),
                })
                .collect();
            let m = HalfMatrix::from_bits(kind, rows, cols, bits);
            for n in [1, 2, 3, 4, 9] {
                let x: Vec<f32> = (0..n * cols)
                    .map(|i| ((i * 31 % 17) as f32 - 8.0) / 8.0)
                    .collect();
                let got = m.matmul_t(&x, n);
                let want = reference(&stored, rows, cols, &x, n);
                let diff = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(diff < 1e-4, "{kind:?} n={n}: {diff}");
            }
            let part = m.slice_rows(10, 20);
            let mut row = vec![0f32; cols];
            part.row_to_f32(3, &mut row);
            assert_eq!(row, stored[13 * cols..14 * cols]);
        }
    }
}
