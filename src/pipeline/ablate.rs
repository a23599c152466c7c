//! `rectok ablate`: the paper's ablations in miniature, side by side on the same data and budget
//! (built-in procedural images, built-in teacher, tiny models):
//!
//! * (a) no semantic loss;
//! * (b) semantic loss on clean latents only (the prior approach: VA-VAE-style alignment);
//! * (c) FSD — the semantic decoder reads the flow-noised latents (no masking);
//! * (d) FSD + RAD — plus random masking with feature reconstruction (RecTok);
//! * (d) with 8 / 16 / 32 latent channels (the "dimension dilemma").
//!
//! For each: reconstruction PSNR, linear-probe accuracy of the latents, and the generation
//! FD-effnet (and teacher class accuracy) of a tiny DiT^DH trained on its latents.

use super::report::{figure, html_escape, write_report};
use super::{Budget, PipelineResult, SemanticLoss, Variant, run_variant};
use crate::io::write_json;
use anyhow::Result;
use std::path::Path;

/// The ablation budget (each variant ≈ 6 minutes on 2 cores); `quick`: the demo's quick budget
/// (a smoke test, too small for conclusions).
pub fn budget(quick: bool) -> Budget {
    if quick {
        return Budget { stage2_steps: 0, ..super::demo::budget(true) };
    }
    Budget {
        tokenizer_images: 3200,
        tokenizer_epochs: 3,
        tokenizer_batch: 16,
        stage2_steps: 0,
        generator_images: 3200,
        generator_epochs: 12,
        eval_images: 200,
        fd_images: 200,
        probe_images: 2000,
    }
}

/// The variants, in table order.
pub fn variants() -> Vec<Variant> {
    let no_mask = |mut v: Variant| {
        v.masking = false;
        v
    };
    vec![
        no_mask(Variant { semantic: SemanticLoss::None, ..Variant::recipe("a-no-semantic", "(a) no semantic loss") }),
        no_mask(Variant {
            semantic: SemanticLoss::Clean,
            ..Variant::recipe("b-clean", "(b) semantic loss on clean latents (prior approach)")
        }),
        no_mask(Variant::recipe("c-fsd", "(c) FSD: semantic loss on flow-noised latents")),
        Variant::recipe("d-fsd-rad", "(d) FSD + RAD (RecTok), 16 channels"),
        Variant { channels: Some(8), ..Variant::recipe("d-c8", "(d) with 8 channels") },
        Variant { channels: Some(32), ..Variant::recipe("d-c32", "(d) with 32 channels") },
    ]
}

/// Whether the paper's direction held, as sentences.
pub fn verdict(results: &[PipelineResult]) -> Vec<String> {
    let get = |n: &str| results.iter().find(|r| r.variant.name == n);
    let mut out = Vec::new();
    let fd = |r: &PipelineResult| r.generation_fd.1.unwrap_or(f64::NAN);
    if let (Some(a), Some(b), Some(c), Some(d)) = (get("a-no-semantic"), get("b-clean"), get("c-fsd"), get("d-fsd-rad"))
    {
        let probe_order = d.probe >= c.probe.max(b.probe).max(a.probe) - 0.02;
        out.push(format!(
            "Probe accuracy: (a) {:.1} %, (b) {:.1} %, (c) {:.1} %, (d) {:.1} % — the paper's direction (semantic \
                training, and FSD + RAD most of all, gives the most linearly separable latents) {}.",
            100.0 * a.probe,
            100.0 * b.probe,
            100.0 * c.probe,
            100.0 * d.probe,
            if probe_order { "held" } else { "did not hold at this scale" }
        ));
        let gen_order = fd(d) <= fd(a).min(fd(b));
        out.push(format!(
            "Generation FD-effnet: (a) {:.1}, (b) {:.1}, (c) {:.1}, (d) {:.1} — the paper's direction (FSD + RAD \
                latents are easier to generate than those without semantics or with clean-latent alignment) {}.",
            fd(a),
            fd(b),
            fd(c),
            fd(d),
            if gen_order { "held" } else { "did not hold at this scale" }
        ));
        out.push(format!(
            "Reconstruction PSNR: (a) {:.2}, (b) {:.2}, (c) {:.2}, (d) {:.2} dB (the semantic terms cost little \
                reconstruction in the paper).",
            a.trained.psnr, b.trained.psnr, c.trained.psnr, d.trained.psnr
        ));
    }
    if let (Some(c8), Some(c16), Some(c32)) = (get("d-c8"), get("d-fsd-rad"), get("d-c32")) {
        let psnr_up = c8.trained.psnr < c16.trained.psnr && c16.trained.psnr < c32.trained.psnr;
        let fd_down = fd(c8) >= fd(c16) && fd(c16) >= fd(c32);
        out.push(format!(
            "Channels 8 / 16 / 32: PSNR {:.2} / {:.2} / {:.2} dB, probe {:.1} / {:.1} / {:.1} %, generation FD-effnet \
                {:.1} / {:.1} / {:.1} — the paper's claim that wider latents improve reconstruction {} and generation {} here.",
            c8.trained.psnr,
            c16.trained.psnr,
            c32.trained.psnr,
            100.0 * c8.probe,
            100.0 * c16.probe,
            100.0 * c32.probe,
            fd(c8),
            fd(c16),
            fd(c32),
            if psnr_up { "held" } else { "did not hold" },
            if fd_down { "improves too" } else { "does not improve monotonically" }
        ));
    }
    out
}

/// Column titles of the results table.
const COLUMNS: [&str; 8] =
    ["variant", "C", "rPSNR (dB)", "rSSIM", "rFD-effnet", "probe top-1", "gen FD-effnet", "samples in class"];

/// One row of the results table, as text cells.
fn row_cells(r: &PipelineResult) -> [String; 8] {
    [
        r.variant.description.clone(),
        r.channels.to_string(),
        format!("{:.2}", r.trained.psnr),
        format!("{:.3}", r.trained.ssim),
        r.trained.distance.as_ref().map(|d| format!("{:.1}", d.value)).unwrap_or("–".into()),
        format!("{:.1} %", 100.0 * r.probe),
        r.generation_fd.1.map(|v| format!("{v:.1}")).unwrap_or("–".into()),
        r.class_accuracy.1.map(|v| format!("{:.1} %", 100.0 * v)).unwrap_or("–".into()),
    ]
}

fn table_markdown(results: &[PipelineResult]) -> String {
    let mut s = format!("| {} |\n|{}\n", COLUMNS.join(" | "), "---|".repeat(COLUMNS.len()));
    for r in results {
        s.push_str(&format!("| {} |\n", row_cells(r).join(" | ")));
    }
    s
}

fn table_html(results: &[PipelineResult]) -> String {
    let cells =
        |tag: &str, v: &[String]| v.iter().map(|c| format!("<{tag}>{}</{tag}>", html_escape(c))).collect::<String>();
    let mut s = format!("<table><tr>{}</tr>", cells("th", &COLUMNS.map(String::from)));
    for r in results {
        s.push_str(&format!("<tr>{}</tr>", cells("td", &row_cells(r))));
    }
    s.push_str("</table>");
    s
}

/// A bar chart of probe accuracy and generation FD per variant.
fn plot(results: &[PipelineResult], path: &Path) -> Result<()> {
    use plotters::prelude::*;
    crate::train::monitor::register_font();
    let (w, h) = (1100u32, 420u32);
    let mut pixels = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let panels = root.split_evenly((1, 2));
        let names: Vec<String> = results.iter().map(|r| r.variant.name.clone()).collect();
        let series: [(&str, Vec<f64>); 2] = [
            ("linear probe top-1 (%)", results.iter().map(|r| 100.0 * r.probe).collect()),
            (
                "generation FD-effnet (lower is better)",
                results.iter().map(|r| r.generation_fd.1.unwrap_or(0.0)).collect(),
            ),
        ];
        for ((title, values), area) in series.iter().zip(panels.iter()) {
            let top = values.iter().cloned().fold(0.0, f64::max) * 1.15 + 1e-9;
            let mut chart = ChartBuilder::on(area)
                .caption(*title, ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(60)
                .y_label_area_size(50)
                .build_cartesian_2d((0..values.len()).into_segmented(), 0.0..top)?;
            chart
                .configure_mesh()
                .x_label_formatter(&|x| match x {
                    SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
                    _ => String::new(),
                })
                .label_style(("sans-serif", 11))
                .draw()?;
            chart.draw_series(values.iter().enumerate().map(|(i, &v)| {
                let mut bar = Rectangle::new(
                    [(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), v)],
                    BLUE.mix(0.6).filled(),
                );
                bar.set_margin(0, 0, 8, 8);
                bar
            }))?;
        }
        root.present()?;
    }
    crate::data::save_png(&image::RgbImage::from_raw(w, h, pixels).expect("buffer"), path)
}

/// Runs every variant into `out/<variant>/` (finished variants with the same budget are read
/// back from their `result.json`, so an interrupted ablation continues), then writes `ablation.md`,
/// `ablation.json`, `ablation.png` and `report.html`.
pub fn run_ablation(
    out: &Path,
    only: &[String],
    quick: bool,
    device: crate::device::DeviceChoice,
) -> Result<Vec<PipelineResult>> {
    let names = variants().iter().map(|v| v.name.clone()).collect::<Vec<_>>().join(", ");
    if let Some(empty) = only.iter().find(|o| o.trim().is_empty()) {
        anyhow::bail!("--only: `{empty}` names no variant (names: {names})");
    }
    let chosen: Vec<Variant> = variants()
        .into_iter()
        .filter(|v| only.is_empty() || only.iter().any(|o| v.name.starts_with(o.as_str())))
        .collect();
    if chosen.is_empty() {
        anyhow::bail!("--only matches no variant (names: {names})");
    }
    let _lock = crate::train::session::RunLock::acquire(out)?;
    let budget = budget(quick);
    let mut results = Vec::new();
    for (i, variant) in chosen.iter().enumerate() {
        let done = out.join(&variant.name).join("result.json");
        let budget_json = serde_json::to_value(&budget)?;
        let previous =
            std::fs::read_to_string(&done).ok().and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        let r: PipelineResult = match previous {
            Some(v) if v.get("budget") == Some(&budget_json) && v.get("result").is_some() => {
                tracing::info!("{}: already done ({}), reusing its results", variant.description, done.display());
                serde_json::from_value(v["result"].clone())?
            }
            _ => {
                if out.join(&variant.name).exists() {
                    std::fs::remove_dir_all(out.join(&variant.name))?;
                }
                eprintln!("[{}/{}] {}", i + 1, chosen.len(), variant.description);
                let r = run_variant(out, variant, &budget, 0, device)?;
                write_json(&done, &serde_json::json!({ "budget": budget_json, "result": r }))?;
                r
            }
        };
        results.push(r);
    }
    let verdict = verdict(&results);
    let md = format!(
        "# RecTok ablations in miniature\n\nBuilt-in procedural data (10 classes, 32 px), built-in EfficientNet-Lite0 \
            teacher, the tiny models; per variant {} tokenizer steps and {} generator epochs on the same images and \
            seeds. FD-effnet is not FID.\n\n{}\n{}\n",
        budget.tokenizer_epochs * budget.tokenizer_images / budget.tokenizer_batch,
        budget.generator_epochs,
        table_markdown(&results),
        verdict.iter().map(|s| format!("* {s}\n")).collect::<String>()
    );
    crate::io::write_atomic(&out.join("ablation.md"), md.as_bytes())?;
    write_json(
        &out.join("ablation.json"),
        &serde_json::json!({ "budget": budget, "results": results, "verdict": verdict }),
    )?;
    plot(&results, &out.join("ablation.png"))?;
    let mut body = table_html(&results);
    body.push_str("<ul>");
    for s in &verdict {
        body.push_str(&format!("<li>{}</li>", html_escape(s)));
    }
    body.push_str("</ul><img src=\"ablation.png\"><h2>Samples</h2>");
    for r in &results {
        if let Some(p) = &r.files.samples {
            body.push_str(&figure(p, &r.variant.description));
        }
    }
    write_report(&out.join("report.html"), "RecTok ablations in miniature", &body)?;
    Ok(results)
}
