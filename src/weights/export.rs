//! Writing safetensors files atomically (temp file in the same folder, then rename).

use super::KeyMap;
use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot, bridge};
use burn::tensor::TensorData;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// Writes `tensors` (name, data) with `metadata` to `path`, via a temporary file renamed into
/// place only when complete, so an interrupted write never leaves a partial file.
pub fn write_safetensors(
    path: &Path,
    tensors: Vec<(String, TensorData)>,
    metadata: HashMap<String, String>,
) -> anyhow::Result<()> {
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
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary sibling file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".rectok-tmp-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes).with_context(|| format!("writing {}", path.display()))?;
    tmp.as_file().sync_all().ok();
    tmp.persist(path).map_err(|e| e.error).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
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
