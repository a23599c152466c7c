//! The reference's image preprocessing, reproduced exactly.
//!
//! `center_crop_arr` (ADM, used by RecTok for training, evaluation and statistics): halve with
//! Pillow's BOX filter while the short side is ≥ 2× the target, resize so the short side equals the
//! target with BICUBIC (`round` half-to-even on the new size, as Python's `round`), crop the centre.
//! The resampler is Pillow's (`libImaging/Resample.c`): separable, horizontal pass then vertical,
//! with 8-bit fixed-point coefficients (22 fractional bits) and clipping after each pass, so the
//! pixels match Pillow's bit for bit.

use burn::prelude::*;
use image::RgbImage;

/// Pillow resampling filters used by the reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResampleFilter {
    /// `Image.BOX` (support 0.5).
    Box,
    /// `Image.BILINEAR` (triangle, support 1).
    Bilinear,
    /// `Image.BICUBIC` (Keys cubic with a = −0.5, support 2).
    Bicubic,
}

impl ResampleFilter {
    fn support(self) -> f64 {
        match self {
            Self::Box => 0.5,
            Self::Bilinear => 1.0,
            Self::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Self::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Self::Bilinear => {
                let x = x.abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            }
            Self::Bicubic => {
                let a = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * a
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output pixel: first input index, count, and fixed-point weights (Pillow's
/// `precompute_coeffs` + `normalize_coeffs_8bpc`).
fn coefficients(in_size: usize, out_size: usize, filter: ResampleFilter) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ss = 1.0 / filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let n = xmax.saturating_sub(xmin);
            let mut w: Vec<f64> = (0..n).map(|x| filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss)).collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            let fixed = w
                .iter()
                .map(|&v| {
                    let s = v * (1u32 << PRECISION_BITS) as f64;
                    if v < 0.0 { (-0.5 + s) as i32 } else { (0.5 + s) as i32 }
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Resizes an RGB image exactly as Pillow's `Image.resize((w, h), filter)` does for mode `RGB`.
pub fn resize_rgb8(img: &RgbImage, width: usize, height: usize, filter: ResampleFilter) -> RgbImage {
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    if (iw, ih) == (width, height) {
        return img.clone();
    }
    let src = img.as_raw();
    // Horizontal pass (skipped when the width is unchanged).
    let (tmp, tw) = if width != iw {
        let coeffs = coefficients(iw, width, filter);
        let mut out = vec![0u8; width * ih * 3];
        for y in 0..ih {
            let row = &src[y * iw * 3..(y + 1) * iw * 3];
            for (x, (xmin, k)) in coeffs.iter().enumerate() {
                let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
                for (i, &w) in k.iter().enumerate() {
                    let p = &row[(xmin + i) * 3..(xmin + i) * 3 + 3];
                    for c in 0..3 {
                        acc[c] += p[c] as i32 * w;
                    }
                }
                for c in 0..3 {
                    out[(y * width + x) * 3 + c] = clip8(acc[c]);
                }
            }
        }
        (out, width)
    } else {
        (src.to_vec(), iw)
    };
    // Vertical pass.
    let out = if height != ih {
        let coeffs = coefficients(ih, height, filter);
        let mut out = vec![0u8; tw * height * 3];
        for (y, (ymin, k)) in coeffs.iter().enumerate() {
            for x in 0..tw {
                let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
                for (i, &w) in k.iter().enumerate() {
                    let p = &tmp[((ymin + i) * tw + x) * 3..((ymin + i) * tw + x) * 3 + 3];
                    for c in 0..3 {
                        acc[c] += p[c] as i32 * w;
                    }
                }
                for c in 0..3 {
                    out[(y * tw + x) * 3 + c] = clip8(acc[c]);
                }
            }
        }
        out
    } else {
        tmp
    };
    RgbImage::from_raw(width as u32, height as u32, out).expect("buffer size matches")
}

/// ADM's `center_crop_arr`: the evaluation/training crop of the reference.
pub fn center_crop_arr(img: &RgbImage, size: usize) -> RgbImage {
    let mut img = img.clone();
    while (img.width().min(img.height()) as usize) >= 2 * size {
        let (w, h) = (img.width() as usize / 2, img.height() as usize / 2);
        img = resize_rgb8(&img, w, h, ResampleFilter::Box);
    }
    let scale = size as f64 / img.width().min(img.height()) as f64;
    let w = (img.width() as f64 * scale).round_ties_even() as usize;
    let h = (img.height() as f64 * scale).round_ties_even() as usize;
    let img = resize_rgb8(&img, w, h, ResampleFilter::Bicubic);
    let (cy, cx) = ((h - size) / 2, (w - size) / 2);
    image::imageops::crop_imm(&img, cx as u32, cy as u32, size as u32, size as u32).to_image()
}

/// Stacks RGB images of equal size into `(B, 3, H, W)` in [-1, 1]: `(u8/255 − 0.5)/0.5` in f32,
/// as torchvision's `ToTensor` + `Normalize(0.5, 0.5)`.
pub fn images_to_tensor(images: &[RgbImage], device: &Device) -> Tensor<4> {
    let (w, h) = (images[0].width() as usize, images[0].height() as usize);
    let mut v = Vec::with_capacity(images.len() * 3 * h * w);
    for img in images {
        assert_eq!((img.width() as usize, img.height() as usize), (w, h), "images of a batch must share one size");
        let raw = img.as_raw();
        for c in 0..3 {
            v.extend((0..h * w).map(|i| (raw[i * 3 + c] as f32 / 255.0 - 0.5) / 0.5));
        }
    }
    Tensor::from_data(TensorData::new(v, [images.len(), 3, h, w]), device)
}

/// Converts `(B, 3, H, W)` images in [0, 1] to 8-bit RGB with the reference's truncation
/// (`uint8(x·255)`, values clamped to [0, 1] first).
pub fn tensor_to_images(x: Tensor<4>) -> Vec<RgbImage> {
    let [b, c, h, w] = x.dims();
    assert_eq!(c, 3, "expected RGB images");
    let v: Vec<f32> = x.into_data().try_into_vec_as::<f32>().expect("f32 images");
    (0..b)
        .map(|i| {
            let plane = &v[i * 3 * h * w..(i + 1) * 3 * h * w];
            let mut raw = vec![0u8; h * w * 3];
            for p in 0..h * w {
                for ch in 0..3 {
                    raw[p * 3 + ch] = (plane[ch * h * w + p].clamp(0.0, 1.0) * 255.0) as u8;
                }
            }
            RgbImage::from_raw(w as u32, h as u32, raw).expect("size")
        })
        .collect()
}

/// `(B, 3, H, W)` tensor values as per-image host vectors (for metrics).
pub fn tensor_to_planes(x: Tensor<4>) -> Vec<Vec<f32>> {
    let [b, c, h, w] = x.dims();
    let v: Vec<f32> = x.into_data().try_into_vec_as::<f32>().expect("f32 images");
    v.chunks(c * h * w).take(b).map(|s| s.to_vec()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_resize_and_constant_image() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([10, 200, 77]));
        for f in [ResampleFilter::Box, ResampleFilter::Bilinear, ResampleFilter::Bicubic] {
            let r = resize_rgb8(&img, 19, 50, f);
            assert!(r.pixels().all(|p| p.0 == [10, 200, 77]), "{f:?} must preserve a constant image");
        }
    }

    #[test]
    fn center_crop_sizes() {
        let img = RgbImage::from_fn(1100, 700, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 0]));
        let out = center_crop_arr(&img, 256);
        assert_eq!((out.width(), out.height()), (256, 256));
        // 1100×700 → box-halved to 550×350 → bicubic to round(550·256/350)=402 × 256.
        let small = RgbImage::from_pixel(300, 200, image::Rgb([1, 2, 3]));
        let out = center_crop_arr(&small, 64);
        assert_eq!((out.width(), out.height()), (64, 64));
        assert!(out.pixels().all(|p| p.0 == [1, 2, 3]));
    }
}
