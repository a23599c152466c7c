//! `rectok eval`: the evaluation protocols (tokenizer, generator, linear probe) and the
//! distribution-distance tools they are built on.

use super::common::{
    DeviceArgs, GeneratorArgs, GuidanceArgs, SamplingArgs, TokenizerArgs, between, data_path, input_images, parse_data,
    require_batch_size, require_positive, write_json,
};
use crate::data::{Loader, Split, open_dataset};
use crate::eval::{GeneratorEvalOptions, Reference, TokenizerEvalOptions, evaluate_generator, evaluate_tokenizer};
use crate::io::{Inputs, progress};
use crate::metrics::extractor::Extractor;
use crate::metrics::fid::{FeatureStats, StatsAccumulator, frechet_distance, npz_dim, read_npz_of_dim, write_npz};
use anyhow::{Context, Result, bail};
use burn::prelude::Device;
use std::path::{Path, PathBuf};

/// Evaluation commands.
#[derive(clap::Subcommand, Debug)]
pub enum Which {
    /// Fréchet distance between two statistics files (`.npz` with `mu` and `sigma`); the last line
    /// printed is the number alone.
    Fd(FdArgs),
    /// Feature statistics (`mu`, `sigma`) of a folder of images, as an `.npz` file.
    Stats(StatsArgs),
    /// Tokenizer: PSNR, SSIM, rFID and IS of posterior-mean reconstructions.
    Tokenizer(TokenizerEvalArgs),
    /// Generator: gFID and IS of class-balanced samples.
    Generator(GeneratorEvalArgs),
    /// Linear probing of the tokenizer's latents (top-1 on held-out images).
    Probe(super::probe::Args),
}

/// `--extractor`, shared by the protocols.
const EXTRACTOR_HELP: &str = "Feature extractor: inception:PATH (FID / IS with torch-fidelity's \
weights-inception-2015-12-05 .pth or safetensors), effnet (the built-in EfficientNet-Lite0: FD-effnet / \
IS-effnet, not comparable with published FID), or none";

/// `rectok eval tokenizer`.
#[derive(clap::Args, Debug)]
pub struct TokenizerEvalArgs {
    #[command(flatten)]
    tokenizer: TokenizerArgs,
    /// Images: a folder (searched recursively), a `.txt` list (`relpath label` lines), or
    /// `procedural[:N]` (the built-in set's held-out images). Center-cropped to the model's size.
    #[arg(long, value_name = "DIR|LIST|procedural[:N]", default_value = "procedural")]
    data: String,
    /// Evaluate only the first N images (the official protocol: the 50,000 ImageNet-val images).
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value = "effnet", help = EXTRACTOR_HELP)]
    extractor: String,
    /// Reference statistics (`.npz`, e.g. the reference's val_fid_statistics_file_256.npz);
    /// default: computed from the evaluated originals with the same extractor (equivalent).
    #[arg(long, value_name = "NPZ")]
    ref_stats: Option<PathBuf>,
    /// Also compute KID against the originals (100 subsets of up to 1000 images).
    #[arg(long)]
    kid: bool,
    /// Write the 8-bit reconstructions (truncating conversion) to this folder.
    #[arg(long, value_name = "DIR")]
    save_dir: Option<PathBuf>,
    /// Write the results as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[command(flatten)]
    device: DeviceArgs,
}

/// `rectok eval generator`.
#[derive(clap::Args, Debug)]
pub struct GeneratorEvalArgs {
    #[command(flatten)]
    tokenizer: TokenizerArgs,
    #[command(flatten)]
    generator: GeneratorArgs,
    #[command(flatten)]
    guidance: GuidanceArgs,
    /// Number of samples; sample i gets class i mod classes (official: 50,000 = 50 per class).
    #[arg(long, default_value_t = 50_000)]
    num_samples: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[arg(long, default_value = "effnet", help = EXTRACTOR_HELP)]
    extractor: String,
    /// Reference statistics (`.npz` with `mu`, `sigma`; official: ADM's adm_in256_stats.npz).
    #[arg(long, value_name = "NPZ", conflicts_with = "ref_data")]
    ref_stats: Option<PathBuf>,
    /// Or compute the reference statistics from these images (folder, list or procedural[:N]).
    #[arg(long, value_name = "DIR|LIST|procedural[:N]")]
    ref_data: Option<String>,
    /// Write the samples (`<index>_<class>.png`) to this folder.
    #[arg(long, value_name = "DIR")]
    save_dir: Option<PathBuf>,
    /// Class check: fit the built-in teacher's linear probe on the tokenizer's reconstructions of
    /// these labelled images (up to 2000, 5/7 to fit and 2/7 to score it; classes must match the generator's) and report the
    /// fraction of samples it puts in their class.
    #[arg(long, value_name = "DIR|LIST|procedural[:N]")]
    class_check: Option<String>,
    /// Write the results as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Samples per forward pass.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[command(flatten)]
    device: DeviceArgs,
}

fn load_extractor(spec: &str, device: &Device) -> Result<Option<Extractor>> {
    (spec != "none").then(|| Extractor::load(spec, device)).transpose()
}

fn load_ref_stats(path: &Path, extractor: &Extractor) -> Result<FeatureStats> {
    let d = npz_dim(path)?;
    if d != extractor.dim() {
        bail!(
            "{}: {d}-d statistics, but the {} extractor gives {}-d features (statistics must come from the same \
             extractor)",
            path.display(),
            extractor.metric_name(),
            extractor.dim()
        );
    }
    read_npz_of_dim(path, Some(d))
}

/// Prints `rows` as an aligned two-column table.
fn print_table(title: &str, rows: &[(String, String)]) {
    let w = rows.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
    println!("{title}");
    for (k, v) in rows {
        println!("  {k:<w$}  {v}");
    }
}

/// The held-out part (for the procedural set) of a data source, in order.
fn data_loader(data: &str, batch_size: usize, size: usize) -> Result<Loader> {
    let dataset = open_dataset(&parse_data(data, "--data")?, Split::Val, 0)?;
    Loader::sequential(dataset, batch_size, size, rayon::current_num_threads())
}

/// Checks the optional `--save-dir` and `--json` outputs against the inputs.
fn check_outputs(inputs: &Inputs, save_dir: Option<&Path>, json: Option<&Path>) -> Result<()> {
    if let Some(dir) = save_dir {
        inputs.check_output_dir(dir, "--save-dir", [])?;
    }
    if let Some(path) = json {
        inputs.check_output_file(path, "--json")?;
    }
    Ok(())
}

fn run_tokenizer(a: TokenizerEvalArgs) -> Result<()> {
    require_batch_size(a.batch_size)?;
    require_positive(a.limit, "--limit")?;
    a.device.validate()?;
    parse_data(&a.data, "--data")?;
    let mut inputs = Inputs::new();
    a.tokenizer.add_inputs(&mut inputs);
    inputs.add_opt(data_path(&a.data), "--data").add_opt(a.ref_stats.as_deref(), "--ref-stats");
    check_outputs(&inputs, a.save_dir.as_deref(), a.json.as_deref())?;
    let device = a.device.device()?;
    let extractor = load_extractor(&a.extractor, &device)?;
    let reference = match (&a.ref_stats, &extractor) {
        (Some(p), Some(e)) => Reference::Stats(load_ref_stats(p, e)?, p.display().to_string()),
        (Some(_), None) => bail!("--ref-stats needs a feature extractor (not `none`)"),
        (None, Some(_)) => Reference::Originals,
        (None, None) => Reference::None,
    };
    if a.kid && !matches!(reference, Reference::Originals) {
        bail!("--kid compares features of reconstructions and originals: it needs an extractor and no --ref-stats");
    }
    let model = a.tokenizer.load(&device)?;
    let loader = data_loader(&a.data, a.batch_size, model.config.img_size)?;
    let total = a.limit.unwrap_or(usize::MAX).min(loader.dataset().len());
    if extractor.is_some() && total < 2 {
        bail!("--data {}: {total} image to evaluate; the feature statistics need at least 2", a.data);
    }
    if let (Some(dir), Some(json)) = (&a.save_dir, &a.json) {
        let files = (0..total).map(crate::eval::tokenizer::reconstruction_file);
        crate::io::check_not_planned(json, "--json", dir, files)?;
    }
    let options = TokenizerEvalOptions {
        extractor: extractor.as_ref(),
        reference,
        limit: a.limit,
        save_dir: a.save_dir,
        kid: a.kid,
        world: crate::dist::world(),
    };
    let bar = progress(total, "reconstruct + measure");
    let r = evaluate_tokenizer(&model, &loader, &options, &device, |n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    // Across processes rank 0 reports.
    let Some(r) = r else { return Ok(()) };
    if loader.skipped() > 0 {
        tracing::warn!("skipped {} unreadable image(s); {} evaluated", loader.skipped(), r.images);
    }
    let rows: Vec<_> = [
        Some(("images".to_string(), r.images.to_string())),
        Some(("PSNR (dB)".to_string(), format!("{:.3}", r.psnr))),
        Some(("SSIM".to_string(), format!("{:.4}", r.ssim))),
        r.distance.as_ref().map(|d| (format!("r{}", d.metric), format!("{:.4}  (against {})", d.value, d.reference))),
        r.score.as_ref().map(|s| (s.metric.clone(), format!("{:.3} ± {:.3}", s.mean, s.std))),
        r.kid.map(|(m, s)| ("KID".to_string(), format!("{m:.6} ± {s:.6}"))),
    ]
    .into_iter()
    .flatten()
    .collect();
    print_table(&format!("tokenizer {} on {}", a.tokenizer.tokenizer.display(), loader.dataset().describe()), &rows);
    println!(
        "PSNR: 10·log10(1/MSE) of float reconstructions in [0,1]; SSIM: Gaussian 11, σ 1.5, data range 1; distances \
            on 8-bit (truncated) reconstructions"
    );
    if let Some(path) = &a.json {
        let json = serde_json::json!({
            "protocol": "tokenizer",
            "tokenizer": a.tokenizer.tokenizer,
            "entry": format!("{:?}", a.tokenizer.entry),
            "data": a.data,
            "extractor": a.extractor,
            "results": r,
        });
        write_json(path, &json)?;
    }
    Ok(())
}

fn run_generator(a: GeneratorEvalArgs) -> Result<()> {
    a.sampling.validate()?;
    require_batch_size(a.batch_size)?;
    between("--num-samples", a.num_samples, 2, 10_000_000)?;
    a.guidance.validate()?;
    a.device.validate()?;
    let mut inputs = Inputs::new();
    a.tokenizer.add_inputs(&mut inputs);
    a.generator.add_inputs(&mut inputs);
    a.guidance.add_inputs(&mut inputs);
    inputs.add_opt(a.ref_stats.as_deref(), "--ref-stats");
    for (d, option) in [(&a.ref_data, "--ref-data"), (&a.class_check, "--class-check")] {
        if let Some(d) = d {
            parse_data(d, option)?;
            inputs.add_opt(data_path(d), option);
        }
    }
    check_outputs(&inputs, a.save_dir.as_deref(), a.json.as_deref())?;
    let device = a.device.device()?;
    let Some(extractor) = load_extractor(&a.extractor, &device)? else {
        bail!("the generator protocol needs a feature extractor (inception:PATH or effnet)");
    };
    let tokenizer = a.tokenizer.load_with_stats(&device)?;
    let world = crate::dist::world();
    let reference = world.agree((|| -> Result<_> {
        Ok(match (&a.ref_stats, &a.ref_data) {
            (Some(p), _) => Some((load_ref_stats(p, &extractor)?, p.display().to_string())),
            // Rank 0 alone computes the distance.
            (None, Some(_)) if !world.is_root() => None,
            (None, Some(d)) => {
                Some(reference_stats_from(d, &extractor, a.batch_size, tokenizer.config.img_size, &device)?)
            }
            (None, None) => {
                tracing::warn!("no --ref-stats or --ref-data: only the {} is computed", extractor.score_name());
                None
            }
        })
    })())?;
    let net = a.generator.load(&tokenizer, &device)?;
    if let (Some(dir), Some(json)) = (&a.save_dir, &a.json) {
        let classes = net.config.num_classes;
        let files = (0..a.num_samples).map(|i| crate::eval::generator::sample_file(i, i % classes));
        crate::io::check_not_planned(json, "--json", dir, files)?;
    }
    let guide = a.guidance.load_guide(a.generator.generator_entry.clone(), &tokenizer, &net, &device)?;
    let options = GeneratorEvalOptions {
        num_samples: a.num_samples,
        steps: a.sampling.steps,
        integrator: a.sampling.sampler,
        guidance: a.guidance.guidance(guide.as_ref()),
        seed: a.sampling.seed,
        batch_size: a.batch_size,
        extractor: &extractor,
        reference: reference.as_ref().map(|(s, l)| (s, l.clone())),
        save_dir: a.save_dir,
        world: crate::dist::world(),
    };
    let classifier = match &a.class_check {
        Some(data) => {
            // Up to 2000 labelled 8-bit images (the held-out part of the procedural set).
            let loader = data_loader(data, 64, tokenizer.config.img_size)?;
            let (images, labels) = crate::eval::labelled_images(&loader, 2000, &device)?;
            let classes = loader.dataset().num_classes();
            if classes != net.config.num_classes {
                bail!("--class-check {data}: {classes} classes, but the generator has {}", net.config.num_classes);
            }
            Some(crate::eval::TeacherClassifier::fit_on_reconstructions(
                &tokenizer, &images, &labels, classes, &device,
            )?)
        }
        None => None,
    };
    let bar = progress(a.num_samples, "sample + measure");
    let mut hits = 0;
    let r = evaluate_generator(
        &net,
        &tokenizer,
        &options,
        &device,
        |n| bar.inc(n as u64),
        |images, labels| {
            if let Some(c) = &classifier {
                hits += c.hits(images, labels)?;
            }
            Ok(())
        },
    );
    bar.finish_and_clear();
    // Across processes the class hits are summed (by every process, before rank 0's result may
    // fail) and rank 0 reports.
    let mut hits = [hits as f64];
    crate::dist::world().sum_f64(&mut hits);
    let Some(r) = r? else { return Ok(()) };
    let class_accuracy = classifier.as_ref().map(|c| (hits[0] / r.samples as f64, c.real_accuracy));
    let rows: Vec<_> = [
        Some(("samples".to_string(), format!("{} (class-balanced, {} classes)", r.samples, net.config.num_classes))),
        class_accuracy.map(|(acc, ceiling)| {
            let ceiling = format!("(reconstructions of real images: {:.1} %)", 100.0 * ceiling);
            ("in their class (teacher)".to_string(), format!("{:.1} %  {ceiling}", 100.0 * acc))
        }),
        r.distance.as_ref().map(|d| (format!("g{}", d.metric), format!("{:.4}  (against {})", d.value, d.reference))),
        Some((r.score.metric.clone(), format!("{:.3} ± {:.3}", r.score.mean, r.score.std))),
    ]
    .into_iter()
    .flatten()
    .collect();
    let title = format!(
        "generator {} ({} grid points, {:?}, cfg {})",
        a.generator.generator.display(),
        a.sampling.steps,
        a.sampling.sampler,
        a.guidance.cfg
    );
    print_table(&title, &rows);
    if let Some(path) = &a.json {
        let json = serde_json::json!({
            "protocol": "generator",
            "generator": a.generator.generator,
            "guide": a.guidance.guide,
            "cfg": a.guidance.cfg,
            "steps": a.sampling.steps,
            "sampler": format!("{:?}", a.sampling.sampler),
            "seed": a.sampling.seed,
            "extractor": a.extractor,
            "results": r,
            "class_accuracy": class_accuracy.map(|c| c.0),
            "class_accuracy_reconstructions": class_accuracy.map(|c| c.1),
        });
        write_json(path, &json)?;
    }
    Ok(())
}

/// Feature statistics of a data source (center-cropped 8-bit images, as the reference batch).
fn reference_stats_from(
    data: &str,
    extractor: &Extractor,
    batch_size: usize,
    size: usize,
    device: &Device,
) -> Result<(FeatureStats, String)> {
    let loader = data_loader(data, batch_size, size)?;
    if loader.dataset().len() < 2 {
        bail!("--ref-data {data}: {} image; the feature statistics need at least 2", loader.dataset().len());
    }
    let bar = progress(loader.dataset().len(), "reference statistics");
    let stats = crate::eval::reference_statistics(&loader, extractor, None, device, |n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    if loader.skipped() > 0 {
        tracing::warn!("reference data: skipped {} unreadable image(s); {} used", loader.skipped(), stats.count);
    }
    let label = format!("{data} ({} images)", stats.count);
    Ok((stats, label))
}

/// `rectok eval fd`.
#[derive(clap::Args, Debug)]
pub struct FdArgs {
    /// First statistics file.
    a: PathBuf,
    /// Second statistics file.
    b: PathBuf,
}

/// `rectok eval stats`.
#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// Feature extractor: effnet (the built-in EfficientNet-Lite0; gives FD-effnet, not FID).
    #[arg(long, default_value = "effnet")]
    extractor: String,
    /// An image or a folder of images (searched recursively, sorted by name).
    input: PathBuf,
    /// Output `.npz` (float64 `mu` and `sigma`, the ADM / pytorch-fid layout).
    #[arg(long, short)]
    output: PathBuf,
    /// Images per forward pass.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(which: Which) -> Result<()> {
    match which {
        Which::Tokenizer(a) => run_tokenizer(a),
        Which::Generator(a) => run_generator(a),
        Which::Probe(a) => super::probe::run(a),
        Which::Fd(a) => {
            // Widths first: a sigma is d² values, read only when the two can be compared.
            let (da, db) = (npz_dim(&a.a)?, npz_dim(&a.b)?);
            if da != db {
                bail!(
                    "{} holds {da}-d statistics and {} {db}-d ones: they cannot be compared",
                    a.a.display(),
                    a.b.display()
                );
            }
            let (sa, sb) = (read_npz_of_dim(&a.a, Some(da))?, read_npz_of_dim(&a.b, Some(db))?);
            let fd = frechet_distance(&sa, &sb)?;
            println!("Fréchet distance between {} and {} ({}-d features):", a.a.display(), a.b.display(), sa.dim());
            println!("{fd}");
            Ok(())
        }
        Which::Stats(a) => {
            require_batch_size(a.batch_size)?;
            a.device.validate()?;
            let (inputs, guard) = input_images(&a.input, "INPUT")?;
            if inputs.sources.len() < 2 {
                bail!("{}: 1 image; the feature statistics need at least 2", a.input.display());
            }
            guard.check_output_file(&a.output, "--output")?;
            let device = a.device.device()?;
            let extractor = Extractor::load(&a.extractor, &device)?;
            let mut acc = StatsAccumulator::new(extractor.dim());
            inputs.for_each_batch(a.batch_size, None, "features", |_, images| {
                acc.add(&extractor.features(&images, &device)?)
            })?;
            let stats = acc.finish().with_context(|| a.input.display().to_string())?;
            write_npz(&stats, &a.output)?;
            println!(
                "{} statistics of {} images ({}-d) written to {}",
                extractor.metric_name(),
                stats.count,
                stats.dim(),
                a.output.display()
            );
            Ok(())
        }
    }
}
