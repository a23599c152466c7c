//! Teachers: the built-in EfficientNet-Lite0 against a reference run of the original package
//! (`tests/fixtures/effnet_expected.safetensors`, see `tests/fixtures/README.md`), real-photo
//! classification, teacher features on the token grid, and wrong teacher files.

use burn::prelude::*;
use rectok::data::load_rgb8;
use rectok::teacher::efficientnet::classifier_input;
use rectok::teacher::{Dinov3Config, Teacher, TeacherSpec};
use rectok::weights::{CheckpointEntry, StateDict};

mod common;
use common::fixture;

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap()
}

fn max_rel(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max) / scale
}

fn effnet() -> rectok::teacher::EfficientNetLite {
    match Teacher::load(&TeacherSpec::EfficientNetLite0, &Device::flex()).unwrap() {
        Teacher::EfficientNet(m) => m,
        _ => unreachable!(),
    }
}

#[test]
fn built_in_efficientnet_matches_the_reference_network() {
    let m = effnet();
    let expected = StateDict::open(&fixture("effnet_expected.safetensors"), CheckpointEntry::Auto).unwrap();
    // x[c, i, j] = sin(0.37 i + 0.23 j + 1.7 c), the fixture's deterministic input.
    let mut v = Vec::with_capacity(3 * 224 * 224);
    for c in 0..3 {
        for i in 0..224 {
            for j in 0..224 {
                v.push((0.37 * i as f64 + 0.23 * j as f64 + 1.7 * c as f64).sin() as f32);
            }
        }
    }
    let x = Tensor::<4>::from_data(TensorData::new(v, [1, 3, 224, 224]), &Device::flex());
    let features = values(m.features(x.clone()));
    assert!(max_rel(&features, &expected.read_f32("features.pattern").unwrap()) < 1e-4);
    assert!(max_rel(&values(m.logits(x)), &expected.read_f32("logits.pattern").unwrap()) < 1e-4);
    // The documented classifier preprocessing on a real (non-square) photo.
    let cat = classifier_input(&load_rgb8(&fixture("classify/cat.jpg")).unwrap(), &Device::flex());
    assert_eq!(cat.dims(), [1, 3, 224, 336]);
    assert!(max_rel(&values(m.logits(cat)), &expected.read_f32("logits.cat").unwrap()) < 1e-4);
}

#[test]
fn built_in_efficientnet_classifies_real_photos() {
    let m = effnet();
    let expected = StateDict::open(&fixture("effnet_expected.safetensors"), CheckpointEntry::Auto).unwrap();
    // ImageNet: 281-285 cats, 967 espresso, 665 moped, 540/657/744 rocket-like.
    let sensible: [(&str, &[usize]); 4] = [
        ("cat", &[281, 282, 283, 284, 285]),
        ("coffee", &[967, 968]),
        ("motorcycle", &[665, 670]),
        ("rocket", &[540, 657, 744, 812]),
    ];
    for (name, classes) in sensible {
        let x = classifier_input(&load_rgb8(&fixture(&format!("classify/{name}.jpg"))).unwrap(), &Device::flex());
        let p = values(burn::tensor::activation::softmax(m.logits(x), 1));
        let mut idx: Vec<usize> = (0..1000).collect();
        idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
        // The reference's top-5 with the original float32 weights (int64 stored as such).
        let sd = StateDict::open(&fixture("effnet_expected.safetensors"), CheckpointEntry::Auto).unwrap();
        let t = sd.tensors.get(&format!("top5.{name}")).unwrap().clone();
        let want: Vec<i64> = burn::store::bridge::into_data(t).unwrap().try_into_vec_as().unwrap();
        assert_eq!(idx[0] as i64, want[0], "{name}: top-1 differs from the reference");
        let overlap = idx[..5].iter().filter(|c| want.contains(&(**c as i64))).count();
        assert!(overlap >= 4, "{name}: top-5 {:?} vs reference {want:?}", &idx[..5]);
        assert!(classes.contains(&idx[0]), "{name}: top-1 class {} is not a sensible label", idx[0]);
        let _ = &expected;
    }
}

#[test]
fn teacher_features_land_on_the_token_grid() {
    let device = Device::flex();
    let teacher = Teacher::load(&TeacherSpec::EfficientNetLite0, &device).unwrap();
    assert_eq!((teacher.dim(), teacher.key()), (1280, "effnet"));
    let img = rectok::data::transforms::center_crop_arr(&load_rgb8(&fixture("photos/cat.png")).unwrap(), 64);
    let x = rectok::data::transforms::images_to_tensor(&[img.clone(), img], &device);
    let f = teacher.features(x, 4, None);
    assert_eq!(f.dims(), [2, 16, 1280]);
    let v = values(f);
    assert!(v.iter().all(|x| x.is_finite() && *x >= 0.0 && *x <= 6.0), "ReLU6 features");
    assert_eq!(v[..16 * 1280], v[16 * 1280..], "same image, same features");
}

#[test]
fn wrong_teacher_files_are_named() {
    let device = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    // A (tiny) DINOv3 in the Hugging Face layout, loaded as ViT-B/16: the first shape mismatch is named.
    let small = dir.path().join("small.safetensors");
    let model = Dinov3Config::new(64, 1, 4, 128).init(&device);
    rectok::weights::write_safetensors_from_module(&model, &rectok::weights::KeyMap::new(), &small, Default::default())
        .unwrap();
    let spec: TeacherSpec = format!("dinov3-b16:{}", small.display()).parse().unwrap();
    let err = Teacher::load(&spec, &device).unwrap_err().to_string();
    assert!(
        err.contains("small.safetensors")
            && err.contains("embeddings.cls_token")
            && err.contains("[1, 1, 64]")
            && err.contains("[1, 1, 768]"),
        "{err}"
    );
    // A generator checkpoint is not a teacher.
    let spec: TeacherSpec = format!("dinov3-b16:{}", fixture("tiny_ditdh.pth").display()).parse().unwrap();
    let err = Teacher::load(&spec, &device).unwrap_err().to_string();
    assert!(err.contains("missing key `embeddings.cls_token`") && err.contains("DINOv3 ViT-B/16"), "{err}");
    assert!("dinov3-x16:foo".parse::<TeacherSpec>().is_err());
    assert!("dinov3-b16:".parse::<TeacherSpec>().unwrap_err().contains("needs the path"));
}

#[test]
fn teacher_check_prints_top5() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_rectok"))
        .args(["teacher", "check", fixture("classify/cat.jpg").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("top-5 ImageNet classes: 285 ("), "{out}");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_rectok"))
        .args([
            "teacher",
            "check",
            "--teacher",
            "dinov3-b16:/nonexistent/model.safetensors",
            fixture("classify/cat.jpg").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("/nonexistent/model.safetensors") && !err.contains("panicked"),
        "{err}"
    );
}
