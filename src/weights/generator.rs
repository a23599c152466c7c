//! Loading and saving DiT^DH generators: the official `ditdhxl_epoch_0599.pth` /
//! `ditdhs_epoch_0029.pth` layouts (docs/MODELS.md §3.4, §5) and safetensors with the same
//! key names.

use super::tokenizer::{META_CONFIG, model_metadata};
use super::{CheckpointEntry, KeyMap, LoadReport, StateDict, WeightsError, load_into};
use crate::generator::{DitDh, DitDhConfig};
use burn::prelude::*;
use std::path::Path;

/// Value of the `rectok.kind` metadata for generators.
pub const KIND_GENERATOR: &str = "generator";

/// Buffers of the `model` entry that are recomputed (RoPE tables).
const IGNORED: &[&str] = &["enc_feat_rope.", "dec_feat_rope.", "feat_rope."];

/// The key renames between the reference's `DiTwDDTHead` state dict and [`DitDh`]'s paths.
pub fn key_map() -> KeyMap {
    KeyMap::new()
        .prefix("t_embedder.mlp.0.", "t_embedder.fc1.")
        .prefix("t_embedder.mlp.2.", "t_embedder.fc2.")
        .prefix("t_embedder.W", "t_embedder.freqs")
        .infix(".adaLN_modulation.1.", ".ada_ln_modulation.")
}

const NOT_A_GENERATOR: &str = " — this does not look like a DiT^DH generator checkpoint";

fn shape(sd: &StateDict, key: &str, rank: usize) -> Result<Vec<usize>, WeightsError> {
    match sd.shape(key) {
        Some(s) if s.len() == rank => Ok(s),
        Some(s) => Err(sd.invalid(format!("`{key}` has shape {s:?}, expected rank {rank}"))),
        None => Err(WeightsError::MissingKey {
            path: sd.path.clone(),
            key: key.into(),
            count: 1,
            hint: NOT_A_GENERATOR.into(),
        }),
    }
}

/// Heads of the official widths (DiTDDT_s/b/l/xl encoders and the 2048-wide head).
fn heads_for(width: usize, what: &str, sd: &StateDict) -> Result<usize, WeightsError> {
    match width {
        384 => Ok(6),
        768 => Ok(12),
        1024 | 1152 | 2048 => Ok(16),
        _ => Err(sd.invalid(format!(
            "cannot infer the attention heads of the {what} (width {width} is not an official DiT^DH width); pass \
             --generator-config"
        ))),
    }
}

/// Infers the configuration of an official checkpoint from its shapes.
pub fn infer_config(sd: &StateDict) -> Result<DitDhConfig, WeightsError> {
    let s_emb = shape(sd, "s_embedder.proj.weight", 4)?;
    let x_emb = shape(sd, "x_embedder.proj.weight", 4)?;
    let pos = shape(sd, "pos_embed", 3)?;
    let table = shape(sd, "y_embedder.embedding_table.weight", 2)?;
    let (enc, dec, p) = (s_emb[0], x_emb[0], s_emb[2]);
    let channels = s_emb[1] / (p * p);
    let grid = (pos[1] as f64).sqrt().round() as usize;
    let blocks = sd.count_indexed("blocks");
    // Encoder blocks have the encoder width; the head's follow (ambiguous only if equal widths).
    let enc_depth =
        (0..blocks).take_while(|i| sd.shape(&format!("blocks.{i}.norm1.weight")).is_some_and(|s| s[0] == enc)).count();
    let enc_depth = if enc == dec { blocks.saturating_sub(2) } else { enc_depth };
    let config = DitDhConfig::new(grid * p, channels, enc, enc_depth, heads_for(enc, "encoder", sd)?)
        .with_dec_hidden(dec)
        .with_dec_depth(blocks - enc_depth)
        .with_dec_heads(heads_for(dec, "head", sd)?)
        .with_patch_size(p)
        .with_num_classes(table[0] - 1);
    config.validate().map_err(|message| sd.invalid(message))?;
    Ok(config)
}

/// Loads a generator. `config` overrides the file's metadata and shape inference.
pub fn load_generator(
    path: &Path,
    entry: CheckpointEntry,
    config: Option<DitDhConfig>,
    device: &Device,
) -> Result<(DitDh, LoadReport), WeightsError> {
    let sd = StateDict::open(path, entry)?;
    sd.check_kind(KIND_GENERATOR)?;
    let meta_config = sd.metadata_json::<DitDhConfig>(META_CONFIG)?;
    let config = config.or(meta_config).map_or_else(|| infer_config(&sd), Ok)?;
    config.validate().map_err(|message| sd.invalid(message))?;
    let mut model = config.init(device);
    let report = load_into(&mut model, &sd, &key_map(), &[], IGNORED, NOT_A_GENERATOR)?;
    Ok((model, report))
}

/// Saves a generator as safetensors with the reference's key names and its config.
pub fn save_generator(model: &DitDh, path: &Path) -> anyhow::Result<()> {
    let meta = model_metadata(KIND_GENERATOR, serde_json::to_string(&model.config)?);
    super::write_safetensors_from_module(model, &key_map(), path, meta)
}
