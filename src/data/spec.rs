//! Which images a command reads: the `--data` / `data.source` argument and the dataset it opens.

use super::dataset::{Dataset, ImageFiles};
use super::procedural::Procedural;
use anyhow::Result;
use std::path::PathBuf;
use std::sync::Arc;

/// Which images a run reads (`--data`): the built-in procedural set, a class-folder tree, or a
/// file list.
#[derive(Clone, Debug, PartialEq)]
pub enum DataSpec {
    /// `builtin` / `procedural` (optionally `procedural:N` items).
    Procedural {
        /// Number of training items.
        len: usize,
    },
    /// A folder (class subfolders, or images directly for one unlabelled class).
    Folder(PathBuf),
    /// A `.txt` list of `relpath label` lines (paths relative to `root`, default the list's folder).
    List {
        /// The list file.
        list: PathBuf,
        /// Folder the relative paths start from.
        root: Option<PathBuf>,
    },
}

impl DataSpec {
    /// The folder or list file it reads (none for the procedural set).
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Self::Procedural { .. } => None,
            Self::Folder(dir) => Some(dir),
            Self::List { list, .. } => Some(list),
        }
    }
}

impl std::str::FromStr for DataSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty data source".into());
        }
        if let Some(rest) = s.strip_prefix("procedural").or_else(|| s.strip_prefix("builtin")) {
            return match rest.strip_prefix(':') {
                None if rest.is_empty() => Ok(Self::Procedural { len: Procedural::DEFAULT_LEN }),
                Some(n) => match n.parse::<usize>() {
                    Ok(len) if (1..=10_000_000).contains(&len) => Ok(Self::Procedural { len }),
                    _ => Err(format!("`{s}`: expected procedural:N with 1 ≤ N ≤ 10000000 images")),
                },
                None => Ok(Self::Folder(PathBuf::from(s))),
            };
        }
        let path = PathBuf::from(s);
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("txt")) {
            Ok(Self::List { list: path, root: None })
        } else {
            Ok(Self::Folder(path))
        }
    }
}

impl std::fmt::Display for DataSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Procedural { len } => write!(f, "procedural:{len}"),
            Self::Folder(p) => write!(f, "{}", p.display()),
            Self::List { list, .. } => write!(f, "{}", list.display()),
        }
    }
}

/// Which part of the data: the training items, or held-out ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Training items.
    Train,
    /// Held-out items (the procedural set draws other seeds; files need their own `--val-data`).
    Val,
}

/// Opens a dataset. `seed` only matters for the procedural set (whose images it determines).
pub fn open_dataset(spec: &DataSpec, split: Split, seed: u64) -> Result<Arc<dyn Dataset>> {
    Ok(match spec {
        DataSpec::Procedural { len } => Arc::new(match split {
            Split::Train => Procedural::new(seed, *len),
            Split::Val => Procedural::held_out(seed, (*len / 10).clamp(64, 2000)),
        }),
        DataSpec::Folder(p) => Arc::new(ImageFiles::open_folder(p)?),
        DataSpec::List { list, root } => Arc::new(ImageFiles::open_list(list, root.as_deref())?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!("procedural".parse::<DataSpec>().unwrap(), DataSpec::Procedural { len: Procedural::DEFAULT_LEN });
        assert_eq!("procedural:500".parse::<DataSpec>().unwrap(), DataSpec::Procedural { len: 500 });
        assert!("procedural:x".parse::<DataSpec>().is_err());
        assert_eq!(
            "data/train.txt".parse::<DataSpec>().unwrap(),
            DataSpec::List { list: "data/train.txt".into(), root: None }
        );
        assert_eq!("imagenet/train".parse::<DataSpec>().unwrap(), DataSpec::Folder("imagenet/train".into()));
    }
}
