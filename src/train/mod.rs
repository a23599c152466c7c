//! Training: tokenizer stages 1 and 2, and the generator. Composes the models, losses, teachers and
//! data; models never know about training.

pub mod checkpoint;
pub mod config;
pub mod generator;
pub mod generator_config;
pub mod latents;
pub mod monitor;
pub mod optim;
pub mod optim_kernels;
pub mod params;
pub mod run;
pub mod session;
pub mod tokenizer;
pub mod tokenizer_step;
