//! Building blocks shared by several networks: RMSNorm-pre-norm transformer blocks, attention
//! with rotary position embeddings (one file per RoPE convention), SwiGLU feed-forward layers.

pub mod attention;
pub mod block;
pub mod init;
pub mod kernels;
pub mod rope;
pub mod swiglu;

pub use attention::{Attention, AttentionConfig};
pub use block::{TransformerBlock, TransformerBlockConfig};
pub use rope::RopeTable;
pub use swiglu::{SwiGlu, SwiGluConfig};

/// A conv with kernel = stride = `p` (patch embedding) as one matrix product over flattened
/// patches: `(B, C, H, W) → (B, (H/p)·(W/p), D)`, tokens row-major.
pub fn patchify(conv: &burn::nn::conv::Conv2d, x: burn::prelude::Tensor<4>) -> burn::prelude::Tensor<3> {
    let [b, c, hh, ww] = x.dims();
    let weight = conv.weight.val();
    let [d, _, p, _] = weight.dims();
    let (gh, gw) = (hh / p, ww / p);
    let patches = x.reshape([b, c, gh, p, gw, p]).permute([0, 2, 4, 1, 3, 5]).reshape([b * gh * gw, c * p * p]);
    let mut out = patches.matmul(weight.reshape([d, c * p * p]).transpose());
    if let Some(bias) = &conv.bias {
        out = out + bias.val().unsqueeze_dim(0);
    }
    out.reshape([b, gh * gw, d])
}

/// `int(2/3 · mlp_ratio · width)` with plain truncation, as the reference's SwiGLU sizes its hidden
/// layer (768 → 2048, 192 → 512, 2048 → 5461).
pub fn swiglu_hidden(width: usize, mlp_ratio: f64) -> usize {
    (2.0 / 3.0 * width as f64 * mlp_ratio) as usize
}

/// Width / depth / heads of a ViT, as in the reference's `SIZE_DICT`.
#[derive(burn::config::Config, Debug, Copy, PartialEq, Eq)]
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
