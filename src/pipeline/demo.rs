//! `rectok demo`: the embedded default — the whole RecTok pipeline on the built-in procedural
//! dataset and the built-in teacher, on a CPU, with nothing downloaded.

use super::report::{figure, html_escape, write_report};
use super::{Budget, PipelineResult, RunFolder, Variant, judge_run_folder, mark_run_folder, run_variant};
use crate::io::write_json;
use anyhow::{Context, Result};
use std::path::Path;

/// The default demo (≈ 8 minutes on 2 quiet cores of the development machine) or the quick one
/// (≈ 2 minutes, a smoke test).
///
/// The default reaches 22.05 dB held-out PSNR and puts 66.5 % of its samples in their class
/// (BENCHMARKS.md, *Generator recipe and demo end to end*). The generator trains at batch 64 and
/// lr 3e-3 on one data-parallel replica rather than the `ditdh-tiny` recipe's batch 32 at 2e-3 on
/// two: on 2 cores that is 1.3× the images per second (760 against 575), which the class fidelity
/// needs within the 10 minutes. Its samples use classifier-free guidance 7 rather than the
/// recipe's 4: the short run's samples land in their class more often (56 % against 52 % of 1000),
/// at the same FD-effnet (BENCHMARKS.md, *The demo's generator*).
pub fn budget(quick: bool) -> Budget {
    if quick {
        Budget {
            tokenizer_images: 1440,
            tokenizer_epochs: 1,
            tokenizer_batch: 16,
            stage2_steps: 4,
            generator_images: 1280,
            generator_epochs: 3,
            generator_batch: 64,
            generator_lr: 3e-3,
            generator_data_parallel: 1,
            generator_cfg: 7.0,
            eval_images: 64,
            fd_images: 100,
            probe_images: 640,
        }
    } else {
        Budget {
            tokenizer_images: 4000,
            tokenizer_epochs: 6,
            tokenizer_batch: 16,
            stage2_steps: 16,
            generator_images: 4096,
            generator_epochs: 44,
            generator_batch: 64,
            generator_lr: 3e-3,
            generator_data_parallel: 1,
            generator_cfg: 7.0,
            eval_images: 200,
            fd_images: 200,
            probe_images: 2000,
        }
    }
}

/// What [`run_demo`] did.
pub struct DemoOutcome {
    /// The measurements.
    pub result: PipelineResult,
    /// How the run began: new, continued from a stopped run, or read back from a finished one.
    pub start: DemoStart,
}

/// How a demo run began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DemoStart {
    /// In a new or empty folder.
    New,
    /// Continued a run an earlier process began in the same folder (stopped by a signal, a
    /// closed pipe or a crash): finished stages were kept, the stopped one resumed.
    Continued,
    /// The folder holds a finished demo of the same budget: its `report.json`, read back.
    Finished,
}

/// The command that runs (or continues) the demo in `out`.
pub fn demo_command(out: &Path, quick: bool, device: crate::device::DeviceChoice) -> String {
    let mut c = format!("rectok demo --out {}", crate::io::shell_quoted(out));
    if quick {
        c.push_str(" --quick");
    }
    if device != crate::device::DeviceChoice::default() {
        c.push_str(&format!(" --device {device}"));
    }
    c
}

/// Runs the demo into `out` and writes `report.html` and `report.json`.
///
/// `out` must be new, empty, or hold a demo of the same budget (marker `demo.json`): a stopped
/// one continues (see [`run_variant`]), a finished one is read back (without writing anything).
/// Nothing else in a folder is ever written over.
///
/// # Errors
/// `out` held by another process (its pid), holding other files or a demo of the other budget;
/// any stage's failure; [`crate::signals::Interrupted`] (with the command that continues) when a
/// signal stopped it.
pub fn run_demo(out: &Path, quick: bool, device: crate::device::DeviceChoice) -> Result<DemoOutcome> {
    let budget = budget(quick);
    let again = demo_command(out, quick, device);
    let folder = judge_run_folder(out, "demo", &budget, &self::budget(!quick), |_| false)?;
    let report = out.join("report.json");
    if folder == RunFolder::Same
        && let Some(done) = crate::io::read_json_if_valid(&report).filter(|v| v["budget"] == serde_json::json!(budget))
    {
        tracing::info!("{}: the demo there finished earlier; its report is read back", out.display());
        let result = serde_json::from_value(done["result"].clone()).context("report.json")?;
        return Ok(DemoOutcome { result, start: DemoStart::Finished });
    }
    let _lock = crate::train::session::RunLock::acquire(out)?;
    mark_run_folder(out, "demo", &budget, &again)?;
    let start = match folder {
        RunFolder::New => DemoStart::New,
        RunFolder::Same => {
            tracing::info!("{}: continuing the demo an earlier run began (finished stages are kept)", out.display());
            DemoStart::Continued
        }
    };
    // The first Ctrl-C stops at the next safe point (a training step, a batch of a measurement)
    // with the command that continues; a second ends the process at once.
    let _signals = crate::signals::Deferral::start();
    let variant = Variant::recipe("run", "tiny RecTok (FSD + RAD, EfficientNet-Lite0 teacher) → tiny DiT^DH");
    let result = (|| {
        let r = run_variant(out, &variant, &budget, 0, device)?;
        write_json(&report, &serde_json::json!({ "budget": budget, "result": r }))?;
        write_report(&out.join("report.html"), "rectok demo", &demo_body(&r, &budget))?;
        Ok(r)
    })()
    .map_err(|e| super::continue_with(e, again))?;
    Ok(DemoOutcome { result, start })
}

fn pct(v: Option<f64>) -> String {
    v.map(|a| format!("{:.1} %", 100.0 * a)).unwrap_or("–".into())
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map(|a| format!("{a:.digits$}")).unwrap_or("–".into())
}

/// The summary rows `(metric, untrained, trained)`.
pub fn summary_rows(r: &PipelineResult) -> Vec<(String, String, String)> {
    vec![
        ("reconstruction PSNR (dB)".into(), format!("{:.2}", r.untrained.psnr), format!("{:.2}", r.trained.psnr)),
        ("reconstruction SSIM".into(), format!("{:.3}", r.untrained.ssim), format!("{:.3}", r.trained.ssim)),
        (
            "reconstruction FD-effnet".into(),
            num(r.untrained.distance.as_ref().map(|d| d.value), 1),
            num(r.trained.distance.as_ref().map(|d| d.value), 1),
        ),
        ("linear probe top-1 (10 classes)".into(), pct(Some(r.probe_untrained)), pct(Some(r.probe))),
        ("generation FD-effnet".into(), num(r.generation_fd.0, 1), num(r.generation_fd.1, 1)),
        (
            format!("samples in their class (teacher; reconstructed real images: {})", pct(r.real_class_accuracy)),
            pct(r.class_accuracy.0),
            pct(r.class_accuracy.1),
        ),
    ]
}

fn demo_body(r: &PipelineResult, b: &Budget) -> String {
    let mut h = String::new();
    h.push_str(
        "<p>The whole RecTok pipeline on the built-in procedural dataset (10 classes of shapes and textures, \
        32 px) with the built-in EfficientNet-Lite0 teacher, on a CPU, nothing downloaded. ",
    );
    h.push_str(&format!(
        "Tokenizer: {} steps of stage 1 (flow semantic distillation + reconstruction–alignment distillation) on {} \
            images{}; generator: DiT^DH-tiny, {} steps of {} ({} epochs) on {} images of its latents. FD-effnet is the Fréchet distance \
            of EfficientNet-Lite0 features, <b>not FID</b>.</p>",
        b.tokenizer_steps(),
        b.tokenizer_images,
        if b.stage2_steps > 0 {
            format!(", then {} steps of stage-2 decoder fine-tuning with the GAN", b.stage2_steps)
        } else {
            String::new()
        },
        b.generator_steps(),
        b.generator_batch,
        b.generator_epochs,
        b.generator_images
    ));
    h.push_str("<h2>Metrics</h2><table><tr><th>metric</th><th>untrained</th><th>trained</th></tr>");
    for (m, a, t) in summary_rows(r) {
        h.push_str(&format!("<tr><td>{}</td><td>{}</td><td><b>{}</b></td></tr>", html_escape(&m), a, t));
    }
    h.push_str("</table>");
    h.push_str(&format!(
        "<p>Held-out images: {} for reconstruction, {} for the probe (trained on {}), {} class-balanced samples \
            (50-point Euler, {}). The class check is a linear probe on the teacher's features fitted on the tokenizer's \
            reconstructions of real images. Time: tokenizer {:.0} s, stage 2 {:.0} s, evaluation {:.0} s, generator \
            {:.0} s.</p>",
        r.trained.images,
        (b.probe_images / 10).clamp(64, 2000),
        b.probe_images,
        b.fd_images,
        if r.sample_cfg > 1.0 { format!("classifier-free guidance {}", r.sample_cfg) } else { "no guidance".into() },
        r.seconds.0,
        r.seconds.1,
        r.seconds.2,
        r.seconds.3
    ));
    let img = |title: &str, p: &Option<std::path::PathBuf>| p.as_ref().map(|p| figure(p, title)).unwrap_or_default();
    h.push_str("<h2>Samples</h2>");
    h.push_str(&img(
        "DiT^DH samples from the EMA model, one row per class (disc, square, triangle, ring, cross, star, \
        stripes, checkerboard, dots, waves)",
        &r.files.samples,
    ));
    h.push_str("<h2>Reconstructions</h2>");
    h.push_str(&img(
        "stage 1: held-out originals (odd rows) and reconstructions (even rows)",
        &r.files.reconstructions,
    ));
    h.push_str(&img("after stage 2", &r.files.reconstructions_stage2));
    h.push_str("<h2>Training curves</h2>");
    h.push_str(&img("tokenizer, stage 1", &r.files.tokenizer_curves));
    h.push_str(&img("tokenizer, stage 2", &r.files.stage2_curves));
    h.push_str(&img("generator", &r.files.generator_curves));
    h.push_str(&format!(
        "<h2>Use the trained models</h2><pre>rectok generate --tokenizer {t} --generator {g} --steps 50 -o samples/ \
            --grid grid.png\nrectok reconstruct --tokenizer {t} -i IMAGES -o recon/</pre>",
        t = html_escape(&r.files.tokenizer.display().to_string()),
        g = html_escape(&r.files.generator.display().to_string())
    ));
    h
}
