//! The tokenizer protocol: reconstructions of center-cropped images, PSNR / SSIM of the float
//! reconstructions, rFID / IS / KID of the 8-bit ones (docs/SAMPLING_EVAL.md §2.2).

use super::features::{Distance, FeatureCollector, Score, to_u8_rounded};
use crate::data::Loader;
use crate::data::images::png_bytes;
use crate::data::transforms::{tensor_to_images, tensor_to_planes};
use crate::metrics::extractor::Extractor;
use crate::metrics::fid::{FeatureStats, frechet_distance, kernel_inception_distance};
use crate::metrics::{psnr, ssim};
use crate::tokenizer::RecTok;
use anyhow::{Context, Result, bail};
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where the reference statistics come from.
pub enum Reference {
    /// A statistics file (`.npz` with `mu`, `sigma`), with its label.
    Stats(FeatureStats, String),
    /// The statistics of the evaluated originals (tokenizer) — with their features for KID.
    Originals,
    /// No distance.
    None,
}

/// Options of [`evaluate_tokenizer`].
pub struct TokenizerEvalOptions<'a> {
    /// Feature extractor for rFID / IS (none: PSNR and SSIM only).
    pub extractor: Option<&'a Extractor>,
    /// Reference statistics.
    pub reference: Reference,
    /// Evaluate at most this many images.
    pub limit: Option<usize>,
    /// Write the 8-bit reconstructions here.
    pub save_dir: Option<PathBuf>,
    /// Also compute KID against the originals (needs `Reference::Originals`).
    pub kid: bool,
    /// The processes sharing the work ([`crate::dist::world`], or [`crate::dist::single`]).
    pub world: &'a crate::dist::World,
}

/// Results of [`evaluate_tokenizer`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenizerEval {
    /// Images evaluated.
    pub images: usize,
    /// Mean PSNR (dB) of the float reconstructions in [0, 1].
    pub psnr: f64,
    /// Mean SSIM (Gaussian 11, σ 1.5, data range 1).
    pub ssim: f64,
    /// rFID (or FD-effnet) of the 8-bit reconstructions.
    pub distance: Option<Distance>,
    /// IS of the 8-bit reconstructions.
    pub score: Option<Score>,
    /// KID (mean, std) against the originals.
    pub kid: Option<(f64, f64)>,
}

/// The file a saved reconstruction of dataset item `index` gets: `{index:06}.png`.
pub fn reconstruction_file(index: usize) -> std::path::PathBuf {
    format!("{index:06}.png").into()
}

/// Reconstructs every image the loader yields (posterior mean, no noise, no mask) and measures.
/// Across the processes of `options.world` each takes a block of the batches and rank 0 gets
/// the results, equal to one process's (`None` on the other ranks).
pub fn evaluate_tokenizer(
    model: &RecTok,
    loader: &Loader,
    options: &TokenizerEvalOptions<'_>,
    device: &Device,
    mut on_batch: impl FnMut(usize),
) -> Result<Option<TokenizerEval>> {
    let size = loader.config().image_size;
    let total = options.limit.unwrap_or(usize::MAX).min(loader.dataset().len());
    let with_originals = matches!(options.reference, Reference::Originals);
    let keep = options.kid && with_originals;
    let world = options.world;
    if world.is_multi() && options.save_dir.is_some() {
        bail!("saving the reconstructions is done by one process: evaluate without mpirun to save them");
    }
    let mut recon_features = options.extractor.map(|e| FeatureCollector::new(e, device, keep, world));
    let mut orig_features =
        options.extractor.filter(|_| with_originals).map(|e| FeatureCollector::new(e, device, keep, world));
    let mut staged = options.save_dir.as_deref().map(crate::io::StagedFolder::new);
    // Per-image PSNR and SSIM, summed in the dataset's order (on rank 0 across processes).
    let (mut psnrs, mut ssims) = (Vec::new(), Vec::new());
    // Each process takes a contiguous block of the one-process batches.
    let n_batches = total.div_ceil(loader.config().batch_size);
    let (first, count) = world.part(n_batches);
    let mut items = loader.items_in_batches(total, first..first + count);
    world.lockstep(count, n_batches.div_ceil(world.size()), "evaluating the tokenizer", |_| {
        let (batch, take) = items.next().context("a batch of the evaluation")??;
        if take == 0 {
            return Ok(());
        }
        let x = batch.tensor(device).narrow(0, 0, take);
        let original = (x.clone() * 0.5 + 0.5).clamp(0.0, 1.0);
        let recon = model.reconstruct(x);
        let (orig_planes, recon_planes) = (tensor_to_planes(original.clone()), tensor_to_planes(recon.clone()));
        for (o, r) in orig_planes.iter().zip(&recon_planes) {
            psnrs.push(psnr(r, o));
            ssims.push(ssim(r, o, 3, size, size));
        }
        let recon_images = tensor_to_images(recon).context("reconstructions")?;
        if let Some(staged) = &mut staged {
            for (k, img) in recon_images.iter().enumerate() {
                staged.write(&reconstruction_file(batch.indices[k]), &png_bytes(img)?)?;
            }
        }
        if let Some(c) = &mut recon_features {
            c.add(&recon_images)?;
        }
        if let Some(c) = &mut orig_features {
            c.add(&to_u8_rounded(original)?)?;
        }
        on_batch(take);
        Ok(())
    })?;
    drop(items);
    // Every process takes part in every gather before rank 0 checks anything.
    let (psnrs, ssims) = (world.gather_f64(&psnrs), world.gather_f64(&ssims));
    let recon = recon_features.map(|c| c.finish());
    let orig = orig_features.map(|c| c.finish());
    let (Some(psnrs), Some(ssims)) = (psnrs, ssims) else { return Ok(None) };
    let done = psnrs.len();
    if done == 0 {
        bail!("{}: no images to evaluate", loader.dataset().describe());
    }
    if options.extractor.is_some() && done < 2 {
        bail!(
            "{}: {done} readable image evaluated; the feature statistics need at least 2",
            loader.dataset().describe()
        );
    }
    let recon = recon.transpose()?.flatten();
    let orig = orig.transpose()?.flatten();
    let mut result = TokenizerEval {
        images: done,
        psnr: psnrs.iter().sum::<f64>() / done as f64,
        ssim: ssims.iter().sum::<f64>() / done as f64,
        distance: None,
        score: None,
        kid: None,
    };
    if let (Some(extractor), Some(recon)) = (options.extractor, recon) {
        let (mean, std) = recon.inception_score()?;
        result.score = Some(Score { metric: extractor.score_name().into(), mean, std });
        let against = match (&options.reference, &orig) {
            (Reference::Stats(stats, label), _) => Some((stats, label.clone())),
            (Reference::Originals, Some(orig)) => Some((&orig.stats, "the evaluated originals".into())),
            _ => None,
        };
        if let Some((stats, reference)) = against {
            let value = frechet_distance(&recon.stats, stats)?;
            result.distance = Some(Distance { metric: extractor.metric_name().into(), value, reference });
        }
        if let (Some(a), Some(b)) = (&recon.features, orig.as_ref().and_then(|o| o.features.as_ref())) {
            let (mean, std, _) = kernel_inception_distance(a, b, extractor.dim(), 100, 1000)?;
            result.kid = Some((mean, std));
        }
    }
    // The saved reconstructions appear only when the whole evaluation succeeded.
    if let Some(staged) = staged {
        staged.commit()?;
    }
    Ok(Some(result))
}
