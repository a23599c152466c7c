//! Frozen teachers for flow semantic distillation: an image batch in the tokenizer's range
//! `[-1, 1]` → patch features on the tokenizer's token grid `(B, L, D)`, through the reference's
//! input pipeline ([`preprocess`]).
//!
//! * DINOv3 ViT-S/B/L/16 ([`dinov3`]) from the Hugging Face `model.safetensors` the user names —
//!   the reference's teacher (ViT-B/16 behind the released tokenizer, ViT-L/16 in the HEAD script).
//! * EfficientNet-Lite0 ([`efficientnet`]) with its ImageNet weights, **built into the binary**, so
//!   that the embedded default trains with nothing downloaded.

pub mod dinov3;
pub mod efficientnet;
pub mod preprocess;

pub use dinov3::{Dinov3Config, Dinov3Vit};
pub use efficientnet::EfficientNetLite;

use crate::weights::{KeyMap, StateDict, WeightsError, load_into};
use burn::prelude::*;
use preprocess::{IMAGENET_MEAN, IMAGENET_STD, bilinear_weights, resize_square, teacher_pixels};
use std::path::PathBuf;

/// The EfficientNet-Lite0 ImageNet weights (float16 safetensors, Apache-2.0; `assets/README.md`).
pub static EFFICIENTNET_LITE0_WEIGHTS: &[u8] = include_bytes!("../../assets/efficientnet-lite0.safetensors");

/// The teacher resolution of the reference pipeline (the DINOv3 processor's 224×224).
pub const TEACHER_RESOLUTION: usize = 224;

/// Which teacher to use (`--teacher`).
#[derive(Clone, Debug, PartialEq)]
pub enum TeacherSpec {
    /// DINOv3 ViT of a size, from a Hugging Face `model.safetensors`.
    Dinov3 {
        /// Preset name: `s16`, `b16` or `l16`.
        size: String,
        /// The weights file.
        path: PathBuf,
    },
    /// The built-in EfficientNet-Lite0.
    EfficientNetLite0,
}

impl std::str::FromStr for TeacherSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if matches!(s, "efficientnet-lite0" | "effnet" | "builtin") {
            return Ok(Self::EfficientNetLite0);
        }
        let (name, path) = s.split_once(':').ok_or_else(|| {
            format!("unknown teacher '{s}' (expected efficientnet-lite0, or dinov3-s16|dinov3-b16|dinov3-l16:PATH)")
        })?;
        let size = match name {
            "dinov3-s16" | "dinov3-vits16" => "s16",
            "dinov3-b16" | "dinov3-vitb16" | "dinov3" => "b16",
            "dinov3-l16" | "dinov3-vitl16" => "l16",
            other => return Err(format!("unknown teacher '{other}' (expected dinov3-s16, dinov3-b16 or dinov3-l16)")),
        };
        if path.is_empty() {
            return Err(format!("teacher '{name}' needs the path of its model.safetensors: {name}:PATH"));
        }
        Ok(Self::Dinov3 { size: size.into(), path: PathBuf::from(path) })
    }
}

impl std::fmt::Display for TeacherSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dinov3 { size, path } => write!(f, "dinov3-{size}:{}", path.display()),
            Self::EfficientNetLite0 => f.write_str("efficientnet-lite0"),
        }
    }
}

/// A loaded, frozen teacher.
// One exists per run and lives as long as it: boxing the larger variant would gain nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Teacher {
    /// DINOv3 ViT.
    Dinov3(Dinov3Vit),
    /// EfficientNet-Lite0.
    EfficientNet(EfficientNetLite),
}

/// Prefixes under which teacher weights may be nested (HF base-model prefix, a RecTok stage-1
/// checkpoint's frozen copy).
const DINOV3_PREFIXES: &[&str] =
    &["dinov3_vit.", "sem_foundation_models.dinov3.", "aux_foundation_models.dinov3b.", "model."];

impl Teacher {
    /// Loads a teacher.
    pub fn load(spec: &TeacherSpec, device: &Device) -> Result<Self, WeightsError> {
        match spec {
            TeacherSpec::EfficientNetLite0 => Ok(Self::EfficientNet(EfficientNetLite::builtin(device)?)),
            TeacherSpec::Dinov3 { size, path } => {
                let config = match size.as_str() {
                    "s16" => Dinov3Config::vit_s16(),
                    "l16" => Dinov3Config::vit_l16(),
                    _ => Dinov3Config::vit_b16(),
                };
                let mut sd = StateDict::open(path, crate::weights::CheckpointEntry::Auto)?;
                if !sd.contains("embeddings.cls_token")
                    && let Some(p) = DINOV3_PREFIXES.iter().find(|p| sd.contains(&format!("{p}embeddings.cls_token")))
                {
                    sd = sd.subset(p);
                }
                let hint = format!(
                    " — this does not look like a DINOv3 ViT-{}/16 model.safetensors",
                    size[..1].to_uppercase()
                );
                let mut model = config.init(device);
                load_into(&mut model, &sd, &KeyMap::new(), &["embeddings.mask_token"], &["rope_embeddings."], &hint)?;
                Ok(Self::Dinov3(model))
            }
        }
    }

    /// Feature width `D` (the semantic decoder's output width).
    pub fn dim(&self) -> usize {
        match self {
            Self::Dinov3(m) => m.config.hidden_size,
            Self::EfficientNet(_) => 1280,
        }
    }

    /// The key of the teacher in a tokenizer's `sem_decoders.<key>.*` entries.
    pub fn key(&self) -> &'static str {
        match self {
            Self::Dinov3(_) => "dinov3",
            Self::EfficientNet(_) => "effnet",
        }
    }

    /// Human-readable name.
    pub fn name(&self) -> String {
        match self {
            Self::Dinov3(m) => {
                format!("DINOv3 ViT ({} wide, {} layers)", m.config.hidden_size, m.config.num_hidden_layers)
            }
            Self::EfficientNet(_) => "EfficientNet-Lite0 (built in)".into(),
        }
    }

    /// Whether the training-mode augmentation (the DINOv3 RoPE coordinate rescale) exists.
    pub fn has_rope_rescale(&self) -> bool {
        matches!(self, Self::Dinov3(_))
    }

    /// Teacher targets for images `x (B, 3, S, S)` in [-1, 1]: `(B, grid², D)`, row-major on the
    /// token grid. `rope_rescale` is DINOv3's training-mode coordinate rescale `exp(u)` (ignored by
    /// EfficientNet). No gradient flows into the teacher.
    pub fn features(&self, x: Tensor<4>, grid: usize, rope_rescale: Option<f32>) -> Tensor<3> {
        self.features_at(x, grid, rope_rescale, TEACHER_RESOLUTION)
    }

    /// [`features`](Self::features) with the teacher's input side `resolution` instead of the
    /// reference's 224 (small-image recipes: a 32 px image carries no detail a 224 px input adds).
    pub fn features_at(&self, x: Tensor<4>, grid: usize, rope_rescale: Option<f32>, resolution: usize) -> Tensor<3> {
        let x = x.detach();
        let [b, _, s, _] = x.dims();
        let map = match self {
            Self::Dinov3(m) => {
                // The reference feeds the processor output resized back to the tokenizer's size.
                let (_, pixels) = teacher_pixels(x, resolution, s, IMAGENET_MEAN, IMAGENET_STD);
                let tokens = m.patch_tokens(pixels, rope_rescale);
                let g = s / m.config.patch_size;
                if g == grid {
                    return tokens.detach();
                }
                tokens.swap_dims(1, 2).reshape([b, m.config.hidden_size, g, g])
            }
            // EfficientNet runs at `resolution` (native 224 px); its head map (7×7 at 224) is
            // resampled to the grid.
            Self::EfficientNet(m) => {
                let (pixels, _) = teacher_pixels(x, resolution, resolution, IMAGENET_MEAN, IMAGENET_STD);
                m.features(pixels)
            }
        };
        let d = map.dims()[1];
        resize_square(map, grid, bilinear_weights).reshape([b, d, grid * grid]).swap_dims(1, 2).detach()
    }
}
