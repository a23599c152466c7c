//! Weights I/O: the official PyTorch checkpoints (`torch.save` zip or legacy pickle) and
//! safetensors files with the same key names, read into a [`StateDict`] and applied to a burn
//! module by name.
//!
//! This is the only place that knows how the reference's state-dict keys differ from this crate's
//! module paths: burn's layers store a `Linear` weight as `[in, out]` and a norm's weight as
//! `gamma` (burn-store's `PyTorchToBurnAdapter` converts both), and a few `nn.Sequential` indices
//! of the reference (`patch_embed.0`, `ffn.1`, `mlp.0`/`mlp.2`) have named fields here
//! ([`KeyMap`] rules, one list per model).

mod apply;
mod export;
pub mod generator;
mod state_dict;
pub mod tokenizer;

pub use apply::{KeyMap, LoadReport, load_into};
pub use export::{safetensors_bytes, write_safetensors, write_safetensors_from_module};
pub use state_dict::{CheckpointEntry, StateDict};

use std::path::PathBuf;

fn missing_count(count: usize) -> String {
    if count > 1 { format!(" ({count} of the model's tensors are missing)") } else { String::new() }
}

/// Everything that can go wrong reading weights, each naming the file.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file could not be read.
    #[error("{path}: {message}")]
    Io {
        /// File.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The file is not a checkpoint this crate understands, or is corrupt.
    #[error("{path}: not a readable PyTorch checkpoint or safetensors file ({reason})")]
    Format {
        /// File.
        path: PathBuf,
        /// Details.
        reason: String,
    },
    /// The requested top-level entry (`model_ema`, `model`) is absent.
    #[error("{path}: has no `{entry}` entry (top-level entries: {available})")]
    MissingEntry {
        /// File.
        path: PathBuf,
        /// Requested entry.
        entry: String,
        /// What the file has.
        available: String,
    },
    /// A tensor the model needs is not in the file.
    #[error("{path}: missing key `{key}`{}{hint}", missing_count(*count))]
    MissingKey {
        /// File.
        path: PathBuf,
        /// First missing key, under its reference name.
        key: String,
        /// How many are missing.
        count: usize,
        /// A hint about what the file might be.
        hint: String,
    },
    /// A tensor has the wrong shape.
    #[error("{path}: `{key}` has shape {found:?} but the model expects {expected:?}")]
    Shape {
        /// File.
        path: PathBuf,
        /// Reference key.
        key: String,
        /// Shape in the file.
        found: Vec<usize>,
        /// Shape the model needs.
        expected: Vec<usize>,
    },
    /// A tensor holds NaN or infinite values.
    #[error("{path}: `{key}` holds {count} NaN or infinite value(s){more}")]
    NonFinite {
        /// File.
        path: PathBuf,
        /// First tensor at fault (reference name).
        key: String,
        /// Non-finite values in it.
        count: usize,
        /// How many other tensors are affected, when any.
        more: String,
    },
    /// Anything else, with a message naming the problem.
    #[error("{path}: {message}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// Details.
        message: String,
    },
}
