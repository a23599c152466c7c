//! Applying a [`StateDict`] to a burn module by name, with clear reports of what did not fit.

use super::{StateDict, WeightsError};
use burn::store::burn_pack::Tensor as PackTensor;
use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter};
use std::collections::{BTreeMap, BTreeSet};

/// Bidirectional renames between reference state-dict keys and module paths (with PyTorch
/// parameter names: `weight`, not `gamma`): prefix rules, and infix rules for a segment that
/// recurs inside many keys (`blocks.{i}.adaLN_modulation.1.`). Keys matching no rule are the
/// same in both.
#[derive(Clone, Debug, Default)]
pub struct KeyMap {
    rules: Vec<(String, String)>,
    infixes: Vec<(String, String)>,
}

impl KeyMap {
    /// An identity map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a rule: keys starting with `reference` correspond to paths starting with `module`.
    pub fn prefix(mut self, reference: impl Into<String>, module: impl Into<String>) -> Self {
        self.rules.push((reference.into(), module.into()));
        self
    }

    /// Adds a rule: the segment `reference` (e.g. `.adaLN_modulation.1.`) anywhere in a key is
    /// `module` in the path.
    pub fn infix(mut self, reference: impl Into<String>, module: impl Into<String>) -> Self {
        self.infixes.push((reference.into(), module.into()));
        self
    }

    /// Adds the rules of `inner` under a reference prefix and a module prefix.
    pub fn nest(mut self, reference: &str, module: &str, inner: &KeyMap) -> Self {
        for (r, m) in &inner.rules {
            self.rules.push((format!("{reference}{r}"), format!("{module}{m}")));
        }
        self.infixes.extend(inner.infixes.iter().cloned());
        self
    }

    fn rewrite(&self, key: &str, forward: bool) -> String {
        let best = self
            .rules
            .iter()
            .map(|(r, m)| if forward { (r, m) } else { (m, r) })
            .filter(|(from, _)| key.starts_with(from.as_str()))
            .max_by_key(|(from, _)| from.len());
        let mut out = match best {
            Some((from, to)) => format!("{to}{}", &key[from.len()..]),
            None => key.to_string(),
        };
        for (r, m) in &self.infixes {
            let (from, to) = if forward { (r, m) } else { (m, r) };
            out = out.replacen(from.as_str(), to, 1);
        }
        out
    }

    /// Reference key → module path.
    pub fn to_module(&self, key: &str) -> String {
        self.rewrite(key, true)
    }

    /// Module path → reference key.
    pub fn to_reference(&self, path: &str) -> String {
        self.rewrite(path, false)
    }
}

/// What a load did, for logs.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    /// The checkpoint entry read (`model_ema`, `model`, or empty for a bare state dict).
    pub entry: String,
    /// Tensors written into the module.
    pub applied: usize,
    /// Optional module tensors the file did not have (e.g. the semantic decoder).
    pub missing_optional: Vec<String>,
    /// File tensors the module has no place for (reference names), ignored as the reference's
    /// non-strict loader does.
    pub unused: Vec<String>,
    /// File tensors skipped on purpose (teacher copies, other teachers' decoders).
    pub ignored: usize,
}

/// Loads `sd` into `module`.
///
/// * keys starting with one of `ignore` are skipped silently;
/// * module tensors under one of `optional` (module paths) may be absent;
/// * any other absent tensor is an error naming the first one, and a shape mismatch is an error
///   naming the key and both shapes; extra file tensors are reported in [`LoadReport::unused`].
pub fn load_into<M: ModuleSnapshot>(
    module: &mut M,
    sd: &StateDict,
    map: &KeyMap,
    optional: &[&str],
    ignore: &[&str],
    hint: &str,
) -> Result<LoadReport, WeightsError> {
    // The module's tensors as the reference would name and shape them, in module order.
    let ordered: Vec<(String, Vec<usize>)> = module
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), true)
        .into_iter()
        .map(|t| (map.to_reference(&t.name), t.shape.to_vec()))
        .collect();
    let expected: BTreeMap<String, Vec<usize>> = ordered.iter().cloned().collect();
    let mut report = LoadReport { entry: sd.entry.clone(), ..Default::default() };
    let mut tensors: Vec<PackTensor> = Vec::new();
    let mut provided = BTreeSet::new();
    let non_finite: NonFiniteLog = Default::default();
    for (key, tensor) in &sd.tensors {
        if ignore.iter().any(|p| key.starts_with(p)) {
            report.ignored += 1;
            continue;
        }
        match expected.get(key) {
            Some(shape) => {
                if &tensor.shape.to_vec() != shape {
                    return Err(WeightsError::Shape {
                        path: sd.path.clone(),
                        key: key.clone(),
                        found: tensor.shape.to_vec(),
                        expected: shape.clone(),
                    });
                }
                tensors.push(finite_checked(tensor.clone(), map.to_module(key), key.clone(), &non_finite));
                provided.insert(key.clone());
            }
            None => report.unused.push(key.clone()),
        }
    }
    let mut missing = Vec::new();
    for (key, _) in &ordered {
        if provided.contains(key) {
            continue;
        }
        let path = map.to_module(key);
        if optional.iter().any(|p| path.starts_with(p)) {
            report.missing_optional.push(key.clone());
        } else {
            missing.push(key.clone());
        }
    }
    if let Some(first) = missing.first() {
        let mut hint = hint.to_string();
        if provided.is_empty() && sd.entry.is_empty() {
            let tops: BTreeSet<&str> =
                sd.tensors.keys().map(|k| k.split_once('.').map_or(k.as_str(), |(t, _)| t)).collect();
            let tops: Vec<&str> = tops.into_iter().take(12).collect();
            hint.push_str(&format!(
                "; nothing in the file matched (its top-level names: {}) — if the weights sit under one of them, name it \
                 with --entry",
                tops.join(", ")
            ));
        }
        return Err(WeightsError::MissingKey { path: sd.path.clone(), key: first.clone(), count: missing.len(), hint });
    }
    let result = module.apply(tensors, None, Some(Box::new(PyTorchToBurnAdapter)), true);
    if let Some(err) = result.errors.first() {
        return Err(WeightsError::Invalid { path: sd.path.clone(), message: err.to_string() });
    }
    let bad = std::mem::take(&mut *non_finite.lock().expect("log"));
    if let Some((key, count)) = bad.iter().min() {
        let more = if bad.len() > 1 { format!(" (and {} more tensors)", bad.len() - 1) } else { String::new() };
        return Err(WeightsError::NonFinite { path: sd.path.clone(), key: key.clone(), count: *count, more });
    }
    report.applied = result.applied.len();
    Ok(report)
}

/// Tensors found to hold non-finite values, with their counts.
type NonFiniteLog = std::sync::Arc<std::sync::Mutex<Vec<(String, usize)>>>;

/// `tensor` renamed to `name`, counting its NaN and infinite values into `log` when its bytes are
/// read: the check rides on the one read the load makes anyway.
fn finite_checked(tensor: PackTensor, name: String, key: String, log: &NonFiniteLog) -> PackTensor {
    let (dtype, shape) = (tensor.dtype, tensor.shape.clone());
    let log = log.clone();
    burn::store::bridge::deferred(name, dtype, shape, tensor.param_id, move || {
        let data = burn::store::bridge::to_data(&tensor)?;
        let count = match data.as_slice::<f32>() {
            Ok(v) => v.iter().filter(|x| !x.is_finite()).count(),
            Err(_) => 0,
        };
        if count > 0 {
            log.lock().expect("log").push((key.clone(), count));
        }
        Ok(data)
    })
}
