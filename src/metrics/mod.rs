//! Evaluation metrics.

pub mod extractor;
pub mod fid;
pub mod inception;
pub mod numpy_rng;
pub mod probe;
pub mod protocol;
pub mod psnr_ssim;

pub use psnr_ssim::{psnr, ssim};
