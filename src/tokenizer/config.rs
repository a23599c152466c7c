//! Configuration of the RecTok tokenizer, with the reference's constructor defaults and named
//! presets. Every size is a field, so any `SIZE_DICT` size, image size, patch size and channel
//! count can be built.

use crate::nn::VitSize;
use burn::config::Config;

/// Which semantic decoder predicts the teacher features (`sem_dec_type`).
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum SemDecoderKind {
    /// Small ViT on the latent tokens (official).
    Transformer,
    /// Per-token `Linear(C, 4C) → GELU → Linear(4C, D)` (ablation).
    Mlp,
}

/// What the semantic decoder sees (`sem_input_type`).
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum SemInput {
    /// The flow-noised latents `z_τ` (official: flow semantic distillation).
    Noisy,
    /// The clean posterior sample (the prior approach, for ablations).
    Clean,
}

/// Where the semantic loss is taken (`sem_target`).
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum SemTarget {
    /// Cosine loss over all tokens: masked ones are feature reconstruction (RAD), visible ones
    /// feature alignment (official `"rec+align"`; the historical `"align"` means the same).
    RecAlign,
    /// Loss over masked tokens only (`"reconstruction"`).
    Reconstruction,
}

/// How the MAE mask ratio is chosen each iteration (`mask_ratio_type`).
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum MaskRatioType {
    /// `max(0, U(mask_ratio_min, mask_ratio))`, one draw per iteration (official).
    Random,
    /// Always `mask_ratio`.
    Fix,
}

/// Distribution of the forward-flow noise level τ (`noise_schedule`).
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum NoiseSchedule {
    /// `τ = s·u / (1 + (s−1)·u)`, `u ~ U(0, 1)`, with the dimension-dependent shift `s` (official).
    Shift,
    /// `τ = sigmoid(n)`, `n ~ N(0, 1)`.
    Lognorm,
    /// `τ ~ U(0, 1)`.
    Uniform,
}

/// Full configuration of a [`RecTok`](super::RecTok) model.
///
/// Defaults are those of the reference `RecTok.__init__` (`models/rectok.py`); `token_channels`,
/// the sizes and the semantic decoder have no default so that every preset states them.
#[derive(Config, Debug)]
pub struct RecTokConfig {
    /// Image side in pixels (square images).
    #[config(default = 256)]
    pub img_size: usize,
    /// Patch side in pixels.
    #[config(default = 16)]
    pub patch_size: usize,
    /// Latent channels per token `C` (the encoder emits `2C` moments).
    pub token_channels: usize,
    /// Encoder ViT size.
    pub encoder: VitSize,
    /// Pixel-decoder ViT size.
    pub decoder: VitSize,
    /// Semantic-decoder ViT size (`vit_sem_model_size`).
    pub semantic: VitSize,
    /// Semantic decoder kind.
    #[config(default = "SemDecoderKind::Transformer")]
    pub sem_decoder: SemDecoderKind,
    /// Teacher feature width `D` the semantic decoder predicts; `None` builds no semantic decoder
    /// (inference, stage 2).
    #[config(default = "None")]
    pub teacher_dim: Option<usize>,
    /// Key of the teacher in the reference's `sem_decoders.<key>.*` state-dict entries.
    #[config(default = "String::from(\"dinov3\")")]
    pub teacher_key: String,
    /// Semantic decoder input.
    #[config(default = "SemInput::Noisy")]
    pub sem_input: SemInput,
    /// Semantic loss target.
    #[config(default = "SemTarget::RecAlign")]
    pub sem_target: SemTarget,
    /// Upper end of the MAE mask ratio (or the fixed ratio).
    #[config(default = 0.4)]
    pub mask_ratio: f64,
    /// Lower end of the random mask ratio draw (negative values make `r = 0` likely).
    #[config(default = -0.1)]
    pub mask_ratio_min: f64,
    /// Random or fixed mask ratio.
    #[config(default = "MaskRatioType::Random")]
    pub mask_ratio_type: MaskRatioType,
    /// Forward-flow noise scale γ (0 disables flow noise).
    #[config(default = 1.0)]
    pub gamma: f64,
    /// Noise-level schedule.
    #[config(default = "NoiseSchedule::Shift")]
    pub noise_schedule: NoiseSchedule,
    /// Latent scale factor used by `normalize_z` / `denormalize_z`.
    #[config(default = 1.0)]
    pub scale_factor: f64,
}

/// A preset's constructor.
type Preset = fn() -> RecTokConfig;

impl RecTokConfig {
    /// The official tokenizer `rectok_BB`: 256 px, patch 16, 128 channels, ViT-B encoder and
    /// decoder, tiny transformer semantic decoder.
    ///
    /// Training-only fields follow the run behind the released checkpoints (docs/TRAINING.md §2.1,
    /// "history"): teacher DINOv3 ViT-B/16 (`D = 768`) and mask ratio `max(0, U(−0.1, 0.6))`. The
    /// HEAD training script instead uses ViT-L/16 (`D = 1024`) and 0.4; see
    /// [`RecTokConfig::rectok_b_head_script`].
    pub fn rectok_b() -> Self {
        let base = VitSize::named("base").expect("base");
        Self::new(128, base, base, VitSize::named("tiny").expect("tiny"))
            .with_teacher_dim(Some(768))
            .with_mask_ratio(0.6)
    }

    /// `rectok_BB` exactly as the HEAD training script configures it (DINOv3 ViT-L/16 teacher,
    /// mask ratio up to 0.4).
    pub fn rectok_b_head_script() -> Self {
        Self::rectok_b().with_teacher_dim(Some(1024)).with_mask_ratio(0.4)
    }

    /// The tiny tokenizer of the built-in CPU recipes: 32 px images, patch 4 (8×8 tokens), 16
    /// channels, 128-wide 4-layer encoder and decoder, a 64-wide one-layer semantic decoder; the
    /// official method otherwise (mask ratio up to 0.4, flow noise with the dimension shift).
    pub fn tiny() -> Self {
        let vit = |width, layers, heads| VitSize { width, layers, heads };
        Self::new(16, vit(128, 4, 4), vit(128, 4, 4), vit(64, 1, 2)).with_img_size(32).with_patch_size(4)
    }

    /// The named presets: `rectok-b` (the official tokenizer), `rectok-b-head` (as the HEAD
    /// training script configures it) and `tiny` (the built-in CPU recipes').
    pub const PRESETS: &'static [(&'static str, Preset)] =
        &[("rectok-b", Self::rectok_b), ("rectok-b-head", Self::rectok_b_head_script), ("tiny", Self::tiny)];

    /// The preset `name` (any accepted spelling, e.g. `rectok_b`).
    pub fn preset(name: &str) -> Option<Self> {
        crate::config::find(name, Self::PRESETS).map(|f| f())
    }

    /// A configuration from a preset name or a file (JSON or TOML; see [`from_object`](Self::from_object)).
    pub fn parse(spec: &str) -> Result<Self, String> {
        if let Some(c) = Self::preset(spec) {
            return Ok(c);
        }
        let path = std::path::Path::new(spec);
        if !path.is_file() {
            return Err(format!(
                "{spec}: neither a tokenizer preset ({}) nor a configuration file",
                crate::config::names(Self::PRESETS)
            ));
        }
        let obj = crate::config::read_object(path, "tokenizer")?;
        Self::from_object(obj).map_err(|e| format!("{spec}: {e}"))
    }

    /// Parses a JSON configuration (see [`from_object`](Self::from_object)).
    pub fn from_json(text: &str) -> Result<Self, String> {
        Self::from_object(crate::config::object(text, "tokenizer")?)
    }

    /// A configuration from its fields: `preset` names the base (a preset name), else
    /// `token_channels`, `encoder` and `decoder` are required, as in the reference's constructor;
    /// every other field with a default may be omitted, fields merge at any depth
    /// (`{"encoder": {"heads": 8}}`), unknown fields are errors (usually typos). Sizes are
    /// `SIZE_DICT` names or `{ width, layers, heads }`; enumerations take the reference's
    /// spellings too (`"noisy"`, `"rec+align"`, `"shift"`, `"random"`, `"transformer"`).
    pub fn from_object(mut obj: serde_json::Map<String, serde_json::Value>) -> Result<Self, String> {
        use serde_json::Value;
        for (k, v) in obj.iter_mut() {
            if let Value::String(s) = v.clone() {
                if let Some(canonical) = canonical_enum(k, &s) {
                    *v = Value::String(canonical.into());
                }
                if ["encoder", "decoder", "semantic"].contains(&k.as_str()) {
                    let size = VitSize::named(&s).ok_or(format!("unknown model size `{s}` for `{k}`"))?;
                    *v = serde_json::to_value(size).expect("size");
                }
            }
        }
        let base = match obj.remove("preset") {
            Some(Value::String(p)) => Self::preset(&p)
                .ok_or(format!("unknown tokenizer preset `{p}` ({})", crate::config::names(Self::PRESETS)))?,
            Some(other) => return Err(format!("`preset` must be a preset name, got {other}")),
            None => {
                let size = |key: &str| -> Result<VitSize, String> {
                    let v = obj.get(key).ok_or(format!("missing field `{key}` (or name a `preset`)"))?;
                    serde_json::from_value(v.clone()).map_err(|e| format!("field `{key}`: {e}"))
                };
                let semantic = if obj.contains_key("semantic") {
                    size("semantic")?
                } else {
                    VitSize::named("tiny").expect("tiny")
                };
                let channels = crate::config::required_usize(&obj, "token_channels")?;
                Self::new(channels, size("encoder")?, size("decoder")?, semantic)
            }
        };
        let config = crate::config::merge(&base, &obj, &[])?;
        config.validate()?;
        Ok(config)
    }

    /// Roughly how many parameters the model has (12·width² per transformer block).
    pub fn approx_params(&self) -> u64 {
        [self.encoder, self.decoder, self.semantic].iter().map(|s| 12 * (s.width as u64).pow(2) * s.layers as u64).sum()
    }

    /// Token grid side (`img_size / patch_size`).
    pub fn grid_size(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// Number of latent tokens `L`.
    pub fn seq_len(&self) -> usize {
        self.grid_size() * self.grid_size()
    }

    /// The dimension-dependent time shift `s = sqrt(h·w·C / 4096)` (docs/TRAINING.md §0).
    pub fn timestep_shift(&self) -> f64 {
        crate::rectified_flow::dimension_shift(self.grid_size(), self.grid_size(), self.token_channels)
    }

    /// Checks the sizes for consistency, naming the first problem.
    pub fn validate(&self) -> Result<(), String> {
        if self.teacher_key.is_empty() || self.teacher_key.contains(['.', ' ']) {
            return Err(format!(
                "teacher_key must be a state-dict name part (no dots or spaces), got `{}`",
                self.teacher_key
            ));
        }
        if self.patch_size == 0 || !self.img_size.is_multiple_of(self.patch_size) {
            return Err(format!("img_size {} is not a multiple of patch_size {}", self.img_size, self.patch_size));
        }
        for (name, v) in [("img_size", self.img_size), ("token_channels", self.token_channels)] {
            if !(1..=8192).contains(&v) {
                return Err(format!("{name} must be between 1 and 8192, got {v}"));
            }
        }
        if !(self.mask_ratio >= 0.0 && self.mask_ratio < 1.0) {
            return Err(format!("mask_ratio must be in [0, 1), got {}", self.mask_ratio));
        }
        if !(self.mask_ratio_min >= -1.0 && self.mask_ratio_min <= self.mask_ratio) {
            return Err(format!(
                "mask_ratio_min must be in [-1, mask_ratio = {}], got {}",
                self.mask_ratio, self.mask_ratio_min
            ));
        }
        if !(self.gamma.is_finite() && self.gamma >= 0.0) {
            return Err(format!("gamma must be a finite number ≥ 0, got {}", self.gamma));
        }
        if !(self.scale_factor.is_finite() && self.scale_factor > 0.0) {
            return Err(format!("scale_factor must be a finite number > 0, got {}", self.scale_factor));
        }
        if self.teacher_dim == Some(0) {
            return Err("teacher_dim must be at least 1".into());
        }
        if self.seq_len() > 65536 {
            return Err(format!("img_size / patch_size gives {} tokens; at most 65536", self.seq_len()));
        }
        if self.teacher_dim.is_some_and(|d| d > 65536) {
            return Err("teacher_dim must be at most 65536".into());
        }
        for (name, size) in [("encoder", self.encoder), ("decoder", self.decoder), ("semantic", self.semantic)] {
            if size.width > 16384 {
                return Err(format!("{name} width must be at most 16384, got {}", size.width));
            }
            if size.heads == 0 || size.width == 0 || size.width % size.heads != 0 {
                return Err(format!(
                    "{name} width {} is not a positive multiple of its {} heads",
                    size.width, size.heads
                ));
            }
            if !(1..=256).contains(&size.layers) {
                return Err(format!("{name} layers must be between 1 and 256, got {}", size.layers));
            }
            if size.head_dim() % 4 != 0 {
                return Err(format!("{name} head dim {} is not a multiple of 4 (2D RoPE)", size.head_dim()));
            }
        }
        crate::device::check_parameter_count(self.approx_params(), "the tokenizer")
    }
}

/// The reference's spellings of the enumerations (`sem_input_type="noisy"`, …) as this crate's.
fn canonical_enum(key: &str, value: &str) -> Option<&'static str> {
    Some(match (key, value) {
        ("sem_input", "noisy") => "Noisy",
        ("sem_input", "clean") => "Clean",
        ("sem_target", "rec+align" | "align" | "rec_align") => "RecAlign",
        ("sem_target", "reconstruction") => "Reconstruction",
        ("noise_schedule", "shift") => "Shift",
        ("noise_schedule", "lognorm") => "Lognorm",
        ("noise_schedule", "uniform") => "Uniform",
        ("mask_ratio_type", "random") => "Random",
        ("mask_ratio_type", "fix" | "fixed") => "Fix",
        ("sem_decoder", "transformer") => "Transformer",
        ("sem_decoder", "mlp") => "Mlp",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_preset_shift_and_json_roundtrip() {
        let c = RecTokConfig::rectok_b();
        assert_eq!(c.seq_len(), 256);
        assert!((c.timestep_shift() - 8f64.sqrt()).abs() < 1e-12);
        let json = serde_json::to_string(&c).unwrap();
        let back: RecTokConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
    }

    #[test]
    fn partial_json_takes_defaults_and_rejects_typos() {
        let c = RecTokConfig::from_json(r#"{"token_channels": 16, "encoder": "small", "decoder": {"width": 64, "layers": 2, "heads": 4}, "img_size": 64}"#).unwrap();
        assert_eq!(c.encoder, VitSize::named("small").unwrap());
        assert_eq!(c.semantic, VitSize::named("tiny").unwrap());
        assert_eq!((c.img_size, c.patch_size, c.mask_ratio), (64, 16, 0.4));
        let err = RecTokConfig::from_json(
            r#"{"token_channels": 16, "encoder": "small", "decoder": "small", "mask_ration": 0.5}"#,
        )
        .unwrap_err();
        assert!(err.contains("mask_ration"), "{err}");
        assert!(
            RecTokConfig::from_json(r#"{"encoder": "small", "decoder": "small"}"#)
                .unwrap_err()
                .contains("token_channels")
        );
    }
}
