//! The evaluation protocols (docs/SAMPLING_EVAL.md §2), as library functions shared by `rectok
//! eval`, the generator trainer's online evaluation and the demo; [`crate::metrics`] holds the
//! math they are built on.
//!
//! * [`tokenizer`]: posterior-mean reconstruction of center-cropped images, PSNR/SSIM on the float
//!   reconstructions in [0, 1], rFID / IS on the 8-bit reconstructions (truncating conversion, as
//!   the reference saves its PNGs) against the statistics of the 8-bit originals (the reference's
//!   `val_fid_statistics_file_256.npz` is exactly that) or a given statistics file, KID.
//! * [`generator`]: class-balanced sampling (sample `i` gets class `i mod classes`), 8-bit
//!   truncation, FID / IS against reference statistics, and the teacher's class check.
//! * [`probe`]: linear probing of the latents (docs/SAMPLING_EVAL.md §2.3).

mod features;
pub mod generator;
pub mod probe;
pub mod tokenizer;

pub use features::{
    Collected, Distance, FeatureCollector, IS_SPLITS, Score, labelled_images, reference_statistics, to_u8_rounded,
};
pub use generator::{GeneratorEval, GeneratorEvalOptions, TeacherClassifier, evaluate_generator};
pub use probe::{ProbeConfig, ProbeFeatures, ProbeReport, linear_probe};
pub use tokenizer::{Reference, TokenizerEval, TokenizerEvalOptions, evaluate_tokenizer};
