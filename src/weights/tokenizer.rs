//! Loading and saving RecTok tokenizers: the official `RecTok.pth` / `RecTok_decft.pth` layouts
//! (docs/MODELS.md §1.9, §5) and safetensors files written by `rectok convert`.

use super::{CheckpointEntry, KeyMap, LoadReport, StateDict, WeightsError, load_into};
use crate::nn::VitSize;
use crate::tokenizer::{LatentStats, RecTok, RecTokConfig, SemDecoderKind};
use burn::prelude::*;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// safetensors metadata key naming the kind of model in the file.
pub const META_KIND: &str = "rectok.kind";
/// safetensors metadata key holding the JSON [`RecTokConfig`].
pub const META_CONFIG: &str = "rectok.config";
/// safetensors metadata key holding the JSON [`LatentStats`].
pub const META_STATS: &str = "rectok.latent_stats";
/// Value of [`META_KIND`] for tokenizers.
pub const KIND_TOKENIZER: &str = "tokenizer";

/// Teacher copies and decoders of other teachers inside stage-1 checkpoints: not needed here.
const IGNORED: &[&str] = &["sem_foundation_models.", "aux_foundation_models."];

/// Key renames of the reference's `Encoder` (relative to the encoder).
pub fn encoder_key_map() -> KeyMap {
    KeyMap::new().prefix("patch_embed.0.", "patch_embed.")
}

/// Key renames of the reference's `Decoder` (relative to the decoder).
pub fn decoder_key_map() -> KeyMap {
    KeyMap::new().prefix("ffn.1.", "ffn.")
}

/// Key renames of the reference's `MLPDecoder` (relative to the decoder).
pub fn mlp_sem_decoder_key_map() -> KeyMap {
    KeyMap::new().prefix("mlp.0.", "fc1.").prefix("mlp.2.", "fc2.")
}

/// The key renames between the reference's `RecTok` state dict and [`RecTok`]'s module paths, the
/// semantic decoder sitting under `<sem_prefix>.<teacher_key>.` in the file.
pub fn key_map(teacher_key: &str, sem_prefix: &str) -> KeyMap {
    let sem = format!("{sem_prefix}.{teacher_key}.");
    KeyMap::new()
        .nest("encoder.", "encoder.", &encoder_key_map())
        .nest("decoder.", "decoder.", &decoder_key_map())
        .nest(&sem, "sem_decoder.", &mlp_sem_decoder_key_map())
        .prefix(sem, "sem_decoder.")
}

/// Teacher decoders present in the file as `(prefix, teacher key)`: `sem_decoders.<key>` or,
/// in pre-release checkpoints, `aux_decoders.<key>`.
fn teacher_decoders(sd: &StateDict) -> Vec<(String, String)> {
    let mut found = BTreeSet::new();
    for k in sd.tensors.keys() {
        for prefix in ["sem_decoders", "aux_decoders"] {
            if let Some(rest) = k.strip_prefix(prefix).and_then(|r| r.strip_prefix('.'))
                && let Some(name) = rest.split('.').next()
            {
                found.insert((prefix.to_string(), name.to_string()));
            }
        }
    }
    found.into_iter().collect()
}

fn named_size(width: usize, layers: usize, what: &str, sd: &StateDict) -> Result<VitSize, WeightsError> {
    let heads = ["tiny", "small", "base", "large", "xl", "huge"]
        .iter()
        .filter_map(|n| VitSize::named(n))
        .find(|s| s.width == width)
        .map(|s| s.heads)
        .ok_or_else(|| {
            sd.invalid(format!(
                "cannot infer the number of attention heads of the {what} (width {width} is not a SIZE_DICT width); \
                 pass the sizes with --config PRESET|JSON"
            ))
        })?;
    Ok(VitSize { width, layers, heads })
}

fn need_shape(sd: &StateDict, key: &str, rank: usize, hint: &str) -> Result<Vec<usize>, WeightsError> {
    match sd.shape(key) {
        Some(s) if s.len() == rank => Ok(s),
        Some(s) => Err(sd.invalid(format!("`{key}` has shape {s:?}, expected a rank-{rank} tensor"))),
        None => Err(WeightsError::MissingKey { path: sd.path.clone(), key: key.into(), count: 1, hint: hint.into() }),
    }
}

const NOT_A_TOKENIZER: &str = " — this does not look like a RecTok tokenizer checkpoint";

/// Infers the configuration of an official checkpoint from its tensor shapes (head counts come
/// from the `SIZE_DICT` entry of each width).
pub fn infer_config(sd: &StateDict) -> Result<RecTokConfig, WeightsError> {
    let pos = need_shape(sd, "encoder.positional_embedding", 3, NOT_A_TOKENIZER)?;
    let patch = need_shape(sd, "encoder.patch_embed.0.weight", 4, NOT_A_TOKENIZER)?;
    let dec_embed = need_shape(sd, "decoder.decoder_embed.weight", 2, NOT_A_TOKENIZER)?;
    let grid = (pos[1] as f64).sqrt().round() as usize;
    if grid * grid != pos[1] {
        return Err(sd.invalid(format!("encoder.positional_embedding has {} positions, not a square grid", pos[1])));
    }
    let p = patch[2];
    let encoder = named_size(pos[2], sd.count_indexed("encoder.transformer"), "encoder", sd)?;
    let decoder = named_size(dec_embed[0], sd.count_indexed("decoder.transformer"), "decoder", sd)?;
    let channels = dec_embed[1];
    let mut config = RecTokConfig::new(channels, encoder, decoder, VitSize::named("tiny").expect("tiny"))
        .with_img_size(grid * p)
        .with_patch_size(p);
    let teachers = teacher_decoders(sd);
    if let Some((prefix, key)) = teachers.iter().find(|(_, k)| k == "dinov3").or(teachers.first()) {
        let base = format!("{prefix}.{key}");
        config = config.with_teacher_key(key.clone());
        if let Some(out) = sd.shape(&format!("{base}.out.weight")) {
            let tok = need_shape(sd, &format!("{base}.token_embedding.weight"), 2, "")?;
            let layers = sd.count_indexed(&format!("{base}.transformer"));
            config = config.with_teacher_dim(Some(out[0])).with_sem_decoder(SemDecoderKind::Transformer);
            config.semantic = named_size(tok[0], layers, "semantic decoder", sd)?;
        } else if let Some(out) = sd.shape(&format!("{base}.mlp.2.weight")) {
            config = config.with_teacher_dim(Some(out[0])).with_sem_decoder(SemDecoderKind::Mlp);
        }
    }
    config.validate().map_err(|message| sd.invalid(message))?;
    Ok(config)
}

/// Options for [`load_tokenizer`].
#[derive(Clone, Debug, Default)]
pub struct TokenizerLoadOptions {
    /// Which checkpoint entry to read.
    pub entry: CheckpointEntry,
    /// Use this configuration instead of the file's metadata or shape inference.
    pub config: Option<RecTokConfig>,
    /// Skip the semantic decoder even if the file has one (inference only needs encoder/decoder).
    pub without_semantic: bool,
}

/// Loads a tokenizer from an official `.pth` or a safetensors file.
pub fn load_tokenizer(
    path: &Path,
    options: &TokenizerLoadOptions,
    device: &Device,
) -> Result<(RecTok, LoadReport), WeightsError> {
    let sd = StateDict::open(path, options.entry.clone())?;
    sd.check_kind(KIND_TOKENIZER)?;
    let meta_config = sd.metadata_json::<RecTokConfig>(META_CONFIG)?;
    let stats = sd.metadata_json::<LatentStats>(META_STATS)?;
    let mut config = options.config.clone().or(meta_config).map_or_else(|| infer_config(&sd), Ok)?;
    let teachers = teacher_decoders(&sd);
    // The semantic decoder is training-only: build it only when asked for and present.
    if options.without_semantic || teachers.is_empty() {
        config.teacher_dim = None;
    }
    config.validate().map_err(|message| sd.invalid(message))?;
    if let Some(s) = &stats {
        s.validate(config.token_channels).map_err(|message| sd.invalid(message))?;
    }
    let (prefix, key) = teachers
        .iter()
        .find(|(_, k)| *k == config.teacher_key)
        .or(teachers.first())
        .cloned()
        .unwrap_or_else(|| ("sem_decoders".into(), config.teacher_key.clone()));
    let map = key_map(&key, &prefix);
    let mut ignore: Vec<String> = IGNORED.iter().map(|s| s.to_string()).collect();
    for (p, k) in &teachers {
        if (p, k) != (&prefix, &key) || config.teacher_dim.is_none() {
            ignore.push(format!("{p}.{k}."));
        }
    }
    let ignore: Vec<&str> = ignore.iter().map(|s| s.as_str()).collect();
    let mut model = config.init(device);
    let report = load_into(&mut model, &sd, &map, &["sem_decoder."], &ignore, NOT_A_TOKENIZER)?;
    model.stats = stats;
    Ok((model, report))
}

/// Metadata describing a model of `kind` with the JSON `config` in a safetensors file.
pub(crate) fn model_metadata(kind: &str, config: String) -> HashMap<String, String> {
    HashMap::from([("format".into(), "pt".into()), (META_KIND.into(), kind.into()), (META_CONFIG.into(), config)])
}

/// Saves a tokenizer as safetensors with the reference's key names, its config and statistics.
pub fn save_tokenizer(model: &RecTok, path: &Path) -> anyhow::Result<()> {
    let map = key_map(&model.config.teacher_key, "sem_decoders");
    let mut meta = model_metadata(KIND_TOKENIZER, serde_json::to_string(&model.config).expect("config serialises"));
    if let Some(s) = &model.stats {
        meta.insert(META_STATS.into(), serde_json::to_string(s).expect("stats serialise"));
    }
    super::write_safetensors_from_module(model, &map, path, meta)
}

/// Reads latent statistics: a safetensors file with `mean` and `std` tensors (`C` values each, or
/// one value for global statistics), as written by `rectok latent-stats`.
pub fn load_latent_stats(path: &Path) -> Result<LatentStats, WeightsError> {
    let sd = StateDict::open(path, CheckpointEntry::Auto)?;
    let get = |k: &str| -> Result<Vec<f32>, WeightsError> {
        if !sd.contains(k) {
            return Err(WeightsError::MissingKey {
                path: path.into(),
                key: k.into(),
                count: 1,
                hint: " — latent statistics files hold `mean` and `std`".into(),
            });
        }
        sd.read_f32_finite(k)
    };
    let stats = LatentStats { mean: get("mean")?, std: get("std")? };
    if let Some(i) = stats.std.iter().position(|&s| s <= 0.0) {
        return Err(sd.invalid(format!("`std` must be positive, but value {i} is {}", stats.std[i])));
    }
    if stats.mean.len() != stats.std.len() || stats.mean.is_empty() {
        return Err(sd.invalid(format!(
            "`mean` has {} values and `std` {}; they must match (one per latent channel)",
            stats.mean.len(),
            stats.std.len()
        )));
    }
    Ok(stats)
}

/// Writes latent statistics as a safetensors file with `mean` and `std`.
pub fn save_latent_stats(stats: &LatentStats, path: &Path) -> anyhow::Result<()> {
    let n = stats.mean.len();
    let meta = HashMap::from([(META_KIND.to_string(), "latent_stats".to_string())]);
    super::write_safetensors(
        path,
        vec![
            ("mean".into(), burn::tensor::TensorData::new(stats.mean.clone(), [n])),
            ("std".into(), burn::tensor::TensorData::new(stats.std.clone(), [n])),
        ],
        meta,
    )
}
