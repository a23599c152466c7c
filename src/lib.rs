//! # rectok
//!
//! A Rust implementation of **RecTok** — *Reconstruction Distillation along Rectified Flow*
//! (Shi et al., CVPR 2026, arXiv 2512.13421) — on [burn](https://burn.dev) 0.22.
//!
//! RecTok is a ViT autoencoder (256² image → 16×16×128 latent, diagonal Gaussian posterior) whose
//! latent space stays semantically rich along the forward flow of rectified flow, so that a
//! latent diffusion transformer (DiT^DH) trained on it converges fast and samples well.
//!
//! The crate follows the data flow of the paper:
//!
//! image file → [`data`] → tensor in [-1, 1] → [`tokenizer::Encoder`] (+ [`tokenizer::masking`])
//! → moments → [`tokenizer::posterior`] → z → ([`tokenizer::flow`] noise when training)
//! → [`tokenizer::Decoder`] → image, scored by [`metrics`].
//!
//! Weights of the official PyTorch checkpoints load through [`weights`]; the building blocks shared
//! by several networks live in [`nn`]. The command-line front end is in [`cli`]; the HTTP service
//! (`rectok serve`) in [`service`].

pub mod cli;
pub mod config;
pub mod data;
pub mod device;
pub mod dist;
pub mod eval;
pub mod generator;
pub mod io;
pub mod loss;
pub mod metrics;
pub mod nn;
pub mod pipeline;
pub mod rectified_flow;
pub mod rng;
pub mod service;
pub mod signals;
pub mod teacher;
pub mod tokenizer;
pub mod trace;
pub mod train;
pub mod weights;

pub use device::{DeviceChoice, select_device};
