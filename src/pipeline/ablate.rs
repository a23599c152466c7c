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
use super::{Budget, PipelineResult, SemanticLoss, Variant, judge_run_folder, mark_run_folder, run_variant};
use crate::io::write_json;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The ablation budget (each variant and seed ≈ 4.5 minutes on 2 cores, so that two seeds of
/// the six variants take under an hour); `quick`: the demo's quick budget (a smoke test, too
/// small for conclusions).
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
        generator_epochs: 10,
        generator_batch: 32,
        generator_lr: 2e-3,
        generator_data_parallel: 0,
        generator_cfg: 4.0,
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

/// One variant's runs, one per seed, in seed order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VariantRuns {
    /// The variant.
    pub variant: Variant,
    /// Latent channels.
    pub channels: usize,
    /// The seeds, in run order.
    pub seeds: Vec<u64>,
    /// The pipeline's result for each seed.
    pub runs: Vec<PipelineResult>,
}

/// Mean and sample standard deviation of a metric over seeds (`sd` 0 for one value; NaN when
/// no run has the metric).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// The mean.
    pub mean: f64,
    /// The sample standard deviation (n − 1 in the denominator).
    pub sd: f64,
    /// Runs that had a finite value of the metric.
    pub n: usize,
    /// Runs in all (a diverged or unmeasured run is counted here, not in `n`).
    pub runs: usize,
}

impl Spread {
    /// The mean and sample standard deviation of the finite `values` (`None`: not measured).
    pub fn of(values: impl IntoIterator<Item = Option<f64>>) -> Self {
        let all: Vec<Option<f64>> = values.into_iter().collect();
        let v: Vec<f64> = all.iter().flatten().copied().filter(|x| x.is_finite()).collect();
        let (n, runs) = (v.len(), all.len());
        if n == 0 {
            return Self { mean: f64::NAN, sd: f64::NAN, n, runs };
        }
        let mean = v.iter().sum::<f64>() / n as f64;
        let sd = if n > 1 { (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() } else { 0.0 };
        Self { mean, sd, n, runs }
    }

    /// `mean ± sd` with `digits` decimals (`mean` alone for one run), after multiplying by `scale`;
    /// `suffix` follows (a unit); "(n of runs)" when some runs had no finite value.
    pub fn cell(&self, digits: usize, scale: f64, suffix: &str) -> String {
        let value = match self.n {
            0 => return "–".into(),
            1 => format!("{:.digits$}{suffix}", self.mean * scale),
            _ => format!("{:.digits$} ± {:.digits$}{suffix}", self.mean * scale, self.sd * scale),
        };
        if self.n < self.runs { format!("{value} ({} of {} runs)", self.n, self.runs) } else { value }
    }

    /// Whether `self` exceeds `other` by more than their standard deviations together (the
    /// seeds' spread); with one seed each, any margin counts.
    fn clearly_above(&self, other: &Spread) -> bool {
        self.mean - other.mean > self.sd + other.sd
    }
}

impl VariantRuns {
    /// A metric's spread over the seeds.
    pub fn spread(&self, metric: impl Fn(&PipelineResult) -> Option<f64>) -> Spread {
        Spread::of(self.runs.iter().map(metric))
    }

    /// Held-out reconstruction PSNR (dB).
    pub fn psnr(&self) -> Spread {
        self.spread(|r| Some(r.trained.psnr))
    }

    /// Held-out reconstruction SSIM.
    pub fn ssim(&self) -> Spread {
        self.spread(|r| Some(r.trained.ssim))
    }

    /// Reconstruction FD-effnet.
    pub fn rfd(&self) -> Spread {
        self.spread(|r| r.trained.distance.as_ref().map(|d| d.value))
    }

    /// Linear-probe top-1 (fraction).
    pub fn probe(&self) -> Spread {
        self.spread(|r| Some(r.probe))
    }

    /// Generation FD-effnet of the trained DiT.
    pub fn gen_fd(&self) -> Spread {
        self.spread(|r| r.generation_fd.1)
    }

    /// Fraction of the trained DiT's samples in their class.
    pub fn in_class(&self) -> Spread {
        self.spread(|r| r.class_accuracy.1)
    }

    /// Every metric's spread, by the table's names, for `ablation.json`.
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "variant": self.variant.name,
            "psnr": self.psnr(),
            "ssim": self.ssim(),
            "rfd_effnet": self.rfd(),
            "probe_top1": self.probe(),
            "gen_fd_effnet": self.gen_fd(),
            "in_class": self.in_class(),
        })
    }
}

/// "beyond the seeds' spread" or "within the seeds' spread", for a comparison that held.
fn margin(clear: bool, seeds: usize) -> &'static str {
    match (seeds > 1, clear) {
        (false, _) => "",
        (true, true) => ", beyond the seeds' spread",
        (true, false) => ", but within the seeds' spread",
    }
}

/// Whether the paper's direction held, as sentences, from the means over seeds.
pub fn verdict(results: &[VariantRuns]) -> Vec<String> {
    let get = |n: &str| results.iter().find(|r| r.variant.name == n);
    let seeds = results.iter().map(|r| r.runs.len()).min().unwrap_or(0);
    let mut out = Vec::new();
    let pct = |s: Spread| s.cell(1, 100.0, " %");
    if let (Some(a), Some(b), Some(c), Some(d)) = (get("a-no-semantic"), get("b-clean"), get("c-fsd"), get("d-fsd-rad"))
    {
        let best_other =
            [a, b, c].into_iter().map(|r| r.probe()).filter(|s| s.n > 0).max_by(|x, y| x.mean.total_cmp(&y.mean));
        let best_other = best_other.unwrap_or(Spread::of([]));
        let held = best_other.n > 0 && d.probe().mean >= best_other.mean - 0.02;
        out.push(format!(
            "Probe accuracy: (a) {}, (b) {}, (c) {}, (d) {} — the paper's direction (semantic training, and FSD + \
                RAD most of all, gives the most linearly separable latents) {}{}.",
            pct(a.probe()),
            pct(b.probe()),
            pct(c.probe()),
            pct(d.probe()),
            if held { "held" } else { "did not hold at this scale" },
            if held { margin(d.probe().clearly_above(&best_other), seeds) } else { "" }
        ));
        let fd = |r: &VariantRuns| r.gen_fd();
        // (d) must generate better (lower FD) than the better of (a) and (b), of those measured.
        let best_ab = [fd(a), fd(b)].into_iter().filter(|s| s.n > 0).min_by(|x, y| x.mean.total_cmp(&y.mean));
        let best_ab = best_ab.unwrap_or(Spread::of([]));
        let held = best_ab.n > 0 && fd(d).mean <= best_ab.mean;
        let negated = |s: Spread| Spread { mean: -s.mean, ..s };
        out.push(format!(
            "Generation FD-effnet: (a) {}, (b) {}, (c) {}, (d) {} — the paper's direction (FSD + RAD latents are \
                easier to generate than those without semantics or with clean-latent alignment) {}{}.",
            fd(a).cell(1, 1.0, ""),
            fd(b).cell(1, 1.0, ""),
            fd(c).cell(1, 1.0, ""),
            fd(d).cell(1, 1.0, ""),
            if held { "held" } else { "did not hold at this scale" },
            if held { margin(negated(fd(d)).clearly_above(&negated(best_ab)), seeds) } else { "" }
        ));
        out.push(format!(
            "Reconstruction PSNR: (a) {}, (b) {}, (c) {}, (d) {} dB (the semantic terms cost little reconstruction \
                in the paper).",
            a.psnr().cell(2, 1.0, ""),
            b.psnr().cell(2, 1.0, ""),
            c.psnr().cell(2, 1.0, ""),
            d.psnr().cell(2, 1.0, "")
        ));
    }
    if let (Some(c8), Some(c16), Some(c32)) = (get("d-c8"), get("d-fsd-rad"), get("d-c32")) {
        let psnr_up = c8.psnr().mean < c16.psnr().mean && c16.psnr().mean < c32.psnr().mean;
        let fd_down = c8.gen_fd().mean >= c16.gen_fd().mean && c16.gen_fd().mean >= c32.gen_fd().mean;
        out.push(format!(
            "Channels 8 / 16 / 32: PSNR {} / {} / {} dB, probe {} / {} / {}, generation FD-effnet {} / {} / {} — the \
                paper's claim that wider latents improve reconstruction {} and generation {} here.",
            c8.psnr().cell(2, 1.0, ""),
            c16.psnr().cell(2, 1.0, ""),
            c32.psnr().cell(2, 1.0, ""),
            pct(c8.probe()),
            pct(c16.probe()),
            pct(c32.probe()),
            c8.gen_fd().cell(1, 1.0, ""),
            c16.gen_fd().cell(1, 1.0, ""),
            c32.gen_fd().cell(1, 1.0, ""),
            if psnr_up { "held" } else { "did not hold" },
            if fd_down { "improves too" } else { "does not improve monotonically" }
        ));
    }
    out
}

/// Column titles of the results table.
const COLUMNS: [&str; 8] =
    ["variant", "C", "rPSNR (dB)", "rSSIM", "rFD-effnet", "probe top-1", "gen FD-effnet", "samples in class"];

/// One row of the results table, as text cells (mean ± standard deviation over the seeds).
fn row_cells(r: &VariantRuns) -> [String; 8] {
    [
        r.variant.description.clone(),
        r.channels.to_string(),
        r.psnr().cell(2, 1.0, ""),
        r.ssim().cell(3, 1.0, ""),
        r.rfd().cell(1, 1.0, ""),
        r.probe().cell(1, 100.0, " %"),
        r.gen_fd().cell(1, 1.0, ""),
        r.in_class().cell(1, 100.0, " %"),
    ]
}

fn table_markdown(results: &[VariantRuns]) -> String {
    let mut s = format!("| {} |\n|{}\n", COLUMNS.join(" | "), "---|".repeat(COLUMNS.len()));
    for r in results {
        s.push_str(&format!("| {} |\n", row_cells(r).join(" | ")));
    }
    s
}

fn table_html(results: &[VariantRuns]) -> String {
    let cells =
        |tag: &str, v: &[String]| v.iter().map(|c| format!("<{tag}>{}</{tag}>", html_escape(c))).collect::<String>();
    let mut s = format!("<table><tr>{}</tr>", cells("th", &COLUMNS.map(String::from)));
    for r in results {
        s.push_str(&format!("<tr>{}</tr>", cells("td", &row_cells(r))));
    }
    s.push_str("</table>");
    s
}

/// A bar chart of probe accuracy and generation FD per variant: the mean over seeds, with a
/// ± one standard deviation error bar when there are several.
fn plot(results: &[VariantRuns], path: &Path) -> Result<()> {
    use plotters::prelude::*;
    crate::train::monitor::register_font();
    let (w, h) = (1100u32, 420u32);
    let mut pixels = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        let panels = root.split_evenly((1, 2));
        let names: Vec<String> = results.iter().map(|r| r.variant.name.clone()).collect();
        let series: [(&str, Vec<Spread>, f64); 2] = [
            ("linear probe top-1 (%)", results.iter().map(|r| r.probe()).collect(), 100.0),
            ("generation FD-effnet (lower is better)", results.iter().map(|r| r.gen_fd()).collect(), 1.0),
        ];
        for ((title, values, scale), area) in series.iter().zip(panels.iter()) {
            let value = |s: &Spread| if s.n == 0 { 0.0 } else { s.mean * scale };
            let bar_top = |s: &Spread| value(s) + if s.n > 1 { s.sd * scale } else { 0.0 };
            let top = values.iter().map(bar_top).fold(0.0, f64::max) * 1.15 + 1e-9;
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
            chart.draw_series(values.iter().enumerate().map(|(i, s)| {
                let mut bar = Rectangle::new(
                    [(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), value(s))],
                    BLUE.mix(0.6).filled(),
                );
                bar.set_margin(0, 0, 8, 8);
                bar
            }))?;
            chart.draw_series(values.iter().enumerate().filter(|(_, s)| s.n > 1).map(|(i, s)| {
                let (lo, hi) = ((s.mean - s.sd) * scale, (s.mean + s.sd) * scale);
                PathElement::new(
                    vec![(SegmentValue::CenterOf(i), lo.max(0.0)), (SegmentValue::CenterOf(i), hi)],
                    BLACK.stroke_width(2),
                )
            }))?;
        }
        root.present()?;
    }
    crate::data::save_png(&image::RgbImage::from_raw(w, h, pixels).expect("buffer"), path)
}

/// Runs every variant with each of `seeds` seeds (0, 1, …) into `out/seed-<k>/<variant>/`
/// (finished runs with the same budget are read back from their `result.json` and a stopped one
/// continues where it stopped, so an interrupted ablation continues), then writes `ablation.md`,
/// `ablation.json`, `ablation.png` and `report.html` with the mean and standard deviation over
/// the seeds.
pub fn run_ablation(
    out: &Path,
    only: &[String],
    quick: bool,
    seeds: usize,
    device: crate::device::DeviceChoice,
) -> Result<Vec<VariantRuns>> {
    let names = variants().iter().map(|v| v.name.clone()).collect::<Vec<_>>().join(", ");
    if let Some(empty) = only.iter().find(|o| o.trim().is_empty()) {
        anyhow::bail!("--only: `{empty}` names no variant (names: {names})");
    }
    if !(1..=MAX_SEEDS).contains(&seeds) {
        anyhow::bail!("--seeds must be between 1 and {MAX_SEEDS}, got {seeds}");
    }
    let chosen: Vec<Variant> = variants()
        .into_iter()
        .filter(|v| only.is_empty() || only.iter().any(|o| v.name.starts_with(o.as_str())))
        .collect();
    if chosen.is_empty() {
        anyhow::bail!("--only matches no variant (names: {names})");
    }
    // The command line that continues this ablation.
    let again = format!(
        "rectok ablate --out {}{}{} --seeds {seeds}{}",
        crate::io::shell_quoted(out),
        if only.is_empty() { String::new() } else { format!(" --only {}", crate::io::shell_quoted(only.join(","))) },
        if quick { " --quick" } else { "" },
        if device == crate::device::DeviceChoice::default() { String::new() } else { format!(" --device {device}") },
    );
    let budget = budget(quick);
    // Folders of ablations from before the marker hold only these.
    let ours = |name: &str| {
        name.starts_with("seed-") || ["ablation.md", "ablation.json", "ablation.png", "report.html"].contains(&name)
    };
    judge_run_folder(out, "ablate", &budget, &self::budget(!quick), ours)?;
    let _lock = crate::train::session::RunLock::acquire(out)?;
    mark_run_folder(out, "ablate", &budget, &again)?;
    // The first Ctrl-C stops at the next safe point with the command that continues.
    let _signals = crate::signals::Deferral::start();
    let budget_json = serde_json::to_value(&budget)?;
    let total = chosen.len() * seeds;
    let mut results = Vec::new();
    for (i, variant) in chosen.iter().enumerate() {
        let mut runs = Vec::new();
        for seed in 0..seeds as u64 {
            let dir = out.join(format!("seed-{seed}"));
            let done = dir.join(&variant.name).join("result.json");
            let mut r: PipelineResult = match crate::io::read_json_if_valid(&done) {
                Some(v) if v.get("budget") == Some(&budget_json) && v.get("result").is_some() => {
                    tracing::info!(
                        "{} (seed {seed}): already done ({}), reusing it",
                        variant.description,
                        done.display()
                    );
                    serde_json::from_value(v["result"].clone())?
                }
                _ => {
                    eprintln!("[{}/{total}] {} (seed {seed})", i * seeds + seed as usize + 1, variant.description);
                    let r = run_variant(&dir, variant, &budget, seed, device)
                        .map_err(|e| super::continue_with(e, again.clone()))?;
                    write_json(&done, &serde_json::json!({ "budget": budget_json, "seed": seed, "result": r }))?;
                    r
                }
            };
            // The run's files, seen from the ablation's folder.
            r.files = r.files.under(Path::new(&format!("seed-{seed}")));
            runs.push(r);
        }
        let channels = runs[0].channels;
        results.push(VariantRuns { variant: variant.clone(), channels, seeds: (0..seeds as u64).collect(), runs });
    }
    let verdict = verdict(&results);
    let md = format!(
        "# RecTok ablations in miniature\n\nBuilt-in procedural data (10 classes, 32 px), built-in EfficientNet-Lite0 \
            teacher, the tiny models; per variant {} tokenizer steps and {} generator epochs on the same images, \
            {}. FD-effnet is not FID.\n\n{}\n{}\n",
        budget.tokenizer_steps(),
        budget.generator_epochs,
        if seeds == 1 { "seed 0".to_string() } else { format!("seeds 0–{}: mean ± standard deviation", seeds - 1) },
        table_markdown(&results),
        verdict.iter().map(|s| format!("* {s}\n")).collect::<String>()
    );
    crate::io::write_atomic(&out.join("ablation.md"), md.as_bytes())?;
    write_json(
        &out.join("ablation.json"),
        &serde_json::json!({
            "budget": budget,
            "seeds": seeds,
            "summary": results.iter().map(VariantRuns::summary).collect::<Vec<_>>(),
            "results": results,
            "verdict": verdict,
        }),
    )?;
    plot(&results, &out.join("ablation.png"))?;
    let mut body = table_html(&results);
    body.push_str("<ul>");
    for s in &verdict {
        body.push_str(&format!("<li>{}</li>", html_escape(s)));
    }
    body.push_str("</ul><img src=\"ablation.png\"><h2>Samples (seed 0)</h2>");
    for r in &results {
        if let Some(p) = &r.runs[0].files.samples {
            body.push_str(&figure(p, &r.variant.description));
        }
    }
    write_report(&out.join("report.html"), "RecTok ablations in miniature", &body)?;
    Ok(results)
}

/// The most seeds `rectok ablate --seeds` accepts.
pub const MAX_SEEDS: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_the_mean_and_sample_standard_deviation() {
        let s = Spread::of([Some(20.0), Some(22.0)]);
        assert_eq!((s.mean, s.n, s.runs), (21.0, 2, 2));
        assert!((s.sd - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(s.cell(2, 1.0, " dB"), "21.00 ± 1.41 dB");
        assert_eq!(Spread::of([Some(0.415)]).cell(1, 100.0, " %"), "41.5 %");
        // A diverged (NaN) or unmeasured run is left out of the statistics and named in the cell;
        // none at all is a dash.
        let partial = Spread::of([Some(0.5), Some(f64::NAN), None]);
        assert_eq!((partial.n, partial.runs), (1, 3));
        assert_eq!(partial.cell(1, 100.0, " %"), "50.0 % (1 of 3 runs)");
        assert_eq!(Spread::of([]).cell(1, 1.0, ""), "–");
        let of = |a: f64, b: f64| Spread::of([Some(a), Some(b)]);
        assert!(of(10.0, 10.2).clearly_above(&of(8.0, 8.2)));
        assert!(!of(10.0, 12.0).clearly_above(&of(9.0, 11.0)));
    }
}
