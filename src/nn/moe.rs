//! Sparse mixture of experts (Mixtral, Qwen3-MoE): a router picks the top-k experts of each token, and
//! only those experts run, on only their tokens.

use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

use crate::device::Device;
use crate::error::Result;
use crate::loading::WeightStore;
use crate::model::to_vec;
use crate::nn::{Activation, GatedMlp, Linear};

/// The sizes of a mixture of experts.
#[derive(Debug, Clone, Copy)]
pub struct MoeShape {
    /// Model width.
    pub hidden: usize,
    /// Each expert's MLP width.
    pub intermediate: usize,
    /// Experts.
    pub experts: usize,
    /// Experts each token is routed to.
    pub top_k: usize,
}

/// Router + experts. Routing weights are the softmax over all experts (f32) of the chosen
/// top-k, renormalised to sum to one when `renormalize` (Mixtral always does).
#[derive(Debug, Clone)]
pub struct SparseMoe {
    gate: Linear,
    experts: Vec<GatedMlp>,
    top_k: usize,
    renormalize: bool,
}

impl SparseMoe {
    /// Loads Mixtral's layout: `{prefix}.gate.weight` (`[experts, hidden]`) and
    /// `{prefix}.experts.{e}.w1/w3/w2.weight` (gate, up, down); the chosen experts' weights
    /// renormalised.
    #[allow(clippy::too_many_arguments)]
    pub fn load_mixtral(
        store: &mut WeightStore,
        prefix: &str,
        hidden: usize,
        intermediate: usize,
        experts: usize,
        top_k: usize,
        act: Activation,
        device: &Device,
    ) -> Result<Self> {
        let shape = MoeShape {
            hidden,
            intermediate,
            experts,
            top_k,
        };
        Self::load(store, prefix, ["w1", "w3", "w2"], shape, true, act, device)
    }

    /// Loads `{prefix}.gate.weight` (the router, `[experts, hidden]`) and each expert's gate,
    /// up and down projections `{prefix}.experts.{e}.{names[0..3]}.weight`.
    pub fn load(
        store: &mut WeightStore,
        prefix: &str,
        names: [&str; 3],
        shape: MoeShape,
        renormalize: bool,
        act: Activation,
        device: &Device,
    ) -> Result<Self> {
        let MoeShape {
            hidden,
            intermediate,
            experts,
            top_k,
        } = shape;
        let gate = Linear::load(
            store,
            &format!("{prefix}.gate"),
            hidden,
            experts,
            false,
            device,
        )?;
        let experts = (0..experts)
            .map(|e| {
                let p = format!("{prefix}.experts.{e}");
                let mut proj = |name: &str, d_in, d_out| {
                    Linear::load(store, &format!("{p}.{name}"), d_in, d_out, false, device)
                };
                Ok(GatedMlp::from_parts(
                    proj(names[0], hidden, intermediate)?,
                    proj(names[1], hidden, intermediate)?,
                    proj(names[2], intermediate, hidden)?,
                    act,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            gate,
            experts,
            top_k,
            renormalize,
        })
    }

    /// Per expert, the tokens routed to it and their weights, from the router's logits
    /// (`[tokens, experts]`).
    fn route(&self, logits: &[f32]) -> Vec<(Vec<usize>, Vec<f32>)> {
        let n_exp = self.experts.len();
        let mut routed: Vec<(Vec<usize>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); n_exp];
        for (t, row) in logits.chunks(n_exp).enumerate() {
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let exp: Vec<f32> = row.iter().map(|l| (l - max).exp()).collect();
            let sum: f32 = exp.iter().sum();
            let mut order: Vec<usize> = (0..n_exp).collect();
            order.sort_by(|&a, &b| exp[b].total_cmp(&exp[a]));
            let chosen = &order[..self.top_k.min(n_exp)];
            let total: f32 = chosen.iter().map(|&e| exp[e] / sum).sum();
            for &e in chosen {
                let p = exp[e] / sum;
                routed[e].0.push(t);
                routed[e]
                    .1
                    .push(if self.renormalize { p / total } else { p });
            }
        }
        routed
    }

    /// [`SparseMoe::forward`] for `n` rows on the host (`[n, hidden]` → `[n, hidden]`): the
    /// router's GEMV/GEMM, then each chosen expert's projections over its own tokens only (an
    /// expert no token chose is not read).
    pub fn forward_host_rows(&self, x: &[f32], n: usize) -> Vec<f32> {
        let hidden = x.len() / n.max(1);
        let logits = self.gate.forward_host(x, n);
        let mut out = vec![0f32; x.len()];
        for (expert, (tokens, weights)) in self.experts.iter().zip(self.route(&logits)) {
            if tokens.is_empty() {
                continue;
            }
            let xs: Vec<f32> = tokens
                .iter()
                .flat_map(|&t| x[t * hidden..(t + 1) * hidden].iter().copied())
                .collect();
            let ys = expert.forward_host_rows(&xs, tokens.len());
            for ((&t, w), y) in tokens.iter().zip(weights).zip(ys.chunks_exact(hidden)) {
                crate::nn::host::axpy(&mut out[t * hidden..(t + 1) * hidden], w, y);
            }
        }
        out
    }

    /// Whether the router and every expert keep their weights on the host.
    pub fn is_host(&self) -> bool {
        self.gate.host().is_some() && self.experts.iter().all(GatedMlp::is_host)
    }

    /// # Shapes
    /// `x: [1, seq, hidden]` → same
    pub fn forward(&self, x: Tensor<3>) -> Result<Tensor<3>> {
        let [b, seq, hidden] = x.dims();
        let logits = to_vec(self.gate.forward(x.clone()))?;
        let routed = self.route(&logits);
        let device = x.device();
        let flat = x.reshape([b * seq, hidden]);
        let mut out = Tensor::<2>::zeros([b * seq, hidden], (&device, flat.dtype()));
        for (expert, (tokens, weights)) in self.experts.iter().zip(routed) {
            if tokens.is_empty() {
                continue;
            }
            let n = tokens.len();
            let tokens: Vec<i64> = tokens.into_iter().map(|t| t as i64).collect();
            let idx = Tensor::<1, Int>::from_data(TensorData::new(tokens, [n]), &device);
            let w =
                Tensor::<2>::from_data(TensorData::new(weights, [n, 1]), (&device, flat.dtype()));
            let xs = flat.clone().select(0, idx.clone()).reshape([1, n, hidden]);
            let ys = expert.forward(xs).reshape([n, hidden]) * w;
            out = out.select_assign(0, idx, ys, IndexingUpdateOp::Add);
        }
        Ok(out.reshape([b, seq, hidden]))
    }
}
