//! `rectok demo` and `rectok ablate`: the whole pipeline on built-in data.

use super::common::check_threads;
use crate::device::DeviceChoice;
use crate::pipeline::ablate::run_ablation;
use crate::pipeline::demo::{DemoStart, run_demo, summary_rows};
use anyhow::Result;
use std::path::PathBuf;

/// `rectok demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Output folder: report.html, report.json and every run. It must be new or empty, or hold a
    /// demo of the same budget: a stopped one continues where it stopped, a finished one is
    /// read back.
    #[arg(long, default_value = "rectok-demo")]
    out: PathBuf,
    /// A first look in about 2 minutes (smaller budget everywhere).
    #[arg(long)]
    quick: bool,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Compute device for training and measuring: cpu, vulkan, wgpu or cuda (the budget is the
    /// CPU's either way).
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
}

/// `rectok ablate`.
#[derive(clap::Args, Debug)]
pub struct AblateArgs {
    /// Output folder: ablation.md, ablation.json, ablation.png, report.html and every run
    /// (finished variants are reused when the command is run again).
    #[arg(long, default_value = "rectok-ablate")]
    out: PathBuf,
    /// Run only the variants whose names start with these (a-no-semantic, b-clean, c-fsd,
    /// d-fsd-rad, d-c8, d-c32).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The demo's quick budget per variant (a smoke test: too small for conclusions).
    #[arg(long)]
    quick: bool,
    /// Seeds per variant (0, 1, …): the table gives each metric's mean ± standard deviation over
    /// them (default: 2; with --quick, 1).
    #[arg(long)]
    seeds: Option<usize>,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Compute device for training and measuring: cpu, vulkan, wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
}

/// Refuses a device this binary was built without, before anything is written.
fn check_device(device: DeviceChoice) -> Result<()> {
    crate::device::select_device(device).map(|_| ()).map_err(|e| anyhow::anyhow!("--device {device}: {e}"))
}

pub fn run_demo_command(a: DemoArgs) -> Result<()> {
    check_threads(a.threads)?;
    check_device(a.device)?;
    crate::io::check_output_folder(&a.out, "--out")?;
    crate::device::set_cpu_threads(a.threads);
    let started = std::time::Instant::now();
    let outcome = run_demo(&a.out, a.quick, a.device)?;
    let rows = summary_rows(&outcome.result);
    let w = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    let seconds = started.elapsed().as_secs_f64();
    let how = match outcome.start {
        DemoStart::New => format!("finished in {seconds:.0} s"),
        DemoStart::Continued => format!("finished (continued the run stopped earlier; this part took {seconds:.0} s)"),
        DemoStart::Finished => "finished earlier (report.json read back; choose another --out for a new run)".into(),
    };
    println!("\nrectok demo{} — {how}", if a.quick { " --quick" } else { "" });
    println!("  {:<w$}  {:>10}  {:>10}", "metric", "untrained", "trained");
    for (m, u, t) in rows {
        println!("  {m:<w$}  {u:>10}  {t:>10}");
    }
    println!("report: {}", a.out.join("report.html").display());
    Ok(())
}

pub fn run_ablate_command(a: AblateArgs) -> Result<()> {
    check_threads(a.threads)?;
    check_device(a.device)?;
    crate::io::check_output_folder(&a.out, "--out")?;
    crate::device::set_cpu_threads(a.threads);
    let started = std::time::Instant::now();
    let seeds = a.seeds.unwrap_or(if a.quick { 1 } else { 2 });
    run_ablation(&a.out, &a.only, a.quick, seeds, a.device)?;
    println!("{}", std::fs::read_to_string(a.out.join("ablation.md"))?);
    println!("finished in {:.0} s; report: {}", started.elapsed().as_secs_f64(), a.out.join("report.html").display());
    Ok(())
}
