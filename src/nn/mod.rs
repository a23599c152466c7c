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
