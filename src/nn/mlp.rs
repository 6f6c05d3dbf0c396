//! Feed-forward blocks.

use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

use crate::device::Device;
use crate::error::Result;
use crate::loading::WeightStore;
use crate::nn::linear::host_f32;
use crate::nn::{Activation, Linear};

/// Gated MLP (SwiGLU for `silu`): `down(act(gate(x)) * up(x))`.
#[derive(Debug, Clone)]
pub struct GatedMlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    act: Activation,
}

impl GatedMlp {
    /// Loads `gate_proj`, `up_proj`, `down_proj` under `prefix` (e.g. `model.layers.0.mlp`).
    pub fn load(
        store: &mut WeightStore,
        prefix: &str,
        hidden: usize,
        intermediate: usize,
        bias: bool,
        act: Activation,
        device: &Device,
    ) -> Result<Self> {
        Ok(Self {
            gate_proj: Linear::load(
                store,
                &format!("{prefix}.gate_proj"),
                hidden,
                intermediate,
                bias,
                device,
            )?,
            up_proj: Linear::load(
                store,
                &format!("{prefix}.up_proj"),
                hidden,
                intermediate,
                bias,
                device,
            )?,
            down_proj: Linear::load(
                store,
                &format!("{prefix}.down_proj"),
                intermediate,
                hidden,
                bias,
                device,
            )?,
            act,
        })
    }

    /// Builds the block from loaded projections (e.g. split from a fused `gate_up_proj`).
    pub fn from_parts(
        gate_proj: Linear,
        up_proj: Linear,
        down_proj: Linear,
        act: Activation,
    ) -> Self {
        Self {
            gate_proj,
            up_proj,
            down_proj,
            act,
        }
    }

    /// # Shapes
    /// `x: [batch, seq, hidden]` → same
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        if self.is_host() {
            // Host weights (CPU): the rows stay on the host from one product to the next, one
            // copy in and one out instead of a tensor round trip per projection.
            let [b, s, _] = x.dims();
            let device = x.device();
            let xs = host_f32(x);
            let n = b * s;
            let mut gate = self.gate_proj.forward_host(&xs, n);
            let up = self.up_proj.forward_host(&xs, n);
            let act = self.act;
            gate.par_chunks_mut(1 << 14)
                .zip(up.par_chunks(1 << 14))
                .for_each(|(g, u)| {
                    act.forward_host(g);
                    g.iter_mut().zip(u).for_each(|(g, u)| *g *= u);
                });
            let y = self.down_proj.forward_host(&gate, n);
            let d = y.len() / n.max(1);
            return Tensor::from_data(TensorData::new(y, [b, s, d]), (&device, DType::F32));
        }
        let gate = self.act.forward(self.gate_proj.forward(x.clone()));
        self.down_proj.forward(gate * self.up_proj.forward(x))
    }

    /// [`GatedMlp::forward`] for one row on the host (`[hidden]` → `[hidden]`).
    pub fn forward_host(&self, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; self.down_proj.d_out()];
        let mut scratch = crate::nn::attention::DecodeScratch::default();
        self.forward_host_into(x, &mut out, &mut scratch);
        out
    }

    /// [`GatedMlp::forward_host`] into `out`, with the step's buffers in `scratch` (see
    /// [`Attention::forward_host_into`](crate::nn::Attention)).
    pub(crate) fn forward_host_into(
        &self,
        x: &[f32],
        out: &mut [f32],
        scratch: &mut crate::nn::attention::DecodeScratch,
    ) {
        let inter = self.gate_proj.d_out();
        let both = &mut scratch.gate_up;
        both.resize(inter + self.up_proj.d_out(), 0.0);
        Linear::forward_host_many_into(
            &[&self.gate_proj, &self.up_proj],
            x,
            both,
            &mut scratch.gemv,
        );
        let (gate, up) = both.split_at_mut(inter);
        self.act.forward_host(gate);
        gate.iter_mut().zip(up.iter()).for_each(|(g, u)| *g *= u);
        Linear::forward_host_many_into(&[&self.down_proj], gate, out, &mut scratch.gemv);
    }

    /// [`GatedMlp::forward_host`] for `n` rows of `x` (`[n, hidden]` → `[n, hidden]`): the
    /// projections as GEMMs (one row: [`GatedMlp::forward_host`]).
    pub fn forward_host_rows(&self, x: &[f32], n: usize) -> Vec<f32> {
        if n == 1 {
            return self.forward_host(x);
        }
        let mut gate = self.gate_proj.forward_host(x, n);
        let up = self.up_proj.forward_host(x, n);
        self.act.forward_host(&mut gate);
        gate.iter_mut().zip(&up).for_each(|(g, u)| *g *= u);
        self.down_proj.forward_host(&gate, n)
    }

    /// Whether every projection keeps its weight on the host (see [`Linear::host`]).
    pub fn is_host(&self) -> bool {
        [&self.gate_proj, &self.up_proj, &self.down_proj]
            .iter()
            .all(|l| l.host().is_some())
    }
}

/// Plain MLP: `proj(act(fc(x)))` (GPT-2's `c_fc`/`c_proj`, BERT's intermediate/output).
#[derive(Debug, Clone)]
pub struct Mlp {
    fc: Linear,
    proj: Linear,
    act: Activation,
}

impl Mlp {
    /// Builds the block from loaded projections.
    pub fn from_parts(fc: Linear, proj: Linear, act: Activation) -> Self {
        Self { fc, proj, act }
    }

    /// # Shapes
    /// `x: [batch, seq, hidden]` → same
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.proj.forward(self.act.forward(self.fc.forward(x)))
    }

    /// [`Mlp::forward`] for `n` rows on the host (`[n, hidden]` → `[n, hidden]`).
    pub fn forward_host_rows(&self, x: &[f32], n: usize) -> Vec<f32> {
        let mut h = self.fc.forward_host(x, n);
        self.act.forward_host(&mut h);
        self.proj.forward_host(&h, n)
    }

    /// Whether both projections keep their weights on the host.
    pub fn is_host(&self) -> bool {
        self.fc.host().is_some() && self.proj.host().is_some()
    }
}
