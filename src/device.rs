//! Backend selection at run time.
//!
//! burn 0.22 carries the backend in the device, so choosing a [`Device`] chooses the backend:
//! `cpu` (the fastest CPU backend compiled in: burn-flex), `flex`, `ndarray` (deprecated in
//! burn, kept for comparison) or `wgpu` (any Vulkan/Metal/DX12 adapter, lavapipe included).

use crate::error::{Error, Result};

/// The backends kiln can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// burn-flex: pure-Rust CPU backend (gemm, SIMD, rayon).
    Flex,
    /// burn-ndarray: the older CPU backend.
    NdArray,
    /// burn-wgpu: GPU through wgpu.
    Wgpu,
}

impl BackendKind {
    /// The name used on command lines and in benchmark output.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Flex => "flex",
            BackendKind::NdArray => "ndarray",
            BackendKind::Wgpu => "wgpu",
        }
    }
}

/// The floating-point type weights are kept in and activations computed in.
///
/// `F32` everywhere by default. `F16` halves weight memory and traffic and uses half-precision
/// kernels (GPUs with shader-f16, and burn-flex's f16 GEMM); norms, softmax and the final
/// scores are still computed in f32, as transformers does for half-precision models. `Bf16`
/// is accepted on burn-flex only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dtype {
    /// 32-bit IEEE float.
    #[default]
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    Bf16,
}

impl Dtype {
    /// `f32`, `f16` or `bf16`.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }

    /// Parses `f32`, `f16` or `bf16` (`float32`, `float16`, `bfloat16` too).
    pub fn from_name(name: &str) -> Result<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Dtype::F32),
            "f16" | "float16" | "half" => Ok(Dtype::F16),
            "bf16" | "bfloat16" => Ok(Dtype::Bf16),
            _ => Err(Error::invalid_arg(
                "dtype",
                format!("unknown dtype {name:?}; expected f32, f16 or bf16"),
            )),
        }
    }

    /// burn's name for it.
    pub fn burn(self) -> burn::tensor::DType {
        match self {
            Dtype::F32 => burn::tensor::DType::F32,
            Dtype::F16 => burn::tensor::DType::F16,
            Dtype::Bf16 => burn::tensor::DType::BF16,
        }
    }
}

/// Which of kiln's own CPU paths a CPU device uses (see [`Device::with_cpu_paths`]). The
/// default is the fastest; the others exist to compare a fast path with the one below it
/// (tests, benchmarks) and to fall back when a fast path is suspected of a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuPaths {
    /// Half-precision and quantized weights read in place by kiln's kernels; a single
    /// sequence's decode steps and prefills run on host vectors (no tensor operation per layer).
    #[default]
    All,
    /// As `All`, but prefills go through burn's tensors (decode steps stay on the host).
    HostDecode,
    /// Weights stay on the host for kiln's kernels, every layer loop runs on burn's tensors.
    HostWeights,
    /// burn alone: every weight widened to an f32 tensor at load (the reference the host paths
    /// are tested against; no quantization).
    Tensor,
}

impl CpuPaths {
    /// `all`, `host-decode`, `host-weights` or `tensor`.
    pub fn name(self) -> &'static str {
        match self {
            CpuPaths::All => "all",
            CpuPaths::HostDecode => "host-decode",
            CpuPaths::HostWeights => "host-weights",
            CpuPaths::Tensor => "tensor",
        }
    }

    /// Parses [`CpuPaths::name`].
    pub fn from_name(name: &str) -> Result<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "all" => Ok(CpuPaths::All),
            "host-decode" => Ok(CpuPaths::HostDecode),
            "host-weights" => Ok(CpuPaths::HostWeights),
            "tensor" => Ok(CpuPaths::Tensor),
            _ => Err(Error::invalid_arg(
                "cpu_paths",
                format!(
                    "unknown CPU paths {name:?}; expected all, host-decode, host-weights or tensor"
                ),
            )),
        }
    }
}

/// A compute device: which backend runs the model, on which hardware, in which float type.
#[derive(Debug, Clone)]
pub struct Device {
    inner: burn::tensor::Device,
    kind: BackendKind,
    dtype: Dtype,
    cpu_paths: CpuPaths,
    max_tensor_bytes: Option<usize>,
}

impl Device {
    /// The default CPU backend (burn-flex when compiled in, else burn-ndarray).
    pub fn cpu() -> Self {
        #[cfg(feature = "flex")]
        {
            Self::flex()
        }
        #[cfg(all(not(feature = "flex"), feature = "ndarray"))]
        {
            Self::ndarray()
        }
        #[cfg(all(not(feature = "flex"), not(feature = "ndarray")))]
        {
            compile_error!("kiln needs at least one CPU backend feature: `flex` or `ndarray`");
        }
    }

    /// burn-flex (pure-Rust CPU).
    #[cfg(feature = "flex")]
    pub fn flex() -> Self {
        Self {
            inner: burn::tensor::Device::flex(),
            kind: BackendKind::Flex,
            dtype: Dtype::F32,
            cpu_paths: CpuPaths::All,
            max_tensor_bytes: None,
        }
    }

    /// burn-ndarray (CPU; deprecated by burn in favour of flex).
    #[cfg(feature = "ndarray")]
    #[allow(deprecated)]
    pub fn ndarray() -> Self {
        Self {
            inner: burn::tensor::Device::ndarray(),
            kind: BackendKind::NdArray,
            dtype: Dtype::F32,
            cpu_paths: CpuPaths::All,
            max_tensor_bytes: None,
        }
    }

    /// burn-wgpu on the best adapter wgpu finds (a software Vulkan driver when there is no GPU).
    /// Without any adapter, the first operation on it panics inside burn; [`Device::try_wgpu`]
    /// (and [`Device::from_name`]) check first and return an error instead.
    #[cfg(feature = "wgpu")]
    pub fn wgpu() -> Self {
        Self {
            inner: burn::tensor::Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
            kind: BackendKind::Wgpu,
            dtype: Dtype::F32,
            cpu_paths: CpuPaths::All,
            max_tensor_bytes: None,
        }
    }

    /// burn-wgpu, after checking that wgpu finds an adapter: [`Error::Device`] when there is
    /// none (no GPU driver and no software Vulkan such as Mesa's lavapipe).
    #[cfg(feature = "wgpu")]
    pub fn try_wgpu() -> Result<Self> {
        let adapters = wgpu_adapters();
        if adapters.is_empty() {
            return Err(Error::Device {
                name: "wgpu".into(),
                message: format!(
                    "wgpu found no adapter (no Vulkan, Metal, DX12 or GL driver); install a GPU \
                     driver, or Mesa's software Vulkan (Debian/Ubuntu: mesa-vulkan-drivers), or \
                     pick another device: {}",
                    Self::available()
                        .into_iter()
                        .filter(|d| *d != "wgpu")
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        tracing::info!("wgpu adapters: {}", adapters.join("; "));
        Ok(Self::wgpu())
    }

    /// Parses a device name: `cpu`, `flex`, `ndarray`, `wgpu` (or `gpu`).
    ///
    /// A name whose backend was not compiled in is an [`Error::Device`] that says which cargo
    /// feature enables it.
    pub fn from_name(name: &str) -> Result<Self> {
        #[allow(unused_variables)]
        let missing = |feature: &str| Error::Device {
            name: name.to_string(),
            message: format!(
                "this build of kiln lacks the `{feature}` cargo feature; available: {}",
                Self::available().join(", ")
            ),
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::cpu()),
            "flex" => {
                #[cfg(feature = "flex")]
                return Ok(Self::flex());
                #[allow(unreachable_code)]
                Err(missing("flex"))
            }
            "ndarray" => {
                #[cfg(feature = "ndarray")]
                return Ok(Self::ndarray());
                #[allow(unreachable_code)]
                Err(missing("ndarray"))
            }
            "wgpu" | "gpu" | "vulkan" => {
                #[cfg(feature = "wgpu")]
                return Self::try_wgpu();
                #[allow(unreachable_code)]
                Err(missing("wgpu"))
            }
            "cuda" | "metal" | "rocm" | "hip" => Err(Error::Device {
                name: name.to_string(),
                message: format!(
                    "kiln has no separate {name} backend yet; `wgpu` runs on NVIDIA and AMD GPUs \
                     through Vulkan and on Apple GPUs through Metal; this build has {}",
                    Self::available().join(", ")
                ),
            }),
            _ => Err(Error::Device {
                name: name.to_string(),
                message: format!(
                    "unknown device; this build has {} (known names: cpu, flex, ndarray, wgpu, gpu, vulkan)",
                    Self::available().join(", ")
                ),
            }),
        }
    }

    /// The largest single weight tensor, in bytes, this device is given; larger embedding
    /// tables and projections are stored in parts. wgpu: 128 MiB, the storage-buffer binding
    /// size adapters commonly allow (lavapipe cannot allocate a 250 MB buffer); CPU: no limit;
    /// [`Device::with_max_tensor_bytes`] sets another.
    pub fn max_tensor_bytes(&self) -> usize {
        match (self.max_tensor_bytes, self.kind) {
            (Some(n), _) => n,
            (None, BackendKind::Wgpu) => 128 << 20,
            (None, _) => usize::MAX,
        }
    }

    /// This device with another tensor size limit (see [`Device::max_tensor_bytes`]): for an
    /// adapter whose storage buffers are smaller than 128 MiB, and for tests of split weights.
    /// Zero is taken as one byte.
    pub fn with_max_tensor_bytes(self, bytes: usize) -> Self {
        Self {
            max_tensor_bytes: Some(bytes.max(1)),
            ..self
        }
    }

    /// This device using only some of kiln's own CPU paths ([`CpuPaths`]; the default is all
    /// of them). No effect on GPU devices.
    pub fn with_cpu_paths(self, cpu_paths: CpuPaths) -> Self {
        Self { cpu_paths, ..self }
    }

    /// Which of kiln's CPU paths this device uses.
    pub fn cpu_paths(&self) -> CpuPaths {
        self.cpu_paths
    }

    /// The device names this build accepts (backends compiled in).
    pub fn available() -> Vec<&'static str> {
        let mut names = vec!["cpu"];
        if cfg!(feature = "flex") {
            names.push("flex");
        }
        if cfg!(feature = "ndarray") {
            names.push("ndarray");
        }
        if cfg!(feature = "wgpu") {
            names.push("wgpu");
        }
        names
    }

    /// This device computing in `dtype`: [`Error::Device`] when the backend cannot (f16 needs
    /// a wgpu adapter with shader-f16, or burn-flex; bf16 needs burn-flex).
    pub fn with_dtype(self, dtype: Dtype) -> Result<Self> {
        let supported = match (self.kind, dtype) {
            (_, Dtype::F32) => Ok(()),
            (BackendKind::Flex, _) => Ok(()),
            (BackendKind::NdArray, _) => Err("burn-ndarray computes in f32 only".to_string()),
            (BackendKind::Wgpu, Dtype::F16) => {
                #[cfg(feature = "wgpu")]
                {
                    if wgpu_supports_f16() {
                        Ok(())
                    } else {
                        Err("this wgpu adapter lacks shader-f16".to_string())
                    }
                }
                #[cfg(not(feature = "wgpu"))]
                Ok(())
            }
            (BackendKind::Wgpu, Dtype::Bf16) => {
                Err("wgpu shaders have no bf16; use f16 or f32".to_string())
            }
        };
        supported.map_err(|why| Error::Device {
            name: self.name().to_string(),
            message: format!("cannot compute in {}: {why}", dtype.name()),
        })?;
        Ok(Self { dtype, ..self })
    }

    /// Whether f16/bf16 weights stay half precision on the host and go through kiln's own CPU
    /// kernels ([`crate::nn::HalfMatrix`]): on CPU backends computing in f32, unless
    /// [`CpuPaths::Tensor`] (then they are widened to f32 tensors).
    pub fn keeps_half_weights(&self) -> bool {
        matches!(self.kind, BackendKind::Flex | BackendKind::NdArray)
            && self.dtype == Dtype::F32
            && self.cpu_paths != CpuPaths::Tensor
    }

    /// Whether a model whose weights all stay on the host ([`Device::keeps_half_weights`])
    /// runs each decode step of a single sequence entirely on the host: kiln's kernels for the
    /// projections, plain loops for norms, rotary embedding and attention, the KV cache in host
    /// memory; no tensor operation per layer. Off with [`CpuPaths::HostWeights`].
    pub fn decodes_on_host(&self) -> bool {
        self.keeps_half_weights() && self.cpu_paths != CpuPaths::HostWeights
    }

    /// Whether such a model ([`Device::decodes_on_host`]) also runs the prefill of a single
    /// sequence on the host: GEMMs for the projections, each token's attention over its prefix
    /// of the host KV cache, no tensor operation per layer. Off with [`CpuPaths::HostDecode`].
    pub fn prefills_on_host(&self) -> bool {
        self.decodes_on_host() && self.cpu_paths != CpuPaths::HostDecode
    }

    /// The float type this device computes in.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Creation options for float tensors: this device, this dtype.
    pub fn floats(&self) -> burn::tensor::TensorCreationOptions {
        (&self.inner, self.dtype.burn()).into()
    }

    /// Which backend this device runs.
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// The backend's name (`flex`, `ndarray`, `wgpu`).
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// The underlying burn device, for code that builds its own tensors.
    pub fn burn(&self) -> &burn::tensor::Device {
        &self.inner
    }
}

/// The adapters wgpu finds on every graphics API, described as `name (backend, type)`.
#[cfg(feature = "wgpu")]
fn wgpu_adapters() -> Vec<String> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::all(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    block_on(instance.enumerate_adapters(wgpu::Backends::all()))
        .iter()
        .map(|a| {
            let i = a.get_info();
            format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
        })
        .collect()
}

/// Whether the adapter burn takes (the high-performance one) has shader-f16.
#[cfg(feature = "wgpu")]
fn wgpu_supports_f16() -> bool {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::all(),
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapter = block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    }));
    adapter.is_ok_and(|a| a.features().contains(wgpu::Features::SHADER_F16))
}

/// Drives a future that is ready at once (wgpu's native adapter listing) to completion.
#[cfg(feature = "wgpu")]
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::yield_now();
    }
}

impl Default for Device {
    fn default() -> Self {
        Self::cpu()
    }
}
