//! Frozen teachers for flow semantic distillation: an image batch in the tokenizer's range →
//! patch features on the tokenizer's token grid `(B, L, D)`.

pub mod dinov3;
pub mod preprocess;

pub use dinov3::{Dinov3Config, Dinov3Vit};
