//! Image input and output: finding and decoding image files, the reference's preprocessing
//! (ADM center crop with Pillow-exact resampling, `[-1, 1]` tensors), and 8-bit export.

pub mod images;
pub mod transforms;

pub use images::{ImageSource, list_images, load_rgb8};
pub use transforms::{ResampleFilter, center_crop_arr, resize_rgb8};
