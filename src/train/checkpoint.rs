//! Crash-safe training checkpoints.
//!
//! A checkpoint is a folder `RUN/checkpoints/step_XXXXXXXX/` written under a temporary name and
//! renamed into place only when every file in it is complete; `RUN/checkpoints/latest` (itself
//! written atomically) names the newest one. A crash at any moment therefore leaves either the
//! previous checkpoint or the new one, never a partial folder that `--resume` would read.

use super::optim::{AdamW, AdamWConfig};
use crate::io::write_atomic;
use crate::weights::{CheckpointEntry, StateDict, write_safetensors};
use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The checkpoint folders of a run.
#[derive(Clone, Debug)]
pub struct CheckpointStore {
    dir: PathBuf,
    keep: usize,
}

const LATEST: &str = "latest";

impl CheckpointStore {
    /// The store of run folder `run_dir`, keeping the newest `keep` checkpoints.
    pub fn new(run_dir: &Path, keep: usize) -> Self {
        Self { dir: run_dir.join("checkpoints"), keep: keep.max(1) }
    }

    /// Folder of the checkpoint after `step` optimizer steps (whether or not it exists).
    pub fn path(&self, step: usize) -> PathBuf {
        self.dir.join(Self::name(step))
    }

    /// Folder name of the checkpoint after `step` optimizer steps.
    pub fn name(step: usize) -> String {
        format!("step_{step:08}")
    }

    /// Writes a checkpoint: `write` fills a temporary folder, which is then renamed to
    /// `step_XXXXXXXX`, recorded as `latest`, and older checkpoints beyond `keep` are removed.
    pub fn save(&self, step: usize, write: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
        let name = Self::name(step);
        let done = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).with_context(|| format!("removing stale {}", tmp.display()))?;
        }
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        write(&tmp).with_context(|| format!("writing checkpoint {}", done.display()))?;
        if done.exists() {
            std::fs::remove_dir_all(&done).with_context(|| format!("replacing {}", done.display()))?;
        }
        std::fs::rename(&tmp, &done).with_context(|| format!("renaming {} to {}", tmp.display(), done.display()))?;
        sync_dir(&self.dir);
        write_atomic(&self.dir.join(LATEST), name.as_bytes())?;
        sync_dir(&self.dir);
        self.prune(&name)?;
        Ok(done)
    }

    fn list(&self) -> Result<Vec<(usize, PathBuf)>> {
        let mut found = Vec::new();
        if !self.dir.exists() {
            return Ok(found);
        }
        for entry in std::fs::read_dir(&self.dir).with_context(|| format!("listing {}", self.dir.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().to_string();
            if let Some(step) = name.strip_prefix("step_").and_then(|s| s.parse::<usize>().ok())
                && entry.path().join("state.json").exists()
            {
                found.push((step, entry.path()));
            }
        }
        found.sort();
        Ok(found)
    }

    fn prune(&self, newest: &str) -> Result<()> {
        let all = self.list()?;
        let excess = all.len().saturating_sub(self.keep);
        for (_, path) in all.into_iter().take(excess) {
            if let Some(name) = path.file_name().map(|n| n.to_string_lossy().to_string())
                && name != newest
            {
                // Renamed out of the way first: a kill during the removal leaves a hidden folder
                // (removed at the next start), never a half-deleted `step_*` that looks complete.
                let doomed = self.dir.join(format!(".{name}.deleting"));
                std::fs::rename(&path, &doomed)
                    .with_context(|| format!("removing old checkpoint {}", path.display()))?;
                std::fs::remove_dir_all(&doomed)
                    .with_context(|| format!("removing old checkpoint {}", path.display()))?;
            }
        }
        Ok(())
    }

    /// The complete checkpoint of `step`, if there is one.
    pub fn get(&self, step: usize) -> Option<PathBuf> {
        let path = self.dir.join(Self::name(step));
        path.join("state.json").exists().then_some(path)
    }

    /// The newest complete checkpoint: the one `latest` names, else the highest step present.
    pub fn latest(&self) -> Result<Option<PathBuf>> {
        if let Ok(name) = std::fs::read_to_string(self.dir.join(LATEST)) {
            let path = self.dir.join(name.trim());
            if path.join("state.json").exists() {
                return Ok(Some(path));
            }
        }
        Ok(self.list()?.pop().map(|(_, p)| p))
    }
}

/// Makes a rename in `dir` durable (best effort: not every filesystem supports it).
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

impl AdamW {
    /// Writes the moments and step counts.
    pub fn save(&self, path: &Path) -> Result<()> {
        let moments = [("exp_avg", &self.exp_avg), ("exp_avg_sq", &self.exp_avg_sq)];
        let tensors: BTreeMap<String, TensorData> = moments
            .iter()
            .flat_map(|(m, t)| {
                t.iter().map(move |(k, v)| (format!("{m}.{k}"), crate::device::read_back(v.clone().without_autodiff())))
            })
            .collect();
        let meta = HashMap::from([
            ("steps".into(), serde_json::to_string(&self.steps)?),
            ("config".into(), serde_json::to_string(&self.config)?),
        ]);
        write_safetensors(path, tensors.into_iter().collect(), meta)
    }

    /// Reads a state written by [`save`](Self::save), on `device`.
    pub fn load(path: &Path, config: AdamWConfig, device: &Device) -> Result<Self> {
        let sd = StateDict::open(path, CheckpointEntry::Auto)?;
        let tensors: BTreeMap<&String, Vec<f32>> =
            sd.keys_with_prefix("").map(|k| Ok((k, sd.read_f32_finite(k)?))).collect::<Result<_>>()?;
        let steps = sd
            .metadata
            .get("steps")
            .ok_or_else(|| anyhow!("{}: not an optimizer state (no `steps`)", path.display()))?;
        let mut opt = Self::new(config);
        opt.steps = serde_json::from_str(steps).with_context(|| format!("{}: corrupt `steps`", path.display()))?;
        for (k, v) in tensors {
            let n = v.len();
            let t = Tensor::<1>::from_data(TensorData::new(v, [n]), device);
            if let Some(p) = k.strip_prefix("exp_avg_sq.") {
                opt.exp_avg_sq.insert(p.to_string(), t);
            } else if let Some(p) = k.strip_prefix("exp_avg.") {
                opt.exp_avg.insert(p.to_string(), t);
            } else {
                bail!("{}: unexpected optimizer tensor `{k}`", path.display());
            }
        }
        Ok(opt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_keeps_the_newest_and_survives_partial_folders() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path(), 2);
        for step in [10, 20, 30] {
            store.save(step, |d| Ok(std::fs::write(d.join("state.json"), format!("{step}"))?)).unwrap();
        }
        let names: Vec<_> = store.list().unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(names, vec![20, 30]);
        // A crash while writing leaves a hidden temporary folder that is never resumed from.
        std::fs::create_dir_all(dir.path().join("checkpoints/.step_00000040.tmp")).unwrap();
        assert_eq!(store.latest().unwrap().unwrap().file_name().unwrap(), "step_00000030");
        // A failed write keeps the previous checkpoint as the latest.
        assert!(store.save(40, |_| bail!("disk full")).is_err());
        assert_eq!(store.latest().unwrap().unwrap().file_name().unwrap(), "step_00000030");
    }

    #[test]
    fn adamw_state_round_trips_exactly() {
        let device = Device::flex();
        let mut opt = AdamW::new(AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 1e-4 });
        opt.exp_avg.insert("a.weight".into(), Tensor::from_data(TensorData::new(vec![0.1f32, -0.3], [2]), &device));
        opt.exp_avg_sq.insert("a.weight".into(), Tensor::from_data(TensorData::new(vec![1e-7f32, 2.5], [2]), &device));
        opt.steps.insert("a.weight".into(), 7);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("opt.safetensors");
        opt.save(&path).unwrap();
        let back = AdamW::load(&path, opt.config.clone(), &device).unwrap();
        assert_eq!(back.steps, opt.steps);
        assert_eq!(back.exp_avg["a.weight"].to_data().try_to_vec::<f32>().unwrap(), vec![0.1f32, -0.3]);
        assert_eq!(back.exp_avg_sq["a.weight"].to_data().try_to_vec::<f32>().unwrap(), vec![1e-7f32, 2.5]);
    }
}
