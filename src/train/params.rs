//! Walking a module's float parameters by path: reading values and gradients, writing new values.
//! The optimizer, the EMA and checkpoints are built on these two visitors.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::Gradients;
use std::collections::BTreeMap;

struct Paths {
    stack: Vec<String>,
}

impl Paths {
    fn enter(&mut self, name: &str, container_type: &str) {
        // Enum variants do not appear in state-dict paths.
        if !container_type.starts_with("Enum:") {
            self.stack.push(name.to_string());
        } else {
            self.stack.push(String::new());
        }
    }

    fn exit(&mut self) {
        self.stack.pop();
    }

    fn path(&self) -> String {
        self.stack.iter().filter(|s| !s.is_empty()).cloned().collect::<Vec<_>>().join(".")
    }
}

struct Reader<'a> {
    paths: Paths,
    grads: Option<&'a Gradients>,
    out: BTreeMap<String, (Vec<usize>, Tensor<1>)>,
}

impl ModuleVisitor for Reader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.paths.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.paths.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        let shape = value.dims().to_vec();
        let n = shape.iter().product::<usize>();
        let t = match self.grads {
            Some(g) => match value.grad(g) {
                Some(grad) => grad.reshape([n]),
                None => return,
            },
            None => value.without_autodiff().reshape([n]),
        };
        self.out.insert(self.paths.path(), (shape, t));
    }
}

/// Every float parameter (and running buffer) of `module`: path → (shape, flattened value on the
/// non-autodiff device).
pub fn values<M: Module>(module: &M) -> BTreeMap<String, (Vec<usize>, Tensor<1>)> {
    let mut r = Reader { paths: Paths { stack: Vec::new() }, grads: None, out: BTreeMap::new() };
    module.visit(&mut r);
    r.out
}

/// The gradients of `module`'s parameters in `grads`: path → flattened gradient.
pub fn gradients<M: Module>(module: &M, grads: &Gradients) -> BTreeMap<String, Tensor<1>> {
    let mut r = Reader { paths: Paths { stack: Vec::new() }, grads: Some(grads), out: BTreeMap::new() };
    module.visit(&mut r);
    r.out.into_iter().map(|(k, (_, g))| (k, g)).collect()
}

/// Replaces parameters by path with new flattened values (on the non-autodiff device), keeping
/// each parameter's identity and gradient tracking.
pub struct Writer<F: FnMut(&str, &[usize], Tensor<1>) -> Tensor<1>> {
    paths: Paths,
    update: F,
}

impl<F: FnMut(&str, &[usize], Tensor<1>) -> Tensor<1>> ModuleMapper for Writer<F> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.paths.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.paths.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.paths.path();
        let (id, tensor, mapper) = param.consume();
        let shape: [usize; D] = tensor.dims();
        let n = shape.iter().product::<usize>();
        let tracked = tensor.device().is_autodiff();
        let require_grad = tensor.is_require_grad();
        // The value is handed over, not cloned, so that an update can reuse its buffer.
        let new = (self.update)(&path, &shape, tensor.without_autodiff().reshape([n])).reshape(shape);
        let mut t = if tracked { new.autodiff() } else { new };
        if require_grad {
            t = t.require_grad();
        }
        Param::from_mapped_value(id, t, mapper)
    }
}

/// Applies `update(path, shape, current) -> new` to every float parameter (return `current` to
/// keep a value).
pub fn update<M: Module, F: FnMut(&str, &[usize], Tensor<1>) -> Tensor<1>>(module: M, update: F) -> M {
    let mut w = Writer { paths: Paths { stack: Vec::new() }, update };
    module.map(&mut w)
}

/// The reference's `SimpleEMAModel` step: `ema ← d·ema + (1−d)·θ` for the `trainable`
/// parameters (fused in place on the CPU), a copy of `model`'s value for the frozen ones.
pub fn ema_update<M: Module>(ema: M, model: &M, trainable: &std::collections::BTreeSet<String>, decay: f64) -> M {
    use crate::nn::kernels::{ema_fused, is_fast};
    let current = values(model);
    update(ema, |path, _, e| {
        let Some((_, p)) = current.get(path) else { return e };
        if !trainable.contains(path) {
            p.clone()
        } else if is_fast(&e) && is_fast(p) {
            ema_fused(e, p, decay)
        } else {
            e * decay + p.clone() * (1.0 - decay)
        }
    })
}

/// Adds per-parameter gradients of one micro-batch into the running sums.
pub fn accumulate(into: &mut BTreeMap<String, Tensor<1>>, grads: BTreeMap<String, Tensor<1>>) {
    for (k, g) in grads {
        match into.remove(&k) {
            Some(prev) => into.insert(k, prev + g),
            None => into.insert(k, g),
        };
    }
}
