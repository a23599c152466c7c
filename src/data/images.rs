//! Finding image files and decoding them to RGB exactly as the reference's Pillow does.
//!
//! * Folder walks ([`walk_files`]) follow symbolic links but visit every folder once (a link
//!   loop ends the branch), and take regular files only: FIFOs, sockets and devices are reported,
//!   never opened, so a walk cannot block.
//! * Extensions match case-insensitively (`.JPG`, `.Png`, `.WebP`).
//! * Every format is checked against one pixel limit ([`max_image_pixels`], Pillow's refusal
//!   threshold by default) from its header, before any pixel is decoded.
//! * Pixels follow Pillow's `Image.open(...).convert("RGB")`: JPEG through libjpeg-turbo (the
//!   decoder Pillow uses; CMYK/YCCK with Pillow's Adobe polarity and `cmyk2rgb`), 16-bit PNG
//!   samples reduced as Pillow does (high byte for RGB, RGBA and grey + alpha; grey clipped at
//!   255, Pillow's `I;16 → RGB`), everything else through the `image` crate.

pub use crate::io::{IMAGE_EXTENSIONS, has_image_extension};
use anyhow::{Context, Result, bail};
use image::{DynamicImage, RgbImage};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Pillow refuses images above twice `Image.MAX_IMAGE_PIXELS` (89,478,485) as decompression
/// bombs; rectok uses the same threshold for every format.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 2 * 89_478_485;

static MAX_IMAGE_PIXELS: AtomicU64 = AtomicU64::new(DEFAULT_MAX_IMAGE_PIXELS);

/// Sets the pixel limit of every image decode in this process (`--max-image-pixels`).
pub fn set_max_image_pixels(pixels: u64) {
    MAX_IMAGE_PIXELS.store(pixels.max(1), Ordering::Relaxed);
}

/// The pixel limit of every image decode (width × height), checked from the file's header.
pub fn max_image_pixels() -> u64 {
    MAX_IMAGE_PIXELS.load(Ordering::Relaxed)
}

/// An image file and the name its outputs get (relative path without extension).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSource {
    /// The file.
    pub path: PathBuf,
    /// Output name: the file stem, or `sub/dir/stem` for files in subfolders.
    pub name: String,
}

/// The regular files under a folder.
#[derive(Debug, Default)]
pub struct Walk {
    /// Regular files (symbolic links followed), sorted.
    pub files: Vec<PathBuf>,
    /// Entries that are not regular files or folders (FIFOs, sockets, devices, broken links),
    /// never opened.
    pub special: Vec<PathBuf>,
}

/// Every regular file under `root`, recursively and sorted. Symbolic links are followed, but
/// each folder is visited once (by its canonical path), so link loops end; entries that are not
/// regular files are listed apart and never opened. Hidden entries (`.name`) are skipped.
pub fn walk_files(root: &Path) -> Result<Walk> {
    let mut walk = Walk::default();
    let mut visited = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let canonical =
            std::fs::canonicalize(&dir).with_context(|| format!("{}: cannot open folder", dir.display()))?;
        if !visited.insert(canonical) {
            continue;
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("{}: cannot list folder", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
            .collect();
        entries.sort();
        // Pushed in reverse so that folders are visited in sorted order.
        for p in entries.into_iter().rev() {
            match std::fs::metadata(&p) {
                Ok(m) if m.is_dir() => stack.push(p),
                Ok(m) if m.is_file() => walk.files.push(p),
                _ => walk.special.push(p),
            }
        }
    }
    walk.files.sort();
    walk.special.sort();
    Ok(walk)
}

/// Fails unless `path` is a regular file (after following links): a FIFO or a device would block
/// or never end when read. `what` names the option or role in the message.
pub fn require_regular_file(path: &Path, what: &str) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(m) if m.is_dir() => bail!("{}: is a folder, but {what} must be a file", path.display()),
        Ok(_) => {
            bail!("{}: not a regular file ({what} must be a file; FIFOs and devices are not read)", path.display())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("{}: no such file ({what})", path.display()),
        Err(e) => bail!("{}: cannot read ({what}): {e}", path.display()),
    }
}

/// The images named by `input`: the file itself, or every image under a folder (recursively,
/// sorted). Files in a folder that are not images by extension, or not regular files, are
/// returned in the second list, for the caller to report.
pub fn list_images(input: &Path) -> Result<(Vec<ImageSource>, Vec<PathBuf>)> {
    let meta = std::fs::metadata(input).map_err(|_| anyhow::anyhow!("{}: no such file or folder", input.display()))?;
    if meta.is_file() {
        let name = input.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        return Ok((vec![ImageSource { path: input.to_path_buf(), name }], vec![]));
    }
    if !meta.is_dir() {
        bail!("{}: neither a regular file nor a folder (FIFOs and devices are not read)", input.display());
    }
    let walk = walk_files(input)?;
    let mut images = Vec::new();
    let mut others = walk.special;
    for p in walk.files {
        if has_image_extension(&p) {
            let rel = p.strip_prefix(input).unwrap_or(&p).with_extension("");
            let name =
                rel.components().map(|c| c.as_os_str().to_string_lossy().to_string()).collect::<Vec<_>>().join("/");
            images.push(ImageSource { path: p, name });
        } else {
            others.push(p);
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

/// Decodes an image file (PNG, JPEG, WebP) to 8-bit RGB as Pillow's `convert("RGB")` does
/// (see the module documentation). Errors name the file: unreadable, not an image, over the
/// pixel limit, corrupt.
pub fn load_rgb8(path: &Path) -> Result<RgbImage> {
    load_rgb8_then(path, |img| img)
}

/// [`load_rgb8`], then `then` on the image (a crop or resize) while the image still counts
/// against the pixels being decoded at once, so that large images are also transformed one after
/// another.
pub fn load_rgb8_then<T>(path: &Path, then: impl FnOnce(RgbImage) -> T) -> Result<T> {
    require_regular_file(path, "an image")?;
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let (img, _slot) = decode(&bytes, max_image_pixels()).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(then(img))
}

/// Width and height from the header, checked against the pixel limit before decoding.
fn check_dimensions(bytes: &[u8], format: image::ImageFormat, limit: u64) -> Result<(u32, u32)> {
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    // Our limit applies below, with its own message; the header read itself allocates nothing.
    reader.no_limits();
    let (w, h) = reader.into_dimensions().map_err(unreadable)?;
    let pixels = w as u64 * h as u64;
    if pixels > limit {
        bail!(
            "{w}×{h} = {} is over the limit of {} (a decompression bomb?); raise it with --max-image-pixels if the \
             image is genuine",
            megapixels(pixels),
            megapixels(limit)
        );
    }
    if w == 0 || h == 0 {
        bail!("the image is empty ({w}×{h})");
    }
    Ok((w, h))
}

/// "not a readable image (why)", the decoder's reason on one line (some end in a newline).
fn unreadable(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("not a readable image ({})", e.to_string().split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Refuses a file too small to hold the pixels its header claims (a truncated file or a bomb that
/// would make the decoder allocate the full image first): baseline and progressive JPEG spend at
/// least one bit per 8×8 block, deflate (PNG) expands at most 1032-fold and a pixel is at least
/// one bit; a factor of two is kept as margin. WebP is not bounded this way.
fn check_plausible_size(file_bytes: usize, pixels: u64, format: image::ImageFormat) -> Result<()> {
    let min_bytes = match format {
        image::ImageFormat::Jpeg => pixels / 64 / 8 / 2,
        image::ImageFormat::Png => pixels / 8 / 1032 / 2,
        _ => 0,
    };
    if (file_bytes as u64) < min_bytes {
        bail!("truncated or corrupt: {file_bytes} bytes cannot hold the {} its header claims", megapixels(pixels));
    }
    Ok(())
}

/// Pixels being decoded at once, across threads (see [`DecodeSlot`]).
static DECODING: std::sync::Mutex<u64> = std::sync::Mutex::new(0);
static DECODED: std::sync::Condvar = std::sync::Condvar::new();

/// A share of the pixel limit held while decoding: the pixels in flight stay within the limit
/// (one image may always start), so decoder memory does not grow with the thread count (a
/// 169 Mpx 16-bit RGBA PNG takes about 2 GB while decoding).
struct DecodeSlot(u64);

impl DecodeSlot {
    fn acquire(pixels: u64, budget: u64) -> Self {
        let mut in_flight = DECODING.lock().unwrap_or_else(|e| e.into_inner());
        while *in_flight > 0 && *in_flight + pixels > budget {
            in_flight = DECODED.wait(in_flight).unwrap_or_else(|e| e.into_inner());
        }
        *in_flight += pixels;
        Self(pixels)
    }
}

impl Drop for DecodeSlot {
    fn drop(&mut self) {
        *DECODING.lock().unwrap_or_else(|e| e.into_inner()) -= self.0;
        DECODED.notify_all();
    }
}

/// A pixel count for messages: `400.0 Mpx`, or `1200 px` below a million.
fn megapixels(pixels: u64) -> String {
    if pixels >= 1_000_000 { format!("{:.1} Mpx", pixels as f64 / 1e6) } else { format!("{pixels} px") }
}

/// Decodes image bytes to 8-bit RGB (see [`load_rgb8`]) within a pixel limit.
pub fn decode_rgb8_within(bytes: &[u8], max_pixels: u64) -> Result<RgbImage> {
    Ok(decode(bytes, max_pixels)?.0)
}

/// The decoded image and its share of the pixels being decoded at once.
fn decode(bytes: &[u8], max_pixels: u64) -> Result<(RgbImage, DecodeSlot)> {
    let format = image::guess_format(bytes).map_err(|_| anyhow::anyhow!("not a readable image (unknown format)"))?;
    if !matches!(format, image::ImageFormat::Png | image::ImageFormat::Jpeg | image::ImageFormat::WebP) {
        bail!("not a readable image ({format:?} is not supported: PNG, JPEG and WebP are)");
    }
    let (w, h) = check_dimensions(bytes, format, max_pixels)?;
    check_plausible_size(bytes.len(), w as u64 * h as u64, format)?;
    // A few huge images decode one after another rather than one per thread at once.
    let slot = DecodeSlot::acquire(w as u64 * h as u64, max_pixels);
    if format == image::ImageFormat::Jpeg {
        let img = decode_jpeg_libjpeg(bytes).map_err(unreadable)?;
        return Ok((img, slot));
    }
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    // The pixel limit is ours (checked above); the decoder may use what such an image needs.
    let mut limits = image::Limits::no_limits();
    limits.max_alloc = Some(w as u64 * h as u64 * 8 + (1 << 20));
    reader.limits(limits);
    let img = reader.decode().map_err(unreadable)?;
    Ok((to_rgb8_like_pillow(img), slot))
}

/// `convert("RGB")` of what Pillow opens: 16-bit grey is Pillow's `I;16`, whose conversion clips
/// at 255; other 16-bit PNGs are opened through Pillow's `;16B` raw modes, which keep the high
/// byte. 8-bit images convert as the `image` crate does (alpha dropped, grey replicated).
fn to_rgb8_like_pillow(img: DynamicImage) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    let from = |raw: Vec<u8>| RgbImage::from_raw(w, h, raw).expect("w·h·3 bytes");
    match img {
        DynamicImage::ImageLuma16(g) => from(g.as_raw().iter().flat_map(|&v| [v.min(255) as u8; 3]).collect()),
        DynamicImage::ImageLumaA16(g) => {
            from(g.as_raw().chunks_exact(2).flat_map(|p| [(p[0] >> 8) as u8; 3]).collect())
        }
        DynamicImage::ImageRgb16(g) => from(g.as_raw().iter().map(|&v| (v >> 8) as u8).collect()),
        DynamicImage::ImageRgba16(g) => from(
            g.as_raw()
                .chunks_exact(4)
                .flat_map(|p| [(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8])
                .collect(),
        ),
        other => other.to_rgb8(),
    }
}

/// Pillow's `cmyk2rgb` (`libImaging/Convert.c`) of Pillow's CMYK values.
fn cmyk_to_rgb(c: u8, m: u8, y: u8, k: u8) -> [u8; 3] {
    let nk = 255 - k as i32;
    let muldiv255 = |a: i32, b: i32| {
        let t = a * b + 128;
        ((t >> 8) + t) >> 8
    };
    [c, m, y].map(|v| (nk - muldiv255(v as i32, nk)).clamp(0, 255) as u8)
}

/// libjpeg decode to RGB, as Pillow: 1 and 3 components through libjpeg's RGB output; 4
/// components (CMYK, YCCK) as CMYK with Adobe polarity (Pillow's `CMYK;I`), then `cmyk2rgb`.
fn decode_jpeg_libjpeg(bytes: &[u8]) -> Result<RgbImage> {
    // libjpeg pads a truncated stream with grey and only warns; Pillow refuses such files.
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    if !tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
        bail!("truncated JPEG (no end-of-image marker)");
    }
    // libjpeg reports errors by unwinding out of its error handler (no panic hook is run).
    let result = std::panic::catch_unwind(|| -> std::io::Result<RgbImage> {
        let d = mozjpeg::Decompress::new_mem(bytes)?;
        let (w, h) = d.size();
        let four = matches!(d.color_space(), mozjpeg::ColorSpace::JCS_CMYK | mozjpeg::ColorSpace::JCS_YCCK);
        let raw: Vec<u8> = if four {
            let mut started = d.to_colorspace(mozjpeg::ColorSpace::JCS_CMYK)?;
            let pixels: Vec<[u8; 4]> = started.read_scanlines()?;
            started.finish()?;
            pixels.into_iter().flat_map(|p| cmyk_to_rgb(255 - p[0], 255 - p[1], 255 - p[2], 255 - p[3])).collect()
        } else {
            let mut started = d.rgb()?;
            let pixels: Vec<[u8; 3]> = started.read_scanlines()?;
            started.finish()?;
            pixels.into_iter().flatten().collect()
        };
        RgbImage::from_raw(w as u32, h as u32, raw).ok_or_else(|| std::io::Error::other("short pixel data"))
    });
    match result {
        Ok(Ok(img)) => Ok(img),
        Ok(Err(e)) => bail!("{}", e.to_string().trim()),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "corrupt JPEG data".into());
            bail!("{}", msg.trim())
        }
    }
}

/// `img` encoded as PNG.
pub fn png_bytes(img: &RgbImage) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).context("encoding a PNG")?;
    Ok(bytes)
}

/// Encodes `img` as PNG and writes it atomically (temporary file, then rename).
pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    crate::io::write_atomic(path, &png_bytes(img)?)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decode").join(name)
    }

    #[test]
    fn pixels_decoded_at_once_stay_within_the_limit() {
        use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
        let (now, peak) = (AtomicU64::new(0), AtomicU64::new(0));
        std::thread::scope(|s| {
            for i in 0..8u64 {
                let (now, peak) = (&now, &peak);
                s.spawn(move || {
                    // Budget 100: images of 60 px (i even) or 30 px, never 130 at once.
                    let pixels = if i % 2 == 0 { 60 } else { 30 };
                    let _slot = DecodeSlot::acquire(pixels, 100);
                    peak.fetch_max(now.fetch_add(pixels, SeqCst) + pixels, SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    now.fetch_sub(pixels, SeqCst);
                });
            }
        });
        assert!(peak.load(SeqCst) <= 100, "{} pixels at once", peak.load(SeqCst));
        assert!(peak.load(SeqCst) >= 60);
    }

    #[test]
    fn sixteen_bit_pngs_and_cmyk_jpegs_decode_as_pillow_does() {
        for name in ["rgb16.png", "rgba16.png", "grey16.png", "greya16.png", "cmyk.jpg"] {
            let got = load_rgb8(&fixture(name)).unwrap();
            let stem = name.rsplit_once('.').unwrap().0;
            let want = image::open(fixture(&format!("{stem}.pillow.png"))).unwrap().to_rgb8();
            let differ = got.as_raw().iter().zip(want.as_raw()).filter(|(a, b)| a != b).count();
            assert_eq!(
                (got.dimensions(), differ),
                (want.dimensions(), 0),
                "{name}: {differ} samples differ from Pillow"
            );
        }
    }

    #[test]
    fn extensions_match_in_any_case_and_walks_end_on_link_loops() {
        let d = tempfile::tempdir().unwrap();
        let img = RgbImage::from_pixel(4, 3, image::Rgb([9, 8, 7]));
        for name in ["a.JPG", "b.Png", "c.WebP", "d.jpeg"] {
            let format =
                image::ImageFormat::from_extension(name.rsplit_once('.').unwrap().1.to_ascii_lowercase()).unwrap();
            img.write_to(&mut std::fs::File::create(d.path().join(name)).unwrap(), format).unwrap();
        }
        std::fs::write(d.path().join("notes.txt"), b"x").unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(d.path(), d.path().join("loop")).unwrap();
            let fifo = d.path().join("pipe.png");
            assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        }
        let (images, others) = list_images(d.path()).unwrap();
        let names: Vec<&str> = images.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d"], "each image once, in any case, through the link loop");
        assert!(others.iter().any(|p| p.ends_with("notes.txt")));
        #[cfg(unix)]
        assert!(others.iter().any(|p| p.ends_with("pipe.png")), "a FIFO is listed apart, never opened: {others:?}");
        #[cfg(unix)]
        assert!(load_rgb8(&d.path().join("pipe.png")).unwrap_err().to_string().contains("not a regular file"));
    }

    #[test]
    fn the_pixel_limit_is_checked_from_the_header_for_every_format() {
        let img = RgbImage::from_pixel(40, 30, image::Rgb([1, 2, 3]));
        for (name, format) in
            [("png", image::ImageFormat::Png), ("jpeg", image::ImageFormat::Jpeg), ("webp", image::ImageFormat::WebP)]
        {
            let mut bytes = Vec::new();
            img.write_to(&mut std::io::Cursor::new(&mut bytes), format).unwrap();
            let err = decode_rgb8_within(&bytes, 1199).unwrap_err().to_string();
            assert!(err.contains("40×30") && err.contains("--max-image-pixels"), "{name}: {err}");
            assert_eq!(decode_rgb8_within(&bytes, 1200).unwrap().dimensions(), (40, 30));
        }
    }
}
