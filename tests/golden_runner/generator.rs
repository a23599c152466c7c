//! Runners for the generator cases (DiT^DH, transport, time shifts).

use super::{Case, CaseResult};
use burn::prelude::*;
use rectok::generator::guidance::forward_with_cfg;
use rectok::generator::transport::{TrainingDraws, plan, training_losses};
use rectok::generator::{DitDh, DitDhConfig, Integrator, sample_ode};
use rectok::rectified_flow::dimension_shift;
use rectok::rectified_flow::{ode_grid, train_time};
use rectok::tokenizer::NoiseSchedule;
use rectok::tokenizer::flow::noise_level;
use rectok::trace::Trace;
use rectok::weights::{generator as wg, load_into};
use serde_json::Value;

fn usize_at(v: &Value, i: usize) -> CaseResult<usize> {
    v.get(i).and_then(|x| x.as_u64()).map(|x| x as usize).ok_or_else(|| format!("missing element {i} of {v}"))
}

fn num(c: &Value, key: &str) -> CaseResult<f64> {
    c[key].as_f64().ok_or_else(|| format!("constructor field `{key}` missing"))
}

/// The DiT configuration from the reference constructor of a case.
fn dit_config(case: &Case) -> CaseResult<DitDhConfig> {
    let c = case.constructor();
    for (key, want) in [
        ("use_qknorm", false),
        ("use_swiglu", true),
        ("use_rope", true),
        ("use_rmsnorm", true),
        ("wo_shift", false),
        ("use_pos_embed", true),
    ] {
        if c.get(key).and_then(|v| v.as_bool()).is_some_and(|v| v != want) {
            return Err(format!("{key} = {} is not supported", !want));
        }
    }
    if c["force_one_d_seq"].as_u64().unwrap_or(0) != 0 {
        return Err("force_one_d_seq is not supported".into());
    }
    let pair = |key: &str| -> CaseResult<(usize, usize)> {
        let v = &c[key];
        if let Some(x) = v.as_u64() {
            return Ok((x as usize, x as usize));
        }
        Ok((usize_at(v, 0)?, usize_at(v, 1)?))
    };
    let (enc, dec) = pair("hidden_size")?;
    let (enc_depth, dec_depth) = pair("depth")?;
    let (enc_heads, dec_heads) = pair("num_heads")?;
    let patch = match &c["patch_size"] {
        Value::Array(a) if a.len() == 2 && a[0] == a[1] => a[0].as_u64().unwrap_or(1) as usize,
        v => v.as_u64().unwrap_or(1) as usize,
    };
    let input = (num(c, "img_size")? / num(c, "tokenizer_patch_size")?) as usize;
    Ok(DitDhConfig::new(input, num(c, "token_channels")? as usize, enc, enc_depth, enc_heads)
        .with_dec_hidden(dec)
        .with_dec_depth(dec_depth)
        .with_dec_heads(dec_heads)
        .with_patch_size(patch)
        .with_mlp_ratio(num(c, "mlp_ratio")?)
        .with_num_classes(num(c, "num_classes")? as usize)
        .with_label_dropout_prob(num(c, "label_dropout_prob")?))
}

fn dit(case: &Case) -> CaseResult<DitDh> {
    let config = dit_config(case)?;
    config.validate()?;
    let mut model = config.init(&case.device);
    let sd = case.params()?;
    load_into(&mut model, &sd, &wg::key_map(), &[], &["enc_feat_rope.", "dec_feat_rope."], "")
        .map_err(|e| e.to_string())?;
    Ok(model)
}

/// Numbers of a call written in the case's `calls` text, e.g. the guidance scale of
/// `forward_with_cfg(in.cfg_x, in.cfg_t, in.cfg_y, 1.5)`: the first call line containing `anchor`,
/// the floats after `after` (up to the closing parenthesis).
fn call_numbers(case: &Case, anchor: &str, after: &str) -> CaseResult<Vec<f64>> {
    let calls = case.json["calls"].as_array().ok_or("no calls")?;
    for line in calls.iter().filter_map(|l| l.as_str()) {
        if let Some(pos) = line.find(anchor) {
            let rest = &line[pos..];
            let Some(start) = rest.find(after) else { continue };
            let tail = &rest[start + after.len()..];
            let end = tail.find(')').unwrap_or(tail.len());
            let nums: Vec<f64> =
                tail[..end].split(',').filter_map(|s| s.trim().trim_start_matches('(').parse().ok()).collect();
            if !nums.is_empty() {
                return Ok(nums);
            }
        }
    }
    Err(format!("cannot find `{anchor}…{after}` in the case's calls"))
}

pub fn dit_ddt(case: &mut Case) -> CaseResult<()> {
    let model = dit(case)?;
    let mut trace = Trace::on();
    let out = model.forward_traced(case.input("in.x")?, case.input("in.t")?, case.input_int("in.y")?, &mut trace);
    case.put("out.net", out);
    case.put_trace("out.dbg.", trace);

    let scale = call_numbers(case, "out.cfg = model.forward_with_cfg", "in.cfg_y,")?[0];
    let interval = call_numbers(case, "out.cfg = model.forward_with_cfg", "cfg_interval=")
        .map(|v| (v[0], v[1]))
        .unwrap_or((0.0, 1.0));
    let cfg = forward_with_cfg(
        &model,
        case.input("in.cfg_x")?,
        case.input("in.cfg_t")?,
        case.input_int("in.cfg_y")?,
        scale,
        interval,
    );
    case.put("out.cfg", cfg);
    let scale2 = call_numbers(case, "out.cfg_interval = model.forward_with_cfg", "in.cfg_y,")?[0];
    let iv = call_numbers(case, "out.cfg_interval = model.forward_with_cfg", "cfg_interval=")?;
    let cfg2 = forward_with_cfg(
        &model,
        case.input("in.cfg_x")?,
        case.input("in.cfg_t2")?,
        case.input_int("in.cfg_y")?,
        scale2,
        (iv[0], iv[1]),
    );
    case.put("out.cfg_interval", cfg2);

    let y = model.drop_labels(case.input_int("in.y_cond")?, &case.input("in.label_drop_u")?);
    let dropped = model.forward(case.input("in.x")?, case.input("in.t")?, y);
    case.put("out.net_train_label_drop", dropped);
    let draws = TrainingDraws {
        x0: case.input("in.loss_x0")?,
        t_u: case.input("in.loss_t_u")?,
        label_drop_u: Some(case.input("in.loss_label_drop_u")?),
    };
    let losses = training_losses(&model, case.input("in.loss_x1")?, case.input_int("in.y_cond")?, &draws);
    case.put("out.train_loss", losses.loss.reshape([1]));
    case.put_host("out.time_dist_shift", vec![1], vec![model.config.time_shift() as f32]);
    Ok(())
}

pub fn transport(case: &mut Case) -> CaseResult<()> {
    let model = dit(case)?;
    let s = model.config.time_shift();
    let x1: Tensor<4> = case.input("in.x1")?;
    let x0: Tensor<4> = case.input("in.x0")?;
    let t = train_time(case.input("in.t_u")?, s);
    case.put("out.t", t.clone());
    let (xt, ut) = plan(&t, x0.clone(), x1.clone());
    case.put("out.xt", xt);
    case.put("out.ut", ut);
    let y = case.input_int::<1>("in.y")?;
    let draws = TrainingDraws { x0, t_u: case.input("in.t_u")?, label_drop_u: None };
    let losses = training_losses(&model, x1, y.clone(), &draws);
    case.put("out.loss_per_sample", losses.loss_per_sample);
    case.put("out.pred", losses.pred);

    let steps = case.constructor()["num_sampling_steps"].as_u64().ok_or("num_sampling_steps")? as usize;
    let grid = ode_grid(steps, s);
    case.put_host("out.t_grid", vec![steps], grid.clone());
    let noise: Tensor<4> = case.input("in.init_noise")?;
    let mut traj = Vec::new();
    let last = sample_ode(
        noise.clone(),
        &grid,
        Integrator::Euler,
        |x, t| model.forward(x, t, y.clone()),
        |_, x| traj.push(x.clone()),
    );
    case.put("out.traj", Tensor::stack::<5>(traj, 0));
    case.put("out.generate_cfg1", last);

    let scale = call_numbers(case, "out.traj_cfg = model.sample_fn", "cfg_scale=")?[0];
    let interval = call_numbers(case, "out.traj_cfg = model.sample_fn", "cfg_interval=")
        .map(|v| (v[0], v[1]))
        .unwrap_or((0.0, 1.0));
    let b = y.dims()[0];
    let null = Tensor::<1, Int>::full([b], model.config.num_classes as i64, &case.device);
    let y2 = Tensor::cat(vec![y, null], 0);
    let mut traj = Vec::new();
    let last = sample_ode(
        Tensor::cat(vec![noise.clone(), noise], 0),
        &grid,
        Integrator::Euler,
        |x, t| forward_with_cfg(&model, x, t, y2.clone(), scale, interval),
        |_, x| traj.push(x.clone()),
    );
    case.put("out.traj_cfg", Tensor::stack::<5>(traj, 0));
    case.put("out.generate_cfg1_5", last.narrow(0, 0, b));
    Ok(())
}

pub fn timestep_shift(case: &mut Case) -> CaseResult<()> {
    let c = case.constructor().clone();
    let t: Tensor<1> = case.input("in.t")?;
    let n = t.dims()[0];
    for (i, s) in c["train_shifts"].as_array().ok_or("train_shifts")?.iter().enumerate() {
        let s = s.as_f64().ok_or("train shift")?;
        case.put(&format!("out.train_t{i}"), train_time(t.clone(), s));
    }
    for (i, o) in c["ode_settings"].as_array().ok_or("ode_settings")?.iter().enumerate() {
        let steps = o["num_steps"].as_u64().ok_or("num_steps")? as usize;
        let s = o["timestep_shift"].as_f64().ok_or("timestep_shift")?;
        case.put_host(&format!("out.ode_grid{i}"), vec![steps], ode_grid(steps, s));
    }
    for (i, r) in c["rectok_settings"].as_array().ok_or("rectok_settings")?.iter().enumerate() {
        let grid = (num(r, "img_size")? / num(r, "patch_size")?) as usize;
        let shift = dimension_shift(grid, grid, num(r, "token_channels")? as usize);
        let draw = t.clone().reshape([n, 1, 1]);
        for (name, schedule) in
            [("shift", NoiseSchedule::Shift), ("uniform", NoiseSchedule::Uniform), ("lognorm", NoiseSchedule::Lognorm)]
        {
            let key = format!("out.rectok_noise_level{i}.{name}");
            if case.has(&key) {
                case.put(&key, noise_level(schedule, draw.clone(), shift).reshape([n]));
            }
        }
        case.put_host(&format!("out.rectok_shift{i}"), vec![1], vec![shift as f32]);
    }
    Ok(())
}
