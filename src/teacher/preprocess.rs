//! The teacher input pipeline of the reference's tokenizer training (docs/MODELS.md §2.2):
//!
//! `x ∈ [-1, 1]` → `uint8(trunc((x + 1)/2 · 255))` → `· 1/255` → resize to the teacher resolution
//! (224) with **antialiased** bilinear (Pillow's triangle filter widened by the scale factor, as
//! torchvision's `resize(antialias=True)`) → ImageNet normalisation → plain bilinear resize
//! (`align_corners=False`) to the teacher's working size (the tokenizer's image size, so that its
//! patch grid is the token grid).
//!
//! Each resize is separable and is applied as two matrix products with precomputed interpolation
//! matrices, so it runs on any backend.

use burn::prelude::*;

/// ImageNet mean (RGB).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet standard deviation (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// `out × in` weights of an antialiased linear (triangle) resize: for downsampling the filter
/// support grows with the scale, as Pillow / ATen's `_upsample_bilinear2d_aa`. Computed with ATen's
/// float32 arithmetic: with a non-integer scale the float32 centre of output pixel `i` is off by up
/// to ~1e-5 of a pixel, which moves the weights by as much — and the reference by that much too.
pub fn antialiased_bilinear_weights(input: usize, output: usize) -> Vec<f32> {
    let scale = input as f32 / output as f32;
    let (support, inv) = if scale >= 1.0 { (scale, 1.0 / scale) } else { (1.0f32, 1.0f32) };
    let mut w = vec![0f32; output * input];
    for i in 0..output {
        // `scalar_t center = scale * (i + 0.5)`: a double product stored as float.
        let center = (scale as f64 * (i as f64 + 0.5)) as f32;
        let xmin = (((center - support) as f64 + 0.5) as i64).max(0) as usize;
        let xmax = (((center + support) as f64 + 0.5) as i64).min(input as i64) as usize;
        let ws: Vec<f32> = (xmin..xmax)
            .map(|j| {
                let x = (((j as f32 - center) as f64 + 0.5) * inv as f64) as f32;
                (1.0 - x.abs()).max(0.0)
            })
            .collect();
        let total: f32 = ws.iter().sum();
        for (k, v) in ws.iter().enumerate() {
            w[i * input + xmin + k] = if total != 0.0 { v / total } else { 0.0 };
        }
    }
    w
}

/// `out × in` weights of PyTorch's `interpolate(mode="bilinear", align_corners=False)` without
/// antialiasing: `src = (dst + 0.5)·in/out − 0.5`, clamped at 0.
pub fn bilinear_weights(input: usize, output: usize) -> Vec<f32> {
    let scale = input as f32 / output as f32;
    let mut w = vec![0f32; output * input];
    for i in 0..output {
        let src = ((i as f32 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src as usize).min(input - 1);
        let i1 = (i0 + 1).min(input - 1);
        let l1 = src - i0 as f32;
        w[i * input + i0] += 1.0 - l1;
        w[i * input + i1] += l1;
    }
    w
}

/// Applies separable resize matrices: `(B, C, H, W) → (B, C, H', W')` with `rows (H'×H)` and
/// `cols (W'×W)`.
pub fn resize_separable(x: Tensor<4>, rows: &[f32], cols: &[f32], out_h: usize, out_w: usize) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    let device = x.device();
    let rw = Tensor::<2>::from_data(TensorData::new(cols.to_vec(), [out_w, w]), &device);
    let rh = Tensor::<2>::from_data(TensorData::new(rows.to_vec(), [out_h, h]), &device);
    // Along the width: (B·C·H, W) · (W, W').
    let x = x.reshape([b * c * h, w]).matmul(rw.transpose()).reshape([b * c, h, out_w]);
    // Along the height: (H', H) · (H, W') per image.
    rh.unsqueeze_dim::<3>(0).matmul(x).reshape([b, c, out_h, out_w])
}

/// [`resize_separable`] of `(B, C, H, W)` to `(B, C, size, size)` with the matrices of `weights(in, out)`.
pub fn resize_square(x: Tensor<4>, size: usize, weights: fn(usize, usize) -> Vec<f32>) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    resize_separable(x, &weights(h, size), &weights(w, size), size, size)
}

/// `(x − mean) / std` per channel of `(B, 3, H, W)`.
pub fn normalize_channels(x: Tensor<4>, mean: [f32; 3], std: [f32; 3]) -> Tensor<4> {
    let device = x.device();
    let channels =
        |v: [f32; 3]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [3]), &device).reshape([1, 3, 1, 1]);
    (x - channels(mean)) / channels(std)
}

/// The reference's teacher pixels, at `resolution` (224) and then at `working` (the tokenizer's
/// image size). Returns `(processor_pixels at resolution, teacher_pixels at working)`.
pub fn teacher_pixels(
    x: Tensor<4>,
    resolution: usize,
    working: usize,
    mean: [f32; 3],
    std: [f32; 3],
) -> (Tensor<4>, Tensor<4>) {
    // uint8 by truncation (the values are non-negative, so floor = trunc), then rescale by 1/255.
    let q = ((x + 1.0) * 0.5 * 255.0).clamp(0.0, 255.0).floor();
    let v = resize_square(q * (1.0 / 255.0), resolution, antialiased_bilinear_weights);
    let processed = normalize_channels(v, mean, std);
    let up = resize_square(processed.clone(), working, bilinear_weights);
    (processed, up)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_rows_sum_to_one() {
        for (i, o) in [(240, 224), (256, 224), (224, 256), (7, 16), (100, 3)] {
            for w in [antialiased_bilinear_weights(i, o), bilinear_weights(i, o)] {
                for row in w.chunks(i) {
                    let s: f32 = row.iter().sum();
                    assert!((s - 1.0).abs() < 1e-5, "{i}->{o}: row sums to {s}");
                }
            }
        }
    }
}
