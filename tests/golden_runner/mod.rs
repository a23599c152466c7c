//! Case loading, comparison and dispatch for the golden harness.

mod generator;
mod teacher;
mod tokenizer;
mod training;

use burn::prelude::*;
use rectok::weights::{CheckpointEntry, StateDict};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The device the cases run on: `$RECTOK_GOLDEN_DEVICE` (`cpu`, `vulkan`, `vulkan:N`, `cuda`, …;
/// default `cpu`), so that the same cases prove a GPU backend against the reference.
pub fn golden_device() -> Device {
    let name = std::env::var("RECTOK_GOLDEN_DEVICE").unwrap_or_else(|_| "cpu".into());
    let choice: rectok::device::DeviceChoice =
        name.parse().unwrap_or_else(|e| panic!("RECTOK_GOLDEN_DEVICE={name}: {e}"));
    rectok::device::select_device(choice).unwrap_or_else(|e| panic!("RECTOK_GOLDEN_DEVICE={name}: {e}"))
}

/// A host tensor from a case file or produced by us.
#[derive(Clone, Debug)]
pub enum HostTensor {
    F32(Vec<usize>, Vec<f32>),
    I64(Vec<usize>, Vec<i64>),
}

impl HostTensor {
    pub fn shape(&self) -> &[usize] {
        match self {
            Self::F32(s, _) | Self::I64(s, _) => s,
        }
    }

    fn values_f64(&self) -> Vec<f64> {
        match self {
            Self::F32(_, v) => v.iter().map(|&x| x as f64).collect(),
            Self::I64(_, v) => v.iter().map(|&x| x as f64).collect(),
        }
    }
}

/// A loaded case: its JSON, its tensors, and the outputs we produce.
pub struct Case {
    pub name: String,
    pub json: Value,
    pub file: PathBuf,
    pub tensors: BTreeMap<String, HostTensor>,
    pub device: Device,
    pub outputs: BTreeMap<String, HostTensor>,
}

type CaseResult<T> = Result<T, String>;

impl Case {
    fn load(json_path: &Path) -> CaseResult<Self> {
        let json: Value = serde_json::from_str(
            &std::fs::read_to_string(json_path).map_err(|e| format!("{}: {e}", json_path.display()))?,
        )
        .map_err(|e| format!("{}: {e}", json_path.display()))?;
        let file = json_path.with_extension("safetensors");
        let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let shape = view.shape().to_vec();
            let data = view.data();
            let t = match view.dtype() {
                safetensors::Dtype::F32 => HostTensor::F32(
                    shape,
                    data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
                ),
                safetensors::Dtype::I64 => HostTensor::I64(
                    shape,
                    data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
                ),
                other => return Err(format!("{name}: unsupported dtype {other:?}")),
            };
            tensors.insert(name, t);
        }
        let name = json["case"].as_str().unwrap_or_default().to_string();
        Ok(Self { name, json, file, tensors, device: golden_device(), outputs: BTreeMap::new() })
    }

    /// The case's `param.*` tensors as a state dict with the reference's relative keys.
    pub fn params(&self) -> CaseResult<StateDict> {
        let sd = StateDict::open(&self.file, CheckpointEntry::Auto).map_err(|e| e.to_string())?;
        Ok(sd.subset("param."))
    }

    pub fn constructor(&self) -> &Value {
        &self.json["constructor"]
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn input<const D: usize>(&self, name: &str) -> CaseResult<Tensor<D>> {
        match self.tensors.get(name) {
            Some(HostTensor::F32(shape, v)) => {
                if shape.len() != D {
                    return Err(format!("{name} has rank {}, expected {D}", shape.len()));
                }
                Ok(Tensor::from_data(TensorData::new(v.clone(), shape.clone()), &self.device))
            }
            Some(HostTensor::I64(..)) => Err(format!("{name} is an integer tensor")),
            None => Err(format!("input {name} is missing from the case file")),
        }
    }

    pub fn input_int<const D: usize>(&self, name: &str) -> CaseResult<Tensor<D, Int>> {
        match self.tensors.get(name) {
            Some(HostTensor::I64(shape, v)) => {
                Ok(Tensor::from_data(TensorData::new(v.clone(), shape.clone()), &self.device))
            }
            _ => Err(format!("integer input {name} is missing from the case file")),
        }
    }

    pub fn input_host(&self, name: &str) -> CaseResult<Vec<f32>> {
        match self.tensors.get(name) {
            Some(HostTensor::F32(_, v)) => Ok(v.clone()),
            _ => Err(format!("input {name} is missing from the case file")),
        }
    }

    /// A `(B, L)` mask-noise input, kept on the host as the tokenizer draws it.
    pub fn mask_noise(&self, name: &str) -> CaseResult<rectok::tokenizer::MaskNoise> {
        match self.tensors.get(name) {
            Some(HostTensor::F32(shape, v)) if shape.len() == 2 => {
                Ok(rectok::tokenizer::MaskNoise { values: v.clone(), seq_len: shape[1] })
            }
            Some(_) => Err(format!("{name} is not a (B, L) float tensor")),
            None => Err(format!("input {name} is missing from the case file")),
        }
    }

    pub fn put<const D: usize>(&mut self, name: &str, t: Tensor<D>) {
        let data = t.into_data();
        let shape = data.shape().to_vec();
        self.outputs.insert(name.to_string(), HostTensor::F32(shape, data.try_into_vec_as::<f32>().expect("f32")));
    }

    pub fn put_int<const D: usize>(&mut self, name: &str, t: Tensor<D, Int>) {
        let data = t.into_data();
        let shape = data.shape().to_vec();
        self.outputs.insert(name.to_string(), HostTensor::I64(shape, data.try_into_vec_as::<i64>().expect("i64")));
    }

    pub fn put_host(&mut self, name: &str, shape: Vec<usize>, v: Vec<f32>) {
        self.outputs.insert(name.to_string(), HostTensor::F32(shape, v));
    }

    pub fn put_trace(&mut self, prefix: &str, trace: rectok::trace::Trace) {
        for (name, data) in trace.into_entries() {
            let shape = data.shape().to_vec();
            self.outputs
                .insert(format!("{prefix}{name}"), HostTensor::F32(shape, data.try_into_vec_as::<f32>().expect("f32")));
        }
    }
}

/// Tolerance of one output tensor.
#[derive(Clone, Copy, Debug)]
enum Tolerance {
    Exact,
    Close { atol: f64, rtol: f64 },
}

fn tolerance_of(json: &Value, name: &str) -> Tolerance {
    let parse = |v: &Value| -> Option<Tolerance> {
        if v.as_str() == Some("exact") {
            return Some(Tolerance::Exact);
        }
        Some(Tolerance::Close { atol: v["atol"].as_f64()?, rtol: v["rtol"].as_f64()? })
    };
    let tol = &json["tolerance"];
    tol["per_tensor"]
        .get(name)
        .and_then(parse)
        .or_else(|| parse(&tol["default"]))
        .unwrap_or(Tolerance::Close { atol: 1e-4, rtol: 1e-4 })
}

struct CaseOutcome {
    max_abs: f64,
    max_rel: f64,
    compared: usize,
    failures: Vec<String>,
}

fn compare(case: &Case) -> CaseOutcome {
    let mut out = CaseOutcome { max_abs: 0.0, max_rel: 0.0, compared: 0, failures: Vec::new() };
    let verbose = std::env::var_os("RECTOK_GOLDEN_VERBOSE").is_some();
    for (name, want) in case.tensors.iter().filter(|(n, _)| n.starts_with("out.")) {
        let Some(got) = case.outputs.get(name) else {
            out.failures.push(format!("{name}: not produced"));
            continue;
        };
        if got.shape() != want.shape() {
            out.failures.push(format!("{name}: shape {:?}, expected {:?}", got.shape(), want.shape()));
            continue;
        }
        out.compared += 1;
        let tol = tolerance_of(&case.json, name);
        let (g, w) = (got.values_f64(), want.values_f64());
        let mut bad = 0usize;
        let mut first_bad = None;
        for (i, (&a, &b)) in g.iter().zip(w.iter()).enumerate() {
            let d = (a - b).abs();
            out.max_abs = out.max_abs.max(d);
            // Relative error where it means something (|want| ≥ 1e-3); near-zero values are
            // judged by the absolute tolerance.
            if b.abs() >= 1e-3 {
                out.max_rel = out.max_rel.max(d / b.abs());
            }
            let ok = match tol {
                Tolerance::Exact => a == b,
                Tolerance::Close { atol, rtol } => d <= atol + rtol * b.abs() && a.is_finite(),
            };
            if !ok {
                bad += 1;
                first_bad.get_or_insert((i, a, b));
            }
        }
        if verbose {
            let m = g.iter().zip(w.iter()).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            println!("        {name}: max abs {m:.3e}");
        }
        if let Some((i, a, b)) = first_bad {
            out.failures.push(format!(
                "{name}: {bad} of {} values out of tolerance {tol:?} (first at {i}: got {a}, want {b})",
                g.len()
            ));
        }
    }
    out
}

fn run_case(case: &mut Case) -> CaseResult<()> {
    match case.name.as_str() {
        "rope_table" => tokenizer::rope_table(case),
        "encoder_eval" => tokenizer::encoder_eval(case),
        "encoder_masked" => tokenizer::encoder_masked(case),
        "decoder" => tokenizer::decoder(case),
        "sem_decoder_transformer" => tokenizer::sem_decoder_transformer(case),
        "sem_decoder_mlp" => tokenizer::sem_decoder_mlp(case),
        "posterior" => tokenizer::posterior(case),
        "rectok_encode_train" => tokenizer::rectok_encode_train(case),
        "rectok_tokenize" => tokenizer::rectok_tokenize(case),
        "dit_ddt" => generator::dit_ddt(case),
        "transport" => generator::transport(case),
        "timestep_shift" => generator::timestep_shift(case),
        "dinov3_vit" => teacher::dinov3_vit(case),
        "teacher_preprocess" => teacher::teacher_preprocess(case),
        "rectok_forward_train" => training::rectok_forward_train(case),
        "tokenizer_loss" => training::tokenizer_loss(case),
        other => Err(format!("no runner for case '{other}'")),
    }
}

/// Runs every case of `dir`; returns the process exit code.
pub fn run_dir(dir: &Path) -> i32 {
    let mut jsons: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => {
            rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == "json")).collect()
        }
        Err(e) => {
            eprintln!("golden: cannot read {}: {e}", dir.display());
            return 1;
        }
    };
    jsons.sort();
    if jsons.is_empty() {
        eprintln!("golden: no cases in {}", dir.display());
        return 1;
    }
    println!("golden: {} cases from {}", jsons.len(), dir.display());
    let mut failed = 0;
    for path in &jsons {
        let stem = path.file_stem().unwrap_or_default().to_string_lossy().to_string();
        let result = Case::load(path).and_then(|mut case| {
            let t = std::time::Instant::now();
            run_case(&mut case)?;
            Ok((compare(&case), t.elapsed()))
        });
        match result {
            Ok((o, dt)) if o.failures.is_empty() => {
                println!(
                    "ok    {stem:<28} max_abs {:.3e}  max_rel {:.3e}  ({} tensors, {:.2}s)",
                    o.max_abs,
                    o.max_rel,
                    o.compared,
                    dt.as_secs_f64()
                );
            }
            Ok((o, _)) => {
                failed += 1;
                println!("FAIL  {stem:<28} max_abs {:.3e}  max_rel {:.3e}", o.max_abs, o.max_rel);
                for f in o.failures {
                    println!("        {f}");
                }
            }
            Err(e) => {
                failed += 1;
                println!("FAIL  {stem:<28} cannot run: {e}");
            }
        }
    }
    if failed > 0 {
        println!("golden: {failed} of {} cases failed", jsons.len());
        1
    } else {
        println!("golden: all {} cases passed", jsons.len());
        0
    }
}
