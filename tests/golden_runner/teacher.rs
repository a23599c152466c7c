//! Runners for the teacher cases (DINOv3 ViT, teacher preprocessing).

use super::{Case, CaseResult};
use burn::prelude::*;
use rectok::nn::rope::dinov3 as dinov3_rope;
use rectok::teacher::preprocess::{IMAGENET_MEAN, IMAGENET_STD, teacher_pixels};
use rectok::teacher::{Dinov3Config, Dinov3Vit};
use rectok::trace::Trace;
use rectok::weights::{KeyMap, load_into};

fn dinov3(case: &Case) -> CaseResult<Dinov3Vit> {
    let c = &case.constructor()["config"];
    let get = |k: &str| c[k].as_u64().map(|v| v as usize).ok_or(format!("config.{k} missing"));
    let mut cfg = Dinov3Config::new(
        get("hidden_size")?,
        get("num_hidden_layers")?,
        get("num_attention_heads")?,
        get("intermediate_size")?,
    )
    .with_patch_size(get("patch_size")?)
    .with_num_register_tokens(c["num_register_tokens"].as_u64().unwrap_or(4) as usize);
    if let Some(v) = c["rope_theta"].as_f64() {
        cfg.rope_theta = v;
    }
    for (key, want) in [("use_gated_mlp", false), ("key_bias", false)] {
        if c.get(key).and_then(|v| v.as_bool()).is_some_and(|v| v != want) {
            return Err(format!("{key} = {} is not supported", !want));
        }
    }
    let mut model = cfg.init(&case.device);
    load_into(&mut model, &case.params()?, &KeyMap::new(), &[], &[], "").map_err(|e| e.to_string())?;
    Ok(model)
}

pub fn dinov3_vit(case: &mut Case) -> CaseResult<()> {
    let model = dinov3(case)?;
    let pixels: Tensor<4> = case.input("in.pixel_values")?;
    let [_, _, h, w] = pixels.dims();
    let p = model.config.patch_size;
    let mut trace = Trace::on();
    let out = model.forward_traced(pixels.clone(), None, &mut trace);
    case.put("out.pooler_output", out.clone().narrow(1, 0, 1).squeeze_dim::<2>(1));
    case.put("out.last_hidden_state", out);
    case.put_trace("out.dbg.", trace);
    let hd = model.config.hidden_size / model.config.num_attention_heads;
    let (cos, sin) = dinov3_rope::tables(hd, h / p, w / p, model.config.rope_theta as f32, None);
    case.put_host("out.rope_cos", vec![(h / p) * (w / p), hd], cos);
    case.put_host("out.rope_sin", vec![(h / p) * (w / p), hd], sin);
    let u = case.input_host("in.rope_rescale_u")?[0];
    case.put("out.train_last_hidden_state", model.forward(pixels, Some(u.exp())));
    Ok(())
}

pub fn teacher_preprocess(case: &mut Case) -> CaseResult<()> {
    let c = case.constructor().clone();
    let img = c["img_size"].as_u64().ok_or("img_size")? as usize;
    // The processor's class defaults (size 224×224, ImageNet mean/std), as the case states.
    let resolution = case.tensors.get("out.processor_pixel_values").map(|t| t.shape()[2]).unwrap_or(224);
    let (processed, teacher) = teacher_pixels(case.input("in.x")?, resolution, img, IMAGENET_MEAN, IMAGENET_STD);
    case.put("out.processor_pixel_values", processed);
    case.put("out.teacher_pixel_values", teacher);
    Ok(())
}
