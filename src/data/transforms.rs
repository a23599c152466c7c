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
        // Bicubic: Keys' cubic with a = −0.5.
        let (a, ax) = (-0.5, x.abs());
        match self {
            Self::Box if x > -0.5 && x <= 0.5 => 1.0,
            Self::Bilinear if ax < 1.0 => 1.0 - ax,
            Self::Bicubic if ax < 1.0 => ((a + 2.0) * ax - (a + 3.0)) * ax * ax + 1.0,
            Self::Bicubic if ax < 2.0 => (((ax - 5.0) * ax + 8.0) * ax - 4.0) * a,
            _ => 0.0,
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output pixel `xx` of `range`: first input index and fixed-point weights (Pillow's
/// `precompute_coeffs` + `normalize_coeffs_8bpc`). Each pixel's weights depend on `xx` alone, so
/// a window of the output costs no more than its own size.
fn coefficients(
    in_size: usize,
    out_size: usize,
    filter: ResampleFilter,
    range: std::ops::Range<usize>,
) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ss = 1.0 / filterscale;
    range
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

/// A fixed-point sum back to 8 bits, clipped to [0, 255].
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One 8-bit RGB pixel: the fixed-point taps `k` over the pixels `pixel(0..k.len())`.
fn tap(k: &[i32], pixel: impl Fn(usize) -> [u8; 3]) -> [u8; 3] {
    let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
    for (i, &w) in k.iter().enumerate() {
        let p = pixel(i);
        for c in 0..3 {
            acc[c] += p[c] as i32 * w;
        }
    }
    acc.map(clip8)
}

/// The RGB pixel at `x` of a row of 8-bit RGB pixels.
fn rgb(row: &[u8], x: usize) -> [u8; 3] {
    [row[x * 3], row[x * 3 + 1], row[x * 3 + 2]]
}

/// A rectangle of an image: columns `x..x + width`, rows `y..y + height`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// First column.
    pub x: usize,
    /// First row.
    pub y: usize,
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
}

/// Resizes an RGB image exactly as Pillow's `Image.resize((w, h), filter)` does for mode `RGB`.
pub fn resize_rgb8(img: &RgbImage, width: usize, height: usize, filter: ResampleFilter) -> RgbImage {
    resize_window_rgb8(img, width, height, filter, Window { x: 0, y: 0, width, height })
}

/// The `window` of `resize_rgb8(img, width, height, filter)`, pixel for pixel, computing only
/// what the window needs: memory is bounded by the window and the filter's reach, not by the
/// full resized image (a 1 × 1,000,000 strip resized to a 256-wide crop would otherwise be a
/// 256 × 256,000,000 image).
///
/// Pillow's order (`libImaging/Resample.c`): the horizontal pass, clipped to 8 bits, then the
/// vertical pass; a pass whose size does not change is skipped. Horizontal rows are computed
/// once each, as the vertical taps slide down the input.
pub fn resize_window_rgb8(
    img: &RgbImage,
    width: usize,
    height: usize,
    filter: ResampleFilter,
    window: Window,
) -> RgbImage {
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    assert!(window.x + window.width <= width && window.y + window.height <= height, "window inside the output");
    let src = img.as_raw();
    let ww = window.width;
    let hcoeffs = (width != iw).then(|| coefficients(iw, width, filter, window.x..window.x + ww));
    // Row `y` of the horizontal pass, restricted to the window's columns.
    let row = |y: usize| -> Vec<u8> {
        let line = &src[y * iw * 3..(y + 1) * iw * 3];
        match &hcoeffs {
            Some(coeffs) => coeffs.iter().flat_map(|(first, k)| tap(k, |i| rgb(line, first + i))).collect(),
            None => line[window.x * 3..(window.x + ww) * 3].to_vec(),
        }
    };
    let mut out = Vec::with_capacity(ww * window.height * 3);
    if height == ih {
        for y in window.y..window.y + window.height {
            out.extend(row(y));
        }
    } else {
        let vcoeffs = coefficients(ih, height, filter, window.y..window.y + window.height);
        // Horizontal rows `first_row..` currently kept; taps only move down.
        let mut rows: std::collections::VecDeque<Vec<u8>> = Default::default();
        let mut first_row = 0;
        for (ymin, k) in &vcoeffs {
            while first_row < *ymin && !rows.is_empty() {
                rows.pop_front();
                first_row += 1;
            }
            if rows.is_empty() {
                first_row = *ymin;
            }
            while first_row + rows.len() < ymin + k.len() {
                rows.push_back(row(first_row + rows.len()));
            }
            let skip = ymin - first_row;
            out.extend((0..ww).flat_map(|x| tap(k, |i| rgb(&rows[skip + i], x))));
        }
    }
    RgbImage::from_raw(ww as u32, window.height as u32, out).expect("buffer size matches")
}

/// ADM's `center_crop_arr`: the evaluation/training crop of the reference. Only the crop window
/// of the final bicubic resize is computed (same pixels, memory bounded by the crop).
pub fn center_crop_arr(img: &RgbImage, size: usize) -> RgbImage {
    let mut img = std::borrow::Cow::Borrowed(img);
    while img.width().min(img.height()) as usize >= 2 * size {
        let (w, h) = (img.width() as usize / 2, img.height() as usize / 2);
        img = std::borrow::Cow::Owned(resize_rgb8(&img, w, h, ResampleFilter::Box));
    }
    let scale = size as f64 / img.width().min(img.height()) as f64;
    let w = (img.width() as f64 * scale).round_ties_even() as usize;
    let h = (img.height() as f64 * scale).round_ties_even() as usize;
    let window = Window { x: (w - size) / 2, y: (h - size) / 2, width: size, height: size };
    resize_window_rgb8(&img, w, h, ResampleFilter::Bicubic, window)
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
///
/// # Errors
/// When a value is NaN or infinite (a diverged model or non-finite input): such an image would
/// otherwise come out silently black. The message says which images of the batch.
pub fn tensor_to_images(x: Tensor<4>) -> anyhow::Result<Vec<RgbImage>> {
    let [b, c, h, w] = x.dims();
    assert_eq!(c, 3, "expected RGB images");
    let v = crate::device::read_f32(x);
    let plane = 3 * h * w;
    let bad: Vec<usize> = (0..b).filter(|&i| v[i * plane..(i + 1) * plane].iter().any(|p| !p.is_finite())).collect();
    if !bad.is_empty() {
        anyhow::bail!(
            "{} of {b} output image(s) hold NaN or infinite values (batch positions {:?}); nothing was written for \
                them",
            bad.len(),
            bad
        );
    }
    Ok((0..b)
        .map(|i| {
            let plane = &v[i * plane..(i + 1) * plane];
            let mut raw = vec![0u8; h * w * 3];
            for p in 0..h * w {
                for ch in 0..3 {
                    raw[p * 3 + ch] = (plane[ch * h * w + p].clamp(0.0, 1.0) * 255.0) as u8;
                }
            }
            RgbImage::from_raw(w as u32, h as u32, raw).expect("size")
        })
        .collect())
}

/// `(B, 3, H, W)` tensor values as per-image host vectors (for metrics).
pub fn tensor_to_planes(x: Tensor<4>) -> Vec<Vec<f32>> {
    let [b, c, h, w] = x.dims();
    let v = crate::device::read_f32(x);
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

    /// Pillow's order without windows: the whole horizontal pass, then the whole vertical one.
    fn full_resize(img: &RgbImage, width: usize, height: usize, filter: ResampleFilter) -> RgbImage {
        let tmp = resize_window_rgb8(
            img,
            width,
            img.height() as usize,
            filter,
            Window { x: 0, y: 0, width, height: img.height() as usize },
        );
        resize_window_rgb8(&tmp, width, height, filter, Window { x: 0, y: 0, width, height })
    }

    #[test]
    fn a_window_of_a_resize_is_the_same_pixels_as_the_full_resize() {
        let mut rng = crate::rng::Rng::seed_from(3);
        for (iw, ih, w, h) in
            [(37, 23, 19, 50), (3, 700, 64, 14933), (700, 2, 22400, 64), (64, 64, 64, 31), (50, 9, 13, 9)]
        {
            let img = RgbImage::from_fn(iw, ih, |_, _| image::Rgb([0, 1, 2].map(|_| (rng.uniform() * 256.0) as u8)));
            for f in [ResampleFilter::Box, ResampleFilter::Bilinear, ResampleFilter::Bicubic] {
                let full = full_resize(&img, w as usize, h as usize, f);
                let win = Window {
                    x: (w as usize).saturating_sub(16) / 2,
                    y: (h as usize).saturating_sub(16) / 2,
                    width: 16.min(w as usize),
                    height: 16.min(h as usize),
                };
                let part = resize_window_rgb8(&img, w as usize, h as usize, f, win);
                let want =
                    image::imageops::crop_imm(&full, win.x as u32, win.y as u32, win.width as u32, win.height as u32)
                        .to_image();
                assert_eq!(part, want, "{iw}×{ih} → {w}×{h}, {f:?}");
            }
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
