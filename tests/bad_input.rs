//! The bad-input corpus: every command run on its own bad inputs and options (made here, small),
//! each giving a non-zero exit, exactly one `error:` line naming the file or option at fault, no
//! panic, nothing written anywhere, and the inputs unchanged. Then the crash and signal cases of
//! training: Ctrl-C / SIGTERM save and resume exactly, a locked run folder, a run that died
//! before its first checkpoint, and the leftovers of kills during pruning and metrics writes.

mod common;

use burn::tensor::TensorData;
use common::{converted_tokenizer, fixture, losses, rectok, run, stderr, wait_for};
use rectok::metrics::fid::{FeatureStats, write_npz};
use rectok::weights::{StateDict, write_safetensors};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Every file under `dir` with its bytes (the corpus checks that nothing changes).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(p.clone());
                out.insert(p, b"<dir>".to_vec());
            } else if t.is_file() {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            } else {
                out.insert(p, b"<special>".to_vec());
            }
        }
    }
    out
}

/// The inputs of the corpus, all in one folder.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ws = Self { dir };
        let p = |n: &str| ws.dir.path().join(n);
        // A self-describing tiny tokenizer (config and statistics in its metadata).
        converted_tokenizer(
            ws.dir.path(),
            "tok.safetensors",
            &["--latent-stats", fixture("tiny_stats.safetensors").to_str().unwrap(), "--inference-only"],
        );
        // The same tokenizer with one NaN weight.
        let sd = StateDict::open(&p("tok.safetensors"), Default::default()).unwrap();
        let mut tensors = Vec::new();
        for k in sd.tensors.keys() {
            let mut v = sd.read_f32(k).unwrap();
            if k == "decoder.decoder_embed.weight" {
                v[3] = f32::NAN;
            }
            tensors.push((k.clone(), TensorData::new(v, sd.shape(k).unwrap())));
        }
        write_safetensors(&p("nan_weights.safetensors"), tensors, sd.metadata.clone().into_iter().collect()).unwrap();
        // Images: a folder of two, a corrupt one, a truncated JPEG, an empty file, a header bomb.
        std::fs::create_dir_all(p("imgs")).unwrap();
        std::fs::copy(fixture("photos/cat.png"), p("imgs/cat.png")).unwrap();
        std::fs::copy(fixture("photos/rocket.jpg"), p("imgs/rocket.JPG")).unwrap();
        std::fs::write(p("corrupt.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
        let jpeg = std::fs::read(fixture("photos/rocket.jpg")).unwrap();
        std::fs::write(p("truncated.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();
        std::fs::write(p("empty.png"), b"").unwrap();
        std::fs::write(p("bomb.png"), png_header(30_000, 30_000)).unwrap();
        #[cfg(unix)]
        assert!(Command::new("mkfifo").arg(p("fifo.png")).status().unwrap().success());
        // Latents: NaN values, names that leave the output folder, an absolute name.
        let latent = |v: f32| TensorData::new(vec![v; 8 * 4 * 4], [8, 4, 4]);
        let mut nan = vec![0.1f32; 8 * 4 * 4];
        nan[5] = f32::INFINITY;
        write_safetensors(
            &p("nan_latents.safetensors"),
            vec![("ok".into(), latent(0.0)), ("bad".into(), TensorData::new(nan, [8, 4, 4]))],
            HashMap::new(),
        )
        .unwrap();
        write_safetensors(&p("escape.safetensors"), vec![("a/../../x".into(), latent(0.0))], HashMap::new()).unwrap();
        write_safetensors(
            &p("absolute.safetensors"),
            vec![("/tmp/rectok-absolute".into(), latent(0.0))],
            HashMap::new(),
        )
        .unwrap();
        write_safetensors(&p("empty_name.safetensors"), vec![("a//b".into(), latent(0.0))], HashMap::new()).unwrap();
        // Latent statistics: NaN, a zero std, mismatched lengths.
        let stats = |mean: Vec<f32>, std: Vec<f32>| {
            vec![
                ("mean".to_string(), TensorData::new(mean.clone(), [mean.len()])),
                ("std".to_string(), TensorData::new(std.clone(), [std.len()])),
            ]
        };
        write_safetensors(
            &p("stats_nan.safetensors"),
            stats(vec![0.0, f32::NAN, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], vec![1.0; 8]),
            HashMap::new(),
        )
        .unwrap();
        write_safetensors(
            &p("stats_zero_std.safetensors"),
            stats(vec![0.0; 8], vec![1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]),
            HashMap::new(),
        )
        .unwrap();
        write_safetensors(&p("stats_lengths.safetensors"), stats(vec![0.0; 8], vec![1.0; 7]), HashMap::new()).unwrap();
        // Feature statistics: non-finite, asymmetric, not positive semi-definite, and a good one.
        let npz = |name: &str, sigma: Vec<f64>| {
            write_npz(&FeatureStats { mu: vec![0.0, 1.0], sigma, count: 0 }, &p(name)).unwrap()
        };
        npz("good.npz", vec![1.0, 0.2, 0.2, 1.0]);
        npz("npz_nan.npz", vec![1.0, f64::NAN, f64::NAN, 1.0]);
        npz("npz_asym.npz", vec![1.0, 0.5, -0.5, 1.0]);
        npz("npz_not_psd.npz", vec![1.0, 2.0, 2.0, 1.0]);
        write_npz(&FeatureStats { mu: vec![0.0; 3], sigma: vec![0.0; 9], count: 0 }, &p("three.npz")).unwrap();
        // A recipe with an out-of-range value, and a file that is not a recipe.
        std::fs::write(p("bad_lr.toml"), "[optim]\nlr = -1.0\n").unwrap();
        std::fs::write(p("not.toml"), "[optim\n").unwrap();
        std::fs::copy(fixture("tiny_ditdh.pth"), p("gen.pth")).unwrap();
        std::fs::copy(fixture("tiny_ditdh_config.json"), p("gen.json")).unwrap();
        std::fs::write(p("a_file"), b"x").unwrap();
        // Outputs that would collide, names too long, a link out of an output folder.
        write_safetensors(
            &p("names_clash.safetensors"),
            vec![("x".into(), latent(0.0)), ("x.png/y".into(), latent(0.0))],
            HashMap::new(),
        )
        .unwrap();
        write_safetensors(&p("long_name.safetensors"), vec![("z".repeat(300), latent(0.0))], HashMap::new()).unwrap();
        write_safetensors(&p("a_x.safetensors"), vec![("a/x".into(), latent(0.0))], HashMap::new()).unwrap();
        std::fs::create_dir_all(p("outside")).unwrap();
        std::fs::create_dir_all(p("linked_out")).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(p("outside"), p("linked_out/a")).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(p("nowhere"), p("dangling")).unwrap();
        let meta = |k: &str, v: &str| [(k.to_string(), v.to_string())].into_iter().collect::<HashMap<_, _>>();
        write_safetensors(
            &p("maybe_normalized.safetensors"),
            vec![("l".into(), latent(0.0))],
            meta("rectok.normalized", "maybe"),
        )
        .unwrap();
        write_safetensors(
            &p("kind_tokenizer.safetensors"),
            vec![("l".into(), latent(0.0))],
            meta("rectok.kind", "tokenizer"),
        )
        .unwrap();
        // A thin strip, a file list that is a FIFO, absurd sizes, bench references.
        image::RgbImage::from_pixel(2000, 1, image::Rgb([9, 9, 9])).save(p("strip.png")).unwrap();
        #[cfg(unix)]
        assert!(Command::new("mkfifo").arg(p("fifo.txt")).status().unwrap().success());
        std::fs::write(p("huge.json"), r#"{"preset": "s", "enc_hidden": 10000008}"#).unwrap();
        std::fs::write(p("ref.json"), r#"{"encode": {"1": 0.3}}"#).unwrap();
        std::fs::write(p("neg_ref.json"), r#"{"encode": {"1": -0.3}}"#).unwrap();
        std::fs::write(p("key_ref.json"), r#"{"encode": {"x": 0.3}}"#).unwrap();
        // Only unreadable images; a run's input inside the run folder; an output folder whose
        // existing entry is in the way; empty statistics; a file list with odd labels.
        std::fs::create_dir_all(p("unreadable")).unwrap();
        std::fs::write(p("unreadable/x.png"), b"x").unwrap();
        std::fs::write(p("unreadable/y.png"), b"y").unwrap();
        std::fs::create_dir_all(p("runin")).unwrap();
        std::fs::copy(p("tok.safetensors"), p("runin/tokenizer.safetensors")).unwrap();
        std::fs::create_dir_all(p("in_the_way/cat.png")).unwrap();
        write_npz(&FeatureStats { mu: vec![], sigma: vec![], count: 0 }, &p("empty.npz")).unwrap();
        std::fs::write(p("labels.TXT"), "imgs/cat.png 1000000\n").unwrap();
        std::fs::write(p("mixed.txt"), "imgs/cat.png 1\nimgs/rocket.JPG\n").unwrap();
        write_safetensors(&p("name_252.safetensors"), vec![("a".repeat(252), latent(0.0))], HashMap::new()).unwrap();
        // A JPEG whose header claims 65500 × 65500 pixels in a few kilobytes.
        let at = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).expect("baseline JPEG");
        let mut claims = jpeg.clone();
        claims[at + 5..at + 9].copy_from_slice(&[0xFF, 0xDC, 0xFF, 0xDC]);
        std::fs::write(p("claims.jpg"), claims).unwrap();
        ws
    }
}

/// A PNG that is only a header claiming `w × h` pixels.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend_from_slice(&13u32.to_be_bytes());
    let body: Vec<u8> = b"IHDR".iter().chain(&ihdr).copied().collect();
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    // A few compressed bytes: a real bomb's data would inflate to gigabytes.
    let idat: Vec<u8> = b"IDAT".iter().chain(&[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]).copied().collect();
    out.extend_from_slice(&8u32.to_be_bytes());
    out.extend_from_slice(&idat);
    out.extend_from_slice(&crc32(&idat).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82]);
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[test]
fn every_command_refuses_its_bad_inputs_cleanly() {
    let ws = Workspace::new();
    let w = |n: &str| ws.path(n);
    let out = w("out");
    let tok = ["--tokenizer".to_string(), w("tok.safetensors")];
    let gen_args = ["--generator".to_string(), w("gen.pth"), "--generator-config".into(), w("gen.json")];
    let cases: Vec<(Vec<String>, &str)> = {
        let c = |cmd: &[&str], extra: &[String], needle: &'static str| -> (Vec<String>, &'static str) {
            (cmd.iter().map(|s| s.to_string()).chain(extra.iter().cloned()).collect(), needle)
        };
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let with = |a: &[String], b: &[String]| a.iter().chain(b).cloned().collect::<Vec<_>>();
        let enc = |extra: &[String]| with(&tok, extra);
        vec![
            // encode
            c(
                &["encode"],
                &enc(&s(&["-i", &w("imgs"), "-o", &w("out/l.safetensors"), "--batch-size", "0"])),
                "--batch-size",
            ),
            c(&["encode"], &enc(&s(&["-i", &w("imgs"), "-o", &w("out/l.safetensors"), "--threads", "0"])), "--threads"),
            c(
                &["encode"],
                &enc(&s(&["-i", &w("imgs"), "-o", &w("out/l.safetensors"), "--threads", "100000"])),
                "--threads",
            ),
            c(&["encode"], &enc(&s(&["-i", &w("imgs/cat.png"), "-o", &w("imgs/cat.png")])), "imgs/cat.png"),
            c(&["encode"], &enc(&s(&["-i", &w("imgs"), "-o", &w("imgs/rocket.JPG")])), "rocket.JPG"),
            c(&["encode"], &enc(&s(&["-i", &w("imgs"), "-o", &w("tok.safetensors")])), "tok.safetensors"),
            c(&["encode"], &enc(&s(&["-i", &w("corrupt.png"), "-o", &w("out/l.safetensors")])), "corrupt.png"),
            c(&["encode"], &enc(&s(&["-i", &w("truncated.jpg"), "-o", &w("out/l.safetensors")])), "truncated.jpg"),
            c(&["encode"], &enc(&s(&["-i", &w("empty.png"), "-o", &w("out/l.safetensors")])), "empty.png"),
            c(&["encode"], &enc(&s(&["-i", &w("bomb.png"), "-o", &w("out/l.safetensors")])), "--max-image-pixels"),
            c(&["encode"], &enc(&s(&["-i", &w("imgs"), "-o", &w("imgs")])), "is a folder"),
            c(
                &["encode"],
                &enc(&s(&["-i", &w("imgs"), "-o", &w("out/l.safetensors"), "--entry", "no_such_entry"])),
                "no_such_entry",
            ),
            c(
                &["encode"],
                &enc(&s(&[
                    "-i",
                    &w("imgs"),
                    "-o",
                    &w("out/l.safetensors"),
                    "--latent-stats",
                    &w("stats_nan.safetensors"),
                ])),
                "stats_nan.safetensors",
            ),
            c(
                &["encode"],
                &enc(&s(&[
                    "-i",
                    &w("imgs"),
                    "-o",
                    &w("out/l.safetensors"),
                    "--latent-stats",
                    &w("stats_zero_std.safetensors"),
                ])),
                "`std` must be positive",
            ),
            c(
                &["encode"],
                &enc(&s(&[
                    "-i",
                    &w("imgs"),
                    "-o",
                    &w("out/l.safetensors"),
                    "--latent-stats",
                    &w("stats_lengths.safetensors"),
                ])),
                "stats_lengths.safetensors",
            ),
            c(
                &["encode"],
                &s(&["--tokenizer", &w("nan_weights.safetensors"), "-i", &w("imgs"), "-o", &w("out/l.safetensors")]),
                "decoder.decoder_embed.weight",
            ),
            c(
                &["encode"],
                &s(&["--tokenizer", &w("imgs"), "-i", &w("imgs"), "-o", &w("out/l.safetensors")]),
                "is a folder",
            ),
            // decode
            c(&["decode"], &enc(&s(&["-i", &w("escape.safetensors"), "-o", &out])), "a/../../x"),
            c(&["decode"], &enc(&s(&["-i", &w("absolute.safetensors"), "-o", &out])), "absolute"),
            c(&["decode"], &enc(&s(&["-i", &w("empty_name.safetensors"), "-o", &out])), "a//b"),
            c(&["decode"], &enc(&s(&["-i", &w("nan_latents.safetensors"), "-o", &out])), "`bad`"),
            c(&["decode"], &enc(&s(&["-i", &w("nan_latents.safetensors"), "-o", &w("a_file")])), "not a folder"),
            c(&["decode"], &enc(&s(&["-i", &w("imgs/cat.png"), "-o", &out])), "cat.png"),
            c(
                &["decode"],
                &enc(&s(&["-i", &w("nan_latents.safetensors"), "-o", &out, "--batch-size", "0"])),
                "--batch-size",
            ),
            // reconstruct
            c(&["reconstruct"], &enc(&s(&["-i", &w("imgs"), "-o", &w("imgs")])), "input folder"),
            c(
                &["reconstruct"],
                &enc(&s(&["-i", &w("imgs"), "-o", &out, "--metrics-json", &w("imgs/cat.png")])),
                "--metrics-json",
            ),
            c(&["reconstruct"], &enc(&s(&["-i", &w("fifo.png"), "-o", &out])), "fifo.png"),
            // generate
            c(&["generate"], &with(&with(&tok, &gen_args), &s(&["-o", &out, "--steps", "1"])), "--steps"),
            c(&["generate"], &with(&with(&tok, &gen_args), &s(&["-o", &out, "--steps", "100000"])), "--steps"),
            c(&["generate"], &with(&with(&tok, &gen_args), &s(&["-o", &out, "--cfg", "nan"])), "--cfg"),
            c(&["generate"], &with(&with(&tok, &gen_args), &s(&["-o", &out, "--cfg=-1"])), "--cfg"),
            c(
                &["generate"],
                &with(&with(&tok, &gen_args), &s(&["-o", &out, "--cfg-interval", "0.8,0.2"])),
                "--cfg-interval",
            ),
            c(&["generate"], &with(&with(&tok, &gen_args), &s(&["-o", &out, "--classes", "99"])), "class id 99"),
            c(
                &["generate"],
                &with(&with(&tok, &gen_args), &s(&["-o", &out, "--num-per-class", "0"])),
                "--num-per-class",
            ),
            c(&["generate"], &with(&with(&tok, &gen_args), &s(&["-o", &out, "--grid", &w("gen.pth")])), "--grid"),
            c(&["generate"], &with(&with(&tok, &gen_args), &s(&["-o", &w("a_file")])), "not a folder"),
            c(&["generate"], &with(&tok, &s(&["--generator", &w("tok.safetensors"), "-o", &out])), "tok.safetensors"),
            // stats
            c(
                &["latent-stats"],
                &enc(&s(&["--data", &w("imgs"), "-o", &w("out/s.safetensors"), "--limit", "0"])),
                "--limit",
            ),
            c(&["latent-stats"], &enc(&s(&["--data", &w("imgs"), "-o", &w("tok.safetensors")])), "tok.safetensors"),
            // convert
            c(&["convert"], &s(&[&w("tok.safetensors"), &w("tok.safetensors")]), "tok.safetensors"),
            c(&["convert"], &s(&[&w("nan_weights.safetensors"), &w("out/c.safetensors")]), "NaN"),
            // eval fd / stats
            c(&["eval", "fd"], &s(&[&w("npz_nan.npz"), &w("good.npz")]), "npz_nan.npz"),
            c(&["eval", "fd"], &s(&[&w("good.npz"), &w("npz_asym.npz")]), "not symmetric"),
            c(&["eval", "fd"], &s(&[&w("npz_not_psd.npz"), &w("good.npz")]), "positive semi-definite"),
            c(&["eval", "fd"], &s(&[&w("good.npz"), &w("three.npz")]), "cannot be compared"),
            c(&["eval", "fd"], &s(&[&w("good.npz"), &w("fifo.png")]), "fifo.png"),
            c(&["eval", "stats"], &s(&[&w("imgs"), "-o", &w("imgs/cat.png")]), "imgs/cat.png"),
            c(&["eval", "stats"], &s(&[&w("imgs"), "-o", &w("imgs/new.PNG")]), "under an image's name"),
            c(&["eval", "stats"], &s(&[&w("imgs"), "-o", &w("out/a.npz"), "--batch-size", "0"]), "--batch-size"),
            // eval tokenizer / generator / probe
            c(&["eval", "tokenizer"], &enc(&s(&["--data", &w("imgs"), "--limit", "0"])), "--limit"),
            c(&["eval", "tokenizer"], &enc(&s(&["--data", "procedural:x"])), "--data"),
            c(&["eval", "tokenizer"], &enc(&s(&["--data", &w("imgs"), "--json", &w("tok.safetensors")])), "--json"),
            c(
                &["eval", "tokenizer"],
                &enc(&s(&["--data", &w("imgs"), "--ref-stats", &w("npz_not_psd.npz")])),
                "npz_not_psd.npz",
            ),
            c(&["eval", "generator"], &with(&with(&tok, &gen_args), &s(&["--num-samples", "0"])), "--num-samples"),
            c(&["eval", "generator"], &with(&with(&tok, &gen_args), &s(&["--steps", "0"])), "--steps"),
            c(&["probe"], &enc(&s(&["--lr", "0"])), "--lr"),
            c(&["probe"], &enc(&s(&["--lr", "nan"])), "--lr"),
            c(&["probe"], &enc(&s(&["--val-fraction", "1.5"])), "--val-fraction"),
            c(&["probe"], &enc(&s(&["--epochs", "0"])), "--epochs"),
            // teacher, bench, demo
            c(&["teacher", "check"], &s(&["--size", "17", &w("imgs/cat.png")]), "--size"),
            c(&["teacher", "check"], &s(&[&w("fifo.png")]), "fifo.png"),
            c(&["bench", "tokenizer"], &s(&["--iters", "0"]), "--iters"),
            c(&["bench", "dit"], &s(&["--batch-sizes", "0"]), "--batch-sizes"),
            c(&["demo"], &s(&["--threads", "100000", "--out", &out]), "--threads"),
            c(
                &["encode"],
                &enc(&s(&["-i", &w("imgs"), "-o", &w("out/l.safetensors"), "--precision", "bf16"])),
                "--precision bf16 needs a GPU",
            ),
            c(&["encode"], &enc(&s(&["-i", &w("imgs"), "-o", &w("out/l.safetensors"), "--precision", "f8"])), "f8"),
            // train tokenizer: every recipe field has a range, typos are caught, --out is checked.
            c(&["train", "tokenizer"], &s(&["--out", &out, "--set", "optim.lr=-1"]), "optim.lr"),
            c(&["train", "tokenizer"], &s(&["--out", &out, "--set", "optim.lr=nan"]), "optim.lr"),
            c(&["train", "tokenizer"], &s(&["--out", &out, "--set", "optim.beta1=1"]), "optim.beta1"),
            c(&["train", "tokenizer"], &s(&["--out", &out, "--set", "optim.beta2=-0.1"]), "optim.beta2"),
            c(&["train", "tokenizer"], &s(&["--out", &out, "--set", "optim.eps=0"]), "optim.eps"),
            c(&["train", "tokenizer"], &s(&["--out", &out, "--set", "optim.batch_size=0"]), "optim.batch_size"),
            c(&["train", "tokenizer"], &s(&["--out", &out, "--set", "model.mask_ratio=1"]), "mask_ratio"),
            c(&["train", "tokenizer"], &s(&["--out", &out, "--set", "loss.kl_weight=nan"]), "loss.kl_weight"),
            c(&["train", "tokenizer"], &s(&["--out", &out, "--set", "loss.sem_weight=-1"]), "loss.sem_weight"),
            c(&["train", "tokenizer"], &s(&["--out", &out, "--set", "model.encoder.heads=5"]), "heads"),
            c(&["train", "tokenizer"], &s(&["--out", &out, "--set", "run.threads=100000"]), "run.threads"),
            c(&["train", "tokenizer"], &s(&["--out", &out, "--set", "run.device=tpu"]), "run.device"),
            // Half precision is for GPU devices; the CPU refuses it before starting anything.
            c(
                &["train", "tokenizer"],
                &s(&["--out", &out, "--set", "run.precision=\"f16\""]),
                "run.precision f16 needs a GPU",
            ),
            c(&["train", "tokenizer"], &s(&["--out", &out, "--set", "run.precision=\"f64\""]), "run.precision"),
            c(&["train", "tokenizer"], &s(&["--out", &out, "--set", "data.workers=0"]), "data.workers"),
            c(&["train", "tokenizer"], &s(&["--out", &out, "--set", "optim.batch_sise=4"]), "batch_sise"),
            c(&["train", "tokenizer"], &s(&["--out", &out, "--max-steps", "0"]), "--max-steps"),
            c(&["train", "tokenizer"], &s(&["--out", &w("a_file")]), "not a folder"),
            c(&["train", "tokenizer"], &s(&["--out", &w("imgs"), "--data", &w("imgs")]), "--data"),
            c(&["train", "tokenizer"], &s(&["--out", &out, "--config", &w("bad_lr.toml")]), "optim.lr"),
            c(&["train", "tokenizer"], &s(&["--out", &out, "--config", &w("not.toml")]), "not.toml"),
            c(&["train", "tokenizer"], &s(&["--out", &out, "--config", &w("no_such.toml")]), "no_such.toml"),
            // train generator
            c(
                &["train", "generator"],
                &s(&["--out", &out, "--tokenizer", &w("tok.safetensors"), "--set", "optim.lr=0"]),
                "optim.lr",
            ),
            c(
                &["train", "generator"],
                &s(&["--out", &out, "--tokenizer", &w("tok.safetensors"), "--set", "sample.steps=1"]),
                "sample.steps",
            ),
            c(
                &["train", "generator"],
                &s(&["--out", &out, "--tokenizer", &w("tok.safetensors"), "--set", "model.label_dropout_prob=1"]),
                "label_dropout_prob",
            ),
            c(
                &["train", "generator"],
                &s(&["--out", &out, "--tokenizer", &w("tok.safetensors"), "--set", "run.fd_images=1"]),
                "run.fd_images",
            ),
            c(
                &["train", "generator"],
                &s(&["--out", &out, "--tokenizer", &w("tok.safetensors"), "--set", "tokenizer.entry=\"a b\""]),
                "has no `a b` entry",
            ),
            c(
                &["train", "generator"],
                &s(&["--out", &w("tok.safetensors"), "--tokenizer", &w("tok.safetensors")]),
                "not a folder",
            ),
            c(&["train", "generator"], &s(&["--out", &out]), "--tokenizer"),
            // Outputs onto special files, onto data images, onto another output of the same run.
            c(&["encode"], &enc(&s(&["-i", &w("imgs"), "-o", &w("fifo.png")])), "not a regular file"),
            c(
                &["eval", "tokenizer"],
                &enc(&s(&["--data", &w("imgs"), "--extractor", "none", "--json", &w("imgs/cat.png")])),
                "--json",
            ),
            c(&["bench", "tokenizer"], &s(&["--reference", &w("ref.json"), "--json", &w("ref.json")]), "--json"),
            c(&["bench", "tokenizer"], &s(&["--reference", &w("neg_ref.json")]), "neg_ref.json"),
            c(
                &["reconstruct"],
                &enc(&s(&["-i", &w("imgs"), "-o", &out, "--metrics-json", &w("out/cat.png")])),
                "--metrics-json",
            ),
            c(
                &["generate"],
                &with(&with(&tok, &gen_args), &s(&["-o", &out, "--classes", "1", "--grid", &w("out/0001_000.png")])),
                "--grid",
            ),
            c(
                &["generate"],
                &with(&with(&tok, &gen_args), &s(&["-o", &out, "--grid", &w("a_file/grid.png")])),
                "not a folder",
            ),
            c(&["decode"], &enc(&s(&["-i", &w("names_clash.safetensors"), "-o", &out])), "both a file and the folder"),
            c(&["decode"], &enc(&s(&["-i", &w("long_name.safetensors"), "-o", &out])), "255 bytes"),
            c(&["decode"], &enc(&s(&["-i", &w("a_x.safetensors"), "-o", &w("linked_out")])), "outside it"),
            c(&["decode"], &enc(&s(&["-i", &w("maybe_normalized.safetensors"), "-o", &out])), "rectok.normalized"),
            c(&["decode"], &enc(&s(&["-i", &w("kind_tokenizer.safetensors"), "-o", &out])), "not latents"),
            c(&["demo"], &s(&["--out", &w("a_file")]), "not a folder"),
            // An output folder that cannot be created is refused naming its option.
            c(&["demo"], &s(&["--out", "/proc/rectok-out"]), "--out /proc/rectok-out: cannot create"),
            c(&["ablate"], &s(&["--out", "/proc/rectok-out/a"]), "--out /proc/rectok-out/a: cannot create"),
            c(&["train", "tokenizer"], &s(&["--out", "/proc/rectok-out"]), "--out /proc/rectok-out: cannot create"),
            c(&["reconstruct"], &enc(&s(&["-i", &w("imgs"), "-o", "/proc/rectok-out"])), "--output /proc/rectok-out"),
            // An output file in a folder that cannot be created, before the benchmark runs.
            c(
                &["bench", "train"],
                &s(&["--recipes", "tiny", "--iters", "1", "--json", "/proc/rectok-out/b.json"]),
                "--json /proc/rectok-out/b.json: cannot create /proc/rectok-out",
            ),
            c(&["bench", "train"], &s(&["--recipes", "tiny,rectok_c"]), "--recipes: unknown recipe `rectok-c`"),
            // A dangling symbolic link as an output folder; a resume of a folder that does not
            // exist (which must not be created).
            c(&["demo"], &s(&["--quick", "--out", &w("dangling")]), "a symbolic link to"),
            c(&["train", "tokenizer"], &s(&["--out", &w("fresh/run"), "--resume"]), "no training run to resume"),
            // Inputs that would hang or fill memory, values that must be refused.
            c(&["eval", "tokenizer"], &enc(&s(&["--data", &w("fifo.txt")])), "fifo.txt"),
            c(&["teacher", "check"], &s(&[&w("strip.png")]), "too elongated"),
            c(
                &["generate"],
                &with(&tok, &s(&["--generator", &w("gen.pth"), "--generator-config", &w("huge.json"), "-o", &out])),
                "enc_hidden",
            ),
            c(&["train", "tokenizer"], &s(&["--out", &out, "--set", "model.decoder.width=1000000"]), "width"),
            c(&["train", "tokenizer"], &s(&["--out", &out, "--set", "model.mask_ratio=nan"]), "model.mask_ratio"),
            c(&["train", "tokenizer"], &s(&["--out", &out, "--set", "teacher.spec=\"\""]), "teacher.spec"),
            c(&["train", "tokenizer"], &s(&["--out", &out, "--init-from", &w("tok.safetensors")]), "run.init_from"),
            c(
                &["train", "generator"],
                &s(&["--out", &out, "--tokenizer", &w("tok.safetensors"), "--set", "sample.cfg=1000"]),
                "sample.cfg",
            ),
            c(
                &["train", "generator"],
                &s(&["--out", &out, "--tokenizer", &w("tok.safetensors"), "--set", "run.fd_extractor=\"inception:\""]),
                "run.fd_extractor",
            ),
            c(&["eval", "tokenizer"], &enc(&s(&["--data", "procedural:0"])), "procedural"),
            c(&["ablate"], &s(&["--only", "", "--out", &out]), "--only"),
            c(
                &["encode"],
                &enc(&s(&["-i", &w("imgs/cat.png"), "-o", &w("out/l.safetensors"), "--max-image-pixels", "100"])),
                "100 px",
            ),
            // Found before any work: empty sides, inputs inside the run folder, outputs of one
            // run on one path, existing entries in the way, too few images for statistics.
            c(
                &["eval", "probe"],
                &enc(&s(&["--data", &w("imgs"), "--val-data", &w("unreadable")])),
                "none of the images could be read",
            ),
            c(
                &["train", "generator"],
                &s(&["--out", &w("runin"), "--tokenizer", &w("runin/tokenizer.safetensors")]),
                "inside the run folder",
            ),
            c(&["reconstruct"], &enc(&s(&["-i", &w("imgs"), "-o", &out, "--metrics-json", &out])), "--metrics-json"),
            c(
                &["reconstruct"],
                &enc(&s(&["-i", &w("imgs"), "-o", &w("m.json/sub"), "--metrics-json", &w("m.json")])),
                "--metrics-json",
            ),
            c(&["generate"], &with(&with(&tok, &gen_args), &s(&["-o", &out, "--grid", &out])), "--grid"),
            c(
                &["eval", "tokenizer"],
                &enc(&s(&["--data", &w("imgs"), "--extractor", "none", "--save-dir", &out, "--json", &out])),
                "--json",
            ),
            c(&["reconstruct"], &enc(&s(&["-i", &w("imgs"), "-o", &w("in_the_way")])), "is a folder"),
            c(
                &["eval", "tokenizer"],
                &enc(&s(&["--data", &w("imgs"), "--limit", "1", "--save-dir", &out])),
                "at least 2",
            ),
            c(&["eval", "stats"], &s(&[&w("imgs/cat.png"), "-o", &w("out/s.npz")]), "at least 2"),
            c(
                &["train", "generator"],
                &s(&["--out", &out, "--tokenizer", &w("tok.safetensors"), "--cache", &w("a_file/c")]),
                "latents.cache",
            ),
            c(&["decode"], &enc(&s(&["-i", &w("name_252.safetensors"), "-o", &out])), "255 bytes"),
            c(&["ablate"], &s(&["--only", "zzz", "--out", &out]), "--only"),
            c(&["ablate"], &s(&["--seeds", "0", "--out", &out]), "--seeds"),
            c(&["ablate"], &s(&["--seeds", "9", "--out", &out]), "--seeds"),
            // Clear messages: a section set to a value, empty flags, echoed values.
            c(
                &["train", "tokenizer"],
                &s(&["--out", &out, "--set", "run=1", "--max-steps", "1"]),
                "`run` is a section",
            ),
            c(&["train", "tokenizer"], &s(&["--out", &out, "--teacher", ""]), "--teacher is empty"),
            c(
                &["generate"],
                &with(&with(&tok, &gen_args), &s(&["-o", &out, "--cfg-interval", "0.9,0.1"])),
                "got 0.9,0.1",
            ),
            c(&["eval", "fd"], &s(&[&w("empty.npz"), &w("good.npz")]), "empty statistics"),
            c(
                &["encode"],
                &enc(&s(&["-i", &w("imgs"), "-o", &w("out/l.safetensors"), "--latent-stats", &w("none.st")])),
                "--latent-stats",
            ),
            c(&["train", "tokenizer"], &s(&["--out", &out, "--data", &w("labels.TXT")]), "out of range"),
            c(&["train", "tokenizer"], &s(&["--out", &out, "--data", &w("mixed.txt")]), "label every line or none"),
            c(&["bench", "tokenizer"], &s(&["--reference", &w("key_ref.json")]), "not a batch size"),
            c(
                &["encode"],
                &enc(&s(&[
                    "-i",
                    &w("claims.jpg"),
                    "-o",
                    &w("out/l.safetensors"),
                    "--max-image-pixels",
                    "18446744073709551615",
                ])),
                "cannot hold",
            ),
        ]
    };
    let before = snapshot(ws.dir.path());
    for (args, needle) in &cases {
        let o = run(args);
        let err = stderr(&o);
        let what = args.join(" ");
        assert!(!o.status.success(), "`{what}` succeeded");
        assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "`{what}` panicked: {err}");
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "`{what}`: expected one error line, got: {err}");
        assert!(errors[0].contains(needle), "`{what}`: the error should name `{needle}`: {}", errors[0]);
        assert_eq!(snapshot(ws.dir.path()), before, "`{what}` wrote or changed files");
        assert!(!Path::new("/tmp/rectok-absolute.png").exists());
    }
    eprintln!("{} bad inputs refused cleanly", cases.len());
}

/// The fault cases of single files, that must work rather than fail.
#[test]
fn latent_names_are_kept_and_odd_images_are_read() {
    let ws = Workspace::new();
    let w = |n: &str| ws.path(n);
    let latent = TensorData::new(vec![0.25f32; 8 * 4 * 4], [8, 4, 4]);
    let names = ["module.scan", "scan", "_orig_mod.view", "sub/dir/x"];
    write_safetensors(
        &ws.dir.path().join("names.safetensors"),
        names.iter().map(|n| (n.to_string(), latent.clone())).collect(),
        HashMap::new(),
    )
    .unwrap();
    let o =
        run(&["decode", "--tokenizer", &w("tok.safetensors"), "--raw", "-i", &w("names.safetensors"), "-o", &w("dec")]
            .map(String::from));
    assert!(o.status.success(), "{}", stderr(&o));
    for n in names {
        assert!(ws.dir.path().join("dec").join(format!("{n}.png")).exists(), "{n}.png");
    }
    // A 1 × 200000 strip is center-cropped in memory bounded by the crop, and a folder with
    // unreadable images goes on past them, counting them.
    let strip = image::RgbImage::from_fn(1, 200_000, |_, y| image::Rgb([(y % 251) as u8, 0, 0]));
    std::fs::create_dir_all(ws.dir.path().join("odd")).unwrap();
    strip.save(ws.dir.path().join("odd/strip.png")).unwrap();
    std::fs::copy(ws.dir.path().join("bomb.png"), ws.dir.path().join("odd/bomb.png")).unwrap();
    std::fs::copy(ws.dir.path().join("corrupt.png"), ws.dir.path().join("odd/corrupt.PNG")).unwrap();
    std::fs::copy(fixture("photos/coffee.webp"), ws.dir.path().join("odd/coffee.WebP")).unwrap();
    let o = rectok()
        .args(["encode", "--tokenizer", &w("tok.safetensors"), "-i", &w("odd"), "-o", &w("odd.safetensors")])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("bomb.png") && err.contains("corrupt.PNG") && err.contains("2 unreadable image(s)"), "{err}");
    let sd = StateDict::open_verbatim(&ws.dir.path().join("odd.safetensors")).unwrap();
    assert_eq!(sd.tensors.keys().collect::<Vec<_>>(), ["coffee", "strip"]);
    // `generate --classes 1,1` writes four distinct files.
    let o = run(&[
        "generate",
        "--tokenizer",
        &w("tok.safetensors"),
        "--generator",
        &w("gen.pth"),
        "--generator-config",
        &w("gen.json"),
        "--classes",
        "1,1",
        "--num-per-class",
        "2",
        "--steps",
        "3",
        "-o",
        &w("gen_out"),
    ]
    .map(String::from));
    assert!(o.status.success(), "{}", stderr(&o));
    let mut files: Vec<String> = std::fs::read_dir(ws.dir.path().join("gen_out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, ["0001_000.png", "0001_001.png", "0001_002.png", "0001_003.png"]);
    // Evaluations go on past an unreadable image in a class folder (a warning, and a count), and
    // a broken link beside the class folders is said aloud rather than shifting the labels.
    for (class, file) in [("a", "cat.png"), ("b", "rocket.jpg")] {
        std::fs::create_dir_all(ws.dir.path().join("cls").join(class)).unwrap();
        for i in 0..5 {
            std::fs::copy(fixture(&format!("photos/{file}")), ws.dir.path().join(format!("cls/{class}/{i}_{file}")))
                .unwrap();
        }
    }
    std::fs::write(ws.dir.path().join("cls/b/broken.png"), b"not a png").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(ws.dir.path().join("missing"), ws.dir.path().join("cls/c")).unwrap();
    let o = rectok()
        .args([
            "eval",
            "probe",
            "--tokenizer",
            &w("tok.safetensors"),
            "--data",
            &w("cls"),
            "--epochs",
            "2",
            "--val-fraction",
            "0.3",
        ])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("broken.png") && stderr(&o).contains("skipped 1 unreadable"), "{}", stderr(&o));
    #[cfg(unix)]
    assert!(stderr(&o).contains("cls/c: not a class folder"), "{}", stderr(&o));
    // Entries by any name, in safetensors files too; without one, the error lists the names.
    let sd = StateDict::open(&ws.dir.path().join("tok.safetensors"), Default::default()).unwrap();
    let mut two = Vec::new();
    for k in sd.tensors.keys() {
        for entry in ["a.b", "c"] {
            two.push((format!("{entry}.{k}"), TensorData::new(sd.read_f32(k).unwrap(), sd.shape(k).unwrap())));
        }
    }
    write_safetensors(&ws.dir.path().join("two.safetensors"), two, sd.metadata.clone().into_iter().collect()).unwrap();
    let enc = |entry: &[&str], out: &str| {
        rectok()
            .args(["encode", "--tokenizer", &w("two.safetensors"), "-i", &w("imgs/cat.png"), "-o", &w(out)])
            .args(entry)
            .output()
            .unwrap()
    };
    let o = enc(&["--entry", "a.b"], "two_ab.safetensors");
    assert!(o.status.success(), "{}", stderr(&o));
    let o = enc(&[], "two_auto.safetensors");
    assert!(
        !o.status.success() && stderr(&o).contains("top-level names: a, c") && stderr(&o).contains("--entry"),
        "{}",
        stderr(&o)
    );
    // Outputs are readable by others as the umask allows, and byte-identical across runs.
    let again = run(&[
        "decode",
        "--tokenizer",
        &w("tok.safetensors"),
        "--raw",
        "-i",
        &w("names.safetensors"),
        "-o",
        &w("dec2"),
    ]
    .map(String::from));
    assert!(again.status.success());
    let o1 = run(&["encode", "--tokenizer", &w("tok.safetensors"), "-i", &w("imgs"), "-o", &w("e1.safetensors")]
        .map(String::from));
    let o2 = run(&["encode", "--tokenizer", &w("tok.safetensors"), "-i", &w("imgs"), "-o", &w("e2.safetensors")]
        .map(String::from));
    assert!(o1.status.success() && o2.status.success());
    assert_eq!(
        std::fs::read(w("e1.safetensors")).unwrap(),
        std::fs::read(w("e2.safetensors")).unwrap(),
        "stable safetensors bytes"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let plain = ws.dir.path().join("plain");
        std::fs::write(&plain, b"x").unwrap();
        let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&w("e1.safetensors")), mode(plain.to_str().unwrap()));
        assert_eq!(mode(&w("dec/scan.png")), mode(plain.to_str().unwrap()));
    }
}

// ---------------------------------------------------------------------------------------------
// Training: signals, locks, and what killed processes leave behind
// ---------------------------------------------------------------------------------------------

/// The steps of [`generator_run`].
const GENERATOR_STEPS: usize = 120;

/// A generator run of 120 short steps on the fixture tokenizer, checkpointing every 4 steps
/// (keeping 2, so that old checkpoints are pruned all along).
fn generator_run(tok: &str, out: &Path, extra: &[&str]) -> Command {
    let mut c = rectok();
    c.args(["train", "generator", "--tokenizer", tok, "--data", "procedural:480", "--out"])
        .arg(out)
        .args([
            "--set",
            "optim.batch_size=8",
            "--set",
            "run.epochs=2",
            "--set",
            "run.log_every=1",
            "--set",
            "run.checkpoint_every=4",
        ])
        .args([
            "--set",
            "run.keep_checkpoints=2",
            "--set",
            "run.sample_every=0",
            "--set",
            "run.fd_images=0",
            "--set",
            "sample.steps=3",
        ])
        .args(["--set", "sample.grid_per_class=1", "--set", "sample.grid_classes=2"])
        .args(extra);
    c
}

fn signal(child: &std::process::Child, name: &str) {
    assert!(Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status().unwrap().success());
}

/// `rectok train generator --out RUN --resume`.
fn resume(run: &Path) -> Command {
    let mut c = rectok();
    c.args(["train", "generator", "--resume", "--out"]).arg(run);
    c
}

fn metric_lines(run: &Path) -> usize {
    std::fs::read_to_string(run.join("metrics.jsonl")).map(|t| t.lines().count()).unwrap_or(0)
}

#[cfg(unix)]
#[test]
fn signals_save_and_resume_exactly_and_leftovers_never_block_a_run() {
    let ws = Workspace::new();
    let tok = ws.path("tok.safetensors");
    let root = ws.dir.path();
    let reference = root.join("reference");
    let o = generator_run(&tok, &reference, &[]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let want = losses(&reference);
    assert_eq!(want.len(), GENERATOR_STEPS);

    for (sig, code) in [("INT", 130), ("TERM", 143)] {
        let run = root.join(format!("run_{sig}"));
        let mut child = generator_run(&tok, &run, &[]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        wait_for("the third step", || metric_lines(&run) >= 3, &mut child);
        // A second run on the same folder is refused while the first holds it.
        let o = resume(&run).output().unwrap();
        assert!(stderr(&o).contains(&format!("pid {}", child.id())), "{}", stderr(&o));
        signal(&child, sig);
        let o = child.wait_with_output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{err}");
        assert!(err.contains("--resume") && err.contains("stopped by"), "{err}");
        let steps = losses(&run).len();
        assert!(
            steps < GENERATOR_STEPS && run.join(format!("checkpoints/step_{steps:08}/state.json")).exists(),
            "saved at step {steps}: {err}"
        );
        let o = resume(&run).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(losses(&run), want, "SIG{sig}: the resumed run differs from the uninterrupted one");
    }

    // Two Ctrl-C in a row end the process at once (exit 130); the run still resumes exactly.
    let run = root.join("run_twice");
    let mut child = generator_run(&tok, &run, &[]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_for("the first checkpoint", || run.join("checkpoints/latest").exists() && metric_lines(&run) >= 5, &mut child);
    signal(&child, "INT");
    signal(&child, "INT");
    assert_eq!(child.wait().unwrap().code(), Some(130));
    // What a kill leaves: a half-written checkpoint, a half-pruned one, temporary files and a
    // partial metrics line. None of it stops the resume, and the run ends as the reference.
    let ck = run.join("checkpoints");
    std::fs::create_dir_all(ck.join(".step_00000099.tmp")).unwrap();
    std::fs::create_dir_all(ck.join(".step_00000001.deleting")).unwrap();
    std::fs::write(run.join(".rectok-tmp-abc"), b"partial").unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(run.join("metrics.jsonl")).unwrap();
    std::io::Write::write_all(&mut f, b"{\"step\": 99, \"loss\": 0.").unwrap();
    let o = resume(&run).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(losses(&run), want, "resumed after leftovers");
    assert!(
        !ck.join(".step_00000099.tmp").exists()
            && !ck.join(".step_00000001.deleting").exists()
            && !run.join(".rectok-tmp-abc").exists()
    );

    // A signal while the latent cache is built stops cleanly, keeps the cache built so far, and
    // the next start continues it.
    let cached = root.join("cached");
    let mut child = rectok()
        .args(["train", "generator", "--tokenizer", &tok, "--data", "procedural:40000", "--out"])
        .arg(&cached)
        .args([
            "--set",
            "latents.cache=\"cache\"",
            "--set",
            "run.fd_images=0",
            "--set",
            "optim.batch_size=8",
            "--max-steps",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the latent cache", || cached.join("cache/manifest.json").exists(), &mut child);
    signal(&child, "INT");
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("while building the latent cache") && stderr(&o).contains("--resume"),
        "{}",
        stderr(&o)
    );
    assert!(cached.join("cache/manifest.json").exists() && !cached.join("checkpoints").exists());

    // A run that died before its first checkpoint: `--resume` starts it over from its
    // config.toml, and a plain start takes its place; neither needs anything deleted by hand.
    let early = root.join("early");
    let o = generator_run(&tok, &early, &["--print-config"]).output().unwrap();
    std::fs::create_dir_all(&early).unwrap();
    std::fs::write(early.join("config.toml"), &o.stdout).unwrap();
    std::fs::write(early.join("metrics.jsonl"), "{\"step\": 1, \"loss\": 1.0}\n{\"step\": 2, \"lo").unwrap();
    let o = resume(&early).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("before its first checkpoint"), "{}", stderr(&o));
    assert_eq!(losses(&early), want, "restarted from config.toml");
    let fresh = root.join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    std::fs::write(fresh.join("metrics.jsonl"), "{\"step\": 1, \"loss\": 1.0}\n").unwrap();
    let o = generator_run(&tok, &fresh, &[]).output().unwrap();
    assert!(o.status.success() && stderr(&o).contains("before its first checkpoint"), "{}", stderr(&o));
    assert_eq!(losses(&fresh), want);
}

/// A run folder serves its own trainer only, a resume may repeat the run's own values, and
/// ablations respect a folder another process holds.
#[test]
fn run_folders_are_kept_by_their_trainer_and_their_holder() {
    let ws = Workspace::new();
    let run_dir = ws.dir.path().join("tok_run");
    let o = run(&[
        "train",
        "tokenizer",
        "--out",
        run_dir.to_str().unwrap(),
        "--data",
        "procedural:64",
        "--max-steps",
        "2",
        "--set",
        "run.checkpoint_every=1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = run_dir.to_str().unwrap();
    let o = run(&["train", "generator", "--out", out, "--resume"]);
    assert!(stderr(&o).contains("holds a `rectok train tokenizer` run"), "{}", stderr(&o));
    let o = run(&["train", "generator", "--out", out, "--tokenizer", &ws.path("tok.safetensors")]);
    assert!(stderr(&o).contains("holds a `rectok train tokenizer` run"), "{}", stderr(&o));
    // The run's own data source may be repeated on resume; another is refused.
    let resume_with = |max_steps: &str, source: &str| {
        let set = format!("data.source=\"{source}\"");
        run(&["train", "tokenizer", "--out", out, "--resume", "--max-steps", max_steps, "--set", &set])
    };
    let o = resume_with("3", "procedural:64");
    assert!(o.status.success(), "{}", stderr(&o));
    let o = resume_with("4", "procedural:65");
    assert!(stderr(&o).contains("only run.max_steps"), "{}", stderr(&o));

    // A folder locked by another process (here: this test) is refused by an ablation and by the
    // demo, naming the process.
    let held = ws.dir.path().join("held");
    std::fs::create_dir_all(&held).unwrap();
    let lock = std::fs::File::create(held.join(".lock")).unwrap();
    lock.try_lock().unwrap();
    std::fs::write(held.join(".lock"), "4242").unwrap();
    for command in ["ablate", "demo"] {
        let o = run(&[command, "--quick", "--out", held.to_str().unwrap()]);
        assert!(stderr(&o).contains("another rectok process (pid 4242)"), "{command}: {}", stderr(&o));
    }
}

/// Ctrl-C during a command that writes a folder of images leaves no folder and no staging files,
/// and a staging folder a killed process left behind is removed by the next run.
/// Ctrl-C during `rectok bench train` stops it without pointing at its temporary runs (removed on
/// the way out: a benchmark is run again, not continued).
#[cfg(unix)]
#[test]
fn an_interrupted_benchmark_names_no_run_to_continue() {
    let ws = Workspace::new();
    let tmp = ws.dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut child = rectok()
        .args(["bench", "train", "--recipes", "ditdh-tiny", "--iters", "1000"])
        .env("TMPDIR", &tmp)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = || std::fs::read_dir(&tmp).unwrap().count() > 0;
    wait_for("the benchmark's temporary run", started, &mut child);
    signal(&child, "INT");
    let o = child.wait_with_output().unwrap();
    let message = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{message}");
    assert!(message.contains("stopped by SIGINT") && !message.contains("--resume"), "{message}");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "the temporary runs were left behind");
}

#[cfg(unix)]
#[test]
fn an_interrupted_image_command_leaves_nothing_behind() {
    let ws = Workspace::new();
    let many = ws.dir.path().join("many");
    std::fs::create_dir_all(&many).unwrap();
    for i in 0..3000 {
        std::fs::hard_link(fixture("photos/cat.png"), many.join(format!("{i}.png"))).unwrap();
    }
    let out = ws.dir.path().join("recon");
    let mut child = rectok()
        .args(["reconstruct", "--tokenizer", &ws.path("tok.safetensors"), "--batch-size", "2", "-i"])
        .arg(&many)
        .arg("-o")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let staged = |dir: &Path| {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains("stage"))
    };
    wait_for("the first staged image", || staged(&out), &mut child);
    signal(&child, "INT");
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(stderr(&o).contains("no output was written"), "{}", stderr(&o));
    assert!(!out.exists(), "the interrupted run left {}", out.display());

    let dead = ws.dir.path().join("again/.rectok-tmp-stage-4194303");
    std::fs::create_dir_all(dead.join("x")).unwrap();
    let o = run(&[
        "reconstruct",
        "--tokenizer",
        &ws.path("tok.safetensors"),
        "-i",
        &ws.path("imgs"),
        "-o",
        &ws.path("again"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!dead.exists() && ws.dir.path().join("again/cat.png").exists());
}
