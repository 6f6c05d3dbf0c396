//! Safetensors weights: memory-mapped, sharded, strict.
//!
//! The files stay memory-mapped; each tensor is converted to f32 on its own (in parallel with
//! rayon for half-precision files) and handed to the backend, so at most one tensor is ever
//! held twice. Loading is strict: [`WeightStore::take`] fails on a missing or mis-shaped tensor
//! and [`WeightStore::finish`] fails when the files hold tensors the model did not use.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{Tensor, TensorData};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::loading::{LoraAdapter, LoraDelta};
use crate::model::WeightMemory;
use crate::nn::host::WeightArena;
use crate::nn::{Bf16Activations, HalfKind, HalfMatrix, QuantMatrix, Quantization};

/// Names that checkpoints sometimes carry but that hold nothing the model needs
/// (buffers recomputed at load time).
const IGNORED_SUFFIXES: &[&str] = &["rotary_emb.inv_freq"];

struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// How far a load has got ([`LoadOptions::progress`](crate::LoadOptions::progress)): bytes of
/// the weight files' tensors read (converted, mapped, copied or quantized) so far, of all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadProgress {
    /// Bytes read so far.
    pub done_bytes: u64,
    /// Bytes of every tensor in the weight files.
    pub total_bytes: u64,
}

/// A load-progress callback (shared, callable from the loading thread).
#[derive(Clone)]
pub struct ProgressCallback(pub(crate) Arc<dyn Fn(LoadProgress) + Send + Sync>);

impl std::fmt::Debug for ProgressCallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressCallback")
    }
}

/// The tensors of a model folder, memory-mapped.
pub struct WeightStore {
    root: PathBuf,
    files: Vec<(PathBuf, Arc<Mmap>)>,
    entries: HashMap<String, Entry>,
    taken: HashSet<String>,
    quantize: Option<Quantization>,
    kv_precision: Option<crate::nn::KvPrecision>,
    head_quantization: Option<Quantization>,
    bf16_activations: Bf16Activations,
    adapter: Option<Arc<LoraAdapter>>,
    /// Adapted weights read so far.
    adapted: HashSet<String>,
    /// Switchable adapters (kept apart, chosen per session), and the weights each has matched.
    slots: Vec<(Arc<LoraAdapter>, HashSet<String>)>,
    /// Where projection weights kept in half precision are copied ([`WeightMemory::Resident`]);
    /// `None` reads them through the file mapping.
    arena: Option<WeightArena>,
    /// Where quantized weights are written (always: they are computed at load, and the arena's
    /// huge pages are what lets a decode step stream them at full speed).
    quant_arena: WeightArena,
    progress: Option<ProgressCallback>,
    done_bytes: u64,
}

impl WeightStore {
    /// Opens `model.safetensors`, or the shards listed in `model.safetensors.index.json`, or
    /// (failing both) every `*.safetensors` file of the folder.
    pub fn open(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let paths: Vec<PathBuf> = if single.is_file() {
            vec![single]
        } else if index.is_file() {
            #[derive(serde::Deserialize)]
            struct Index {
                weight_map: BTreeMap<String, String>,
            }
            let idx: Index = crate::loading::read_json(&index)?;
            let mut shards: Vec<String> = idx.weight_map.into_values().collect();
            shards.sort();
            shards.dedup();
            if shards.is_empty() {
                return Err(Error::Safetensors {
                    path: index,
                    message: "weight_map is empty".into(),
                });
            }
            shards.into_iter().map(|s| dir.join(s)).collect()
        } else {
            let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| Error::io(dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(Error::MissingFile {
                    path: single,
                    what: "the model's weights (model.safetensors, model.safetensors.index.json or *.safetensors)".into(),
                });
            }
            found
        };
        let mut store = WeightStore::empty(dir);
        for path in paths {
            store.add_file(path)?;
        }
        Ok(store)
    }

    /// Opens one safetensors file (an adapter's weights).
    pub fn open_file(path: &Path) -> Result<Self> {
        let mut store = WeightStore::empty(path.parent().unwrap_or(Path::new(".")));
        store.add_file(path.to_path_buf())?;
        Ok(store)
    }

    /// A store of no files yet, for the folder `root`.
    fn empty(root: &Path) -> Self {
        WeightStore {
            root: root.to_path_buf(),
            files: Vec::new(),
            entries: HashMap::new(),
            taken: HashSet::new(),
            quantize: None,
            kv_precision: None,
            head_quantization: None,
            bf16_activations: Bf16Activations::default(),
            adapter: None,
            adapted: HashSet::new(),
            slots: Vec::new(),
            arena: None,
            quant_arena: WeightArena::default(),
            progress: None,
            done_bytes: 0,
        }
    }

    /// The names of every tensor in the files, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.entries.keys().cloned().collect();
        names.sort();
        names
    }

    /// Merges a LoRA adapter into the weights it targets as they are read (see
    /// [`LoraAdapter`]); [`WeightStore::finish`] then fails if an update matched no weight.
    pub fn set_adapter(&mut self, adapter: Option<Arc<LoraAdapter>>) {
        self.adapter = adapter;
    }

    /// Adapters kept apart from the weights, one slot each (see [`WeightStore::slot_updates`]).
    pub fn set_switchable_adapters(&mut self, adapters: Vec<Arc<LoraAdapter>>) {
        self.slots = adapters.into_iter().map(|a| (a, HashSet::new())).collect();
    }

    /// The update each switchable adapter makes to the weight `name` stored with shape
    /// `stored` (`None` in the slots of adapters that leave it alone; empty without switchable
    /// adapters). Shapes are checked; [`WeightStore::finish`] reports updates never asked for.
    pub fn slot_updates(
        &mut self,
        name: &str,
        stored: &[usize],
    ) -> Result<Vec<Option<Arc<LoraDelta>>>> {
        let mut out = Vec::with_capacity(self.slots.len());
        for (adapter, used) in &mut self.slots {
            match adapter.update(name) {
                Some(d) => {
                    adapter.check_shape(name, stored)?;
                    used.insert(name.to_string());
                    out.push(Some(d));
                }
                None => out.push(None),
            }
        }
        Ok(out)
    }

    /// Whether a LoRA update applies to `name`.
    pub fn adapts(&self, name: &str) -> bool {
        self.adapter_for(name).is_some()
    }

    /// Whether `name` is stored as f16 or bf16.
    pub fn is_half(&self, name: &str) -> bool {
        matches!(self.dtype(name), Some(Dtype::F16) | Some(Dtype::BF16))
    }

    /// The adapter whose update applies to `name`, if any.
    fn adapter_for(&self, name: &str) -> Option<&Arc<LoraAdapter>> {
        self.adapter.as_ref().filter(|a| a.adapts(name))
    }

    fn add_file(&mut self, path: PathBuf) -> Result<()> {
        let file = File::open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::MissingFile {
                    path: path.clone(),
                    what: "a weight shard named in the index".into(),
                }
            } else {
                Error::io(&path, e)
            }
        })?;
        // SAFETY: the mapping is read-only; a model folder modified while loaded is outside
        // what kiln (or any mmap-based loader) can defend against.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        // Pages read from disk through this mapping then come in 2 MiB folios where the kernel
        // supports them: decode streams every weight once per token, and weights in huge pages
        // stream faster (fewer TLB misses; docs/performance.md). Advice only.
        #[cfg(target_os = "linux")]
        let _ = mmap.advise(memmap2::Advice::HugePage);
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| Error::Safetensors {
                path: path.clone(),
                message: e.to_string(),
            })?;
        let base = 8 + header_len;
        let file_idx = self.files.len();
        for (name, info) in metadata.tensors() {
            let (start, end) = info.data_offsets;
            if base + end > mmap.len() || start > end {
                return Err(Error::Safetensors {
                    path: path.clone(),
                    message: format!("tensor {name:?} points past the end of the file"),
                });
            }
            if self.entries.contains_key(&name) {
                return Err(Error::Safetensors {
                    path: path.clone(),
                    message: format!("tensor {name:?} appears in more than one file"),
                });
            }
            self.entries.insert(
                name,
                Entry {
                    file: file_idx,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: base + start,
                    end: base + end,
                },
            );
        }
        self.files.push((path, Arc::new(mmap)));
        Ok(())
    }

    /// Whether the files hold a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The shape of a tensor, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// `name` as a [`HalfMatrix`] over the file's own bytes (no copy) when it is stored as f16
    /// or bf16 with shape `[rows, cols]`; `Ok(None)` when it is stored as f32 (read it with
    /// [`WeightStore::read_f32`]). Shape and length are checked as `read_f32` checks them.
    pub fn take_half(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<HalfMatrix>> {
        if self.adapter_for(name).is_some() {
            // An adapted weight is merged in f32 (read it with `read_f32`), or taken with its
            // update apart (`take_half_adapted`).
            return Ok(None);
        }
        self.take_half_raw(name, rows, cols, false)
    }

    /// [`WeightStore::take_half`] for a weight a LoRA update may apply to: the half-precision
    /// matrix as stored and, when the adapter changes it, the update kept apart (applied as
    /// `y += B (A x)` by the layer, so the weight keeps its size and kernels). `Ok(None)` as
    /// `take_half`, and for updates that cannot be kept apart (then use `read_f32`).
    pub fn take_half_adapted(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<(HalfMatrix, Option<Arc<LoraDelta>>)>> {
        let Some(adapter) = self.adapter_for(name).cloned() else {
            return Ok(self
                .take_half_raw(name, rows, cols, true)?
                .map(|m| (m, None)));
        };
        let Some(delta) = adapter.delta(name) else {
            return Ok(None);
        };
        if !self.is_half(name) {
            return Ok(None);
        }
        adapter.check_shape(name, &[rows, cols])?;
        let m = self.take_half_raw(name, rows, cols, true)?;
        if m.is_some() {
            self.adapted.insert(name.to_string());
        }
        Ok(m.map(|m| (m, Some(delta))))
    }

    /// `copy`: into the arena, when the store has one (weights that every decode step streams;
    /// an embedding table, of which a step reads one row, stays mapped).
    fn take_half_raw(
        &mut self,
        name: &str,
        rows: usize,
        cols: usize,
        copy: bool,
    ) -> Result<Option<HalfMatrix>> {
        let kind = match self.entries.get(name).map(|e| e.dtype) {
            Some(Dtype::F16) => HalfKind::F16,
            Some(Dtype::BF16) => HalfKind::Bf16,
            _ => return Ok(None),
        };
        let (file, start) = self.checked_range(name, &[rows, cols])?;
        self.mark_taken(name);
        let map = &self.files[file].1;
        let copied = match (&mut self.arena, copy) {
            (Some(arena), true) => {
                let src = &map[start..start + 2 * rows * cols];
                match HalfMatrix::copied(kind, rows, cols, src, arena) {
                    Ok(m) => {
                        release(map, start, start + 2 * rows * cols);
                        Some(m)
                    }
                    Err(e) => {
                        // Keep the mapped matrix rather than fail the load.
                        tracing::warn!("{name} stays memory-mapped: no memory to copy it: {e}");
                        None
                    }
                }
            }
            _ => None,
        };
        let m =
            copied.unwrap_or_else(|| HalfMatrix::from_map(kind, rows, cols, map.clone(), start));
        Ok(Some(m.with_bf16_activations(self.bf16_activations)))
    }

    /// Where the half-precision projection weights it hands out from now on live.
    pub fn set_weight_memory(&mut self, memory: WeightMemory) {
        self.arena = match memory {
            WeightMemory::Resident => Some(WeightArena::default()),
            WeightMemory::Mapped => None,
        };
    }

    /// How the half-precision matrices it hands out multiply bf16 weights in prefill.
    pub fn set_bf16_activations(&mut self, activations: Bf16Activations) {
        self.bf16_activations = activations;
    }

    /// Asks layers that can (projections on CPU devices) to quantize their weights at load.
    pub fn set_quantization(&mut self, q: Option<Quantization>) {
        self.quantize = q;
    }

    /// The quantization asked for, if any.
    pub fn quantization(&self) -> Option<Quantization> {
        self.quantize
    }

    /// The output head's quantization in a quantized model (`None`: Q8).
    pub fn set_head_quantization(&mut self, q: Option<Quantization>) {
        self.head_quantization = q;
    }

    /// How the output head is quantized: not at all in an unquantized model; as asked, else
    /// at 8 bits (the head decides every token: 4-bit models keep it at 8 bits, as llama.cpp
    /// keeps its output layer at higher precision by default).
    pub fn head_quantization(&self) -> Option<Quantization> {
        self.quantize
            .map(|_| self.head_quantization.unwrap_or(Quantization::Q8))
    }

    /// How the model's KV cache keeps its host form (`None`: the model's default).
    pub fn set_kv_precision(&mut self, p: Option<crate::nn::KvPrecision>) {
        self.kv_precision = p;
    }

    /// How the KV cache keeps its host form on kiln's CPU path: as asked, else f16 for
    /// quantized models (their activations are already rounded to 8 bits on the way into each
    /// projection; llama.cpp keeps every cache in f16) and f32 otherwise (decoding through the
    /// cache then gives a full recomputation's bits).
    pub fn kv_precision(&self) -> crate::nn::KvPrecision {
        self.kv_precision.unwrap_or(match self.quantize {
            Some(_) => crate::nn::KvPrecision::F16,
            None => crate::nn::KvPrecision::F32,
        })
    }

    /// The storage dtype of a tensor, if present.
    pub fn dtype(&self, name: &str) -> Option<Dtype> {
        self.entries.get(name).map(|e| e.dtype)
    }

    /// Reads a tensor as f32 host data, checking its shape.
    pub fn read_f32(&mut self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let (file, start) = self.checked_range(name, expected)?;
        let entry = &self.entries[name];
        let n: usize = expected.iter().product();
        let map = &self.files[file].1;
        let mut out = convert_to_f32(&map[start..entry.end], entry.dtype, n);
        release(map, start, entry.end);
        self.mark_taken(name);
        if let Some(adapter) = self.adapter_for(name) {
            adapter.check_shape(name, expected)?;
            adapter.add_to(name, &mut out, expected.last().copied().unwrap_or(1));
            self.adapted.insert(name.to_string());
        }
        Ok(out)
    }

    /// Quantizes rows `rows` of the `[total, cols]` tensor `name` straight from the file's
    /// bytes, one row at a time (no f32 copy of the tensor), then drops those file pages from
    /// this process's memory as [`WeightStore::read_f32`] does.
    pub fn quantize(
        &mut self,
        name: &str,
        shape: [usize; 2],
        rows: std::ops::Range<usize>,
        kind: Quantization,
    ) -> Result<QuantMatrix> {
        let (file, start) = self.checked_range(name, &shape)?;
        let dtype = self.entries[name].dtype;
        let cols = shape[1];
        let width = if dtype == Dtype::F32 { 4 } else { 2 };
        let row_bytes = cols * width;
        let (first, end) = (start + rows.start * row_bytes, start + rows.end * row_bytes);
        let map = &self.files[file].1;
        let bytes = &map[first..end];
        if let Some(a) = self.adapter_for(name) {
            a.check_shape(name, &shape)?;
        }
        // Out of `self` while the adapter is borrowed from it.
        let mut arena = std::mem::take(&mut self.quant_arena);
        let adapter = self.adapter_for(name);
        let first_row = rows.start;
        // About 8 MB of the file at a time, released as soon as it is quantized.
        let chunk = (8 << 20) / row_bytes.max(1);
        let m = QuantMatrix::quantize_rows_in(
            kind,
            rows.len(),
            cols,
            chunk,
            Some(&mut arena),
            |r, dst| {
                convert_into(&bytes[r * row_bytes..(r + 1) * row_bytes], dtype, dst);
                if let Some(a) = adapter {
                    a.add_row(name, first_row + r, dst);
                }
            },
            |done| {
                release(
                    map,
                    first + done.start * row_bytes,
                    first + done.end * row_bytes,
                )
            },
        );
        if adapter.is_some() {
            self.adapted.insert(name.to_string());
        }
        self.quant_arena = arena;
        release(map, first, end);
        self.mark_taken(name);
        Ok(m)
    }

    /// Checks that `name` exists with shape `expected`, a dtype kiln reads, and as many bytes
    /// as that needs; returns its file and first byte.
    fn checked_range(&self, name: &str, expected: &[usize]) -> Result<(usize, usize)> {
        let entry = self.entries.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            expected: expected.to_vec(),
            path: self.root.clone(),
        })?;
        let path = &self.files[entry.file].0;
        if entry.shape != expected {
            return Err(Error::ShapeMismatch {
                name: name.to_string(),
                expected: expected.to_vec(),
                found: entry.shape.clone(),
                path: path.clone(),
            });
        }
        let n: usize = expected.iter().product();
        let width = match entry.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            other => {
                return Err(Error::Safetensors {
                    path: path.clone(),
                    message: format!(
                        "tensor {name:?} has dtype {other:?}; kiln reads F32, F16 and BF16"
                    ),
                })
            }
        };
        let len = entry.end - entry.start;
        if Some(len) != n.checked_mul(width) {
            return Err(Error::Safetensors {
                path: path.clone(),
                message: format!(
                    "tensor {name:?} holds {len} bytes, its shape {:?} needs {}",
                    entry.shape,
                    n.saturating_mul(width)
                ),
            });
        }
        Ok((entry.file, entry.start))
    }

    /// Loads a tensor onto `device` as f32, checking its shape.
    pub fn take<const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        device: &Device,
    ) -> Result<Tensor<D>> {
        let data = self.read_f32(name, &shape)?;
        Ok(Tensor::from_data(
            TensorData::new(data, shape),
            device.floats(),
        ))
    }

    /// Marks a tensor as deliberately unused (e.g. a tied `lm_head.weight` copy).
    pub fn skip(&mut self, name: &str) {
        if self.entries.contains_key(name) {
            self.mark_taken(name);
        }
    }

    /// Reports each load step to `progress` from here on.
    pub fn set_progress(&mut self, progress: Option<ProgressCallback>) {
        self.progress = progress;
    }

    fn total_bytes(&self) -> u64 {
        self.entries
            .values()
            .map(|e| (e.end - e.start) as u64)
            .sum()
    }

    /// Records `name` as used, and its bytes as read.
    fn mark_taken(&mut self, name: &str) {
        if !self.taken.insert(name.to_string()) {
            return;
        }
        if self.progress.is_none() {
            return;
        }
        self.done_bytes += self
            .entries
            .get(name)
            .map_or(0, |e| (e.end - e.start) as u64);
        let total = self.total_bytes();
        if let Some(p) = &self.progress {
            (p.0)(LoadProgress {
                done_bytes: self.done_bytes.min(total),
                total_bytes: total,
            });
        }
    }

    /// Fails if the files hold tensors the model never asked for; reports the load complete
    /// otherwise.
    pub fn finish(self) -> Result<()> {
        self.check_all_used()?;
        if let Some(p) = &self.progress {
            let total = self.total_bytes();
            (p.0)(LoadProgress {
                done_bytes: total,
                total_bytes: total,
            });
        }
        Ok(())
    }

    fn check_all_used(&self) -> Result<()> {
        let merged = self.adapter.as_ref().map(|a| (a, &self.adapted));
        for (adapter, used) in merged
            .into_iter()
            .chain(self.slots.iter().map(|(a, u)| (a, u)))
        {
            let unused: Vec<&str> = adapter
                .targets()
                .into_iter()
                .filter(|t| !used.contains(*t))
                .collect();
            if let Some(first) = unused.first() {
                return Err(Error::Adapter {
                    path: adapter.dir().join("adapter_model.safetensors"),
                    message: format!(
                        "{} update(s) match no weight of the model in {} (first: {first:?}); is the adapter for another base model?",
                        unused.len(),
                        self.root.display()
                    ),
                });
            }
        }
        let mut extra: Vec<&String> = self
            .entries
            .keys()
            .filter(|n| !self.taken.contains(*n))
            .filter(|n| !IGNORED_SUFFIXES.iter().any(|s| n.ends_with(s)))
            .collect();
        if extra.is_empty() {
            return Ok(());
        }
        extra.sort();
        let count = extra.len();
        let mut names: Vec<String> = extra.iter().take(5).map(|s| format!("{s:?}")).collect();
        if count > 5 {
            names.push(format!("and {} more", count - 5));
        }
        Err(Error::UnexpectedTensors {
            path: self.root.clone(),
            names: names.join(", "),
        })
    }
}

/// Drops the file pages of `start..end` from this process's resident memory once their values
/// have been copied out (they stay in the page cache; a later read maps them in again), so
/// that loading does not hold the file and the converted copy at once.
fn release(map: &Mmap, start: usize, end: usize) {
    #[cfg(unix)]
    {
        // Whole 2 MiB blocks of the address space, outwards: a file cached in huge folios is
        // mapped a 2 MiB block at a time, and dropping part of a block left all of it mapped
        // (a Q8 load of SmolLM2 ended with 153 MB of the file resident, 133 MB of it in such
        // blocks). Bytes of neighbouring tensors dropped with it are read again when needed.
        const BLOCK: usize = 2 << 20;
        let base = map.as_ptr() as usize;
        let first = ((base + start) / BLOCK * BLOCK).max(base) - base;
        let last = ((base + end).div_ceil(BLOCK) * BLOCK).min(base + map.len()) - base;
        if last > first {
            // SAFETY: a read-only file mapping: any later access (a half-precision matrix over
            // the same bytes, or the next tensor's rows) faults the same file contents back in.
            // Failure only leaves the pages mapped.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, first, last - first)
            };
        }
    }
    #[cfg(not(unix))]
    let _ = (map, start, end);
}

/// Converts one row of little-endian f32/f16/bf16 bytes into `dst` (vectorised when the
/// half-precision bytes are 2-byte aligned, as safetensors lays them out).
fn convert_into(bytes: &[u8], dtype: Dtype, dst: &mut [f32]) {
    let kind = match dtype {
        Dtype::F16 => HalfKind::F16,
        Dtype::BF16 => HalfKind::Bf16,
        _ => {
            for (x, c) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
                *x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
            return;
        }
    };
    match bytemuck::try_cast_slice::<u8, u16>(bytes) {
        Ok(bits) if cfg!(target_endian = "little") => crate::nn::host::widen(kind, bits, dst),
        _ => {
            for (x, c) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
                let bits = u16::from_le_bytes([c[0], c[1]]);
                *x = match kind {
                    HalfKind::F16 => half::f16::from_bits(bits).to_f32(),
                    HalfKind::Bf16 => half::bf16::from_bits(bits).to_f32(),
                };
            }
        }
    }
}

/// Converts little-endian f32/f16/bf16 bytes to f32, in parallel for large tensors.
fn convert_to_f32(bytes: &[u8], dtype: Dtype, n: usize) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let mut out = vec![0f32; n];
    match dtype {
        Dtype::F32 => out
            .par_chunks_mut(CHUNK)
            .zip(bytes.par_chunks(CHUNK * 4))
            .for_each(|(o, b)| {
                for (x, c) in o.iter_mut().zip(b.chunks_exact(4)) {
                    *x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }),
        Dtype::F16 => out
            .par_chunks_mut(CHUNK)
            .zip(bytes.par_chunks(CHUNK * 2))
            .for_each(|(o, b)| {
                for (x, c) in o.iter_mut().zip(b.chunks_exact(2)) {
                    *x = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }),
        Dtype::BF16 => out
            .par_chunks_mut(CHUNK)
            .zip(bytes.par_chunks(CHUNK * 2))
            .for_each(|(o, b)| {
                for (x, c) in o.iter_mut().zip(b.chunks_exact(2)) {
                    *x = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }),
        _ => unreachable!("dtype checked by the caller"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_half_types() {
        let vals = [1.5f32, -2.25, 0.0, 65504.0];
        let f16: Vec<u8> = vals
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let bf16: Vec<u8> = vals
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        assert_eq!(convert_to_f32(&f16, Dtype::F16, 4), vals.to_vec());
        assert_eq!(
            convert_to_f32(&bf16, Dtype::BF16, 4),
            vec![1.5, -2.25, 0.0, 65536.0]
        );
    }
}
