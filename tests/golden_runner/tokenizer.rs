//! Runners for the tokenizer cases.

use super::{Case, CaseResult};
use burn::prelude::*;
use rectok::nn::VitSize;
use rectok::nn::rope::{dit, tokenizer as tok_rope};
use rectok::tokenizer::masking::{MaskIds, len_keep};
use rectok::tokenizer::{
    DecoderConfig, DiagonalGaussian, EncoderConfig, LatentStats, MlpSemDecoderConfig, NoiseSchedule, RecTokConfig,
    SemDecoderKind, TrainDraws, TransformerSemDecoderConfig,
};
use rectok::trace::Trace;
use rectok::weights::{self, load_into, tokenizer as wt};
use serde_json::Value;

fn usize_of(v: &Value, key: &str) -> CaseResult<usize> {
    v[key].as_u64().map(|x| x as usize).ok_or_else(|| format!("constructor field `{key}` missing"))
}

fn f64_of(v: &Value, key: &str) -> CaseResult<f64> {
    v[key].as_f64().ok_or_else(|| format!("constructor field `{key}` missing"))
}

/// A model size by name: the case's own `size_dict_entries`, else the reference `SIZE_DICT`.
fn size_of(case: &Case, name: &str) -> CaseResult<VitSize> {
    if let Some(e) = case.json["size_dict_entries"].get(name) {
        return Ok(VitSize {
            width: usize_of(e, "width")?,
            layers: usize_of(e, "layers")?,
            heads: usize_of(e, "heads")?,
        });
    }
    VitSize::named(name).ok_or_else(|| format!("unknown model size `{name}`"))
}

/// Rejects constructor options this implementation does not model (none are used officially).
fn check_unsupported(c: &Value) -> CaseResult<()> {
    for (key, ok) in [("cls_token_type", "none")] {
        if let Some(v) = c.get(key).and_then(|v| v.as_str())
            && v != ok
        {
            return Err(format!("{key} = {v} is not supported"));
        }
    }
    for key in ["diff_cls_token", "disable_kl", "use_qknorm", "sem_cls_token"] {
        if c.get(key).and_then(|v| v.as_bool()) == Some(true) {
            return Err(format!("{key} = true is not supported"));
        }
    }
    Ok(())
}

fn load<M: burn::store::ModuleSnapshot>(case: &Case, module: &mut M, map: &weights::KeyMap) -> CaseResult<()> {
    let sd = case.params()?;
    load_into(module, &sd, map, &[], &[], "").map(|_| ()).map_err(|e| e.to_string())
}

pub fn rope_table(case: &mut Case) -> CaseResult<()> {
    let c = case.constructor().clone();
    for (i, s) in c["settings"].as_array().ok_or("no settings")?.iter().enumerate() {
        let (dim, h, w) = (usize_of(s, "dim")?, usize_of(s, "seq_h")?, usize_of(s, "seq_w")?);
        let add_cls = s["add_cls"].as_bool().unwrap_or(false);
        let n_reg = s["n_register"].as_u64().unwrap_or(0) as usize;
        let table = tok_rope::reference_table(dim, h, w, add_cls, n_reg);
        let len = table.len() / (2 * dim);
        case.put_host(&format!("out.rope{i}"), vec![len, 2 * dim], table);
        let rope = tok_rope::table_with_specials(dim, h, w, add_cls, n_reg, &case.device);
        let q: Tensor<4> = case.input(&format!("in.q{i}"))?;
        case.put(&format!("out.rotated{i}"), rope.apply(q));
    }
    for (i, s) in c["ddt_settings"].as_array().map(|a| a.to_vec()).unwrap_or_default().iter().enumerate() {
        let (dim, pt) = (usize_of(s, "dim")?, usize_of(s, "pt_seq_len")?);
        let (cos, sin) = dit::tables(dim, pt);
        case.put_host(&format!("out.ddt_freqs_cos{i}"), vec![pt * pt, 2 * dim], cos);
        case.put_host(&format!("out.ddt_freqs_sin{i}"), vec![pt * pt, 2 * dim], sin);
        let rope = dit::table(2 * dim, pt, &case.device);
        let x: Tensor<4> = case.input(&format!("in.ddt_x{i}"))?;
        case.put(&format!("out.ddt_rotated{i}"), rope.apply(x));
    }
    Ok(())
}

fn encoder_config(case: &Case) -> CaseResult<EncoderConfig> {
    let c = case.constructor();
    check_unsupported(c)?;
    Ok(EncoderConfig::new(
        usize_of(c, "img_size")?,
        usize_of(c, "patch_size")?,
        size_of(case, c["model_size"].as_str().ok_or("model_size")?)?,
        usize_of(c, "token_channels")?,
    ))
}

pub fn encoder_eval(case: &mut Case) -> CaseResult<()> {
    let mut enc = encoder_config(case)?.init(&case.device);
    load(case, &mut enc, &wt::encoder_key_map())?;
    let mut trace = Trace::on();
    let z = enc.forward_traced(case.input("in.x")?, None, &mut trace);
    case.put("out.z", z);
    case.put_trace("out.dbg.", trace);
    Ok(())
}

pub fn encoder_masked(case: &mut Case) -> CaseResult<()> {
    let c = case.constructor().clone();
    if c["random_mask_ratio"].as_bool() == Some(true) {
        return Err("random_mask_ratio draws from Python's RNG, which a case cannot replay".into());
    }
    let mut enc = encoder_config(case)?.init(&case.device);
    load(case, &mut enc, &wt::encoder_key_map())?;
    let noise = case.mask_noise("in.mask_noise")?;
    let mask = MaskIds::from_noise(&noise, len_keep(noise.seq_len, f64_of(&c, "mask_ratio")?), &case.device);
    let z = enc.forward(case.input("in.x")?, Some(&mask));
    case.put("out.z", z);
    case.put_int("out.ids_restore", mask.ids_restore);
    case.put_int("out.ids_keep", mask.ids_keep);
    case.put_int("out.ids_masked", mask.ids_masked);
    Ok(())
}

pub fn decoder(case: &mut Case) -> CaseResult<()> {
    let c = case.constructor().clone();
    check_unsupported(&c)?;
    let cfg = DecoderConfig::new(
        usize_of(&c, "img_size")?,
        usize_of(&c, "patch_size")?,
        size_of(case, c["model_size"].as_str().ok_or("model_size")?)?,
        usize_of(&c, "token_channels")?,
    );
    let mut dec = cfg.init(&case.device);
    load(case, &mut dec, &wt::decoder_key_map())?;
    let mut trace = Trace::on();
    let full = dec.forward_traced(case.input("in.z_full")?, None, &mut trace);
    case.put("out.image_full", full);
    case.put_trace("out.dbg.full.", trace);
    let ids = case.input_int::<2>("in.ids_restore")?;
    let masked = dec.forward(case.input("in.z_kept")?, Some(&ids));
    case.put("out.image_masked", masked);
    Ok(())
}

pub fn sem_decoder_transformer(case: &mut Case) -> CaseResult<()> {
    let c = case.constructor().clone();
    check_unsupported(&c)?;
    let grid = usize_of(&c, "img_size")? / usize_of(&c, "patch_size")?;
    let cfg = TransformerSemDecoderConfig::new(
        grid,
        size_of(case, c["model_size"].as_str().ok_or("model_size")?)?,
        usize_of(&c, "token_channels")?,
        usize_of(&c, "sem_embed_dim")?,
    );
    let mut dec = cfg.init(&case.device);
    load(case, &mut dec, &weights::KeyMap::new())?;
    let ids = case.input_int::<2>("in.ids_restore")?;
    let masked = dec.forward(case.input("in.z_kept")?, Some(&ids));
    case.put("out.pred_masked", masked);
    let full = dec.forward(case.input("in.z_full")?, None);
    case.put("out.pred_full", full);
    Ok(())
}

pub fn sem_decoder_mlp(case: &mut Case) -> CaseResult<()> {
    let c = case.constructor().clone();
    let mut dec =
        MlpSemDecoderConfig::new(usize_of(&c, "token_channels")?, usize_of(&c, "sem_embed_dim")?).init(&case.device);
    load(case, &mut dec, &wt::mlp_sem_decoder_key_map())?;
    let pred = dec.forward(case.input("in.z")?);
    case.put("out.pred", pred);
    Ok(())
}

pub fn posterior(case: &mut Case) -> CaseResult<()> {
    let p = DiagonalGaussian::from_moments(case.input("in.moments")?);
    case.put("out.mean", p.mean.clone());
    case.put("out.logvar", p.logvar.clone());
    case.put("out.std", p.std.clone());
    case.put("out.var", p.var.clone());
    case.put("out.mode", p.mode());
    let sample = p.sample(case.input("in.eps")?);
    case.put("out.sample", sample.clone());
    case.put("out.kl", p.kl());
    case.put("out.nll_of_sample", p.nll(sample));
    if case.has("in.moments_extreme") {
        let q = DiagonalGaussian::from_moments(case.input("in.moments_extreme")?);
        case.put("out.extreme_logvar", q.logvar.clone());
        case.put("out.extreme_std", q.std.clone());
        case.put("out.extreme_kl", q.kl());
    }
    Ok(())
}

/// A `RecTok` configuration from the reference constructor arguments of a case.
fn rectok_config(case: &Case) -> CaseResult<RecTokConfig> {
    let c = case.constructor();
    check_unsupported(c)?;
    if c["encoder_type"].as_str().is_some_and(|t| t != "default") {
        return Err("only the default ViT encoder is supported".into());
    }
    let size = |key: &str| -> CaseResult<VitSize> { size_of(case, c[key].as_str().ok_or(format!("{key} missing"))?) };
    let mut cfg = RecTokConfig::new(
        usize_of(c, "token_channels")?,
        size("vit_enc_model_size")?,
        size("vit_dec_model_size")?,
        size("vit_sem_model_size")?,
    )
    .with_img_size(usize_of(c, "img_size")?)
    .with_patch_size(usize_of(c, "patch_size")?)
    .with_mask_ratio(f64_of(c, "mask_ratio")?)
    .with_mask_ratio_min(f64_of(c, "mask_ratio_min")?)
    .with_gamma(f64_of(c, "gamma")?)
    .with_scale_factor(f64_of(c, "scale_factor")?);
    cfg.mask_ratio_type = match c["mask_ratio_type"].as_str() {
        Some("fix") => rectok::tokenizer::MaskRatioType::Fix,
        _ => rectok::tokenizer::MaskRatioType::Random,
    };
    cfg.noise_schedule = schedule(c["noise_schedule"].as_str().unwrap_or("shift"))?;
    cfg.sem_decoder = match c["sem_dec_type"].as_str() {
        Some("mlp") => SemDecoderKind::Mlp,
        _ => SemDecoderKind::Transformer,
    };
    if c["foundation_model_type"].as_str().is_some_and(|t| !t.is_empty()) {
        return Err("tokenizer cases with a teacher run through the training forward".into());
    }
    Ok(cfg)
}

fn schedule(name: &str) -> CaseResult<NoiseSchedule> {
    match name {
        "shift" => Ok(NoiseSchedule::Shift),
        "lognorm" => Ok(NoiseSchedule::Lognorm),
        "uniform" => Ok(NoiseSchedule::Uniform),
        other => Err(format!("unknown noise schedule {other}")),
    }
}

pub fn rectok_encode_train(case: &mut Case) -> CaseResult<()> {
    let base = rectok_config(case)?;
    if base.mask_ratio_type != rectok::tokenizer::MaskRatioType::Fix && base.mask_ratio > 0.0 {
        return Err("a random mask ratio is drawn from Python's RNG, which a case cannot replay".into());
    }
    let sd = case.params()?;
    let schedules: std::collections::BTreeSet<String> = case
        .tensors
        .keys()
        .filter_map(|k| k.strip_prefix("in.")?.strip_suffix(".mask_noise").map(str::to_string))
        .collect();
    if schedules.is_empty() {
        return Err("no in.<schedule>.mask_noise inputs".into());
    }
    for s in schedules {
        let cfg = base.clone().with_noise_schedule(schedule(&s)?);
        let mut model = cfg.init(&case.device);
        load_into(&mut model, &sd, &wt::key_map(&cfg.teacher_key, "sem_decoders"), &[], &[], "")
            .map_err(|e| e.to_string())?;
        let draws = TrainDraws {
            mask_noise: Some(case.mask_noise(&format!("in.{s}.mask_noise"))?),
            mask_ratio: cfg.mask_ratio,
            posterior_eps: Some(case.input(&format!("in.{s}.posterior_eps"))?),
            flow_draw: Some(case.input(&format!("in.{s}.noise_u"))?),
            flow_noise: Some(case.input(&format!("in.{s}.flow_noise"))?),
        };
        let enc = model.encode_train(case.input("in.x")?, &draws);
        case.put(&format!("out.{s}.z_latents"), enc.z_latents);
        case.put(&format!("out.{s}.sem_input"), enc.sem_input);
        case.put(&format!("out.{s}.posterior_mean"), enc.posterior.mean.clone());
        case.put(&format!("out.{s}.posterior_logvar"), enc.posterior.logvar.clone());
        if let Some(nl) = enc.noise_level {
            case.put(&format!("out.{s}.noise_level"), nl);
        }
        let mask = enc.mask.ok_or("masking was not applied")?;
        case.put_int(&format!("out.{s}.ids_restore"), mask.ids_restore);
        case.put_int(&format!("out.{s}.ids_keep"), mask.ids_keep);
        case.put_int(&format!("out.{s}.ids_masked"), mask.ids_masked);
    }
    case.put_host("out.timestep_shift", vec![1], vec![base.timestep_shift() as f32]);
    Ok(())
}

pub fn rectok_tokenize(case: &mut Case) -> CaseResult<()> {
    let cfg = rectok_config(case)?;
    let mut model = cfg.init(&case.device);
    let sd = case.params()?;
    load_into(&mut model, &sd, &wt::key_map(&cfg.teacher_key, "sem_decoders"), &[], &[], "")
        .map_err(|e| e.to_string())?;
    model.stats = Some(LatentStats { mean: case.input_host("in.stats_mean")?, std: case.input_host("in.stats_std")? });
    let tokens = model.tokenize(case.input("in.x")?, None);
    case.put("out.tokens", tokens.clone());
    let sampled = model.tokenize(case.input("in.x")?, Some(case.input("in.tokenize_eps")?));
    case.put("out.tokens_sampled", sampled);
    case.put("out.images", model.detokenize(case.input("in.tokens_in")?));
    case.put("out.images_roundtrip", model.detokenize(tokens));
    let from_moments = model.sample_from_moments(case.input("in.moments")?, case.input("in.moments_eps")?);
    case.put("out.tokens_from_moments", from_moments);
    Ok(())
}
