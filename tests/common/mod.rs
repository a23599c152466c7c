//! Helpers the integration tests share: fixtures, the `rectok` binary, run folders' losses, and
//! killing a training run once its first checkpoint exists.
#![allow(dead_code)] // Each test file uses some of them.

use burn::prelude::*;
use rectok::generator::DitDhConfig;
use rectok::nn::init::{NormalInit, initialize};
use rectok::rng::Rng;
use rectok::train::monitor::read_metrics;
use rectok::weights::generator::save_generator;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A file of `tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The `rectok` binary with quiet logs and no stdin.
pub fn rectok() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rectok"));
    c.env("RUST_LOG", "warn").stdin(Stdio::null());
    c
}

/// Runs `rectok args…` to completion.
pub fn run<S: AsRef<OsStr>>(args: &[S]) -> Output {
    rectok().args(args).output().expect("run rectok")
}

/// Standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Standard output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// The logged records of a run folder without the timing fields, as text: two runs of the same
/// trajectory give equal lists.
pub fn losses(run: &Path) -> Vec<Vec<(String, String)>> {
    read_metrics(&run.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .map(|r| {
            r.into_iter()
                .filter(|(k, _)| k != "images_per_s" && k != "elapsed_s")
                .map(|(k, v)| (k, v.to_string()))
                .collect()
        })
        .collect()
}

/// Waits until `ready()` (polling every few milliseconds), failing if the child ends first or
/// five minutes pass.
pub fn wait_for(what: &str, mut ready: impl FnMut() -> bool, child: &mut Child) {
    let t0 = Instant::now();
    while !ready() {
        assert!(t0.elapsed() < Duration::from_secs(300), "{what} never happened");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Starts `command` (a training run into `run`), kills it with SIGKILL as soon as its first
/// checkpoint exists, and waits for it.
pub fn kill_after_first_checkpoint(mut command: Command, run: &Path) {
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_for("the first checkpoint", || run.join("checkpoints/latest").exists(), &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The fixture tokenizer (`tiny_rectok.pth`, whose sizes cannot be inferred) converted into a
/// self-describing file `dir/name`, with `extra` options of `rectok convert`.
pub fn converted_tokenizer(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(name);
    let o = rectok()
        .arg("convert")
        .arg(fixture("tiny_rectok.pth"))
        .arg(&out)
        .arg("--config")
        .arg(fixture("tiny_config.json"))
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "convert failed: {}", stderr(&o));
    out
}

/// A tiny DiT^DH (5 classes) on the tiny tokenizer's `channels`×4×4 latents, with random weights
/// of standard deviation `std` drawn from `seed`, saved as `dir/name`.
pub fn tiny_generator(dir: &Path, name: &str, seed: u64, channels: usize, std: f64) -> PathBuf {
    let config = DitDhConfig::new(4, channels, 32, 2, 2)
        .with_dec_hidden(48)
        .with_dec_depth(1)
        .with_dec_heads(2)
        .with_num_classes(5);
    let model = initialize(config.init(&Device::flex()), &NormalInit(std), &mut Rng::seed_from(seed));
    let path = dir.join(name);
    save_generator(&model, &path).unwrap();
    path
}
