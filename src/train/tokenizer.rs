//! Tokenizer training: stage 1 (flow semantic distillation + reconstruction–alignment
//! distillation with the pixel losses) and stage 2 (decoder fine-tuning), after the reference's
//! `main_reconstruction.py` (docs/TRAINING.md §2–3).
//!
//! One optimizer step = `accum_steps` micro-batches of: masked encode → posterior sample →
//! forward-flow noise → pixel and semantic decoders → [`generator_loss`]; then global-norm
//! clipping, AdamW with the reference's no-decay group, the EMA update, and — from
//! `gan_start_epoch` — a discriminator step on the same targets and (detached) reconstructions.
//! The learning rate follows [`warmup_cosine`] of the fractional epoch, for both optimizers.
//!
//! The run folder, checkpoints, resume, the loop and its schedule are [`super::run`]'s; this file
//! holds the tokenizer's parts and its step.

use super::checkpoint::CheckpointStore;
use super::config::TokenizerTrainConfig;
use super::monitor::{MetricsLog, reconstruction_grid};
use super::optim::{AdamW, AdamWConfig, LossScale, apply_updates, reference_decays, unscale_and_clip, warmup_cosine};
use super::params;
use super::run::{Run, RunEnd, Trainer, TrainingBatches, check_finite};
use super::tokenizer_step::{teacher_targets, training_forward};
use crate::data::transforms::tensor_to_images;
use crate::data::{BatchStream, DataSpec, Loader, Split, open_dataset, save_png};
use crate::loss::{
    DiscriminatorConfig, GeneratorInputs, LossConfig, NLayerDiscriminator, PerceptualKind, PerceptualLoss,
    discriminator_loss, generator_loss, targeted_sem_loss,
};
use crate::nn::init::{TokenizerInit, TorchDefaultInit, initialize};
use crate::rng::Rng;
use crate::teacher::Teacher;
use crate::tokenizer::RecTok;
use crate::weights::tokenizer::{TokenizerLoadOptions, key_map, load_tokenizer, save_tokenizer};
use crate::weights::{CheckpointEntry, KeyMap, load_into, write_safetensors_from_module};
use anyhow::{Context, Result, anyhow};
use burn::prelude::*;
use indicatif::ProgressBar;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The loss values of one optimizer step (means over its micro-batches).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepValues {
    /// Objective.
    pub loss: f64,
    /// Pixel term.
    pub rec: f64,
    /// Weighted perceptual term.
    pub perceptual: f64,
    /// Weighted KL term.
    pub kl: f64,
    /// Weighted semantic term.
    pub sem: f64,
    /// Unweighted generator GAN loss.
    pub gan: f64,
    /// Discriminator hinge loss (0 before `gan_start_epoch`).
    pub d_loss: f64,
    /// Mean discriminator logit on real images.
    pub logits_real: f64,
    /// Mean discriminator logit on reconstructions.
    pub logits_fake: f64,
    /// Tokenizer gradient norm before clipping.
    pub grad_norm: f64,
}

impl StepValues {
    /// `−10·log10(rec)`.
    pub fn psnr(&self) -> f64 {
        -10.0 * self.rec.log10()
    }
}

impl super::run::StepValues for StepValues {
    fn record(&self) -> Map<String, Value> {
        [
            ("loss", self.loss),
            ("rec", self.rec),
            ("psnr", self.psnr()),
            ("perceptual", self.perceptual),
            ("kl", self.kl),
            ("sem", self.sem),
            ("gan", self.gan),
            ("d_loss", self.d_loss),
            ("logits_real", self.logits_real),
            ("logits_fake", self.logits_fake),
            ("grad_norm", self.grad_norm),
        ]
        .into_iter()
        .map(|(k, x)| (k.to_string(), x.into()))
        .collect()
    }

    fn progress(&self) -> String {
        format!(
            "loss {:.4} rec {:.4} ({:.1} dB) sem {:.4} kl {:.2e} gan {:.3}",
            self.loss,
            self.rec,
            self.psnr(),
            self.sem,
            self.kl,
            self.gan
        )
    }

    fn summary(&self) -> String {
        format!("{}, d {:.3}", self.progress(), self.d_loss)
    }
}

/// The end of a run.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    /// Optimizer steps taken in total.
    pub steps: usize,
    /// The exported tokenizer (EMA weights).
    pub tokenizer: PathBuf,
    /// Held-out PSNR of the EMA tokenizer before training (this run's start) and at the end.
    pub val_psnr: (Option<f64>, f64),
    /// Seconds spent training in this session.
    pub seconds: f64,
}

/// A tokenizer training run (see [`Run`]).
pub type TokenizerTrainer = Run<TokenizerTraining>;

/// The parts of a tokenizer run: models, EMA, discriminator, optimizers, teacher, losses, data.
pub struct TokenizerTraining {
    config: TokenizerTrainConfig,
    device: Device,
    inner: Device,
    model: RecTok,
    ema: RecTok,
    disc: NLayerDiscriminator,
    opt: AdamW,
    opt_disc: AdamW,
    teacher: Option<Teacher>,
    perceptual: PerceptualLoss,
    loss: LossConfig,
    batches: TrainingBatches,
    val_images: Tensor<4>,
    trainable: BTreeSet<String>,
    reference_names: KeyMap,
    initial_val_psnr: Option<f64>,
}

impl Trainer for TokenizerTraining {
    type Config = TokenizerTrainConfig;
    type Values = StepValues;
    type Summary = TrainSummary;
    const PLOTTED: &'static [&'static str] = &["loss", "rec", "sem", "kl", "gan", "d_loss", "val_psnr", "lr"];
    const TITLE: &'static str = "RecTok tokenizer training";

    fn build(
        config: &TokenizerTrainConfig,
        _run_dir: &Path,
        checkpoint: Option<&Path>,
        rng: &mut Rng,
        device: &Device,
    ) -> Result<Self> {
        let config = config.clone();
        let device = device.clone();
        let inner = device.clone().without_autodiff();
        let stage = config.run.stage;

        // Teacher and semantic decoder (stage 1 only).
        let teacher = match config.teacher_spec()? {
            Some(spec) => {
                let t = Teacher::load(&spec, &inner).with_context(|| format!("loading teacher {spec}"))?;
                tracing::info!("teacher: {}, {}-d features at {} px", t.name(), t.dim(), config.teacher.resolution);
                Some(t)
            }
            None => None,
        };
        let mut model_config = config.model.clone();
        if stage == 2 {
            // Decoder fine-tuning: no masking, no flow noise, no semantic decoder.
            model_config.mask_ratio = 0.0;
            model_config.gamma = 0.0;
            model_config.teacher_dim = None;
            if config.loss.gan_start_epoch > 0 {
                tracing::warn!(
                    "stage 2 with loss.gan_start_epoch = {} (the reference's decoder fine-tuning trains the GAN from \
                        epoch 0)",
                    config.loss.gan_start_epoch
                );
            }
        } else if let Some(t) = &teacher {
            model_config.teacher_dim = Some(t.dim());
            model_config.teacher_key = t.key().to_string();
        } else {
            model_config.teacher_dim = None;
        }
        model_config.validate().map_err(|e| anyhow!("[model]: {e}"))?;
        crate::device::check_trainable_parameter_count(model_config.approx_params(), "the tokenizer")
            .map_err(|e| anyhow!("[model]: {e}"))?;

        // Perceptual term: the official one when its weights are named, else the fallback, said aloud.
        let mut kind = config.loss.perceptual;
        if kind == PerceptualKind::LpipsConvnext && !config.loss.has_official_perceptual_weights() {
            tracing::warn!(
                "perceptual loss: the official LPIPS-VGG + ConvNeXt-S term needs loss.lpips, loss.vgg and loss.convnext weight files; \
                 running with `{}` instead (set loss.perceptual_fallback = \"effnet\" for an EfficientNet-Lite0 \
                     stand-in)",
                config.loss.perceptual_fallback.name()
            );
            kind = config.loss.perceptual_fallback;
        }
        let perceptual = PerceptualLoss::load(kind, &config.loss.perceptual_weights(), &device)?;
        tracing::info!("perceptual loss: {}", perceptual.describe());
        let loss = config.loss.loss_config()?;

        // Data.
        let spec: DataSpec = config.data.source.parse().map_err(|e: String| anyhow!("data.source: {e}"))?;
        let dataset = open_dataset(&spec, Split::Train, config.run.seed)
            .with_context(|| format!("opening training data {spec}"))?;
        let image_size = model_config.img_size;
        let batches = TrainingBatches::new(
            &dataset,
            &spec,
            &config.data,
            (config.optim.batch_size, config.optim.accum_steps),
            image_size,
            config.run.seed,
        )?;
        let val_images = {
            let val_spec: DataSpec = match &config.data.val_source {
                Some(s) => s.parse().map_err(|e: String| anyhow!("data.val_source: {e}"))?,
                None => spec.clone(),
            };
            let split = if config.data.val_source.is_some() || matches!(spec, DataSpec::Procedural { .. }) {
                Split::Val
            } else {
                Split::Train
            };
            let val = open_dataset(&val_spec, split, config.run.seed)?;
            if val.is_empty() {
                anyhow::bail!("{val_spec}: no held-out images for the reconstruction grids");
            }
            let n = config.data.grid_images.clamp(1, val.len());
            let batch = Loader::sequential(val, n, image_size, config.data.workers)?.batch(0, 0)?;
            if batch.is_empty() {
                anyhow::bail!("{val_spec}: none of the first {n} held-out images could be read");
            }
            batch.tensor(&inner)
        };

        let o = &config.optim;
        let opt_config = AdamWConfig { beta1: o.beta1, beta2: o.beta2, eps: o.eps, weight_decay: o.weight_decay };
        let disc_config =
            DiscriminatorConfig::new().with_ndf(config.loss.disc_ndf).with_n_layers(config.loss.disc_layers);
        let (model, ema, disc, opt, opt_disc) = match checkpoint {
            Some(ckpt) => {
                let load = |file: &str| -> Result<RecTok> {
                    let options = TokenizerLoadOptions { config: Some(model_config.clone()), ..Default::default() };
                    Ok(load_tokenizer(&ckpt.join(file), &options, &inner)?.0)
                };
                let mut disc = disc_config.init(&inner);
                load_into(
                    &mut disc,
                    &crate::weights::StateDict::open(&ckpt.join("discriminator.safetensors"), CheckpointEntry::Auto)?,
                    &KeyMap::new(),
                    &[],
                    &[],
                    "",
                )?;
                (
                    load("model.safetensors")?,
                    load("ema.safetensors")?,
                    disc,
                    AdamW::load(&ckpt.join("optimizer.safetensors"), opt_config.clone(), &inner)?,
                    AdamW::load(&ckpt.join("disc_optimizer.safetensors"), opt_config.clone(), &inner)?,
                )
            }
            None => {
                let (model, ema) = match (stage, &config.run.init_from) {
                    (2, Some(from)) => init_from(from, &model_config, &inner)?,
                    _ => {
                        let m = initialize(model_config.init(&inner), &TokenizerInit, rng);
                        (m.clone(), m)
                    }
                };
                let disc = initialize(disc_config.init(&inner), &TorchDefaultInit, rng);
                (model, ema, disc, AdamW::new(opt_config.clone()), AdamW::new(opt_config.clone()))
            }
        };
        // Stage 2 trains the decoder only; the frozen encoder gets no gradient at all.
        let mut model = model.train().with_grad_checkpoint(config.run.grad_checkpoint);
        if stage == 2 {
            model.encoder = model.encoder.no_grad();
        }
        let trainable: BTreeSet<String> =
            params::values(&model).into_keys().filter(|p| stage == 1 || p.starts_with("decoder.")).collect();
        let reference_names = key_map(&model_config.teacher_key, "sem_decoders");
        let trainer = Self {
            config,
            device,
            inner,
            model,
            ema,
            disc: disc.train(),
            opt,
            opt_disc,
            teacher,
            perceptual,
            loss,
            batches,
            val_images,
            trainable,
            reference_names,
            initial_val_psnr: None,
        };
        let (n_train, n_all) = (params::count(&trainer.model, &trainer.trainable), trainer.model.num_params());
        tracing::info!(
            "stage {stage}: {:.2}M trainable of {:.2}M parameters; {} images of {image_size} px, {} steps/epoch of \
                {}×{}, peak lr {:.3e}",
            n_train as f64 / 1e6,
            n_all as f64 / 1e6,
            dataset.len(),
            trainer.steps_per_epoch(),
            trainer.config.optim.batch_size,
            trainer.config.optim.accum_steps,
            trainer.config.optim.peak_lr()
        );
        Ok(trainer)
    }

    fn batches(&self) -> &TrainingBatches {
        &self.batches
    }

    fn batches_mut(&mut self) -> &mut TrainingBatches {
        &mut self.batches
    }

    /// The learning rate of step `step` (0-based): warm-up then half-cycle cosine of the
    /// fractional epoch.
    fn lr_at(&self, step: usize) -> f64 {
        let o = &self.config.optim;
        let epochs = self.config.run.epochs;
        warmup_cosine(self.epoch_at(step), o.peak_lr(), o.min_lr, o.warmup_epochs(epochs), epochs as f64)
    }

    fn begin(&mut self, step: usize, fresh: bool, _metrics: &MetricsLog) -> Result<()> {
        if fresh && self.initial_val_psnr.is_none() {
            self.initial_val_psnr = Some(self.val_psnr());
        }
        self.batches.start_stream(step);
        Ok(())
    }

    /// One optimizer step (0-based `step`); returns its loss values. Every check comes before
    /// the first update, so a stopped step leaves the state as it was.
    fn step(
        &mut self,
        stream: &mut Option<BatchStream>,
        step: usize,
        rng: &mut Rng,
        loss_scale: &mut Option<LossScale>,
    ) -> Result<StepValues> {
        let scale = loss_scale.as_ref().map_or(1.0, |s| s.scale);
        let lr = self.lr_at(step);
        let epoch = self.epoch_at(step);
        let gan_on = self.loss.gan_weight > 0.0 && epoch.floor() as usize >= self.loss.gan_start_epoch;
        let local = self.local_step(stream, scale, gan_on, rng);
        // The step's one read back (and, across processes, its one sum): losses and norms.
        let reduced = params::reduce_step(local)?;
        let read = &reduced.scalars;
        let mut grads_sets = reduced.grads.into_iter();
        let mut grads = grads_sets.next().context("no gradients in the step")?;
        let mut disc_grads = grads_sets.next().unwrap_or_default();
        let mut totals = StepValues {
            loss: read[0],
            rec: read[1],
            perceptual: read[2],
            kl: read[3],
            sem: read[4],
            gan: read[5],
            ..Default::default()
        };
        // The terms first, so the message names the one that overflowed.
        let terms = ["reconstruction", "perceptual", "KL", "semantic", "generator GAN", "total"];
        for (term, value) in terms.iter().zip([read[1], read[2], read[3], read[4], read[5], read[0]]) {
            check_finite(&format!("{term} loss"), value)?;
        }
        let clip = self.config.optim.clip_grad;
        totals.grad_norm = unscale_and_clip(&mut grads, reduced.squared_norms[0].sqrt(), clip, scale);
        let mut norms = vec![("gradient norm", totals.grad_norm)];
        if gan_on {
            (totals.d_loss, totals.logits_real, totals.logits_fake) = (read[6], read[7], read[8]);
            check_finite("discriminator loss", totals.d_loss)?;
            norms.push((
                "discriminator gradient norm",
                unscale_and_clip(&mut disc_grads, reduced.squared_norms[1].sqrt(), clip, scale),
            ));
        }
        // Every check comes before the first update, so a stopped step leaves the state intact;
        // under f16 loss scaling an optimizer whose gradients overflowed skips its update.
        let apply = apply_updates(loss_scale, &norms, step)?;
        if apply[0] {
            let names = &self.reference_names;
            let decays = |path: &str, shape: &[usize]| reference_decays(&names.to_reference(path), shape);
            self.model = self.opt.step(self.model.clone(), &grads, lr, &decays);
            // The reference's `SimpleEMAModel`: trained parameters move, frozen ones are copied.
            self.ema = params::ema_update(self.ema.clone(), &self.model, &self.trainable, self.config.optim.ema_decay);
        }
        if gan_on && apply[1] {
            self.disc = self.opt_disc.step(self.disc.clone(), &disc_grads, lr, &reference_decays);
        }
        Ok(totals)
    }

    fn extra_record(
        &mut self,
        step: usize,
        last: usize,
        record: &mut Map<String, Value>,
        _bar: &ProgressBar,
    ) -> Result<()> {
        let sample_every = self.config.run.sample_every;
        let logged = step.is_multiple_of(self.config.run.log_every) || step == last;
        if logged && ((sample_every > 0 && step.is_multiple_of(sample_every)) || step == last) {
            record.insert("val_psnr".into(), self.val_psnr().into());
        }
        Ok(())
    }

    fn broadcast_parameters(&mut self) {
        self.model = params::broadcast_module(self.model.clone());
        self.ema = params::broadcast_module(self.ema.clone());
        self.disc = params::broadcast_module(self.disc.clone());
    }

    fn save(&self, dir: &Path) -> Result<()> {
        save_tokenizer(&self.model.valid(), &dir.join("model.safetensors"))?;
        save_tokenizer(&self.ema, &dir.join("ema.safetensors"))?;
        self.opt.save(&dir.join("optimizer.safetensors"))?;
        write_safetensors_from_module(
            &self.disc.valid(),
            &KeyMap::new(),
            &dir.join("discriminator.safetensors"),
            Default::default(),
        )?;
        self.opt_disc.save(&dir.join("disc_optimizer.safetensors"))
    }

    fn save_grid(&self, path: &Path) -> Result<()> {
        let x = self.val_images.clone();
        let recon = self.ema.reconstruct(x.clone());
        let grid = reconstruction_grid(
            &tensor_to_images(x * 0.5 + 0.5)?,
            &tensor_to_images(recon).context("EMA reconstructions for the grid")?,
            self.val_images.dims()[0].div_ceil(2).max(1),
        );
        save_png(&grid, path)
    }

    /// Exports the EMA tokenizer as `RUN/tokenizer.safetensors`.
    fn finish(&mut self, end: RunEnd<'_>) -> Result<TrainSummary> {
        let tokenizer = end.run_dir.join("tokenizer.safetensors");
        save_tokenizer(&self.ema, &tokenizer)?;
        let final_psnr = self.val_psnr();
        tracing::info!(
            "done: {} steps; checkpoint {}; reconstructions {}; EMA tokenizer {} (held-out PSNR {}{final_psnr:.2} \
                dB); curves {}",
            end.steps,
            end.checkpoint.display(),
            end.grid.display(),
            tokenizer.display(),
            self.initial_val_psnr.map(|p| format!("{p:.2} dB untrained → ")).unwrap_or_default(),
            end.run_dir.join("loss.png").display()
        );
        Ok(TrainSummary {
            steps: end.steps,
            tokenizer,
            val_psnr: (self.initial_val_psnr, final_psnr),
            seconds: end.seconds,
        })
    }
}

impl Run<TokenizerTraining> {
    /// The current EMA tokenizer (inference weights).
    pub fn ema(&self) -> &RecTok {
        &self.trainer.ema
    }
}

impl TokenizerTraining {
    /// This process's part of a step: its slices of `accum` micro-batches of the global batch
    /// through the loss, with the logged scalars and gradients weighted by their share of the
    /// global batch (for [`params::reduce_step`]). `scale`: the f16 loss scale.
    fn local_step(
        &mut self,
        stream: &mut Option<BatchStream>,
        scale: f64,
        gan_on: bool,
        rng: &mut Rng,
    ) -> Result<params::LocalStep> {
        let stream = stream.as_mut().context("the batch stream was not started")?;
        let accum = self.config.optim.accum_steps;
        // Σ over the step's micro-batches and slices, on the device: total, reconstruction,
        // perceptual, KL, semantic and GAN losses, then the discriminator's loss and logits.
        let mut sums = params::ScalarSums::new(9);
        let mut grads: BTreeMap<String, Tensor<1>> = BTreeMap::new();
        let mut disc_grads: BTreeMap<String, Tensor<1>> = BTreeMap::new();
        // Slices per micro-batch: the data-parallel replicas, at most one per sample.
        let shards = params::replicas(self.config.run.data_parallel, &self.device).min(self.config.optim.batch_size);
        // Every rank draws the whole global micro-batch's randomness in the same order and takes
        // its part, so a step is the same at any number of processes.
        let b = self.config.optim.batch_size;
        let (first, count) = crate::dist::world().part(b);
        for _ in 0..accum {
            let batch = stream.next_batch()?;
            if batch.len() != count {
                anyhow::bail!("a batch of {} images where this process takes {count}", batch.len());
            }
            let x_host = batch.tensor(&self.inner);
            let draws = self.model.draw_train(b, true, rng, &self.device).narrow(first, count);
            // DINOv3 runs in training mode: RoPE coordinates rescaled by exp(U(−ln 2, ln 2)).
            let rescale = match &self.teacher {
                Some(t) if self.model.sem_decoder.is_some() && t.has_rope_rescale() => {
                    Some(rng.uniform_range(-std::f64::consts::LN_2, std::f64::consts::LN_2).exp() as f32)
                }
                _ => None,
            };
            // Data-parallel slices of the batch, each with its own replica (and, for the GAN term,
            // its own discriminator copy: per-slice batch statistics, as the reference's DDP).
            let bounds = params::shard_bounds(count, shards);
            let parts = bounds
                .iter()
                .enumerate()
                .map(|(i, &(s, n))| {
                    let disc =
                        gan_on.then(|| if i == 0 { self.disc.clone() } else { self.disc.independent_copy() }.no_grad());
                    ((x_host.clone().narrow(0, s, n), draws.narrow(s, n), disc), scale * n as f64 / (b * accum) as f64)
                })
                .collect();
            let (teacher, cfg, loss_cfg, perceptual) = (&self.teacher, &self.config, &self.loss, &self.perceptual);
            let (outs, g) =
                params::data_parallel_grads(&self.model, &self.device, parts, |model, (x_host, draws, disc)| {
                    let targets = match teacher {
                        Some(t) if model.sem_decoder.is_some() => {
                            Some(teacher_targets(t, model, x_host.clone(), rescale, cfg.teacher.resolution).autodiff())
                        }
                        _ => None,
                    };
                    let x = x_host.autodiff();
                    let out = training_forward(model, targets, x.clone(), &draws);
                    let y_hat = out.decoded.clone() * 0.5 + 0.5;
                    let sem = match (out.sem_feature, out.pred_sem_feature) {
                        (Some(f), Some(p)) => {
                            let ids = out.encoded.mask.as_ref().map(|m| &m.ids_masked);
                            Some(targeted_sem_loss(loss_cfg.sem_loss, model.config.sem_target, f, p, ids))
                        }
                        _ => None,
                    };
                    let y = x * 0.5 + 0.5;
                    let perceptual = perceptual.forward(y.clone(), y_hat.clone());
                    let terms = generator_loss(
                        loss_cfg,
                        GeneratorInputs {
                            targets: y,
                            reconstructions: y_hat.clone(),
                            posterior: (loss_cfg.kl_weight > 0.0).then_some(&out.encoded.posterior),
                            sem,
                            perceptual,
                            discriminator: disc.as_ref(),
                        },
                    );
                    let logged = vec![terms.reconstruction, terms.perceptual, terms.kl, terms.sem, terms.gan];
                    Ok((terms.total, logged, y_hat.detach()))
                })?;
            let mut y_hats = Vec::new();
            for (&(_, n), out) in bounds.iter().zip(outs) {
                let w = n as f64 / (b * accum) as f64;
                for (i, t) in std::iter::once(out.loss).chain(out.logged).enumerate() {
                    sums.add(i, t, w);
                }
                y_hats.push(out.extra);
            }
            params::accumulate(&mut grads, g);
            let (y, y_hat) = (x_host * 0.5 + 0.5, Tensor::cat(y_hats, 0));
            if gan_on {
                let d = discriminator_loss(&self.disc, y.autodiff(), y_hat);
                // This process's share of the global batch, as DDP's average of equal shares.
                let w = count as f64 / (b * accum) as f64;
                let g = (d.loss.clone() * (scale * w)).backward();
                for (i, t) in [d.loss, d.logits_real_mean, d.logits_fake_mean].into_iter().enumerate() {
                    sums.add(6 + i, t.detach(), w);
                }
                params::accumulate(&mut disc_grads, params::gradients(&self.disc, &g));
            }
        }
        grads.retain(|k, _| self.trainable.contains(k));
        let mut sets = vec![grads];
        if gan_on {
            sets.push(disc_grads);
        }
        Ok(params::LocalStep { scalars: sums.into_tensors(), grads: sets })
    }
    /// PSNR of the EMA tokenizer's reconstructions (posterior mean) of the held-out grid images.
    pub fn val_psnr(&self) -> f64 {
        let x = self.val_images.clone();
        let recon = self.ema.reconstruct(x.clone());
        let target = crate::device::read_f32(x * 0.5 + 0.5);
        let got = crate::device::read_f32(recon);
        let per = target.len() / self.val_images.dims()[0];
        let psnrs: Vec<f64> =
            target.chunks(per).zip(got.chunks(per)).map(|(a, b)| crate::metrics::psnr(a, b)).collect();
        psnrs.iter().sum::<f64>() / psnrs.len() as f64
    }
}

/// Stage 2's starting point: the module from the stage-1 `model` weights and the EMA from its
/// `model_ema` (docs/TRAINING.md §3). `from` is a run folder, a checkpoint folder, a tokenizer
/// file (both from it) or an official `.pth` with both entries.
fn init_from(from: &Path, config: &crate::tokenizer::RecTokConfig, device: &Device) -> Result<(RecTok, RecTok)> {
    let (model_file, ema_file, model_entry, ema_entry) = if from.is_dir() {
        let ckpt = if from.join("state.json").exists() {
            from.to_path_buf()
        } else {
            CheckpointStore::new(from, 1)
                .latest()?
                .ok_or_else(|| anyhow!("{}: neither a checkpoint nor a run folder with checkpoints", from.display()))?
        };
        (ckpt.join("model.safetensors"), ckpt.join("ema.safetensors"), CheckpointEntry::Auto, CheckpointEntry::Auto)
    } else if from.extension().is_some_and(|e| e == "pth" || e == "pt") {
        (from.to_path_buf(), from.to_path_buf(), CheckpointEntry::Model, CheckpointEntry::Ema)
    } else {
        tracing::warn!(
            "{}: a single tokenizer file starts both the module and the EMA (the reference starts the module from the raw \
             `model` weights: pass the stage-1 run or checkpoint folder for that)",
            from.display()
        );
        (from.to_path_buf(), from.to_path_buf(), CheckpointEntry::Auto, CheckpointEntry::Auto)
    };
    let load = |path: &Path, entry: CheckpointEntry| -> Result<RecTok> {
        let options = TokenizerLoadOptions { entry, config: Some(config.clone()), without_semantic: true };
        let (m, report) =
            load_tokenizer(path, &options, device).with_context(|| format!("run.init_from {}", path.display()))?;
        tracing::info!(
            "stage 2 starts from {} ({} tensors{})",
            path.display(),
            report.applied,
            if report.entry.is_empty() { String::new() } else { format!(", `{}`", report.entry) }
        );
        Ok(m)
    };
    let model = load(&model_file, model_entry)?;
    let ema = match load(&ema_file, ema_entry.clone()) {
        Ok(e) => e,
        Err(e) if ema_entry == CheckpointEntry::Ema => {
            tracing::warn!("{e:#}; the EMA starts from the `model` weights");
            model.clone()
        }
        Err(e) => return Err(e),
    };
    Ok((model, ema))
}
