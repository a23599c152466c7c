//! The math of evaluation: feature statistics, Fréchet distance, Inception Score and KID
//! (`fid`), the TF-compatible InceptionV3 (`inception`) and the feature extractors (`extractor`),
//! PSNR / SSIM, numpy's legacy random permutation, and the linear classifier of probes. The
//! protocols that use them are in [`crate::eval`].

pub mod extractor;
pub mod fid;
pub mod inception;
pub mod numpy_rng;
pub mod probe;
pub mod psnr_ssim;

pub use psnr_ssim::{psnr, ssim};
