//! `rectok decode`: latents → PNG images.

use super::common::{DeviceArgs, TokenizerArgs, require_batch_size};
use crate::data::images::png_bytes;
use crate::data::transforms::tensor_to_images;
use crate::io::{Inputs, StagedFolder, check_distinct, output_file, progress};
use crate::weights::StateDict;
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use std::path::PathBuf;

/// Decode latents into images.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    tokenizer: TokenizerArgs,
    /// Latents: a safetensors file of [C, H, W] tensors (as written by `rectok encode`).
    #[arg(long, short)]
    input: PathBuf,
    /// Output folder for one PNG per tensor, named by the tensor (`a/b` → `a/b.png`).
    #[arg(long, short)]
    output: PathBuf,
    /// Treat the latents as raw (not normalised) whatever the file says.
    #[arg(long)]
    raw: bool,
    /// Latents per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(args: Args) -> Result<()> {
    require_batch_size(args.batch_size)?;
    args.device.validate()?;
    // Names are kept exactly as written (no checkpoint prefix rules), and each must name a file
    // inside the output folder.
    let latents = StateDict::open_verbatim(&args.input)?;
    if latents.tensors.is_empty() {
        bail!("{}: holds no latents", args.input.display());
    }
    let names: Vec<&String> = latents.tensors.keys().collect();
    let files: Result<Vec<PathBuf>> = names.iter().map(|n| output_file(n, "latent tensor", "png")).collect();
    let files = files.with_context(|| args.input.display().to_string())?;
    check_distinct(files.iter().map(|p| p.as_path()), "latents")?;
    let mut inputs = Inputs::new();
    inputs.add(&args.input, "--input");
    args.tokenizer.add_inputs(&mut inputs);
    inputs.check_output_dir(&args.output, "--output", files.iter().map(|p| p.as_path()))?;

    let device = args.device.device()?;
    let model = args.tokenizer.load(&device)?;
    if let Some(kind) = latents.metadata.get("rectok.kind").filter(|k| *k != "latents") {
        bail!("{}: holds a {kind}, not latents", args.input.display());
    }
    let normalized = match latents.metadata.get("rectok.normalized").map(String::as_str) {
        _ if args.raw => false,
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => bail!("{}: `rectok.normalized` is `{other}`; expected true or false", args.input.display()),
    };
    if normalized && model.stats.is_none() {
        bail!(
            "{}: the latents were normalised with latent statistics, but the tokenizer has none; \
             pass the statistics with --latent-stats (or --raw to decode them as they are)",
            args.input.display()
        );
    }
    let (c, g) = (model.token_channels(), model.grid_size());
    if let Some((name, t)) = latents.tensors.iter().find(|(_, t)| t.shape.to_vec() != vec![c, g, g]) {
        bail!(
            "{}: latent `{name}` has shape {:?}, but this tokenizer decodes [{c}, {g}, {g}]",
            args.input.display(),
            t.shape.to_vec()
        );
    }
    // Every value is checked before the first image is written.
    for name in &names {
        latents.read_f32_finite(name)?;
    }
    let mut staged = StagedFolder::new(&args.output);
    let pb = progress(names.len(), "decode");
    for (chunk, chunk_files) in names.chunks(args.batch_size).zip(files.chunks(args.batch_size)) {
        let values = chunk.iter().map(|n| latents.read_f32(n)).collect::<Result<Vec<_>, _>>()?.concat();
        let z: Tensor<4> = Tensor::from_data(TensorData::new(values, [chunk.len(), c, g, g]), &device);
        let images = tensor_to_images(model.decode_latents(z, normalized)).with_context(|| {
            format!("decoding {}", chunk.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "))
        })?;
        for (file, img) in chunk_files.iter().zip(images) {
            staged.write(file, &png_bytes(&img)?)?;
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let n = staged.commit()?;
    tracing::info!("wrote {n} images to {}", args.output.display());
    Ok(())
}
