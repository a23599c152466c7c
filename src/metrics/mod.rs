//! Evaluation metrics.

pub mod psnr_ssim;

pub use psnr_ssim::{psnr, ssim};
