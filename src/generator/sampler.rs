//! Fixed-grid ODE samplers over the transport's time grid (torchdiffeq's fixed-grid `euler`,
//! which the reference uses, and `heun2`): `N` grid points, `N − 1` steps, the model receiving a
//! `(B,)` vector of the current grid time.

use burn::prelude::*;

/// The integration rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Integrator {
    /// `x_{k+1} = x_k + Δt·v(x_k, t_k)` (one model evaluation per step; official).
    #[default]
    Euler,
    /// Heun's method (explicit trapezoid): `x_{k+1} = x_k + Δt/2·(v(x_k, t_k) + v(x_k + Δt·v_k, t_{k+1}))`.
    Heun,
}

impl std::str::FromStr for Integrator {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "euler" => Ok(Self::Euler),
            "heun" | "heun2" => Ok(Self::Heun),
            other => Err(format!("unknown sampler '{other}' (expected euler or heun)")),
        }
    }
}

impl Integrator {
    /// Model evaluations for a grid of `n` points.
    pub fn evaluations(&self, n: usize) -> usize {
        match self {
            Self::Euler => n.saturating_sub(1),
            Self::Heun => 2 * n.saturating_sub(1),
        }
    }
}

/// Integrates `dx/dt = v(x, t)` from `grid[0]` to `grid[N−1]`, calling `observe(k, &x_k)` for
/// every grid point (k = 0 is the initial state), and returns the final state.
pub fn sample_ode(
    mut x: Tensor<4>,
    grid: &[f32],
    integrator: Integrator,
    mut velocity: impl FnMut(Tensor<4>, Tensor<1>) -> Tensor<4>,
    mut observe: impl FnMut(usize, &Tensor<4>),
) -> Tensor<4> {
    let device = x.device();
    let b = x.dims()[0];
    let tvec = |t: f32| Tensor::<1>::from_data(TensorData::new(vec![t; b], [b]), &device);
    observe(0, &x);
    for k in 0..grid.len().saturating_sub(1) {
        let (t0, t1) = (grid[k], grid[k + 1]);
        let dt = t1 - t0;
        let v0 = velocity(x.clone(), tvec(t0));
        x = match integrator {
            Integrator::Euler => x + v0 * dt as f64,
            Integrator::Heun => {
                let v1 = velocity(x.clone() + v0.clone() * dt as f64, tvec(t1));
                x + (v0 * 0.5 + v1 * 0.5) * dt as f64
            }
        };
        observe(k + 1, &x);
    }
    x
}

/// Samples normalised latents `(B, C, G, G)` for class `labels` — the whole generation loop of
/// `rectok generate`, the evaluation protocol and training previews. Item `first_index + j` starts
/// from the noise of `Rng::for_item(seed, first_index + j)`, so a sample does not depend on the
/// batch it is drawn in. Classifier-free guidance doubles the batch with the null class.
#[allow(clippy::too_many_arguments)]
pub fn sample_class_latents(
    net: &super::DitDh,
    guidance: &super::Guidance<'_>,
    labels: &[usize],
    seed: u64,
    first_index: u64,
    grid: &[f32],
    integrator: Integrator,
    on_step: impl FnMut(usize),
) -> Tensor<4> {
    let keys: Vec<(u64, u64)> = (0..labels.len() as u64).map(|j| (seed, first_index + j)).collect();
    sample_keyed_latents(net, guidance, labels, &keys, grid, integrator, on_step)
}

/// [`sample_class_latents`] with a noise key `(seed, index)` per item: item `j` starts from the
/// noise of `Rng::for_item(keys[j].0, keys[j].1)`, so samples of different requests (each with
/// its own seed) share one batch and still come out as they would alone (`rectok serve`).
pub fn sample_keyed_latents(
    net: &super::DitDh,
    guidance: &super::Guidance<'_>,
    labels: &[usize],
    keys: &[(u64, u64)],
    grid: &[f32],
    integrator: Integrator,
    mut on_step: impl FnMut(usize),
) -> Tensor<4> {
    assert_eq!(labels.len(), keys.len(), "one noise key per label");
    let device = net.pos_embed.val().device();
    let (b, c, g) = (labels.len(), net.config.token_channels, net.config.input_size);
    let noise: Vec<f32> =
        keys.iter().flat_map(|&(seed, index)| crate::rng::Rng::for_item(seed, index).normal_vec(c * g * g)).collect();
    let z = Tensor::<4>::from_data(TensorData::new(noise, [b, c, g, g]), &device);
    let labels: Vec<i64> = labels.iter().map(|&l| l as i64).collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [b]), &device);
    let (x, y) = if guidance.doubles_batch() {
        let null = Tensor::<1, Int>::full([b], net.config.num_classes as i64, &device);
        (Tensor::cat(vec![z.clone(), z], 0), Tensor::cat(vec![y, null], 0))
    } else {
        (z, y)
    };
    let out = sample_ode(
        x,
        grid,
        integrator,
        |x, t| guidance.velocity(net, x, t, y.clone()),
        |k, _| {
            if k > 0 {
                on_step(k)
            }
        },
    );
    out.narrow(0, 0, b)
}

/// `(class, index within the class)` of every sample of a `classes` × `per_class` request, in
/// order: a class listed more than once continues its numbering, so no two samples share a name
/// (`rectok generate`'s files; `rectok serve` numbers its noise the same way).
pub fn sample_jobs(classes: &[usize], per_class: usize) -> Vec<(usize, usize)> {
    let mut next = std::collections::HashMap::new();
    let mut jobs = Vec::with_capacity(classes.len() * per_class);
    for &c in classes {
        let first = next.entry(c).or_insert(0usize);
        jobs.extend((*first..*first + per_class).map(|k| (c, k)));
        *first += per_class;
    }
    jobs
}

/// Columns of a sample grid: one row per class when several classes are drawn, else a square.
pub fn grid_columns(num_classes: usize, per_class: usize, total: usize) -> usize {
    if num_classes > 1 { per_class } else { (total as f64).sqrt().ceil() as usize }
}

#[cfg(test)]
mod tests {
    #[test]
    fn repeated_classes_get_distinct_names() {
        assert_eq!(super::sample_jobs(&[1, 1], 2), vec![(1, 0), (1, 1), (1, 2), (1, 3)]);
        assert_eq!(super::sample_jobs(&[3, 1, 3], 1), vec![(3, 0), (1, 0), (3, 1)]);
    }
}
