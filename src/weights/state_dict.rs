//! Reading a checkpoint into a flat `key → tensor` map with the reference's key names.

use super::WeightsError;
use burn::store::burn_pack::Tensor as PackTensor;
use burn::store::{bridge, pytorch_reader};
use burn::tensor::{DType, Shape, TensorData};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Which top-level entry of a training checkpoint to read (`--entry`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CheckpointEntry {
    /// The EMA weights if the file has them (`model_ema`, `ema`, …), else the raw ones (`model`,
    /// `state_dict`, …), else the only wrapper entry of a PyTorch file, else the file is a bare
    /// state dict. EMA first is the reference's evaluation default.
    #[default]
    Auto,
    /// The EMA weights: `model_ema`, else `ema` (required).
    Ema,
    /// The raw weights: `model`, else `state_dict` (required).
    Model,
    /// This top-level entry (required).
    Named(String),
}

/// Entries holding EMA weights, in order of preference.
const EMA_ENTRIES: &[&str] = &["model_ema", "ema", "ema_model", "model_ema_state_dict", "ema_state_dict"];
/// Entries holding raw weights, in order of preference.
const RAW_ENTRIES: &[&str] = &["model", "state_dict", "model_state_dict", "net", "network", "params"];
/// Entries of a training checkpoint that never hold the model's weights.
const BOOKKEEPING: &[&str] =
    &["optimizer", "optim", "opt", "scaler", "loss_scaler", "lr_scheduler", "scheduler", "args", "epoch", "step"];
/// Wrapper prefixes that are stripped from keys rather than chosen as entries.
const WRAPPER_PREFIXES: &[&str] = &["module", "_orig_mod"];

impl std::str::FromStr for CheckpointEntry {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => Ok(Self::Auto),
            "ema" => Ok(Self::Ema),
            "model" | "raw" => Ok(Self::Model),
            "" => Err("empty checkpoint entry (expected auto, ema, model or an entry name)".into()),
            name => Ok(Self::Named(name.to_string())),
        }
    }
}

impl std::fmt::Display for CheckpointEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Ema => f.write_str("ema"),
            Self::Model => f.write_str("model"),
            Self::Named(n) => f.write_str(n),
        }
    }
}

impl CheckpointEntry {
    /// The entry to read from a file with these tensor `keys` (`Ok("")`: the whole file, a bare
    /// state dict), or `Err` with the entry that was asked for and is missing. In PyTorch files
    /// (`pytorch`) every top-level name is an entry; a safetensors file is read as entries only
    /// when all its tensors sit under entry-like names (`model_ema.`, `state_dict.`,
    /// `optimizer.`, …) — or when the entry is named.
    fn choose(&self, keys: &[&str], pytorch: bool) -> Result<String, String> {
        let has = |name: &str| {
            keys.iter().any(|k| k.len() > name.len() && k.starts_with(name) && k.as_bytes()[name.len()] == b'.')
        };
        let first = |names: &[&str]| names.iter().find(|n| has(n)).map(|n| n.to_string());
        let entry_like = |k: &&str| {
            k.split_once('.')
                .is_some_and(|(t, _)| EMA_ENTRIES.contains(&t) || RAW_ENTRIES.contains(&t) || BOOKKEEPING.contains(&t))
        };
        let entries = pytorch || (!keys.is_empty() && keys.iter().all(entry_like));
        let bare = !keys
            .iter()
            .any(|k| k.split_once('.').is_some_and(|(t, _)| EMA_ENTRIES.contains(&t) || RAW_ENTRIES.contains(&t)));
        match self {
            Self::Named(n) => has(n).then(|| n.clone()).ok_or_else(|| n.clone()),
            Self::Ema | Self::Model => {
                let names = if *self == Self::Ema { &EMA_ENTRIES[..2] } else { &RAW_ENTRIES[..2] };
                match first(names) {
                    Some(e) => Ok(e),
                    // Files written by rectok hold one bare state dict: `ema`/`model` name it.
                    None if !pytorch && bare => Ok(String::new()),
                    None => Err(names.join("` or `")),
                }
            }
            Self::Auto if !entries => Ok(String::new()),
            Self::Auto => {
                if let Some(e) = first(EMA_ENTRIES).or_else(|| first(RAW_ENTRIES)) {
                    return Ok(e);
                }
                let tops: BTreeSet<&str> = keys.iter().filter_map(|k| k.split_once('.').map(|(t, _)| t)).collect();
                let candidates: Vec<&&str> = tops.iter().filter(|t| !BOOKKEEPING.contains(t)).collect();
                match candidates.as_slice() {
                    [only] if pytorch && !WRAPPER_PREFIXES.contains(only) && tops.len() > 1 => Ok(only.to_string()),
                    _ => Ok(String::new()),
                }
            }
        }
    }
}

/// The top-level names of `keys`, for messages.
fn top_level_names(keys: &[&str]) -> String {
    let tops: BTreeSet<&str> = keys.iter().map(|k| k.split_once('.').map_or(*k, |(t, _)| t)).collect();
    if tops.len() > 12 {
        format!("{} and {} more", tops.iter().take(12).copied().collect::<Vec<_>>().join(", "), tops.len() - 12)
    } else {
        tops.into_iter().collect::<Vec<_>>().join(", ")
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
    while let Some(rest) = WRAPPER_PREFIXES.iter().find_map(|p| k.strip_prefix(p)?.strip_prefix('.')) {
        k = rest;
    }
    k
}

/// `key` relative to the chosen entry (all of it for a bare state dict), `None` outside the entry.
fn within<'a>(chosen: &str, key: &'a str) -> Option<&'a str> {
    if chosen.is_empty() { Some(key) } else { key.strip_prefix(chosen)?.strip_prefix('.') }
}

/// The entry of `path` to read (see [`CheckpointEntry::choose`]), or the error naming what it has.
fn choose_entry(entry: &CheckpointEntry, keys: &[&str], pytorch: bool, path: &Path) -> Result<String, WeightsError> {
    entry.choose(keys, pytorch).map_err(|wanted| WeightsError::MissingEntry {
        path: path.into(),
        entry: wanted,
        available: top_level_names(keys),
    })
}

/// Refuses FIFOs, devices and folders before opening (reading them would block or fail oddly).
fn check_regular(path: &Path) -> Result<(), WeightsError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(m) if m.is_dir() => Err(io_err(path, "is a folder, not a file")),
        Ok(_) => Err(io_err(path, "not a regular file (FIFOs and devices are not read)")),
        Err(e) => Err(io_err(path, e)),
    }
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> WeightsError {
    WeightsError::Io { path: path.to_path_buf(), message: e.to_string() }
}

fn format_err(path: &Path, reason: impl std::fmt::Display) -> WeightsError {
    WeightsError::Format { path: path.to_path_buf(), reason: reason.to_string() }
}

/// Converts half/double floats to f32 at read time, so every model parameter is f32.
fn as_f32(tensor: PackTensor) -> PackTensor {
    match tensor.dtype {
        DType::F16 | DType::BF16 | DType::F64 => {
            let (name, shape) = (tensor.name.clone(), tensor.shape.clone());
            bridge::map_data(tensor, name, DType::F32, shape, |d| d.convert_dtype(DType::F32))
        }
        _ => tensor,
    }
}

impl StateDict {
    /// Opens a `.pth`/`.pt` (zip or legacy pickle) or `.safetensors` file, selecting the entry.
    pub fn open(path: &Path, entry: CheckpointEntry) -> Result<Self, WeightsError> {
        check_regular(path)?;
        let mut magic = [0u8; 16];
        let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut magic)).map_err(|e| io_err(path, e))?;
        if n < 8 {
            return Err(format_err(path, "file is too short"));
        }
        let file_len = std::fs::metadata(path).map_err(|e| io_err(path, e))?.len();
        let header_len = u64::from_le_bytes(magic[..8].try_into().expect("8 bytes"));
        let is_safetensors = n > 8 && magic[8] == b'{' && header_len + 8 <= file_len;
        let is_zip = magic.starts_with(b"PK\x03\x04");
        let is_pickle = magic[0] == 0x80;
        if is_safetensors {
            Self::open_safetensors(path, Some(entry))
        } else if is_zip || is_pickle {
            Self::open_pytorch(path, entry)
        } else {
            Err(format_err(path, "neither a PyTorch checkpoint (zip or pickle) nor a safetensors file"))
        }
    }

    fn open_pytorch(path: &Path, entry: CheckpointEntry) -> Result<Self, WeightsError> {
        let all = pytorch_reader::PytorchReader::new(path).map_err(|e| format_err(path, e))?.into_tensors();
        let keys: Vec<&str> = all.keys().map(String::as_str).collect();
        let chosen = choose_entry(&entry, &keys, true, path)?;
        let mut tensors = BTreeMap::new();
        for (key, tensor) in all {
            let Some(rest) = within(&chosen, &key) else { continue };
            let name = strip_wrapper_prefixes(rest).to_string();
            let mut t = bridge::from_pytorch(tensor);
            t.name = name.clone();
            tensors.insert(name, as_f32(t));
        }
        if tensors.is_empty() {
            return Err(format_err(path, "the checkpoint holds no tensors"));
        }
        Ok(Self { path: path.into(), entry: chosen, tensors, metadata: BTreeMap::new() })
    }

    fn open_safetensors(path: &Path, entry: Option<CheckpointEntry>) -> Result<Self, WeightsError> {
        let file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
        // SAFETY: the map is read-only and the file is not modified while we hold it.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_err(path, e))?;
        Self::from_safetensors_buffer(path, Arc::new(mmap), entry)
    }

    /// Opens a safetensors file of data tensors (latents), keeping every name exactly as written:
    /// no entry is selected and no `module.` / `_orig_mod.` prefix is stripped, so that distinct
    /// names stay distinct.
    pub fn open_verbatim(path: &Path) -> Result<Self, WeightsError> {
        check_regular(path)?;
        let mut magic = [0u8; 9];
        let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut magic)).map_err(|e| io_err(path, e))?;
        if n < 9 || magic[8] != b'{' {
            return Err(format_err(path, "not a safetensors file"));
        }
        Self::open_safetensors(path, None)
    }

    /// Reads safetensors bytes held in memory (e.g. weights embedded in the binary); `label` names
    /// them in messages.
    pub fn from_safetensors_bytes(label: &Path, bytes: &'static [u8]) -> Result<Self, WeightsError> {
        Self::from_safetensors_buffer(label, Arc::new(bytes), Some(CheckpointEntry::Auto))
    }

    /// `entry: None` keeps the names verbatim (see [`open_verbatim`](Self::open_verbatim)).
    fn from_safetensors_buffer<B>(
        path: &Path,
        mmap: Arc<B>,
        entry: Option<CheckpointEntry>,
    ) -> Result<Self, WeightsError>
    where
        B: std::ops::Deref<Target = [u8]> + Send + Sync + 'static,
    {
        let (_, meta) = safetensors::SafeTensors::read_metadata(&mmap[..]).map_err(|e| format_err(path, e))?;
        let metadata: BTreeMap<String, String> =
            meta.metadata().clone().map(|m| m.into_iter().collect()).unwrap_or_default();
        let parsed = safetensors::SafeTensors::deserialize(&mmap[..]).map_err(|e| format_err(path, e))?;
        let names: Vec<String> = parsed.names().into_iter().map(|s| s.to_string()).collect();
        let verbatim = entry.is_none();
        let keys: Vec<&str> = names.iter().map(String::as_str).collect();
        let chosen = entry.as_ref().map_or(Ok(String::new()), |e| choose_entry(e, &keys, false, path))?;
        let mut tensors = BTreeMap::new();
        for name in names {
            let view = parsed.tensor(&name).map_err(|e| format_err(path, e))?;
            let dtype = match view.dtype() {
                safetensors::Dtype::F32 => DType::F32,
                safetensors::Dtype::F16 => DType::F16,
                safetensors::Dtype::BF16 => DType::BF16,
                safetensors::Dtype::F64 => DType::F64,
                safetensors::Dtype::I64 => DType::I64,
                safetensors::Dtype::I32 => DType::I32,
                other => return Err(format_err(path, format!("tensor `{name}` has unsupported dtype {other:?}"))),
            };
            let Some(rest) = within(&chosen, &name) else { continue };
            let key = if verbatim { rest.to_string() } else { strip_wrapper_prefixes(rest).to_string() };
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
        Ok(Self { path: path.into(), entry: chosen, tensors, metadata })
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
        let t = self.tensors.get(key).ok_or_else(|| self.invalid(format!("no tensor `{key}`")))?;
        let data = bridge::to_data(t).map_err(|e| format_err(&self.path, format!("{key}: {e}")))?;
        data.try_into_vec_as::<f32>().map_err(|e| format_err(&self.path, format!("{key}: {e:?}")))
    }

    /// Reads one tensor as f32 values, refusing NaN and infinite values (latents, statistics,
    /// optimizer moments).
    pub fn read_f32_finite(&self, key: &str) -> Result<Vec<f32>, WeightsError> {
        let v = self.read_f32(key)?;
        let count = v.iter().filter(|x| !x.is_finite()).count();
        if count > 0 {
            return Err(WeightsError::NonFinite {
                path: self.path.clone(),
                key: key.to_string(),
                count,
                more: String::new(),
            });
        }
        Ok(v)
    }

    /// An [`WeightsError::Invalid`] about this file.
    pub(crate) fn invalid(&self, message: impl Into<String>) -> WeightsError {
        WeightsError::Invalid { path: self.path.clone(), message: message.into() }
    }

    /// Refuses a file whose `rectok.kind` metadata names another kind of model than `kind`.
    pub(crate) fn check_kind(&self, kind: &str) -> Result<(), WeightsError> {
        match self.metadata.get(super::tokenizer::META_KIND) {
            Some(found) if found != kind => Err(self.invalid(format!("this file holds a {found}, not a {kind}"))),
            _ => Ok(()),
        }
    }

    /// The JSON value of the metadata `key`, if present.
    pub(crate) fn metadata_json<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, WeightsError> {
        let parse =
            |s: &String| serde_json::from_str(s).map_err(|e| self.invalid(format!("corrupt `{key}` metadata: {e}")));
        self.metadata.get(key).map(parse).transpose()
    }

    /// Number of distinct `i` in keys `prefix.{i}.…`.
    pub fn count_indexed(&self, prefix: &str) -> usize {
        let p = format!("{prefix}.");
        let idx: BTreeSet<usize> =
            self.keys_with_prefix(&p).filter_map(|k| k[p.len()..].split('.').next()?.parse().ok()).collect();
        idx.len()
    }
}
