//! The perceptual loss networks (LPIPS-VGG and ConvNeXt, narrow random weights) against
//! torchvision's architectures and LPIPS' formula (`tests/fixtures/perceptual/make_fixture.py`),
//! both weight layouts, gradients, and missing-file errors.

use burn::prelude::*;
use rectok::loss::convnext::ConvNextConfig;
use rectok::loss::lpips::LpipsConfig;
use rectok::loss::{PerceptualKind, PerceptualLoss, PerceptualWeights};
use rectok::weights::{CheckpointEntry, StateDict};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/perceptual").join(name)
}

fn expected(key: &str, device: &Device) -> Tensor<4> {
    let sd = StateDict::open(&fixture("expected.safetensors"), CheckpointEntry::Auto).unwrap();
    let shape = sd.shape(key).unwrap();
    let v = sd.read_f32(key).unwrap();
    let mut s = [1usize; 4];
    s[4 - shape.len()..].copy_from_slice(&shape);
    Tensor::from_data(TensorData::new(v, s), device)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{what}[{i}]: got {a}, want {b}");
    }
}

fn narrow() -> (LpipsConfig, ConvNextConfig) {
    (
        LpipsConfig::new().with_widths([4, 8, 8, 16, 16]),
        ConvNextConfig::new([8, 16, 16, 32], [1, 1, 2, 1]).with_num_classes(10),
    )
}

fn load(weights: &PerceptualWeights, device: &Device) -> PerceptualLoss {
    let (l, c) = narrow();
    PerceptualLoss::load_sized(PerceptualKind::LpipsConvnext, weights, &l, &c, device).unwrap()
}

#[test]
fn lpips_and_convnext_match_torchvision_in_both_weight_layouts() {
    let device = Device::flex();
    let y = expected("y", &device);
    let y_hat = expected("y_hat", &device);
    let want_lpips = values(expected("lpips", &device));
    let want_p = values(expected("perceptual", &device));
    let whole = PerceptualWeights {
        lpips: Some(fixture("lpips_full.safetensors")),
        vgg: None,
        convnext: Some(fixture("convnext.safetensors")),
    };
    let split = PerceptualWeights {
        lpips: Some(fixture("lpips_lin.safetensors")),
        vgg: Some(fixture("vgg_trunk.safetensors")),
        convnext: whole.convnext.clone(),
    };
    for weights in [whole, split] {
        let loss = load(&weights, &device);
        let PerceptualLoss::Official { lpips, convnext } = &loss else { panic!("official term expected") };
        assert_close(&values(lpips.distance(y.clone(), y_hat.clone())), &want_lpips, 1e-4, "lpips");
        let logits = convnext.logits(rectok::loss::perceptual::classifier_input(y.clone()));
        assert_close(&values(logits), &values(expected("logits_y", &device)), 1e-4, "convnext logits");
        let p = loss.forward(y.clone(), y_hat.clone()).unwrap();
        assert_close(&values(p), &want_p, 1e-4, "perceptual");
    }
}

#[test]
fn gradients_reach_the_reconstruction_but_not_the_frozen_networks() {
    let device = Device::flex().autodiff();
    let weights = PerceptualWeights {
        lpips: Some(fixture("lpips_full.safetensors")),
        vgg: None,
        convnext: Some(fixture("convnext.safetensors")),
    };
    let loss = load(&weights, &device);
    let y = expected("y", &device);
    let y_hat = expected("y_hat", &device).require_grad();
    let p = loss.forward(y, y_hat.clone()).unwrap();
    let grads = p.backward();
    let g = values(y_hat.grad(&grads).expect("gradient w.r.t. the reconstruction").reshape([-1]));
    assert!(g.iter().any(|v| v.abs() > 0.0) && g.iter().all(|v| v.is_finite()));
    let PerceptualLoss::Official { lpips, .. } = &loss else { unreachable!() };
    let frozen = rectok::train::params::gradients(lpips.as_ref(), &grads);
    assert!(frozen.is_empty(), "frozen LPIPS parameters got gradients: {:?}", frozen.keys().collect::<Vec<_>>());
}

#[test]
fn missing_or_wrong_weight_files_are_named() {
    let device = Device::flex();
    let (l, c) = narrow();
    let only_lin = PerceptualWeights {
        lpips: Some(fixture("lpips_lin.safetensors")),
        vgg: None,
        convnext: Some(fixture("convnext.safetensors")),
    };
    let err =
        PerceptualLoss::load_sized(PerceptualKind::LpipsConvnext, &only_lin, &l, &c, &device).unwrap_err().to_string();
    assert!(err.contains("lpips_lin.safetensors") && err.contains("VGG16"), "{err}");
    let no_convnext = PerceptualWeights { lpips: Some(fixture("lpips_full.safetensors")), vgg: None, convnext: None };
    let err = PerceptualLoss::load_sized(PerceptualKind::LpipsConvnext, &no_convnext, &l, &c, &device)
        .unwrap_err()
        .to_string();
    assert!(err.contains("convnext"), "{err}");
    // The ConvNeXt file given as the LPIPS weights: a clear mismatch.
    let swapped = PerceptualWeights {
        lpips: Some(fixture("convnext.safetensors")),
        vgg: Some(fixture("convnext.safetensors")),
        convnext: None,
    };
    let err =
        PerceptualLoss::load_sized(PerceptualKind::LpipsConvnext, &swapped, &l, &c, &device).unwrap_err().to_string();
    assert!(err.contains("convnext.safetensors"), "{err}");
    assert!(matches!(
        PerceptualLoss::load(PerceptualKind::None, &PerceptualWeights::default(), &device).unwrap(),
        PerceptualLoss::None
    ));
}
