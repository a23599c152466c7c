//! Reading a checkpoint into a flat `key → tensor` map with the reference's key names.

use super::WeightsError;
use burn::store::burn_pack::Tensor as PackTensor;
use burn::store::{bridge, pytorch_reader};
use burn::tensor::{DType, Shape, TensorData};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Which top-level entry of a training checkpoint to read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CheckpointEntry {
    /// `model_ema` if present, else `model`, else the file is a bare state dict (the reference's
    /// evaluation default).
    #[default]
    Auto,
    /// `model_ema` (required).
    Ema,
    /// `model` (required).
    Model,
}

impl std::str::FromStr for CheckpointEntry {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "ema" | "model_ema" => Ok(Self::Ema),
            "model" | "raw" => Ok(Self::Model),
            other => Err(format!("unknown checkpoint entry '{other}' (expected auto, ema or model)")),
        }
    }
}

/// A flat map from reference key to (lazily read) tensor, plus file metadata.
#[derive(Clone)]
pub struct StateDict {
    /// The file it came from.
    pub path: PathBuf,
    /// Which entry was used (`model_ema`, `model`, or empty for a bare state dict).
    pub entry: String,
    /// Tensors by reference key, converted to f32 when read.
    pub tensors: BTreeMap<String, PackTensor>,
    /// safetensors `__metadata__` (empty for PyTorch files).
    pub metadata: BTreeMap<String, String>,
}

/// Prefixes added by DDP (`module.`) and `torch.compile` (`_orig_mod.`), tolerated anywhere
/// they appear at the start of a key.
fn strip_wrapper_prefixes(key: &str) -> &str {
    let mut k = key;
    loop {
        if let Some(rest) = k.strip_prefix("module.") {
            k = rest;
        } else if let Some(rest) = k.strip_prefix("_orig_mod.") {
            k = rest;
        } else {
            return k;
        }
    }
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> WeightsError {
    WeightsError::Io { path: path.to_path_buf(), message: e.to_string() }
}

/// Converts half/double floats to f32 at read time, so every model parameter is f32.
fn as_f32(tensor: PackTensor) -> PackTensor {
    match tensor.dtype {
        DType::F16 | DType::BF16 | DType::F64 => {
            let name = tensor.name.clone();
            let shape = tensor.shape.clone();
            bridge::map_data(tensor, name, DType::F32, shape, |d| d.convert_dtype(DType::F32))
        }
        _ => tensor,
    }
}

impl StateDict {
    /// Opens a `.pth`/`.pt` (zip or legacy pickle) or `.safetensors` file, selecting the entry.
    pub fn open(path: &Path, entry: CheckpointEntry) -> Result<Self, WeightsError> {
        let mut magic = [0u8; 16];
        let n = std::fs::File::open(path)
            .and_then(|mut f| f.read(&mut magic))
            .map_err(|e| io_err(path, e))?;
        if n < 8 {
            return Err(WeightsError::Format { path: path.into(), reason: "file is too short".into() });
        }
        let file_len = std::fs::metadata(path).map_err(|e| io_err(path, e))?.len();
        let header_len = u64::from_le_bytes(magic[..8].try_into().expect("8 bytes"));
        let is_safetensors = n > 8 && magic[8] == b'{' && header_len + 8 <= file_len;
        let is_zip = magic.starts_with(b"PK\x03\x04");
        let is_pickle = magic[0] == 0x80;
        if is_safetensors {
            Self::open_safetensors(path, entry)
        } else if is_zip || is_pickle {
            Self::open_pytorch(path, entry)
        } else {
            Err(WeightsError::Format {
                path: path.into(),
                reason: "neither a PyTorch checkpoint (zip or pickle) nor a safetensors file".into(),
            })
        }
    }

    fn open_pytorch(path: &Path, entry: CheckpointEntry) -> Result<Self, WeightsError> {
        let reader = pytorch_reader::PytorchReader::new(path)
            .map_err(|e| WeightsError::Format { path: path.into(), reason: e.to_string() })?;
        let all = reader.into_tensors();
        let tops: BTreeSet<String> = all.keys().map(|k| k.split('.').next().unwrap_or("").to_string()).collect();
        let chosen = match entry {
            CheckpointEntry::Ema => "model_ema",
            CheckpointEntry::Model => "model",
            CheckpointEntry::Auto if tops.contains("model_ema") => "model_ema",
            CheckpointEntry::Auto if tops.contains("model") => "model",
            CheckpointEntry::Auto => "",
        };
        if !chosen.is_empty() && !tops.contains(chosen) {
            return Err(WeightsError::MissingEntry {
                path: path.into(),
                entry: chosen.into(),
                available: tops.iter().cloned().collect::<Vec<_>>().join(", "),
            });
        }
        let mut tensors = BTreeMap::new();
        for (key, tensor) in all {
            let rest = if chosen.is_empty() {
                key.as_str()
            } else {
                match key.strip_prefix(chosen).and_then(|r| r.strip_prefix('.')) {
                    Some(r) => r,
                    None => continue,
                }
            };
            let name = strip_wrapper_prefixes(rest).to_string();
            let mut t = bridge::from_pytorch(tensor);
            t.name = name.clone();
            tensors.insert(name, as_f32(t));
        }
        if tensors.is_empty() {
            return Err(WeightsError::Format { path: path.into(), reason: "the checkpoint holds no tensors".into() });
        }
        Ok(Self { path: path.into(), entry: chosen.into(), tensors, metadata: BTreeMap::new() })
    }

    fn open_safetensors(path: &Path, entry: CheckpointEntry) -> Result<Self, WeightsError> {
        let file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
        // SAFETY: the map is read-only and the file is not modified while we hold it.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_err(path, e))?;
        Self::from_safetensors_buffer(path, Arc::new(mmap), entry)
    }

    /// Reads safetensors bytes held in memory (e.g. weights embedded in the binary); `label` names
    /// them in messages.
    pub fn from_safetensors_bytes(label: &Path, bytes: &'static [u8]) -> Result<Self, WeightsError> {
        Self::from_safetensors_buffer(label, Arc::new(bytes), CheckpointEntry::Auto)
    }

    fn from_safetensors_buffer<B>(path: &Path, mmap: Arc<B>, entry: CheckpointEntry) -> Result<Self, WeightsError>
    where
        B: std::ops::Deref<Target = [u8]> + Send + Sync + 'static,
    {
        let (_, meta) = safetensors::SafeTensors::read_metadata(&mmap[..])
            .map_err(|e| WeightsError::Format { path: path.into(), reason: e.to_string() })?;
        let metadata: BTreeMap<String, String> =
            meta.metadata().clone().map(|m| m.into_iter().collect()).unwrap_or_default();
        let parsed = safetensors::SafeTensors::deserialize(&mmap[..])
            .map_err(|e| WeightsError::Format { path: path.into(), reason: e.to_string() })?;
        let names: Vec<String> = parsed.names().into_iter().map(|s| s.to_string()).collect();
        // safetensors dumps of training checkpoints may keep the entry prefixes: select an entry
        // only when every tensor sits under `model.` or `model_ema.`.
        let is_dump = names.iter().all(|n| n.starts_with("model.") || n.starts_with("model_ema."));
        let has = |p: &str| is_dump && names.iter().any(|n| n.starts_with(&format!("{p}.")));
        let chosen = match entry {
            CheckpointEntry::Ema if has("model_ema") => "model_ema",
            CheckpointEntry::Model if has("model") => "model",
            CheckpointEntry::Auto if has("model_ema") => "model_ema",
            CheckpointEntry::Auto if has("model") => "model",
            _ => "",
        };
        let mut tensors = BTreeMap::new();
        for name in names {
            let view = parsed.tensor(&name).map_err(|e| WeightsError::Format { path: path.into(), reason: e.to_string() })?;
            let dtype = match view.dtype() {
                safetensors::Dtype::F32 => DType::F32,
                safetensors::Dtype::F16 => DType::F16,
                safetensors::Dtype::BF16 => DType::BF16,
                safetensors::Dtype::F64 => DType::F64,
                safetensors::Dtype::I64 => DType::I64,
                safetensors::Dtype::I32 => DType::I32,
                other => {
                    return Err(WeightsError::Format {
                        path: path.into(),
                        reason: format!("tensor `{name}` has unsupported dtype {other:?}"),
                    });
                }
            };
            let rest = if chosen.is_empty() {
                name.as_str()
            } else {
                match name.strip_prefix(chosen).and_then(|r| r.strip_prefix('.')) {
                    Some(r) => r,
                    None => continue,
                }
            };
            let key = strip_wrapper_prefixes(rest).to_string();
            let shape = Shape::from(view.shape().to_vec());
            // Offsets of the view inside the mapped file, so the bytes are read only when drawn.
            let start = view.data().as_ptr() as usize - mmap.as_ptr() as usize;
            let len = view.data().len();
            let map = Arc::clone(&mmap);
            let declared = shape.clone();
            let t = bridge::deferred(key.clone(), dtype, shape, None, move || {
                Ok(TensorData::from_bytes_vec(map[start..start + len].to_vec(), declared.clone(), dtype))
            });
            tensors.insert(key, as_f32(t));
        }
        Ok(Self { path: path.into(), entry: chosen.into(), tensors, metadata })
    }

    /// The tensors whose keys start with `prefix`, with the prefix removed (e.g. `encoder.` of a
    /// full checkpoint, or `param.` of a golden case).
    pub fn subset(&self, prefix: &str) -> Self {
        let tensors = self
            .tensors
            .iter()
            .filter_map(|(k, t)| {
                let rest = k.strip_prefix(prefix)?;
                let mut t = t.clone();
                t.name = rest.to_string();
                Some((rest.to_string(), t))
            })
            .collect();
        Self { path: self.path.clone(), entry: self.entry.clone(), tensors, metadata: self.metadata.clone() }
    }

    /// Shape of `key`, if present.
    pub fn shape(&self, key: &str) -> Option<Vec<usize>> {
        self.tensors.get(key).map(|t| t.shape.to_vec())
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// Keys starting with `prefix`.
    pub fn keys_with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.tensors.keys().filter(move |k| k.starts_with(prefix))
    }

    /// Reads one tensor as f32 values.
    pub fn read_f32(&self, key: &str) -> Result<Vec<f32>, WeightsError> {
        let t = self.tensors.get(key).ok_or_else(|| WeightsError::Invalid {
            path: self.path.clone(),
            message: format!("no tensor `{key}`"),
        })?;
        let data = bridge::to_data(t).map_err(|e| WeightsError::Format { path: self.path.clone(), reason: format!("{key}: {e}") })?;
        data.try_into_vec_as::<f32>()
            .map_err(|e| WeightsError::Format { path: self.path.clone(), reason: format!("{key}: {e:?}") })
    }

    /// Number of distinct `i` in keys `prefix.{i}.…`.
    pub fn count_indexed(&self, prefix: &str) -> usize {
        let p = format!("{prefix}.");
        let idx: BTreeSet<usize> = self
            .keys_with_prefix(&p)
            .filter_map(|k| k[p.len()..].split('.').next()?.parse().ok())
            .collect();
        idx.len()
    }
}
