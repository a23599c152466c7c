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
        self.stack.push(if container_type.starts_with("Enum:") { String::new() } else { name.to_string() });
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

/// The number of scalars in `module`'s parameters at `paths`.
pub fn count<M: Module>(module: &M, paths: &std::collections::BTreeSet<String>) -> usize {
    values(module).iter().filter(|(k, _)| paths.contains(*k)).map(|(_, (s, _))| s.iter().product::<usize>()).sum()
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
    use super::optim_kernels::ema_fused;
    use crate::nn::kernels::is_fast;
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

/// Flat gradients by parameter path.
pub type FlatGradients = BTreeMap<String, Tensor<1>>;

/// Weighted sums of a step's logged scalars, kept on the device until the step reads them all
/// back at once ([`crate::device::read_scalars`]); a sum never added to reads as 0.
pub struct ScalarSums(Vec<Option<Tensor<1>>>);

impl ScalarSums {
    /// `n` sums.
    pub fn new(n: usize) -> Self {
        Self(vec![None; n])
    }

    /// Adds `weight · value` to sum `i`.
    pub fn add(&mut self, i: usize, value: Tensor<1>, weight: f64) {
        let part = value.detach().reshape([1]) * weight;
        self.0[i] = Some(match self.0[i].take() {
            Some(sum) => sum + part,
            None => part,
        });
    }

    /// The sums, in order (a missing one as 0 on the device of the others, or the CPU).
    pub fn into_tensors(self) -> Vec<Tensor<1>> {
        let device = self.0.iter().flatten().next().map(|t| t.device()).unwrap_or_else(Device::flex);
        self.0.into_iter().map(|s| s.unwrap_or_else(|| Tensor::zeros([1], &device))).collect()
    }
}

/// One data-parallel shard's results, left on the device (the step reads all its scalars back
/// in one transfer, after the last micro-batch).
pub struct ShardLoss<E> {
    /// The shard's loss (before weighting), detached.
    pub loss: Tensor<1>,
    /// The scalars the loss function asked to log, in its order, detached.
    pub logged: Vec<Tensor<1>>,
    /// The loss function's by-product.
    pub extra: E,
}

/// Data parallelism on CPU threads: runs `loss_of(replica, shard)` for every shard at once, each
/// on its own thread with its own replica of `model`, and returns each shard's scalar loss, its
/// logged scalars and its by-product (in shard order) with the sum of their gradients (each loss
/// scaled by its `weight` before the backward pass). Nothing is read back: the caller checks the
/// values (a non-finite loss gives non-finite gradients) once per step, before any update.
///
/// Why replicas: burn's autodiff keeps one graph per connected component behind a mutex, so two
/// backward passes through the *same* parameter leaves serialise (and consume each other's tape).
/// `fork` gives each replica fresh leaves with the same paths, so the graphs stay apart and the
/// small ops of small models, which flex runs on the calling thread, run on all cores.
pub fn data_parallel_grads<M, S, E, F>(
    model: &M,
    device: &Device,
    shards: Vec<(S, f64)>,
    loss_of: F,
) -> anyhow::Result<(Vec<ShardLoss<E>>, FlatGradients)>
where
    M: Module + Send + 'static,
    S: Send,
    E: Send,
    F: Fn(&M, S) -> anyhow::Result<(Tensor<1>, Vec<Tensor<1>>, E)> + Sync,
{
    type Out<E> = anyhow::Result<(ShardLoss<E>, BTreeMap<String, Tensor<1>>)>;
    let run = |replica: M, shard: S, weight: f64| -> Out<E> {
        let (loss, logged, extra) = loss_of(&replica, shard)?;
        let g = (loss.clone() * weight).backward();
        let logged = logged.into_iter().map(|t| t.detach()).collect();
        Ok((ShardLoss { loss: loss.detach(), logged, extra }, gradients(&replica, &g)))
    };
    let results: Vec<Out<E>> = if shards.len() == 1 {
        shards.into_iter().map(|(s, w)| run(model.clone(), s, w)).collect()
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = shards
                .into_iter()
                .enumerate()
                .map(|(i, (shard, weight))| {
                    let replica = if i == 0 { model.clone() } else { model.clone().fork(device) };
                    let run = &run;
                    scope.spawn(move || run(replica, shard, weight))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a data-parallel worker thread panicked"))))
                .collect()
        })
    };
    let mut outs = Vec::new();
    let mut sum = BTreeMap::new();
    for r in results {
        let (out, grads) = r?;
        outs.push(out);
        accumulate(&mut sum, grads);
    }
    Ok((outs, sum))
}

/// What one process computed of a step, still on the device: the logged scalar sums and the
/// gradient sets (the model's, then the discriminator's when it trains).
pub struct LocalStep {
    /// Weighted sums of the logged scalars ([`ScalarSums::into_tensors`]).
    pub scalars: Vec<Tensor<1>>,
    /// Gradient sets, each already weighted by its share of the global batch.
    pub grads: Vec<FlatGradients>,
}

/// A step's results over the whole job.
pub struct ReducedStep {
    /// The scalars, summed over the ranks.
    pub scalars: Vec<f64>,
    /// `‖g‖²` of each gradient set, after the sum.
    pub squared_norms: Vec<f64>,
    /// The gradient sets, summed over the ranks.
    pub grads: Vec<FlatGradients>,
}

/// Sums a step over the job's processes ([`crate::dist`]) and reads its scalars back.
///
/// Each rank's gradients and scalars are already weighted by its share of the global batch, so a
/// sum gives the global batch's mean, as DDP's average of equal shares. A single process makes
/// one host read (the scalars and the squared norms, as before). Several processes agree first
/// on whether every rank's part succeeded (a rank's failure fails the step everywhere, before
/// any collective on buffers), check that their buffers have one layout, then move everything
/// to the host in one read, sum it with MPI all-reduce over flat buckets, and upload the sums.
pub fn reduce_step(local: anyhow::Result<LocalStep>) -> anyhow::Result<ReducedStep> {
    let world = crate::dist::world();
    if !world.is_multi() {
        let LocalStep { mut scalars, grads } = local?;
        let n = scalars.len();
        let device = scalars.first().map(|t| t.device()).unwrap_or_else(Device::flex);
        scalars.extend(grads.iter().map(|g| super::optim::squared_norm(g, &device)));
        let mut read = crate::device::read_scalars(scalars);
        let squared_norms = read.split_off(n);
        return Ok(ReducedStep { scalars: read, squared_norms, grads });
    }
    let LocalStep { scalars, grads } = world.agree(local)?;
    // The layout: scalar count, then every gradient's path and length, set by set.
    let mut layout = format!("{}", scalars.len());
    for set in &grads {
        layout.push('|');
        for (k, g) in set {
            layout.push_str(&format!("{k}:{};", g.dims()[0]));
        }
    }
    world.check_same("the gradient layout", crate::dist::digest(layout.as_bytes()))?;
    let device = scalars.first().map(|t| t.device()).unwrap_or_else(Device::flex);
    let n_scalars = scalars.len();
    let parts: Vec<Tensor<1>> = scalars
        .into_iter()
        .map(|t| t.detach().without_autodiff().reshape([1]))
        .chain(grads.iter().flat_map(|set| set.values().map(|g| g.clone().detach().without_autodiff())))
        .collect();
    let mut flat = crate::device::read_f32(Tensor::cat(parts, 0));
    world.sum_f32(&mut flat);
    let scalars = flat[..n_scalars].iter().map(|&x| f64::from(x)).collect();
    let mut offset = n_scalars;
    let mut squared_norms = Vec::with_capacity(grads.len());
    let mut summed = Vec::with_capacity(grads.len());
    for set in grads {
        let len: usize = set.values().map(|g| g.dims()[0]).sum();
        let values = &flat[offset..offset + len];
        squared_norms.push(values.iter().map(|&x| f64::from(x) * f64::from(x)).sum());
        let g_device = set.values().next().map(|g| g.device()).unwrap_or_else(|| device.clone());
        let all = Tensor::<1>::from_data(TensorData::new(values.to_vec(), [len]), &g_device);
        let mut at = 0;
        let mut out = FlatGradients::new();
        for (k, g) in set {
            let n = g.dims()[0];
            out.insert(k, all.clone().narrow(0, at, n));
            at += n;
        }
        summed.push(out);
        offset += len;
    }
    Ok(ReducedStep { scalars, squared_norms, grads: summed })
}

/// `module` with rank 0's parameter values on every rank of a multi-process job (the same
/// module where there is one process).
pub fn broadcast_module<M: Module>(module: M) -> M {
    let world = crate::dist::world();
    if !world.is_multi() {
        return module;
    }
    update(module, |_, _, value| {
        let device = value.device();
        let n = value.dims()[0];
        let mut host = crate::device::read_f32(value);
        world.broadcast_f32(&mut host);
        Tensor::from_data(TensorData::new(host, [n]), &device)
    })
}

/// `(start, len)` of `parts` near-equal slices of `n` items (no empty slice).
pub fn shard_bounds(n: usize, parts: usize) -> Vec<(usize, usize)> {
    let parts = parts.clamp(1, n.max(1));
    (0..parts).map(|i| (i * n / parts, (i + 1) * n / parts - i * n / parts)).filter(|&(_, len)| len > 0).collect()
}

/// Data-parallel replicas for `requested` (0: one per CPU thread, at most 4) on `device`: always
/// 1 off the CPU, where one stream of kernels already fills the device.
pub fn replicas(requested: usize, device: &Device) -> usize {
    if !crate::device::is_cpu(device) {
        return 1;
    }
    match requested {
        0 => rayon::current_num_threads().clamp(1, 4),
        n => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::DitDhConfig;
    use crate::generator::transport::{TrainingDraws, training_losses};
    use crate::nn::init::{NormalInit, initialize};
    use crate::rng::Rng;

    #[test]
    fn shard_bounds_cover_the_batch_without_empty_slices() {
        assert_eq!(shard_bounds(5, 2), vec![(0, 2), (2, 3)]);
        assert_eq!(shard_bounds(3, 4), vec![(0, 1), (1, 1), (2, 1)]);
        assert_eq!(shard_bounds(4, 0), vec![(0, 4)]);
    }

    /// Two replicas on two threads give the one-thread loss and gradients of a DiT^DH velocity
    /// loss (up to float rounding), and a second step works (the graphs were freed).
    #[test]
    fn data_parallel_gradients_match_one_thread() {
        let device = Device::flex();
        let config = DitDhConfig::new(4, 4, 32, 2, 2)
            .with_dec_hidden(32)
            .with_dec_depth(1)
            .with_dec_heads(2)
            .with_num_classes(3);
        let model = initialize(config.init(&device), &NormalInit(0.05), &mut Rng::seed_from(1)).train();
        let mut rng = Rng::seed_from(2);
        let b = 6;
        let x1 = rng.normal_tensor([b, 4, 4, 4], &device).autodiff();
        let draws = TrainingDraws {
            x0: rng.normal_tensor([b, 4, 4, 4], &device),
            t_u: rng.uniform_tensor([b], &device),
            label_drop_u: Some(rng.uniform_tensor([b], &device)),
        };
        let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 0, 1, 2], [b]), &device);
        let run = |parts: usize| {
            let shards = shard_bounds(b, parts)
                .into_iter()
                .map(|(s, n)| {
                    let d = TrainingDraws {
                        x0: draws.x0.clone().narrow(0, s, n),
                        t_u: draws.t_u.clone().narrow(0, s, n),
                        label_drop_u: draws.label_drop_u.clone().map(|u| u.narrow(0, s, n)),
                    };
                    ((x1.clone().narrow(0, s, n), y.clone().narrow(0, s, n), d), n as f64 / b as f64)
                })
                .collect();
            let (outs, grads) = data_parallel_grads(&model, &device, shards, |net, (x1, y, d)| {
                Ok((training_losses(net, x1, y, &d).loss, vec![], ()))
            })
            .unwrap();
            let loss = shard_bounds(b, parts)
                .iter()
                .zip(outs)
                .map(|(&(_, n), out)| crate::device::read_scalars(vec![out.loss])[0] * n as f64 / b as f64)
                .sum::<f64>();
            (loss, grads)
        };
        let (loss1, g1) = run(1);
        for _ in 0..2 {
            let (loss2, g2) = run(2);
            assert!((loss1 - loss2).abs() < 1e-5 * loss1.abs().max(1.0), "{loss1} vs {loss2}");
            assert_eq!(g1.keys().collect::<Vec<_>>(), g2.keys().collect::<Vec<_>>());
            assert!(g1.len() > 10, "only {} gradients", g1.len());
            for (k, a) in &g1 {
                let (a, c) = (
                    a.clone().into_data().try_to_vec::<f32>().unwrap(),
                    g2[k].clone().into_data().try_to_vec::<f32>().unwrap(),
                );
                let scale = a.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                let worst = a.iter().zip(&c).fold(0f32, |m, (x, z)| m.max((x - z).abs()));
                assert!(worst <= 1e-4 * scale, "{k}: max |Δ| {worst} (scale {scale})");
            }
        }
    }
}
