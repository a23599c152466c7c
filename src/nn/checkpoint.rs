//! Activation checkpointing of transformer blocks (`run.grad_checkpoint`), as
//! `torch.utils.checkpoint.checkpoint(block, x)` does for the PyTorch ViTs and DiTs the reference
//! builds on: the forward pass of a block keeps only its inputs, and the backward pass runs the
//! block's forward again, with a graph, to get its gradients. Activation memory then grows with
//! the number of blocks times one block input `(B, L, D)` instead of times everything a block
//! keeps for its backward (attention inputs, the SwiGLU's hidden layer, the norms' inputs:
//! about 12 · D values per token for the tokenizer's blocks), at the cost of one more forward per
//! block.
//!
//! A checkpointed block is one custom op of burn's autodiff (a `Backward` step) whose parents are
//! the block's tensor inputs. Its forward runs the block on untracked copies of the parameters
//! and inputs (no graph is recorded); its backward recomputes the block on fresh parameter leaves
//! in a separate graph, runs that graph's backward from `Σ out · g` (g: the gradient arriving at
//! the block's output), and hands the inputs' and the parameters' gradients to the outer graph.
//! The recomputation is the same deterministic code as the forward, so on the CPU the gradients
//! are the same bits as without checkpointing (tested below; on a GPU within rounding), and
//! resumed runs stay exact.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients as OpGradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Backend, BackendTypes, DispatchKindConversion, DispatchTensor};
use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use std::marker::PhantomData;
use std::sync::Arc;

/// A block's forward on its module and its `N` tensor inputs.
type BlockForward<M, const N: usize> = Arc<dyn Fn(&M, [Tensor<3>; N]) -> Tensor<3> + Send + Sync>;

/// `forward(module, inputs)` with its activations recomputed in the backward pass instead of kept.
///
/// `inputs` are the block's tensor inputs that may need a gradient (the residual stream; a DiT
/// block's condition); constants (RoPE tables) are captured by `forward`, which must be
/// deterministic. Outside a graph (inference, or no input needing a gradient), on a device
/// without autodiff, or on an autodiff device this module does not know, it is `forward(module,
/// inputs)` unchanged. Shapes are `forward`'s.
pub fn checkpointed<M, const N: usize>(
    module: &M,
    inputs: [Tensor<3>; N],
    forward: impl Fn(&M, [Tensor<3>; N]) -> Tensor<3> + Send + Sync + 'static,
) -> Tensor<3>
where
    M: Module + 'static,
{
    if !inputs.iter().any(|t| t.device().is_autodiff()) {
        return forward(module, inputs);
    }
    let forward: BlockForward<M, N> = Arc::new(forward);
    if let Some(out) = run::<burn::backend::Flex, M, N>(module, &inputs, &forward) {
        return out;
    }
    #[cfg(any(feature = "vulkan", feature = "wgpu", feature = "cuda"))]
    if let Some(out) = run::<burn::backend::Cube, M, N>(module, &inputs, &forward) {
        return out;
    }
    forward(module, inputs)
}

/// [`checkpointed`] on `Autodiff<B>`, or `None` (the caller then runs the plain forward, graph
/// and all) when the inputs are not that device's, when none of them is tracked (an op whose
/// only tracked parents were parameters would lose their gradients), or when the forward on
/// untracked copies still recorded a graph (`forward` captured a tracked tensor: recomputing it
/// in the backward pass would reach into the locked outer graph).
fn run<B, M, const N: usize>(module: &M, inputs: &[Tensor<3>; N], forward: &BlockForward<M, N>) -> Option<Tensor<3>>
where
    B: Backend,
    M: Module + 'static,
    DispatchTensor: DispatchKindConversion<B> + DispatchKindConversion<Autodiff<B>>,
{
    let mut primitives = Vec::with_capacity(N);
    for t in inputs {
        primitives.push(t.clone().try_into_primitive::<Autodiff<B>>().ok()?);
    }
    if !primitives.iter().any(|p| p.is_tracked()) {
        return None;
    }
    #[cfg(test)]
    RECORDED.with(|c| c.set(c.get() + 1));
    let mut params = ParamIds::<B>::default();
    module.visit(&mut params);
    // The state holds untracked copies only (no reference to a node of the graph), so a forward
    // without a backward leaves nothing behind.
    let frozen = module.clone().map(&mut Leaves { trainable: None, index: 0 });
    let values = inputs.clone().map(untracked);
    let out = forward(&frozen, values.clone());
    let out = out.try_into_primitive::<Autodiff<B>>().ok()?;
    #[cfg(test)]
    assert!(!out.is_tracked(), "the checkpointed forward recorded a graph");
    if out.is_tracked() {
        return None;
    }
    let out = out.into_primitive();
    let nodes: [_; N] = std::array::from_fn(|i| primitives[i].node());
    let state = CheckpointState { module: frozen, params: params.ids, inputs: values, forward: forward.clone() };
    let op = RecomputeBlock::<M>(PhantomData);
    let out = match Backward::<B, N>::prepare::<NoCheckpointing>(op, nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(state, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(Tensor::from_primitive::<Autodiff<B>>(out))
}

/// What the backward pass of a checkpointed block needs: the block and its inputs, untracked,
/// and the graph node of each trainable parameter (in the module's visiting order).
#[derive(Clone)]
struct CheckpointState<M, const N: usize> {
    module: M,
    params: Vec<Option<NodeId>>,
    inputs: [Tensor<3>; N],
    forward: BlockForward<M, N>,
}

impl<M, const N: usize> std::fmt::Debug for CheckpointState<M, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointState").field("inputs", &N).finish_non_exhaustive()
    }
}

/// The custom op of a checkpointed block of type `M`.
struct RecomputeBlock<M>(PhantomData<fn() -> M>);

impl<M> std::fmt::Debug for RecomputeBlock<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecomputeBlock")
    }
}

impl<B, M, const N: usize> Backward<B, N> for RecomputeBlock<M>
where
    B: Backend,
    M: Module + 'static,
    DispatchTensor: DispatchKindConversion<B> + DispatchKindConversion<Autodiff<B>>,
{
    type State = CheckpointState<M, N>;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut OpGradients, _: &mut Checkpointer) {
        let g = grads.consume::<B>(&ops.node);
        let g = Tensor::<3>::from_primitive::<Autodiff<B>>(<Autodiff<B> as BackendTypes>::FloatTensorPrimitive::new(g));
        let CheckpointState { module, params, inputs, forward } = ops.state;
        // The recomputation: fresh leaves for the inputs that need a gradient and for every
        // trainable parameter, in a graph of their own (the outer graph is locked while its
        // steps run, so nothing here may touch its nodes).
        let leaves: [Tensor<3>; N] = std::array::from_fn(|i| {
            let t = untracked(inputs[i].clone());
            if ops.parents[i].is_some() { t.require_grad() } else { t }
        });
        let trainable: Vec<bool> = params.iter().map(Option::is_some).collect();
        let fresh = module.map(&mut Leaves { trainable: Some(trainable), index: 0 });
        let inner = (forward(&fresh, leaves.clone()) * g).sum().backward();
        for (leaf, parent) in leaves.iter().zip(&ops.parents) {
            if let Some(node) = parent {
                // An input the block does not use still gets its (zero) gradient: its own step
                // may have no other consumer to register one.
                let grad =
                    leaf.grad(&inner).unwrap_or_else(|| Tensor::zeros(leaf.dims(), &leaf.device().without_autodiff()));
                grads.register::<B>(node.id, grad.try_into_primitive::<B>().expect("the block's device"));
            }
        }
        let mut found = ParamGrads::<B> { grads: &inner, out: Vec::new() };
        fresh.visit(&mut found);
        for (id, grad) in params.into_iter().zip(found.out) {
            if let (Some(id), Some(grad)) = (id, grad) {
                grads.register::<B>(id, grad);
            }
        }
    }
}

/// A new node of `t`'s values outside any graph. (`detach` keeps a leaf's `require_grad`, so a
/// detached parameter would still record one.)
fn untracked<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    t.set_require_grad(false)
}

/// Replaces every float parameter by a new node of the same values: untracked (no graph is
/// recorded), or, where `trainable` says so (in visiting order), a fresh gradient leaf.
struct Leaves {
    trainable: Option<Vec<bool>>,
    index: usize,
}

impl ModuleMapper for Leaves {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let leaf = self.trainable.as_ref().is_some_and(|t| t[self.index]);
        self.index += 1;
        param.map(|t| if leaf { untracked(t).require_grad() } else { untracked(t) })
    }
}

/// The autodiff node of every float parameter, in visiting order (`None`: not trainable).
struct ParamIds<B> {
    ids: Vec<Option<NodeId>>,
    backend: PhantomData<fn() -> B>,
}

impl<B> Default for ParamIds<B> {
    fn default() -> Self {
        Self { ids: Vec::new(), backend: PhantomData }
    }
}

impl<B> ModuleVisitor for ParamIds<B>
where
    B: Backend,
    DispatchTensor: DispatchKindConversion<Autodiff<B>>,
{
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let id = param.val().try_into_primitive::<Autodiff<B>>().ok().filter(|p| p.is_tracked()).map(|p| p.id());
        self.ids.push(id);
    }
}

/// The gradient in `grads` of every float parameter, in visiting order.
struct ParamGrads<'a, B: Backend> {
    grads: &'a burn::tensor::Gradients,
    out: Vec<Option<<B as BackendTypes>::FloatTensorPrimitive>>,
}

impl<B> ModuleVisitor for ParamGrads<'_, B>
where
    B: Backend,
    DispatchTensor: DispatchKindConversion<B>,
{
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let grad = param.val().grad(self.grads).and_then(|g| g.try_into_primitive::<B>().ok());
        self.out.push(grad);
    }
}

#[cfg(test)]
thread_local! {
    /// Checkpointed blocks recorded on this thread (the tests check that checkpointing ran).
    static RECORDED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::{DitDh, DitDhConfig};
    use crate::nn::init::{NormalInit, initialize};
    use crate::rng::Rng;
    use crate::tokenizer::{RecTok, RecTokConfig, SemanticDecoder};
    use crate::train::params::gradients;
    use std::collections::BTreeMap;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec_as().unwrap()
    }

    /// The output and the gradients (every parameter's, and the input leaf's as `"input"`) of
    /// `Σ f(model, x) ⊙ w`, and the number of checkpointed blocks recorded.
    fn run<M: Module, const D: usize>(
        model: &M,
        x: &Tensor<4>,
        f: impl Fn(&M, Tensor<4>) -> Tensor<D>,
    ) -> (Vec<f32>, BTreeMap<String, Vec<f32>>, usize) {
        let x = x.clone().require_grad();
        let before = RECORDED.with(|c| c.get());
        let out = f(model, x.clone());
        let recorded = RECORDED.with(|c| c.get()) - before;
        let w = Rng::seed_from(3).normal_tensor(out.dims(), &out.device());
        let grads = (out.clone() * w).sum().backward();
        let mut g: BTreeMap<String, Vec<f32>> =
            gradients(model, &grads).into_iter().map(|(k, v)| (k, values(v))).collect();
        g.insert("input".into(), values(x.grad(&grads).expect("the input's gradient")));
        (values(out), g, recorded)
    }

    /// Checks that checkpointing ran on every block and changed nothing: the same bits, or within
    /// `tolerance` of the largest magnitude (a GPU backend fuses the two graphs differently).
    fn assert_same(
        what: &str,
        plain: (Vec<f32>, BTreeMap<String, Vec<f32>>, usize),
        ckpt: (Vec<f32>, BTreeMap<String, Vec<f32>>, usize),
        blocks: usize,
        tolerance: f32,
    ) {
        let close = |a: &[f32], b: &[f32]| {
            let top = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tolerance * top)
        };
        assert_eq!(plain.2, 0, "{what}: checkpointing ran while off");
        assert_eq!(ckpt.2, blocks, "{what}: checkpointed blocks");
        assert!(close(&plain.0, &ckpt.0), "{what}: outputs differ");
        assert_eq!(plain.1.keys().collect::<Vec<_>>(), ckpt.1.keys().collect::<Vec<_>>(), "{what}: gradient sets");
        for (name, g) in &plain.1 {
            assert!(g.iter().any(|v| *v != 0.0), "{what}: {name} has a zero gradient");
            assert!(close(g, &ckpt.1[name]), "{what}: gradient of {name} differs");
        }
    }

    #[test]
    fn checkpointed_tokenizer_blocks_give_the_same_gradients() {
        let config = RecTokConfig::tiny().with_teacher_dim(Some(24));
        let model = initialize(config.init(&Device::flex()), &NormalInit(0.05), &mut Rng::seed_from(1)).train();
        let x = Rng::seed_from(2).normal_tensor([2, 3, config.img_size, config.img_size], &Device::flex()).autodiff();
        let c = config.token_channels;
        // Encoder → pixel decoder and semantic decoder: every kind of tokenizer block.
        let f = |m: &RecTok, x: Tensor<4>| {
            let z = m.encoder.forward(x, None).narrow(2, 0, c);
            let pixels = m.decoder.forward(z.clone(), None).flatten::<1>(0, 3);
            let features = m.sem_decoder.as_ref().expect("a semantic decoder").forward(z, None).flatten::<1>(0, 2);
            Tensor::cat(vec![pixels, features], 0)
        };
        let Some(SemanticDecoder::Transformer(sem)) = &model.sem_decoder else { panic!("a transformer decoder") };
        let blocks = model.encoder.transformer.len() + model.decoder.transformer.len() + sem.transformer.len();
        let plain = run(&model, &x, f);
        let ckpt = run(&model.clone().with_grad_checkpoint(true), &x, f);
        // The recomputation runs the same code on the same values: the same bits.
        assert_same("tokenizer", plain, ckpt, blocks, 0.0);
    }

    /// A random tiny DiT^DH on `device` without and with checkpointing (see [`run`]), and its
    /// number of blocks.
    #[allow(clippy::type_complexity)]
    fn dit_case(device: &Device) -> ([(Vec<f32>, BTreeMap<String, Vec<f32>>, usize); 2], usize) {
        let tok = RecTokConfig::tiny();
        let config = DitDhConfig::preset("tiny", tok.token_channels, tok.grid_size()).unwrap().with_num_classes(10);
        let mut model = initialize(config.init(device), &NormalInit(0.05), &mut Rng::seed_from(1)).train();
        model.pos_embed = model.pos_embed.no_grad();
        // A frozen block: its input still needs a gradient, its parameters get none.
        model.blocks[1] = model.blocks[1].clone().no_grad();
        let g = tok.grid_size();
        let x = Rng::seed_from(2).normal_tensor([3, tok.token_channels, g, g], device).autodiff();
        let f = |m: &DitDh, x: Tensor<4>| {
            let t = Tensor::<1>::from_floats([0.2, 0.5, 0.9], &x.device());
            let y = Tensor::<1, Int>::from_ints([1, 4, 10], &x.device());
            m.forward(x, t, y)
        };
        let blocks = model.blocks.len();
        ([run(&model, &x, f), run(&model.clone().with_grad_checkpoint(true), &x, f)], blocks)
    }

    #[test]
    fn checkpointed_dit_blocks_give_the_same_gradients() {
        let ([plain, ckpt], blocks) = dit_case(&Device::flex());
        assert_same("DiT^DH", plain, ckpt, blocks, 0.0);
    }

    /// The same on the GPU backend (CI: Mesa's lavapipe), which takes the `Autodiff<Cube>` path.
    #[cfg(feature = "vulkan")]
    #[test]
    fn checkpointing_runs_on_the_vulkan_device() {
        if !crate::device::vulkan_driver_installed() {
            eprintln!("SKIPPED: no Vulkan driver installed (Debian: mesa-vulkan-drivers)");
            return;
        }
        let device = crate::device::select_device(crate::device::DeviceChoice::Vulkan).expect("a Vulkan device");
        let ([plain, ckpt], blocks) = dit_case(&device);
        assert_same("DiT^DH on Vulkan", plain, ckpt, blocks, 1e-5);
    }
}
