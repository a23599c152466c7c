//! Labelled image datasets for training and evaluation.
//!
//! * [`ImageFiles::open_folder`]: the ImageNet layout, one subfolder per class (sorted names →
//!   labels 0..K−1).
//! * [`ImageFiles::open_list`]: the reference's `train.txt` / `val.txt` lists, one
//!   `relative/path label` per line.
//! * [`Procedural`](super::procedural::Procedural): the built-in labelled shapes and textures.
//!
//! Every dataset yields 8-bit RGB images already at the training resolution (files through ADM's
//! `center_crop_arr`, as the reference) with their labels; [`open_dataset`](super::open_dataset)
//! picks one from a `--data` argument.

use super::images::{IMAGE_EXTENSIONS, has_image_extension, load_rgb8_then, walk_files};
use super::transforms::center_crop_arr;
use anyhow::{Context, Result, bail};
use image::RgbImage;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A labelled image collection with random access.
pub trait Dataset: Send + Sync {
    /// Number of items.
    fn len(&self) -> usize;

    /// Whether the dataset has no items.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of classes (labels are `0..num_classes`).
    fn num_classes(&self) -> usize;

    /// Class names, indexed by label.
    fn class_names(&self) -> Vec<String>;

    /// Item `index` as a `size × size` RGB image and its label; errors name the file.
    fn get(&self, index: usize, size: usize) -> Result<(RgbImage, usize)>;

    /// One line saying what the dataset is.
    fn describe(&self) -> String;
}

/// The image files under `dir` (any depth, sorted); entries that are not regular files are
/// reported and skipped.
fn scan_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let walk = walk_files(dir)?;
    for p in &walk.special {
        tracing::warn!("{}: not a regular file, skipped", p.display());
    }
    Ok(walk.files.into_iter().filter(|p| has_image_extension(p)).collect())
}

/// Labelled image files, center-cropped to the requested size when read: a class-folder tree
/// ([`open_folder`](Self::open_folder)) or a file list ([`open_list`](Self::open_list)).
pub struct ImageFiles {
    /// Class names of a folder tree (empty for a list: its labels are the names).
    classes: Vec<String>,
    num_classes: usize,
    items: Vec<(PathBuf, usize)>,
    description: String,
}

impl ImageFiles {
    /// Images in class subfolders: `root/<class>/**/<image>`; class names sorted give the labels
    /// (as torchvision's `ImageFolder`). A folder with images and no subfolders is one class.
    pub fn open_folder(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            bail!("{}: not a folder (expected class subfolders of images, or a .txt file list)", root.display());
        }
        let entries: Vec<PathBuf> = std::fs::read_dir(root)
            .with_context(|| format!("{}: cannot list folder", root.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
            .collect();
        let (mut subdirs, others): (Vec<PathBuf>, Vec<PathBuf>) = entries.into_iter().partition(|p| p.is_dir());
        subdirs.sort();
        let mut items = Vec::new();
        let mut classes = Vec::new();
        if subdirs.is_empty() {
            classes.push(root.file_name().map_or("images".into(), |n| n.to_string_lossy().to_string()));
            items.extend(scan_images(root)?.into_iter().map(|p| (p, 0)));
        } else {
            // Beside class folders, anything else is not a class: said aloud, since a broken
            // link meant as a class would otherwise shift every later label.
            for p in others.iter().filter(|p| !p.is_file() || has_image_extension(p)) {
                tracing::warn!(
                    "{}: not a class folder (a file, a broken link or a special file), ignored",
                    p.display()
                );
            }
            for dir in &subdirs {
                let label = classes.len();
                let files = scan_images(dir)?;
                // Labels are the sorted class folders: dropping an empty one would shift every
                // later label (torchvision's `ImageFolder` refuses too).
                if files.is_empty() {
                    bail!(
                        "{}: class folder without images (extensions {}, any case); labels follow the sorted class    \
                            folders, so remove it or add its images",
                        dir.display(),
                        IMAGE_EXTENSIONS.join(", ")
                    );
                }
                classes.push(dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default());
                items.extend(files.into_iter().map(|p| (p, label)));
            }
        }
        if items.is_empty() {
            bail!("{}: no images found (extensions {})", root.display(), IMAGE_EXTENSIONS.join(", "));
        }
        let description = format!("{}: {} images in {} classes", root.display(), items.len(), classes.len());
        Ok(Self { num_classes: classes.len(), classes, items, description })
    }

    /// A file list in the reference's format: `relative/path label` per line (the label may be
    /// omitted for unlabelled data; blank lines and `#` comments are skipped). Relative paths
    /// start at `root` (default: the list's folder).
    pub fn open_list(list: &Path, root: Option<&Path>) -> Result<Self> {
        super::images::require_regular_file(list, "a file list")?;
        let text =
            std::fs::read_to_string(list).with_context(|| format!("{}: cannot read file list", list.display()))?;
        let base =
            root.map(Path::to_path_buf).unwrap_or_else(|| list.parent().map(Path::to_path_buf).unwrap_or_default());
        let mut items = Vec::new();
        // Whether the first line had a label, and its number: all lines must agree.
        let mut labelled: Option<(bool, usize)> = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (path, label, has_label) = match line.rsplit_once(char::is_whitespace) {
                Some((p, l)) if l.parse::<usize>().is_ok() => (p.trim(), l.parse::<usize>().expect("checked"), true),
                Some((_, l)) if l.parse::<i64>().is_ok() => {
                    bail!("{}:{}: label `{l}` is not a class index (0, 1, 2, …)", list.display(), n + 1)
                }
                _ => (line, 0, false),
            };
            match labelled {
                None => labelled = Some((has_label, n + 1)),
                Some((first, at)) if first != has_label => bail!(
                    "{}:{}: {} but line {at} {}; label every line or none",
                    list.display(),
                    n + 1,
                    if has_label { "has a label" } else { "has no label" },
                    if first { "has one" } else { "has none" }
                ),
                _ => {}
            }
            if label >= 1_000_000 {
                bail!(
                    "{}:{}: label {label} is out of range (at most 1000000 classes: 0 to 999999)",
                    list.display(),
                    n + 1
                );
            }
            if path.is_empty() {
                bail!("{}:{}: no path on this line", list.display(), n + 1);
            }
            items.push((base.join(path), label));
        }
        if items.is_empty() {
            bail!("{}: the list names no images", list.display());
        }
        let num_classes = items.iter().map(|(_, l)| l + 1).max().unwrap_or(1);
        let description = format!("{}: {} images, labels 0..{num_classes}", list.display(), items.len());
        // A list's classes are its labels, named when asked (a large label would make many names).
        Ok(Self { classes: Vec::new(), num_classes, items, description })
    }
}

impl Dataset for ImageFiles {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn class_names(&self) -> Vec<String> {
        match self.classes.is_empty() {
            true => (0..self.num_classes).map(|i| i.to_string()).collect(),
            false => self.classes.clone(),
        }
    }

    fn get(&self, index: usize, size: usize) -> Result<(RgbImage, usize)> {
        let (path, label) = &self.items[index];
        Ok((load_rgb8_then(path, |img| center_crop_arr(&img, size))?, *label))
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}

/// Some items of another dataset (a deterministic train / held-out split of one labelled folder).
pub struct Subset {
    inner: Arc<dyn Dataset>,
    indices: Vec<usize>,
    label: String,
}

impl Subset {
    /// Splits `inner` into (train, held-out): a seeded shuffle, then the last `fraction` of the
    /// items held out (at least one item on each side).
    pub fn split(inner: Arc<dyn Dataset>, fraction: f64, seed: u64) -> Result<(Arc<dyn Dataset>, Arc<dyn Dataset>)> {
        let n = inner.len();
        if n < 2 {
            bail!("{}: {n} image(s) cannot be split into training and held-out parts", inner.describe());
        }
        if !(fraction > 0.0 && fraction < 1.0) {
            bail!("the held-out fraction must be between 0 and 1 (got {fraction})");
        }
        let mut order: Vec<usize> = (0..n).collect();
        crate::rng::Rng::seed_from(seed ^ 0x7370_6c69_7473_6565).shuffle(&mut order);
        let held = ((n as f64 * fraction).round() as usize).clamp(1, n - 1);
        let mut val = order.split_off(n - held);
        order.sort_unstable();
        val.sort_unstable();
        let describe = inner.describe();
        let make = |indices: Vec<usize>, part: &str| -> Arc<dyn Dataset> {
            Arc::new(Subset {
                inner: inner.clone(),
                label: format!("{describe} ({part}: {} images)", indices.len()),
                indices,
            })
        };
        Ok((make(order, "training part"), make(val, "held-out part")))
    }
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }

    fn class_names(&self) -> Vec<String> {
        self.inner.class_names()
    }

    fn get(&self, index: usize, size: usize) -> Result<(RgbImage, usize)> {
        self.inner.get(self.indices[index], size)
    }

    fn describe(&self) -> String {
        self.label.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_and_list_layouts() {
        let dir = tempfile::tempdir().unwrap();
        for (class, n) in [("b_dog", 2), ("a_cat", 3)] {
            std::fs::create_dir_all(dir.path().join(class)).unwrap();
            for i in 0..n {
                RgbImage::from_pixel(40, 30, image::Rgb([i as u8 * 50, 0, 0]))
                    .save(dir.path().join(class).join(format!("{i}.png")))
                    .unwrap();
            }
        }
        let ds = ImageFiles::open_folder(dir.path()).unwrap();
        assert_eq!((ds.len(), ds.num_classes()), (5, 2));
        assert_eq!(ds.class_names(), vec!["a_cat", "b_dog"]);
        let (img, label) = ds.get(3, 16).unwrap();
        assert_eq!((img.width(), img.height(), label), (16, 16, 1));

        let list = dir.path().join("train.txt");
        std::fs::write(&list, "# comment\na_cat/0.png 0\n\nb_dog/1.png 4\n").unwrap();
        let fl = ImageFiles::open_list(&list, None).unwrap();
        assert_eq!((fl.len(), fl.num_classes()), (2, 5));
        assert_eq!(fl.get(1, 8).unwrap().1, 4);

        std::fs::write(dir.path().join("a_cat/bad.png"), b"not a png").unwrap();
        let ds = ImageFiles::open_folder(dir.path()).unwrap();
        let err = (0..ds.len()).find_map(|i| ds.get(i, 8).err()).expect("a corrupt file errors");
        assert!(format!("{err:#}").contains("bad.png"), "{err:#}");
    }
}
