//! One training forward of the tokenizer (the reference's `RecTok.forward` in training mode):
//! masked encode → posterior sample → forward-flow noise → semantic decoder on the noisy latents
//! with mask embeddings, teacher features of the clean full image, pixel decoder.

use crate::teacher::Teacher;
use crate::tokenizer::{Encoded, RecTok, TrainDraws};
use burn::prelude::*;

/// Outputs of [`training_forward`].
#[derive(Clone, Debug)]
pub struct TrainingForward {
    /// Reconstruction `(B, 3, H, W)` in the model's [-1, 1] convention, unclamped.
    pub decoded: Tensor<4>,
    /// The encode results (posterior, mask, noise level, latents).
    pub encoded: Encoded,
    /// Teacher features `(B, L, D)` (no gradient).
    pub sem_feature: Option<Tensor<3>>,
    /// Semantic decoder prediction `(B, L, D)`.
    pub pred_sem_feature: Option<Tensor<3>>,
}

/// The training forward with explicit random draws. `teacher_features` are the targets of the
/// semantic decoder (computed by the caller, often on another device: the teacher is frozen).
pub fn training_forward(
    model: &RecTok,
    teacher_features: Option<Tensor<3>>,
    x: Tensor<4>,
    draws: &TrainDraws,
) -> TrainingForward {
    let encoded = model.encode_train(x, draws);
    let ids_restore = encoded.mask.as_ref().map(|m| &m.ids_restore);
    let (sem_feature, pred_sem_feature) = match (teacher_features, &model.sem_decoder) {
        (Some(f), Some(sd)) => (Some(f.detach()), Some(sd.forward(encoded.sem_input.clone(), ids_restore))),
        _ => (None, None),
    };
    let decoded = model.decoder.forward(encoded.z_latents.clone(), ids_restore);
    TrainingForward { decoded, encoded, sem_feature, pred_sem_feature }
}

/// Teacher targets for a training step: `teacher` on images `x` in [-1, 1] at input side
/// `resolution`, with `rope_rescale` (DINOv3's training-mode augmentation).
pub fn teacher_targets(
    teacher: &Teacher,
    model: &RecTok,
    x: Tensor<4>,
    rope_rescale: Option<f32>,
    resolution: usize,
) -> Tensor<3> {
    teacher.features_at(x, model.grid_size(), rope_rescale, resolution)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::VitSize;
    use crate::nn::init::{TokenizerInit, initialize};
    use crate::rng::Rng;
    use crate::tokenizer::RecTokConfig;
    use crate::train::{optim, params};

    #[test]
    fn gradients_reach_every_trained_parameter_and_adamw_descends() {
        let device = Device::flex();
        let size = VitSize { width: 32, layers: 1, heads: 2 };
        let cfg = RecTokConfig::new(4, size, size, size)
            .with_img_size(16)
            .with_patch_size(8)
            .with_teacher_dim(Some(8))
            .with_mask_ratio(0.5);
        let mut rng = Rng::seed_from(0);
        let mut model = initialize(cfg.init(&device), &TokenizerInit, &mut rng).train();
        let x = rng.uniform_tensor([2, 3, 16, 16], &device) * 2.0 - 1.0;
        let mut adam = optim::AdamW::new(optim::AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 1e-4 });
        let mut losses = Vec::new();
        for step in 0..8 {
            let draws = model.draw_train(2, true, &mut Rng::seed_from(step), &device);
            let out = training_forward(&model, None, x.clone().autodiff(), &draws);
            let y = x.clone() * 0.5 + 0.5;
            let loss = (out.decoded * 0.5 + 0.5 - y.autodiff()).powi_scalar(2).mean();
            losses.push(loss.clone().into_scalar::<f32>());
            let grads = loss.backward();
            let g = params::gradients(&model, &grads);
            if step == 0 {
                assert!(
                    g.contains_key("encoder.patch_embed.weight") && g.contains_key("decoder.conv_out.weight"),
                    "{:?}",
                    g.keys().collect::<Vec<_>>()
                );
                assert!(g.contains_key("decoder.mask_token"), "mask tokens are trained");
            }
            model = adam.step(model, &g, 1e-3, &|_, s| s.len() >= 2);
        }
        assert!(losses[7] < losses[0], "loss did not fall: {losses:?}");
    }
}
