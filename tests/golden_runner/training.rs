//! Runners for the tokenizer training cases (training forward with a teacher, loss module).

use super::{Case, CaseResult};
use burn::prelude::*;
use rectok::loss::{
    DiscriminatorConfig, GeneratorInputs, LossConfig, NLayerDiscriminator, SemLossKind, discriminator_loss,
    generator_loss, sem_loss, targeted_sem_loss,
};
use rectok::teacher::preprocess::{IMAGENET_MEAN, IMAGENET_STD, teacher_pixels};
use rectok::teacher::{Dinov3Config, Teacher};
use rectok::tokenizer::{DiagonalGaussian, MaskRatioType, NoiseSchedule, RecTokConfig, SemTarget, TrainDraws};
use rectok::train::tokenizer_step::training_forward;
use rectok::weights::{KeyMap, load_into, tokenizer as wt};

fn size_of(case: &Case, name: &str) -> CaseResult<rectok::nn::VitSize> {
    if let Some(e) = case.json["size_dict_entries"].get(name) {
        let g = |k: &str| e[k].as_u64().map(|v| v as usize).ok_or(format!("{name}.{k}"));
        return Ok(rectok::nn::VitSize { width: g("width")?, layers: g("layers")?, heads: g("heads")? });
    }
    rectok::nn::VitSize::named(name).ok_or(format!("unknown size {name}"))
}

pub fn rectok_forward_train(case: &mut Case) -> CaseResult<()> {
    let c = case.constructor().clone();
    let num = |k: &str| c[k].as_f64().ok_or(format!("constructor.{k}"));
    let tc = &c["teacher_config"];
    let tget = |k: &str| tc[k].as_u64().map(|v| v as usize).ok_or(format!("teacher_config.{k}"));
    let teacher_cfg = Dinov3Config::new(
        tget("hidden_size")?,
        tget("num_hidden_layers")?,
        tget("num_attention_heads")?,
        tget("intermediate_size")?,
    )
    .with_patch_size(tget("patch_size")?)
    .with_num_register_tokens(tget("num_register_tokens")?);
    let size = |k: &str| size_of(case, c[k].as_str().unwrap_or_default());
    if c["mask_ratio_type"].as_str() != Some("fix") {
        return Err("only a fixed mask ratio can be replayed".into());
    }
    let mut cfg = RecTokConfig::new(
        num("token_channels")? as usize,
        size("vit_enc_model_size")?,
        size("vit_dec_model_size")?,
        size("vit_sem_model_size")?,
    )
    .with_img_size(num("img_size")? as usize)
    .with_patch_size(num("patch_size")? as usize)
    .with_mask_ratio(num("mask_ratio")?)
    .with_mask_ratio_type(MaskRatioType::Fix)
    .with_gamma(num("gamma")?)
    .with_teacher_dim(Some(teacher_cfg.hidden_size));
    cfg.noise_schedule = match c["noise_schedule"].as_str() {
        Some("uniform") => NoiseSchedule::Uniform,
        Some("lognorm") => NoiseSchedule::Lognorm,
        _ => NoiseSchedule::Shift,
    };
    cfg.sem_target = match c["sem_target"].as_str() {
        Some("reconstruction") => SemTarget::Reconstruction,
        _ => SemTarget::RecAlign,
    };
    let sd = case.params()?;
    let mut model = cfg.init(&case.device);
    load_into(&mut model, &sd, &wt::key_map("dinov3", "sem_decoders"), &[], &["sem_foundation_models."], "")
        .map_err(|e| e.to_string())?;
    let mut dino = teacher_cfg.init(&case.device);
    load_into(&mut dino, &sd.subset("sem_foundation_models.dinov3."), &KeyMap::new(), &[], &[], "")
        .map_err(|e| e.to_string())?;
    let teacher = Teacher::Dinov3(dino);

    let x: Tensor<4> = case.input("in.x")?;
    let draws = TrainDraws {
        mask_noise: Some(case.mask_noise("in.mask_noise")?),
        mask_ratio: cfg.mask_ratio,
        posterior_eps: Some(case.input("in.posterior_eps")?),
        flow_draw: Some(case.input("in.noise_u")?),
        flow_noise: Some(case.input("in.flow_noise")?),
    };
    let rescale = case.input_host("in.teacher_rope_rescale_u")?[0].exp();
    let out = training_forward(
        &model,
        Some(teacher.features(x.clone(), model.grid_size(), Some(rescale))),
        x.clone(),
        &draws,
    );
    let img = cfg.img_size;
    let (_, pixels) = teacher_pixels(x.clone(), 224, img, IMAGENET_MEAN, IMAGENET_STD);
    case.put("out.teacher_pixel_values", pixels);
    case.put("out.decoded", out.decoded.clone());
    case.put("out.posterior_mean", out.encoded.posterior.mean.clone());
    case.put("out.posterior_logvar", out.encoded.posterior.logvar.clone());
    case.put("out.decoder_z_latents", out.encoded.z_latents.clone());
    let mask = out.encoded.mask.clone().ok_or("no mask")?;
    case.put_int("out.ids_restore", mask.ids_restore.clone());
    let (f, p) =
        (out.sem_feature.clone().ok_or("no teacher features")?, out.pred_sem_feature.clone().ok_or("no prediction")?);
    case.put("out.sem_feature", f.clone());
    case.put("out.pred_sem_feature", p.clone());

    let loss_cfg = LossConfig::new().with_gan_weight(0.0).with_perceptual_weight(0.0);
    let sem = targeted_sem_loss(SemLossKind::Cosine, cfg.sem_target, f, p, Some(&mask.ids_masked));
    let terms = generator_loss(
        &loss_cfg,
        GeneratorInputs {
            targets: x * 0.5 + 0.5,
            reconstructions: out.decoded * 0.5 + 0.5,
            posterior: Some(&out.encoded.posterior),
            sem: Some(sem),
            perceptual: None,
            discriminator: None,
        },
    );
    case.put("out.loss.total", terms.total.clone());
    case.put("out.loss.reconstruction_loss", terms.reconstruction.clone());
    case.put("out.loss.kl_loss", terms.kl.clone());
    case.put("out.loss.sem_loss", terms.sem.clone());
    case.put("out.loss.psnr", terms.psnr());
    Ok(())
}

pub fn tokenizer_loss(case: &mut Case) -> CaseResult<()> {
    let c = case.constructor().clone();
    let lk = &c["loss_kwargs"];
    let f = |k: &str| lk[k].as_f64().ok_or(format!("loss_kwargs.{k}"));
    let kind = match lk["sem_loss_type"].as_str() {
        Some("l1") => SemLossKind::L1,
        Some("l2") => SemLossKind::L2,
        _ => SemLossKind::Cosine,
    };
    let cfg = LossConfig::new()
        .with_gan_weight(f("discriminator_weight")?)
        .with_gan_start_epoch(f("discriminator_start_epoch")? as usize)
        .with_perceptual_weight(f("perceptual_weight")?)
        .with_reconstruction_weight(f("reconstruction_weight")?)
        .with_sem_weight(f("sem_weight")?)
        .with_sem_loss(kind)
        .with_kl_weight(f("kl_weight")?)
        .with_logvar(case.input_host("param.logvar").map(|v| v[0] as f64).unwrap_or(f("logvar_init")?));
    if lk["reconstruction_loss"].as_str().is_some_and(|r| r != "l2") {
        return Err("only the l2 reconstruction loss is exercised by this runner".into());
    }
    let dc = &c["discriminator"];
    let dcfg = DiscriminatorConfig::new()
        .with_ndf(dc["ndf"].as_u64().unwrap_or(64) as usize)
        .with_n_layers(dc["n_layers"].as_u64().unwrap_or(3) as usize);
    let load_disc = |case: &Case| -> CaseResult<NLayerDiscriminator> {
        let mut d = dcfg.init(&case.device);
        let sd = case.params()?.subset("discriminator.");
        // BatchNorm's step counter has no role with a fixed momentum.
        let counters: Vec<String> =
            sd.keys_with_prefix("").filter(|k| k.ends_with("num_batches_tracked")).cloned().collect();
        let counters: Vec<&str> = counters.iter().map(String::as_str).collect();
        load_into(&mut d, &sd, &KeyMap::new(), &[], &counters, "").map_err(|e| e.to_string())?;
        Ok(d)
    };
    let disc = load_disc(case)?;
    let targets: Tensor<4> = case.input("in.targets")?;
    let recon: Tensor<4> = case.input("in.reconstructions")?;
    let posterior = DiagonalGaussian::from_moments(case.input("in.moments")?);
    let (sf, pf): (Tensor<3>, Tensor<3>) = (case.input("in.sem_feature")?, case.input("in.pred_sem_feature")?);
    let perceptual: Tensor<1> = case.input("in.perceptual_value")?;
    for (prefix, gan_on) in [("gen_nogan", false), ("gen_gan", true)] {
        let terms = generator_loss(
            &cfg,
            GeneratorInputs {
                targets: targets.clone(),
                reconstructions: recon.clone(),
                posterior: Some(&posterior),
                sem: Some(sem_loss(kind, sf.clone(), pf.clone())),
                perceptual: Some(perceptual.clone()),
                discriminator: gan_on.then_some(&disc),
            },
        );
        case.put(&format!("out.{prefix}.total"), terms.total.clone());
        case.put(&format!("out.{prefix}.reconstruction_loss"), terms.reconstruction.clone());
        case.put(&format!("out.{prefix}.perceptual_loss"), terms.perceptual.clone());
        case.put(&format!("out.{prefix}.kl_loss"), terms.kl.clone());
        case.put(&format!("out.{prefix}.sem_loss"), terms.sem.clone());
        case.put(&format!("out.{prefix}.weighted_gan_loss"), terms.weighted_gan.clone());
        case.put(&format!("out.{prefix}.gan_loss"), terms.gan.clone());
        case.put(&format!("out.{prefix}.psnr"), terms.psnr());
    }
    let d = discriminator_loss(&disc, targets, recon.clone());
    case.put("out.disc.discriminator_loss", d.loss);
    case.put("out.disc.logits_real_mean", d.logits_real_mean);
    case.put("out.disc.logits_fake_mean", d.logits_fake_mean);
    case.put("out.sem_loss_raw", sem_loss(kind, sf, pf));
    // One fresh copy, run in train mode first: its batch statistics update the running ones
    // (momentum 0.1, unbiased variance) that the eval-mode pass then uses, as in the reference.
    let fresh = load_disc(case)?;
    case.put("out.disc_logits_train", fresh.forward(recon.clone(), true));
    case.put("out.disc_logits_eval", fresh.forward(recon, false));
    Ok(())
}
