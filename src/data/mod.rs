//! Image input and output: finding and decoding image files, the reference's preprocessing
//! (ADM center crop with Pillow-exact resampling, `[-1, 1]` tensors), 8-bit export, labelled
//! datasets (class folders, file lists, the built-in procedural set) and deterministic batching.

pub mod dataset;
pub mod images;
pub mod loader;
pub mod procedural;
pub mod spec;
pub mod transforms;

pub use dataset::{Dataset, ImageFiles, Subset};
pub use images::{ImageSource, list_images, load_rgb8, save_png};
pub use loader::{Batch, BatchStream, Loader, LoaderConfig};
pub use procedural::Procedural;
pub use spec::{DataSpec, Split, open_dataset};
pub use transforms::{ResampleFilter, center_crop_arr, resize_rgb8};
