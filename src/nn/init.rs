//! Parameter initialisation by rule, applied to a whole module after construction.
//!
//! The reference initialises its tokenizer in one `apply(_init_weights)` pass (docs/MODELS.md
//! §1.10): every Linear/Conv weight `trunc_normal(0, 0.02)` with biases 0,
//! positional embeddings and mask tokens `width^-0.5·N(0, 1)`, norms 1. [`InitRules`] describes
//! such a scheme and [`initialize`] walks a module and draws every parameter from a seeded [`Rng`],
//! so initialisation is reproducible and independent of burn's own random source.

use crate::rng::Rng;
use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;

/// How one parameter is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ParamInit {
    /// All zeros.
    Zeros,
    /// All ones.
    Ones,
    /// Normal(0, std) truncated to [−2, 2] absolute (PyTorch's `trunc_normal_` defaults).
    TruncNormal(f64),
    /// Normal(0, std).
    Normal(f64),
    /// Uniform(−bound, bound).
    Uniform(f64),
    /// Leave the current value.
    Keep,
}

/// Decides the initialisation of a parameter from its module path, the type of the module that
/// declares it (`"Struct:Linear"`) and its shape.
pub trait InitRules {
    /// The rule for one parameter.
    fn rule(&self, path: &str, module_type: &str, shape: &[usize]) -> ParamInit;
}

/// The reference tokenizer scheme (`RecTok._init_weights`).
pub struct TokenizerInit;

impl InitRules for TokenizerInit {
    fn rule(&self, path: &str, module_type: &str, shape: &[usize]) -> ParamInit {
        let name = path.rsplit('.').next().unwrap_or(path);
        match (module_type, name) {
            ("Struct:Linear" | "Struct:Conv2d", "weight") => ParamInit::TruncNormal(0.02),
            ("Struct:Linear" | "Struct:Conv2d", "bias") => ParamInit::Zeros,
            ("Struct:RmsNorm", _) => ParamInit::Ones,
            (_, "positional_embedding" | "mask_token") => {
                ParamInit::Normal((*shape.last().unwrap_or(&1) as f64).powf(-0.5))
            }
            (_, "mask_embedding") => ParamInit::Zeros,
            _ => ParamInit::Keep,
        }
    }
}

/// PyTorch's default `nn.Linear` / `nn.Conv2d` initialisation (Kaiming-uniform with a = √5, bias
/// U(±1/√fan_in)), used by the reference for modules it does not re-initialise.
pub struct TorchDefaultInit;

impl InitRules for TorchDefaultInit {
    fn rule(&self, _path: &str, module_type: &str, shape: &[usize]) -> ParamInit {
        match module_type {
            // burn stores Linear weights as [in, out]; conv weights as [out, in, k, k].
            "Struct:Linear" => ParamInit::Uniform(1.0 / (shape[0] as f64).sqrt()),
            "Struct:Conv2d" if shape.len() == 4 => {
                ParamInit::Uniform(1.0 / ((shape[1] * shape[2] * shape[3]) as f64).sqrt())
            }
            "Struct:RmsNorm" => ParamInit::Ones,
            _ => ParamInit::Keep,
        }
    }
}

/// Every parameter `N(0, std)`, norms 1: random weights for benchmarks and tests, where the
/// reference's zero-initialised layers would make whole paths vanish.
pub struct NormalInit(pub f64);

impl InitRules for NormalInit {
    fn rule(&self, _path: &str, module_type: &str, _shape: &[usize]) -> ParamInit {
        match module_type {
            "Struct:RmsNorm" => ParamInit::Ones,
            _ => ParamInit::Normal(self.0),
        }
    }
}

struct Initializer<'a, R: InitRules> {
    rules: &'a R,
    rng: &'a mut Rng,
    path: Vec<String>,
    types: Vec<String>,
    /// Fan-in of the Linear/Conv whose weight was last drawn, for its bias under torch defaults.
    last_fan_in: Option<usize>,
}

impl<R: InitRules> Initializer<'_, R> {
    fn draw(&mut self, rule: ParamInit, n: usize) -> Option<Vec<f32>> {
        let rng = &mut *self.rng;
        Some(match rule {
            ParamInit::Keep => return None,
            ParamInit::Zeros => vec![0.0; n],
            ParamInit::Ones => vec![1.0; n],
            ParamInit::Normal(std) => (0..n).map(|_| (rng.normal() * std) as f32).collect(),
            ParamInit::TruncNormal(std) => (0..n)
                .map(|_| {
                    std::iter::repeat_with(|| rng.normal() * std).find(|v| (-2.0..=2.0).contains(v)).unwrap() as f32
                })
                .collect(),
            ParamInit::Uniform(b) => (0..n).map(|_| rng.uniform_range(-b, b) as f32).collect(),
        })
    }
}

impl<R: InitRules> ModuleMapper for Initializer<'_, R> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push(name.to_string());
        self.types.push(container_type.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
        self.types.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.path.join(".");
        let module_type = self.types.last().cloned().unwrap_or_default();
        let shape = param.lazy_shape().to_vec();
        let mut rule = self.rules.rule(&path, &module_type, &shape);
        let name = path.rsplit('.').next().unwrap_or("");
        if name == "weight" && matches!(module_type.as_str(), "Struct:Linear" | "Struct:Conv2d") {
            self.last_fan_in = Some(match shape.len() {
                2 => shape[0],
                _ => shape[1..].iter().product(),
            });
        } else if name == "bias"
            && matches!(rule, ParamInit::Uniform(_))
            && let Some(fan_in) = self.last_fan_in
        {
            // A bias under torch defaults is bounded by its layer's fan-in, not by its own length.
            rule = ParamInit::Uniform(1.0 / (fan_in as f64).sqrt());
        }
        match self.draw(rule, shape.iter().product()) {
            None => param,
            Some(values) => param.map(|t| Tensor::from_data(TensorData::new(values, shape), &t.device())),
        }
    }
}

/// Re-draws every parameter of `module` under `rules` from `rng`.
pub fn initialize<M: Module, R: InitRules>(module: M, rules: &R, rng: &mut Rng) -> M {
    let mut init = Initializer { rules, rng, path: Vec::new(), types: Vec::new(), last_fan_in: None };
    module.map(&mut init)
}
