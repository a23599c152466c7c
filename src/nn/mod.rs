//! Building blocks shared by several networks: RMSNorm-pre-norm transformer blocks, attention
//! with rotary position embeddings (one file per RoPE convention), SwiGLU feed-forward layers.

pub mod attention;
pub mod block;
pub mod checkpoint;
pub mod init;
pub mod kernels;
pub mod rope;
pub mod swiglu;

pub use attention::{Attention, AttentionConfig};
pub use block::{TransformerBlock, TransformerBlockConfig};
pub use rope::RopeTable;
pub use swiglu::{SwiGlu, SwiGluConfig};

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::prelude::*;

/// A conv with kernel = stride = `p` (patch embedding) as one matrix product over flattened
/// patches: `(B, C, H, W) → (B, (H/p)·(W/p), D)`, tokens row-major.
pub fn patchify(conv: &Conv2d, x: Tensor<4>) -> Tensor<3> {
    let [b, c, hh, ww] = x.dims();
    let [d, _, p, _] = conv.weight.val().dims();
    let (gh, gw) = (hh / p, ww / p);
    let patches = x.reshape([b, c, gh, p, gw, p]).permute([0, 2, 4, 1, 3, 5]).reshape([b * gh * gw, c * p * p]);
    conv_rows(conv, patches).reshape([b, gh * gw, d])
}

/// A conv applied to its flattened receptive fields `(N, Cin·k·k) → (N, Cout)` as one matrix
/// product plus bias.
pub fn conv_rows(conv: &Conv2d, rows: Tensor<2>) -> Tensor<2> {
    let out = rows.matmul(conv.weight.val().flatten::<2>(1, 3).transpose());
    match &conv.bias {
        Some(bias) => out + bias.val().unsqueeze_dim(0),
        None => out,
    }
}

/// A `Linear(i → o)` with zero weights (load or initialise them afterwards).
pub fn zero_linear(i: usize, o: usize, device: &Device) -> Linear {
    LinearConfig::new(i, o).with_initializer(Initializer::Zeros).init(device)
}

/// A `Conv2d(cin → cout)` with kernel = stride = `p` and zero weights (a patch embedding; `p = 1`
/// is a 1×1 conv).
pub fn zero_patch_conv(cin: usize, cout: usize, p: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [p, p]).with_stride([p, p]).with_initializer(Initializer::Zeros).init(device)
}

/// An RMSNorm over `width` channels with ε = [`block::RMS_EPS`] and unit weight.
pub fn rms_norm(width: usize, device: &Device) -> RmsNorm {
    RmsNormConfig::new(width).with_epsilon(block::RMS_EPS).init(device)
}

/// `int(2/3 · mlp_ratio · width)` with plain truncation, as the reference's SwiGLU sizes its hidden
/// layer (768 → 2048, 192 → 512, 2048 → 5461).
pub fn swiglu_hidden(width: usize, mlp_ratio: f64) -> usize {
    (2.0 / 3.0 * width as f64 * mlp_ratio) as usize
}

/// Width / depth / heads of a ViT, as in the reference's `SIZE_DICT`.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub struct VitSize {
    /// Token width.
    pub width: usize,
    /// Number of transformer blocks.
    pub layers: usize,
    /// Attention heads (width must be a multiple).
    pub heads: usize,
}

impl VitSize {
    /// The reference's `SIZE_DICT` entries by name (`tiny`, `tiny_l`, `small`, `base`, `large`, `xl`, `huge`).
    pub fn named(name: &str) -> Option<Self> {
        let (width, layers, heads) = match name {
            "tiny" => (192, 3, 4),
            "tiny_l" => (1024, 3, 16),
            "small" => (512, 8, 8),
            "base" => (768, 12, 12),
            "large" => (1024, 24, 16),
            "xl" => (1152, 28, 16),
            "huge" => (1280, 32, 16),
            _ => return None,
        };
        Some(Self { width, layers, heads })
    }

    /// Per-head channel count.
    pub fn head_dim(&self) -> usize {
        self.width / self.heads
    }
}
