//! Finding image files and decoding them to RGB.

use anyhow::{Context, Result, bail};
use image::RgbImage;
use std::path::{Path, PathBuf};

/// Extensions treated as images when scanning folders.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "JPEG", "JPG", "PNG", "WEBP"];

/// An image file and the name its outputs get (relative path without extension).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSource {
    /// The file.
    pub path: PathBuf,
    /// Output name: the file stem, or `sub/dir/stem` for files in subfolders.
    pub name: String,
}

/// Lists the images named by `input`: the file itself, or every image under a folder
/// (recursively, sorted). Files in a folder that are not images by extension are returned in the
/// second list, for the caller to report.
pub fn list_images(input: &Path) -> Result<(Vec<ImageSource>, Vec<PathBuf>)> {
    if !input.exists() {
        bail!("{}: no such file or folder", input.display());
    }
    if input.is_file() {
        let name = input.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        return Ok((vec![ImageSource { path: input.to_path_buf(), name }], vec![]));
    }
    let mut images = Vec::new();
    let mut others = Vec::new();
    let mut stack = vec![input.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("{}: cannot list folder", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_string_lossy().as_ref())) {
                let rel = p.strip_prefix(input).unwrap_or(&p).with_extension("");
                let name = rel.components().map(|c| c.as_os_str().to_string_lossy().to_string()).collect::<Vec<_>>().join("/");
                images.push(ImageSource { path: p, name });
            } else if p.file_name().is_some_and(|n| !n.to_string_lossy().starts_with('.')) {
                others.push(p);
            }
        }
    }
    images.sort_by(|a, b| a.name.cmp(&b.name).then(a.path.cmp(&b.path)));
    for pair in images.windows(2) {
        if pair[0].name == pair[1].name {
            bail!(
                "{} and {} would both be named `{}`; rename one of them",
                pair[0].path.display(),
                pair[1].path.display(),
                pair[0].name
            );
        }
    }
    Ok((images, others))
}

/// Decodes an image file (PNG, JPEG, WebP) to 8-bit RGB (alpha dropped, grey replicated, as
/// Pillow's `convert("RGB")`).
///
/// JPEGs go through libjpeg-turbo's decoder (islow IDCT, fancy upsampling), the one Pillow uses,
/// so decoded pixels are identical to the reference's; other formats through the `image` crate.
pub fn load_rgb8(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    decode_rgb8(&bytes).map_err(|e| anyhow::anyhow!("{}: not a readable image ({e})", path.display()))
}

/// Decodes image bytes to 8-bit RGB (see [`load_rgb8`]).
pub fn decode_rgb8(bytes: &[u8]) -> Result<RgbImage> {
    let format = image::guess_format(bytes).map_err(|_| anyhow::anyhow!("unknown image format"))?;
    if format == image::ImageFormat::Jpeg
        && let Some(img) = decode_jpeg_libjpeg(bytes)?
    {
        return Ok(img);
    }
    let img = image::load_from_memory_with_format(bytes, format).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(img.to_rgb8())
}

/// libjpeg decode to RGB; `Ok(None)` for colour spaces libjpeg cannot convert to RGB (CMYK).
fn decode_jpeg_libjpeg(bytes: &[u8]) -> Result<Option<RgbImage>> {
    // libjpeg pads a truncated stream with grey and only warns; Pillow refuses such files.
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    if !tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
        bail!("truncated JPEG (no end-of-image marker)");
    }
    // libjpeg reports errors by unwinding out of its error handler (no panic hook is run).
    let result = std::panic::catch_unwind(|| -> std::io::Result<Option<RgbImage>> {
        let d = mozjpeg::Decompress::new_mem(bytes)?;
        if matches!(d.color_space(), mozjpeg::ColorSpace::JCS_CMYK | mozjpeg::ColorSpace::JCS_YCCK) {
            return Ok(None);
        }
        let mut started = d.rgb()?;
        let (w, h) = (started.width(), started.height());
        let pixels: Vec<[u8; 3]> = started.read_scanlines()?;
        started.finish()?;
        let raw: Vec<u8> = pixels.into_iter().flatten().collect();
        Ok(RgbImage::from_raw(w as u32, h as u32, raw))
    });
    match result {
        Ok(Ok(Some(img))) => Ok(Some(img)),
        Ok(Ok(None)) => Ok(None),
        Ok(Err(e)) => bail!("{e}"),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "corrupt JPEG data".into());
            bail!("{msg}")
        }
    }
}

/// Encodes `img` as PNG and writes it atomically (temporary file, then rename).
pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .with_context(|| format!("encoding {}", path.display()))?;
    crate::weights::write_atomic(path, &bytes)
}

/// Tiles `images` (equal sizes) into rows of `cols`.
pub fn image_grid(images: &[RgbImage], cols: usize) -> RgbImage {
    let (w, h) = (images[0].width(), images[0].height());
    let cols = cols.clamp(1, images.len());
    let rows = images.len().div_ceil(cols);
    let mut out = RgbImage::from_pixel(w * cols as u32, h * rows as u32, image::Rgb([255, 255, 255]));
    for (i, img) in images.iter().enumerate() {
        image::imageops::replace(&mut out, img, (w * (i % cols) as u32) as i64, (h * (i / cols) as u32) as i64);
    }
    out
}
