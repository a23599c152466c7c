//! `rectok probe`: linear probing of a tokenizer's latents on labelled images.

use super::common::{DeviceArgs, TokenizerArgs, between, data_path, ensure, parse_data, require_batch_size};
use crate::data::{DataSpec, Loader, Split, Subset, open_dataset};
use crate::eval::{ProbeConfig, ProbeFeatures, linear_probe};
use anyhow::{Result, bail};
use std::path::PathBuf;

/// Linear probe on posterior-mean latents.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    tokenizer: TokenizerArgs,
    /// Training images of the probe: a class-folder tree, a `.txt` list, or procedural[:N].
    #[arg(long, value_name = "DIR|LIST|procedural[:N]", default_value = "procedural:5000")]
    data: String,
    /// Held-out images (default: the procedural set's held-out items, or a seeded split of
    /// --data with --val-fraction held out).
    #[arg(long, value_name = "DIR|LIST")]
    val_data: Option<String>,
    /// Fraction of --data held out when --val-data is not given (folders and lists).
    #[arg(long, default_value_t = 0.2)]
    val_fraction: f64,
    /// Features: mean (token-averaged latents, the reference's probe) or flat (all tokens).
    #[arg(long, value_enum, default_value = "mean")]
    features: ProbeFeatures,
    /// Passes of the probe's optimiser over the training features.
    #[arg(long, default_value_t = 100)]
    epochs: usize,
    /// Adam learning rate of the probe.
    #[arg(long, default_value_t = 1e-2)]
    lr: f64,
    /// Images per encoder forward pass.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Seed (the procedural images and the probe's mini-batch order).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the results as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(args: Args) -> Result<()> {
    require_batch_size(args.batch_size)?;
    between("--epochs", args.epochs, 1, 100_000)?;
    ensure(args.lr.is_finite() && args.lr > 0.0, "--lr", "a finite number > 0", args.lr)?;
    let v = args.val_fraction;
    ensure(v > 0.0 && v < 1.0, "--val-fraction", "between 0 and 1 (exclusive)", v)?;
    args.device.validate()?;
    let spec = parse_data(&args.data, "--data")?;
    let val_spec = args.val_data.as_deref().map(|v| parse_data(v, "--val-data")).transpose()?;
    if let Some(json) = &args.json {
        let mut inputs = crate::io::Inputs::new();
        args.tokenizer.add_inputs(&mut inputs);
        let val_data = args.val_data.as_deref().and_then(data_path);
        inputs.add_opt(data_path(&args.data), "--data").add_opt(val_data, "--data");
        inputs.check_output_file(json, "--json")?;
    }
    let device = args.device.device()?;
    let model = args.tokenizer.load(&device)?;
    // Held out: --val-data, else the procedural set's held-out items, else a seeded split of --data.
    let held_out = val_spec.as_ref().or(matches!(spec, DataSpec::Procedural { .. }).then_some(&spec));
    let (train, val) = match held_out {
        Some(v) => (open_dataset(&spec, Split::Train, args.seed)?, open_dataset(v, Split::Val, args.seed)?),
        None => Subset::split(open_dataset(&spec, Split::Train, args.seed)?, args.val_fraction, args.seed)?,
    };
    if val.num_classes() != train.num_classes() {
        bail!("the training data has {} classes but the held-out data {}", train.num_classes(), val.num_classes());
    }
    let loader = |d| Loader::sequential(d, args.batch_size, model.config.img_size, rayon::current_num_threads());
    let (train_loader, val_loader) = (loader(train.clone())?, loader(val.clone())?);
    let config =
        ProbeConfig { features: args.features, epochs: args.epochs, lr: args.lr, batch_size: 256, seed: args.seed };
    let report = linear_probe(&model, &train_loader, &val_loader, train.num_classes(), &config, &device)?;
    let skipped = train_loader.skipped() + val_loader.skipped();
    if skipped > 0 {
        tracing::warn!("skipped {skipped} unreadable image(s)");
    }
    println!(
        "linear probe ({:?} features, {} dims, {} classes): top-1 {:.2}% held-out ({} images), {:.2}% train ({} \
            images)",
        args.features,
        report.dim,
        train.num_classes(),
        100.0 * report.val_accuracy,
        report.sizes.1,
        100.0 * report.train_accuracy,
        report.sizes.0
    );
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "protocol": "linear probe",
            "tokenizer": args.tokenizer.tokenizer,
            "data": train.describe(),
            "held_out": val.describe(),
            "features": format!("{:?}", args.features),
            "dim": report.dim,
            "classes": train.num_classes(),
            "epochs": args.epochs,
            "lr": args.lr,
            "top1_held_out": report.val_accuracy,
            "top1_train": report.train_accuracy,
            "train_images": report.sizes.0,
            "held_out_images": report.sizes.1,
        });
        super::common::write_json(path, &json)?;
    }
    Ok(())
}
