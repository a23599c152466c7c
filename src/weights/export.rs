//! Writing safetensors files atomically (temp file in the same folder, then rename), with the
//! header in a stable order so that the same tensors and metadata give the same bytes.

use super::KeyMap;
use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot, bridge};
use burn::tensor::TensorData;
use std::collections::HashMap;
use std::path::Path;

/// Writes `tensors` (name, data) with `metadata` to `path`, via a temporary file renamed into
/// place only when complete, so an interrupted write never leaves a partial file.
pub fn write_safetensors(
    path: &Path,
    tensors: Vec<(String, TensorData)>,
    metadata: HashMap<String, String>,
) -> anyhow::Result<()> {
    crate::io::write_atomic(path, &safetensors_bytes(tensors, metadata)?)
}

/// The bytes of a safetensors file of `tensors` (name, data) with `metadata`, its header in a
/// stable order: what [`write_safetensors`] writes (`rectok serve` answers with them).
pub fn safetensors_bytes(
    tensors: Vec<(String, TensorData)>,
    metadata: HashMap<String, String>,
) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, data)| {
            let dtype = match data.dtype() {
                burn::tensor::DType::F32 => safetensors::Dtype::F32,
                burn::tensor::DType::F16 => safetensors::Dtype::F16,
                burn::tensor::DType::BF16 => safetensors::Dtype::BF16,
                burn::tensor::DType::F64 => safetensors::Dtype::F64,
                burn::tensor::DType::I64 => safetensors::Dtype::I64,
                burn::tensor::DType::I32 => safetensors::Dtype::I32,
                other => anyhow::bail!("tensor `{name}` has unsupported dtype {other:?}"),
            };
            let view = safetensors::tensor::TensorView::new(dtype, data.shape().to_vec(), data.as_bytes())
                .with_context(|| format!("tensor `{name}`"))?;
            Ok((name.clone(), view))
        })
        .collect::<anyhow::Result<_>>()?;
    let bytes = safetensors::tensor::serialize(views, Some(metadata)).context("serialising safetensors")?;
    stable_header(bytes)
}

/// The same safetensors file with its JSON header's keys sorted (the `safetensors` crate writes
/// the metadata from a `HashMap`, in a different order at every run). Data offsets are relative
/// to the end of the header, so only the header and its length change; the header stays padded
/// to 8 bytes as the format asks.
fn stable_header(bytes: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8-byte length")) as usize;
    // serde_json's map is sorted by key (no `preserve_order` feature).
    let header: serde_json::Value =
        serde_json::from_slice(&bytes[8..8 + n]).map_err(|e| anyhow::anyhow!("safetensors header: {e}"))?;
    let mut text = serde_json::to_vec(&header)?;
    text.resize(text.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + text.len() + bytes.len() - 8 - n);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    Ok(out)
}

/// Writes a module's tensors under their reference names (PyTorch layout) to a safetensors file.
pub fn write_safetensors_from_module<M: ModuleSnapshot>(
    module: &M,
    map: &KeyMap,
    path: &Path,
    metadata: HashMap<String, String>,
) -> anyhow::Result<()> {
    let mut tensors = Vec::new();
    for t in module.collect(None, Some(Box::new(BurnToPyTorchAdapter)), true) {
        let name = map.to_reference(&t.name);
        let data = bridge::into_data(t).map_err(|e| anyhow::anyhow!("reading `{name}`: {e:?}"))?;
        tensors.push((name, data));
    }
    write_safetensors(path, tensors, metadata)
}
