//! Training: tokenizer stages 1 and 2, and the generator. Composes the models, losses, teachers and
//! data; models never know about training.

pub mod config;
pub mod optim;
pub mod params;
pub mod tokenizer_step;
