//! Official checkpoint layouts: a tiny RecTok saved by the reference code as `RecTok.pth` is laid
//! out (`model`, `model_ema`, optimizer state, a semantic decoder and teacher entries), a bare state
//! dict saved from a DDP + `torch.compile` wrapper, and the safetensors written by `convert`; each
//! must give the reference's latents and reconstructions (`tests/fixtures/tiny_expected.safetensors`,
//! produced once by the reference implementation with Pillow preprocessing).

use burn::prelude::*;
use rectok::data::load_rgb8;
use rectok::data::transforms::{center_crop_arr, images_to_tensor};
use rectok::tokenizer::{RecTok, RecTokConfig};
use rectok::weights::tokenizer::{TokenizerLoadOptions, load_latent_stats, load_tokenizer, save_tokenizer};
use rectok::weights::{CheckpointEntry, StateDict, WeightsError};
use std::path::{Path, PathBuf};

mod common;
use common::fixture;

fn tiny_config() -> RecTokConfig {
    RecTokConfig::from_json(&std::fs::read_to_string(fixture("tiny_config.json")).unwrap()).unwrap()
}

const PHOTOS: [(&str, &str); 3] = [("cat", "cat.png"), ("coffee", "coffee.webp"), ("rocket", "rocket.jpg")];

fn input(file: &str, device: &Device) -> Tensor<4> {
    let img = load_rgb8(&fixture(&format!("photos/{file}"))).unwrap();
    images_to_tensor(&[center_crop_arr(&img, 32)], device)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let max = got.iter().zip(want).map(|(a, b)| (a - b).abs() / (1.0 + b.abs())).fold(0.0f32, f32::max);
    assert!(max <= tol, "{what}: max relative difference {max:e} > {tol:e}");
}

/// Checks raw latents, normalised latents and reconstructions against the reference's `tag` run.
fn check_against_reference(model: &mut RecTok, tag: &str) {
    let device = Device::flex();
    let expected = StateDict::open_verbatim(&fixture("tiny_expected.safetensors")).unwrap();
    let stats = load_latent_stats(&fixture("tiny_stats.safetensors")).unwrap();
    for (name, file) in PHOTOS {
        let x = input(file, &device);
        assert_close(
            &values(x.clone() * 0.5 + 0.5),
            &expected.read_f32(&format!("{tag}.input.{name}")).unwrap(),
            1e-6,
            &format!("{name} input pixels"),
        );
        model.stats = None;
        let raw = model.tokens_to_grid(model.posterior(x.clone()).mode());
        assert_close(
            &values(raw),
            &expected.read_f32(&format!("{tag}.raw.{name}")).unwrap(),
            1e-4,
            &format!("{name} raw latents"),
        );
        assert_close(
            &values(model.reconstruct(x.clone())),
            &expected.read_f32(&format!("{tag}.recon.{name}")).unwrap(),
            1e-4,
            &format!("{name} reconstruction"),
        );
        model.stats = Some(stats.clone());
        assert_close(
            &values(model.tokenize(x, None)),
            &expected.read_f32(&format!("{tag}.norm.{name}")).unwrap(),
            1e-4,
            &format!("{name} normalised latents"),
        );
    }
}

fn load(path: &Path, entry: CheckpointEntry, config: Option<RecTokConfig>) -> Result<RecTok, WeightsError> {
    let options = TokenizerLoadOptions { entry, config, without_semantic: false };
    load_tokenizer(path, &options, &Device::flex()).map(|(m, _)| m)
}

#[test]
fn official_training_checkpoint_defaults_to_model_ema() {
    let mut model = load(&fixture("tiny_rectok.pth"), CheckpointEntry::Auto, Some(tiny_config())).unwrap();
    assert!(model.sem_decoder.is_some(), "the stage-1 semantic decoder is loaded when present");
    check_against_reference(&mut model, "ema");
}

/// `tiny_rectok.pth` with its top-level entries renamed (`from → to` in the pickle; a pickled
/// string carries its own length, so the rest of the file stays valid).
fn renamed_entries(dir: &Path, name: &str, renames: &[(&str, &str)]) -> PathBuf {
    use std::io::{Read, Write};
    let mut src = zip::ZipArchive::new(std::fs::File::open(fixture("tiny_rectok.pth")).unwrap()).unwrap();
    let out = dir.join(name);
    let mut dst = zip::ZipWriter::new(std::fs::File::create(&out).unwrap());
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..src.len() {
        let mut entry = src.by_index(i).unwrap();
        let name = entry.name().unwrap().to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        if name.ends_with("data.pkl") {
            for (from, to) in renames {
                let key = |s: &str| [&[b'X'][..], &(s.len() as u32).to_le_bytes(), s.as_bytes()].concat();
                let (old, new) = (key(from), key(to));
                let at = bytes
                    .windows(old.len())
                    .position(|w| w == old.as_slice())
                    .unwrap_or_else(|| panic!("no entry {from}"));
                bytes.splice(at..at + old.len(), new);
            }
        }
        dst.start_file(name, stored).unwrap();
        dst.write_all(&bytes).unwrap();
    }
    dst.finish().unwrap();
    out
}

#[test]
fn other_entry_names_load_with_the_ema_preferred() {
    let dir = tempfile::tempdir().unwrap();
    let device = Device::flex();
    let with_report = |path: &Path, entry: CheckpointEntry| {
        let options = TokenizerLoadOptions { entry, config: Some(tiny_config()), without_semantic: false };
        load_tokenizer(path, &options, &device).unwrap()
    };
    // `state_dict` and `ema`: EMA first, as the reference's evaluation; either on request.
    let sd = renamed_entries(dir.path(), "sd.pth", &[("model_ema", "ema"), ("model", "state_dict")]);
    let (mut m, r) = with_report(&sd, CheckpointEntry::Auto);
    assert_eq!(r.entry, "ema");
    check_against_reference(&mut m, "ema");
    for entry in [CheckpointEntry::Model, "state_dict".parse().unwrap()] {
        let (mut m, r) = with_report(&sd, entry);
        assert_eq!(r.entry, "state_dict");
        check_against_reference(&mut m, "model");
    }
    // A single wrapper entry beside bookkeeping ones (optimizer, epoch, scaler) loads as it is.
    let wrapped = renamed_entries(dir.path(), "wrapped.pth", &[("model_ema", "scaler"), ("model", "weights")]);
    let (mut m, r) = with_report(&wrapped, CheckpointEntry::Auto);
    assert_eq!(r.entry, "weights");
    check_against_reference(&mut m, "model");
    // An entry that is not there names what is.
    let err = load(&wrapped, "net".parse().unwrap(), Some(tiny_config())).unwrap_err().to_string();
    assert!(err.contains("no `net` entry") && err.contains("weights"), "{err}");
}

#[test]
fn model_entry_on_request() {
    let mut model = load(&fixture("tiny_rectok.pth"), CheckpointEntry::Model, Some(tiny_config())).unwrap();
    check_against_reference(&mut model, "model");
}

#[test]
fn bare_state_dict_with_wrapper_prefixes() {
    let mut model = load(&fixture("tiny_rectok_bare.pth"), CheckpointEntry::Auto, Some(tiny_config())).unwrap();
    assert!(model.sem_decoder.is_none());
    check_against_reference(&mut model, "model");
    let err = load(&fixture("tiny_rectok_bare.pth"), CheckpointEntry::Ema, Some(tiny_config())).unwrap_err();
    assert!(err.to_string().contains("no `model_ema` or `ema` entry"), "{err}");
}

#[test]
fn heads_cannot_be_guessed_for_non_size_dict_widths() {
    let err = load(&fixture("tiny_rectok.pth"), CheckpointEntry::Auto, None).unwrap_err().to_string();
    assert!(err.contains("tiny_rectok.pth") && err.contains("heads") && err.contains("--config"), "{err}");
}

#[test]
fn converted_safetensors_loads_without_flags() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.safetensors");
    let mut model = load(&fixture("tiny_rectok.pth"), CheckpointEntry::Auto, Some(tiny_config())).unwrap();
    model.stats = Some(load_latent_stats(&fixture("tiny_stats.safetensors")).unwrap());
    save_tokenizer(&model, &out).unwrap();
    let sd = StateDict::open(&out, CheckpointEntry::Auto).unwrap();
    assert!(sd.contains("encoder.patch_embed.0.weight") && sd.contains("decoder.ffn.1.bias"), "reference key names");
    assert!(sd.contains("sem_decoders.dinov3.out.weight"));
    assert!(sd.metadata.contains_key("rectok.config") && sd.metadata.contains_key("rectok.latent_stats"));
    let mut back = load(&out, CheckpointEntry::Auto, None).unwrap();
    assert_eq!(back.stats, model.stats);
    check_against_reference(&mut back, "ema");
}

#[test]
fn checkpoint_of_another_model_names_the_first_missing_key() {
    // A golden DiT case file is a safetensors checkpoint of a different network.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.safetensors");
    rectok::weights::write_safetensors(
        &other,
        vec![("blocks.0.attn.qkv.weight".into(), TensorData::new(vec![0f32; 12], [3, 4]))],
        Default::default(),
    )
    .unwrap();
    let err = load(&other, CheckpointEntry::Auto, None).unwrap_err().to_string();
    assert!(err.contains("missing key `encoder.positional_embedding`"), "{err}");
    let err = load(&other, CheckpointEntry::Auto, Some(tiny_config())).unwrap_err().to_string();
    assert!(err.contains("missing key `encoder.") && err.contains("other.safetensors"), "{err}");
}

#[test]
fn shape_mismatch_is_reported_by_key() {
    let mut config = tiny_config();
    config.token_channels = 16;
    let err = load(&fixture("tiny_rectok.pth"), CheckpointEntry::Auto, Some(config)).unwrap_err().to_string();
    assert!(err.contains("has shape") && err.contains("expects"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// DiT^DH
// ---------------------------------------------------------------------------------------------

fn tiny_dit_config() -> rectok::generator::DitDhConfig {
    rectok::generator::DitDhConfig::parse(fixture("tiny_ditdh_config.json").to_str().unwrap(), 8, 4).unwrap()
}

fn velocity_of(model: &rectok::generator::DitDh) -> Vec<f32> {
    let expected = StateDict::open(&fixture("tiny_ditdh_expected.safetensors"), CheckpointEntry::Auto).unwrap();
    let device = Device::flex();
    let x = Tensor::<4>::from_data(TensorData::new(expected.read_f32("x").unwrap(), [2, 8, 4, 4]), &device);
    let t = Tensor::<1>::from_data(TensorData::new(expected.read_f32("t").unwrap(), [2]), &device);
    let y = Tensor::<1, Int>::from_data(TensorData::new(vec![1i64, 5], [2]), &device);
    values(model.forward(x, t, y))
}

#[test]
fn official_dit_checkpoint_gives_the_reference_velocity() {
    use rectok::weights::generator::{load_generator, save_generator};
    let expected = StateDict::open(&fixture("tiny_ditdh_expected.safetensors"), CheckpointEntry::Auto).unwrap();
    let want = expected.read_f32("velocity").unwrap();
    let (model, report) =
        load_generator(&fixture("tiny_ditdh.pth"), CheckpointEntry::Auto, Some(tiny_dit_config()), &Device::flex())
            .unwrap();
    assert_eq!(report.entry, "model_ema", "evaluation uses the EMA weights");
    let got = velocity_of(&model);
    let max = got.iter().zip(&want).map(|(a, b)| (a - b).abs() / (1.0 + b.abs())).fold(0.0f32, f32::max);
    assert!(max < 1e-4, "velocity differs from the reference by {max:e}");
    // The raw `model` entry (which also holds the RoPE buffers) loads and differs.
    let (raw, _) =
        load_generator(&fixture("tiny_ditdh.pth"), CheckpointEntry::Model, Some(tiny_dit_config()), &Device::flex())
            .unwrap();
    assert_ne!(velocity_of(&raw), got);
    // Converted safetensors load without flags and give the same velocity.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dit.safetensors");
    save_generator(&model, &out).unwrap();
    let sd = StateDict::open(&out, CheckpointEntry::Auto).unwrap();
    assert!(
        sd.contains("blocks.0.adaLN_modulation.1.weight")
            && sd.contains("t_embedder.W")
            && sd.contains("t_embedder.mlp.2.bias")
    );
    let (back, _) = load_generator(&out, CheckpointEntry::Auto, None, &Device::flex()).unwrap();
    assert_eq!(velocity_of(&back), got);
    // Without sizes, non-official widths are refused with a hint.
    let err = load_generator(&fixture("tiny_ditdh.pth"), CheckpointEntry::Auto, None, &Device::flex())
        .unwrap_err()
        .to_string();
    assert!(err.contains("heads") && err.contains("--generator-config"), "{err}");
    // A tokenizer is not a generator.
    let err =
        load_generator(&fixture("tiny_rectok.pth"), CheckpointEntry::Auto, Some(tiny_dit_config()), &Device::flex())
            .unwrap_err()
            .to_string();
    assert!(err.contains("missing key `pos_embed`") || err.contains("missing key `x_embedder"), "{err}");
}
