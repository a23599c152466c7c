//! The ground floor every module may use: where outputs go (atomic writes, output names taken
//! from data, the rule that no command writes over one of its own inputs) and how long work shows
//! its progress.
//!
//! * [`write_atomic`]: a temporary sibling file, renamed into place when complete (an interrupted
//!   write leaves no partial file), created with the permissions the umask allows (as any other
//!   program's outputs), never readable by its owner only.
//! * [`output_name`]: a name that comes from a file (a latent tensor's name, an image's relative
//!   path, a class name) becomes a relative path that stays inside the output folder, or an error
//!   naming it.
//! * [`Inputs`]: the files and folders a command reads, by canonical path, so that an output that
//!   would replace one of them is refused before any work.

use anyhow::{Context, Result, bail};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

/// A progress bar of `len` steps drawn with `template`.
fn styled_bar(len: usize, template: &str) -> indicatif::ProgressBar {
    let style = indicatif::ProgressStyle::with_template(template).expect("template").progress_chars("=> ");
    indicatif::ProgressBar::new(len as u64).with_style(style)
}

/// A progress bar over `n` items, labelled `what` (drawn only on a terminal).
pub fn progress(n: usize, what: &str) -> indicatif::ProgressBar {
    styled_bar(n, "{msg} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})").with_message(what.to_string())
}

/// The training progress bar: `len` steps, starting at `position` (a resumed run), with a
/// message slot for the loss terms (drawn only on a terminal; see
/// [`indicatif::ProgressBar::is_hidden`]).
pub fn step_progress(len: usize, position: usize) -> indicatif::ProgressBar {
    let bar = styled_bar(len, "[{elapsed_precise}] {pos}/{len} [{bar:25}] eta {eta} {msg}");
    bar.set_position(position as u64);
    bar.reset_eta();
    bar
}

/// Prefix of the temporary files of [`write_atomic`] (cleaned up by training runs at start).
pub const TEMP_PREFIX: &str = ".rectok-tmp-";

/// Writes `bytes` to `path` through a temporary sibling file and a rename, creating the folder.
/// The file gets mode `0666` less the umask, as `open(2)` would give a new file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    refuse_special(path)?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(TEMP_PREFIX);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // The kernel applies the umask to the mode of a newly created file.
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut tmp =
        builder.tempfile_in(dir).with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes).with_context(|| format!("writing {}", path.display()))?;
    // A full or failing disk may only report at fsync; filesystems without fsync say EINVAL.
    if let Err(e) = tmp.as_file().sync_all()
        && e.kind() != std::io::ErrorKind::Unsupported
        && e.raw_os_error() != Some(22)
    {
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    tmp.persist(path).map_err(|e| e.error).with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

/// The JSON in `path`, or `None` when it is missing or not JSON (a marker or record of an
/// earlier run, which the caller then treats as absent).
pub fn read_json_if_valid(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Writes `value` as pretty-printed JSON to `path` (see [`write_atomic`]).
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    write_atomic(path, serde_json::to_string_pretty(value)?.as_bytes())
}

/// The files of one run in an output folder, written into a hidden staging folder inside it and
/// moved into place together by [`commit`](Self::commit): a run that fails half-way (a diverged
/// sample, a full disk, a signal) leaves no output behind, and a folder it created is removed.
///
/// While one is alive, Ctrl-C and SIGTERM are deferred ([`crate::signals`]): the next write or
/// the commit fails with [`crate::signals::Interrupted`], and the staged files are removed.
/// Staging folders that a killed process left behind are removed by the next run into the folder.
#[derive(Debug)]
pub struct StagedFolder {
    dir: PathBuf,
    staging: PathBuf,
    created_dir: bool,
    files: Vec<PathBuf>,
    committed: bool,
    _signals: crate::signals::Deferral,
}

/// The prefix of staging folders; the process id follows.
const STAGE_PREFIX: &str = ".rectok-tmp-stage-";

impl StagedFolder {
    /// Outputs for the folder `dir` (created when the first file is written).
    pub fn new(dir: &Path) -> Self {
        remove_dead_stages(dir);
        Self {
            dir: dir.to_path_buf(),
            staging: dir.join(format!("{STAGE_PREFIX}{}", std::process::id())),
            created_dir: !dir.exists(),
            files: Vec::new(),
            committed: false,
            _signals: crate::signals::Deferral::start(),
        }
    }

    /// Writes the output `name` (relative, from [`output_name`]).
    pub fn write(&mut self, name: &Path, bytes: &[u8]) -> Result<()> {
        crate::signals::check(&format!("writing {}", self.dir.display()))?;
        write_atomic(&self.staging.join(name), bytes)?;
        self.files.push(name.to_path_buf());
        Ok(())
    }

    /// Moves every file into place; returns how many.
    pub fn commit(mut self) -> Result<usize> {
        crate::signals::check(&format!("writing {}", self.dir.display()))?;
        for name in &self.files {
            refuse_special(&self.dir.join(name))?;
        }
        for name in &self.files {
            let target = self.dir.join(name);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            std::fs::rename(self.staging.join(name), &target)
                .with_context(|| format!("moving into {}", target.display()))?;
        }
        self.committed = true;
        let _ = std::fs::remove_dir_all(&self.staging);
        Ok(self.files.len())
    }
}

impl Drop for StagedFolder {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
            if self.created_dir {
                let _ = std::fs::remove_dir(&self.dir);
            }
        }
    }
}

/// Removes the staging folders in `dir` of processes that no longer run (Linux: by `/proc`).
fn remove_dead_stages(dir: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = name.strip_prefix(STAGE_PREFIX).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if entry.file_type().is_ok_and(|t| t.is_dir()) && !Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!("{}: removing the staging folder of an interrupted process", entry.path().display());
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Refuses an output path that exists and is not a regular file: the rename of an atomic write
/// would replace a FIFO, a device (`/dev/null`), a socket or a folder by a file.
pub fn refuse_special(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(m) if m.file_type().is_symlink() => match std::fs::metadata(path) {
            Ok(t) if !t.is_file() => {
                bail!("{}: a link to something that is not a regular file; refusing to replace it", path.display())
            }
            _ => Ok(()),
        },
        Ok(m) if m.is_dir() => bail!("{}: is a folder; name a file", path.display()),
        Ok(_) => bail!(
            "{}: exists and is not a regular file (a FIFO, socket or device); refusing to replace it",
            path.display()
        ),
        Err(_) => Ok(()),
    }
}

/// Refuses `path` when an existing ancestor is not a folder (an output under it cannot be
/// created).
fn refuse_blocked(path: &Path, option: &str) -> Result<()> {
    if !path.exists()
        && let Ok(target) = std::fs::read_link(path)
    {
        bail!("{option} {}: a symbolic link to {}, which does not exist", path.display(), target.display());
    }
    if let Some(a) = path.ancestors().skip(1).filter(|a| !a.as_os_str().is_empty()).find(|a| a.exists() && !a.is_dir())
    {
        bail!("{option} {}: {} is not a folder", path.display(), a.display());
    }
    Ok(())
}

/// An output file option, checked before any work: it may not exist yet, but must not be a folder
/// or a special file, and no existing ancestor may be a file.
pub fn check_output_file(path: &Path, option: &str) -> Result<()> {
    refuse_special(path).with_context(|| option.to_string())?;
    refuse_blocked(path, option)?;
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(folder) => refuse_uncreatable(folder, path, option),
        None => Ok(()),
    }
}

/// An output folder option, checked before any work: it may not exist yet, but must be a folder
/// when it does, no existing ancestor may be a file, and it must be possible to create (its
/// first missing folder is made and removed again; e.g. `/proc/x` or a read-only mount is
/// refused here, naming the option, rather than deep in the work).
pub fn check_output_folder(path: &Path, option: &str) -> Result<()> {
    if path.exists() && !path.is_dir() {
        bail!("{option} {}: exists and is not a folder", path.display());
    }
    refuse_blocked(path, option)?;
    refuse_uncreatable(path, path, option)
}

/// Fails, naming `option` and its value `path`, when `folder` (`path` or the folder it goes in)
/// does not exist and cannot be created: its first missing folder is made and removed again.
fn refuse_uncreatable(folder: &Path, path: &Path, option: &str) -> Result<()> {
    let first_missing = folder.ancestors().filter(|a| !a.as_os_str().is_empty()).take_while(|a| !a.exists()).last();
    if let Some(missing) = first_missing {
        match std::fs::create_dir(missing) {
            Ok(()) => {
                let _ = std::fs::remove_dir(missing);
            }
            // Made meanwhile by another process: it can be created.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) if missing == path => bail!("{option} {}: cannot create the folder: {e}", path.display()),
            Err(e) => bail!("{option} {}: cannot create {}: {e}", path.display(), missing.display()),
        }
    }
    Ok(())
}

/// The relative path an output named `name` gets inside its output folder: `/`-separated
/// components, none of them empty, `.` or `..`, and not absolute. `what` says where the name
/// came from (e.g. "latent tensor").
///
/// # Errors
/// A name that would leave the output folder, or that is empty, is an error quoting it.
pub fn output_name(name: &str, what: &str) -> Result<PathBuf> {
    let bad = |why: &str| anyhow::anyhow!("{what} `{}` cannot name an output file: {why}", name.escape_debug());
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.contains('\0') {
        return Err(bad("it contains a NUL character"));
    }
    if name.starts_with('/') || name.starts_with('\\') || Path::new(name).is_absolute() {
        return Err(bad("it is an absolute path (outputs stay inside the output folder)"));
    }
    let mut out = PathBuf::new();
    for part in name.split(['/', '\\']) {
        match part {
            "" => return Err(bad("it has an empty path component")),
            "." | ".." => return Err(bad("it has a `.` or `..` component (outputs stay inside the output folder)")),
            _ if part.len() > 255 => return Err(bad("a path component is longer than 255 bytes")),
            _ => out.push(part),
        }
    }
    if !out.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(bad("it is not a plain relative path"));
    }
    Ok(out)
}

/// [`output_name`] with `.ext` appended (`a/b` → `a/b.png`), the file name with its extension
/// within the 255 bytes a file system allows.
pub fn output_file(name: &str, what: &str, ext: &str) -> Result<PathBuf> {
    let mut path = output_name(name, what)?.into_os_string();
    path.push(".");
    path.push(ext);
    let path = PathBuf::from(path);
    if path.file_name().is_some_and(|f| f.len() > 255) {
        bail!(
            "{what} `{}` cannot name an output file: with `.{ext}` its last component is longer than 255 bytes",
            name.escape_debug()
        );
    }
    Ok(path)
}

/// The longest path the outputs may have, in bytes (Linux's `PATH_MAX` less the terminating NUL).
const MAX_PATH_BYTES: usize = 4095;

/// The canonical form of a path that may not exist yet: its existing ancestor canonicalised, the
/// rest appended (`.` and `..` of the missing part resolved lexically). `None` when no ancestor can
/// be resolved.
fn canonical_lenient(path: &Path) -> Option<PathBuf> {
    if let Ok(c) = std::fs::canonicalize(path) {
        return Some(c);
    }
    let mut normal = PathBuf::new();
    for c in std::path::absolute(path).ok()?.components() {
        match c {
            std::path::Component::ParentDir => {
                normal.pop();
            }
            std::path::Component::CurDir => {}
            other => normal.push(other),
        }
    }
    let mut rest = Vec::new();
    let mut cur = normal.as_path();
    loop {
        if let Ok(c) = std::fs::canonicalize(cur) {
            let mut out = c;
            out.extend(rest.iter().rev());
            return Some(out);
        }
        rest.push(cur.file_name()?.to_owned());
        cur = cur.parent()?;
    }
}

/// Whether `path` is `dir` or lies inside it (by canonical paths; both may not exist yet).
pub fn lies_within(path: &Path, dir: &Path) -> bool {
    matches!((canonical_lenient(path), canonical_lenient(dir)), (Some(p), Some(d)) if p.starts_with(&d))
}

/// Extensions treated as images when scanning folders (compared case-insensitively).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp"];

/// Whether `path` has an image extension (case-insensitive).
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// The files and folders a command reads, by canonical path, with the option that named each.
#[derive(Debug, Default)]
pub struct Inputs {
    files: HashSet<PathBuf>,
    dirs: Vec<(PathBuf, String)>,
    named: Vec<(PathBuf, String)>,
}

impl Inputs {
    /// No inputs yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an input (a file, or a folder and every file under it) named by `option`. Paths that
    /// do not exist are ignored (reading them fails later with its own message).
    pub fn add(&mut self, path: &Path, option: &str) -> &mut Self {
        if let Ok(c) = std::fs::canonicalize(path) {
            if c.is_dir() {
                self.dirs.push((c, option.to_string()));
            } else {
                self.files.insert(c.clone());
                self.named.push((c, option.to_string()));
            }
        }
        self
    }

    /// Adds an optional input.
    pub fn add_opt(&mut self, path: Option<&Path>, option: &str) -> &mut Self {
        if let Some(p) = path {
            self.add(p, option);
        }
        self
    }

    /// Adds files listed from an input folder (e.g. the images found under `--input`).
    pub fn add_files<'a>(&mut self, paths: impl IntoIterator<Item = &'a Path>) -> &mut Self {
        for p in paths {
            if let Ok(c) = std::fs::canonicalize(p) {
                self.files.insert(c);
            }
        }
        self
    }

    /// Why `path` (existing or not) would replace an input: it is an input file, a file listed
    /// from an input folder, an input folder itself, or an image that exists inside an input
    /// folder (a data image the command reads).
    fn clash(&self, path: &Path) -> Option<String> {
        let c = canonical_lenient(path)?;
        if let Some((_, option)) = self.named.iter().find(|(p, _)| *p == c) {
            return Some(format!("it is the input {option}"));
        }
        if self.files.contains(&c) {
            return Some("it is one of the input images".into());
        }
        if let Some((_, option)) = self.dirs.iter().find(|(d, _)| *d == c) {
            return Some(format!("it is the input folder {option}"));
        }
        if c.is_file()
            && has_image_extension(&c)
            && let Some((_, option)) = self.dirs.iter().find(|(d, _)| c.starts_with(d))
        {
            return Some(format!("it is an image inside the input folder {option}"));
        }
        None
    }

    /// Checks an output file as [`check_output_file`] does, and refuses one that is one of the
    /// inputs (compared by canonical path), or a new file named like an image inside an input
    /// folder (it would become one of that folder's images).
    pub fn check_output_file(&self, path: &Path, option: &str) -> Result<()> {
        check_output_file(path, option)?;
        if let Some(why) = self.clash(path) {
            bail!("{option} {}: {why}; refusing to overwrite an input (choose another output)", path.display());
        }
        if has_image_extension(path)
            && let Some(c) = canonical_lenient(path)
            && let Some((_, folder)) = self.dirs.iter().find(|(d, _)| c.starts_with(d))
        {
            bail!(
                "{option} {}: lies inside the input folder {folder} under an image's name, where it would \
                become one of its images (choose another output)",
                path.display()
            );
        }
        Ok(())
    }

    /// Checks an output folder as [`check_output_folder`] does, and refuses one that is an input
    /// folder or file, and any of the `names` inside it (relative output paths) that would replace
    /// an input.
    pub fn check_output_dir<'a>(
        &self,
        dir: &Path,
        option: &str,
        names: impl IntoIterator<Item = &'a Path>,
    ) -> Result<()> {
        check_output_folder(dir, option)?;
        if let Some(why) = self.clash(dir) {
            bail!("{option} {}: {why}; write the outputs to another folder", dir.display());
        }
        let root = canonical_lenient(dir);
        for name in names {
            let path = dir.join(name);
            // A symbolic link already in the output folder must not lead a write outside it.
            if let (Some(root), Some(parent)) = (&root, path.parent().and_then(canonical_lenient))
                && !parent.starts_with(root)
            {
                bail!(
                    "{option} {}: the output {} would be written outside it (through a symbolic link)",
                    dir.display(),
                    path.display()
                );
            }
            if let Some(why) = self.clash(&path) {
                bail!(
                    "{option} {}: the output {} would replace an input ({why}); write the outputs to another folder",
                    dir.display(),
                    path.display()
                );
            }
            // What is already in the folder must leave room for the output: folders on its way,
            // and no folder or special file where it goes. (Its staging copy is longer still.)
            for a in path.ancestors().skip(1).take_while(|a| *a != dir) {
                if a.exists() && !a.is_dir() {
                    bail!(
                        "{option} {}: {} is not a folder, but the output {} needs one",
                        dir.display(),
                        a.display(),
                        path.display()
                    );
                }
            }
            refuse_special(&path).with_context(|| format!("{option} {}", dir.display()))?;
            let staged_len = root.as_ref().map_or(0, |r| r.as_os_str().len()) + name.as_os_str().len() + 40;
            if staged_len > MAX_PATH_BYTES {
                bail!(
                    "{option} {}: the output {} would have a path longer than {MAX_PATH_BYTES} bytes",
                    dir.display(),
                    path.display()
                );
            }
        }
        Ok(())
    }
}

/// Refuses relative output paths (after [`output_name`]) of which two are the same file, or one is
/// a file and also a folder on the way to another (`x.png` and `x.png/y.png`).
pub fn check_distinct<'a>(names: impl IntoIterator<Item = &'a Path>, what: &str) -> Result<()> {
    let names: Vec<&Path> = names.into_iter().collect();
    let mut seen = HashSet::new();
    for n in &names {
        if !seen.insert(n.to_path_buf()) {
            bail!("two {what} would both be written to `{}`", n.display());
        }
    }
    for n in &names {
        if let Some(a) = n.ancestors().skip(1).find(|a| seen.contains(*a)) {
            bail!("`{}` would be both a file and the folder of `{}` ({what})", a.display(), n.display());
        }
    }
    Ok(())
}

/// Refuses an extra output `file` (of `option`) that collides with the folder `dir` the same run
/// fills with `names`: the file may not be the folder or lie above it, be one of its files, lie
/// beneath one, or stand where a file needs a folder (`generate -o s --grid s`,
/// `--grid s/0000_000.png`, `--save-dir j.json/x --json j.json`).
pub fn check_not_planned(
    file: &Path,
    option: &str,
    dir: &Path,
    names: impl IntoIterator<Item = impl AsRef<Path>>,
) -> Result<()> {
    let (Some(f), Some(d)) = (canonical_lenient(file), canonical_lenient(dir)) else { return Ok(()) };
    if d.starts_with(&f) {
        bail!("{option} {}: the same run writes its output folder {} there", file.display(), dir.display());
    }
    for name in names {
        let planned = d.join(&name);
        if planned == f || f.starts_with(&planned) || planned.starts_with(&f) {
            bail!("{option} {}: the same run writes its output {} there", file.display(), dir.join(name).display());
        }
    }
    Ok(())
}

/// `word` (a path, an option's value) as one shell word (quoted where needed), for the commands
/// that messages print: a path with spaces or quotes pasted from `continue it with `…`` still
/// names the same folder.
pub fn shell_quoted(word: impl AsRef<std::ffi::OsStr>) -> String {
    let text = word.as_ref().to_string_lossy();
    shlex::try_quote(&text).map(|q| q.into_owned()).unwrap_or_else(|_| text.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_stay_inside_the_folder() {
        assert_eq!(output_name("a/b/c", "t").unwrap(), PathBuf::from("a/b/c"));
        assert_eq!(output_name("module.scan", "t").unwrap(), PathBuf::from("module.scan"));
        for bad in ["", "../x", "a/../../x", "/tmp/x", "a//b", "./a", "a/.", "..", "a\\..\\..\\b", "x\0y"] {
            let e = output_name(bad, "latent tensor").unwrap_err().to_string();
            assert!(e.contains("latent tensor"), "{bad}: {e}");
        }
    }

    #[test]
    fn inputs_are_never_outputs() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("x.png");
        std::fs::write(&img, b"x").unwrap();
        let mut inputs = Inputs::new();
        inputs.add(&img, "--input");
        assert!(inputs.check_output_file(&img, "--output").unwrap_err().to_string().contains("--input"));
        // Through another spelling of the same path.
        let other = d.path().join(".").join("x.png");
        assert!(inputs.check_output_file(&other, "--output").is_err());
        assert!(inputs.check_output_file(&d.path().join("y.png"), "--output").is_ok());
        assert!(inputs.check_output_file(&d.path().join("new/dir/y.png"), "--output").is_ok());
        let mut folder = Inputs::new();
        folder.add(d.path(), "--input").add_files([img.as_path()]);
        assert!(folder.check_output_dir(d.path(), "--output", []).is_err());
        assert!(folder.check_output_file(&img, "--output").unwrap_err().to_string().contains("input images"));
        let sub = d.path().join("out");
        assert!(folder.check_output_dir(&sub, "--output", [Path::new("x.png")]).is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn atomic_writes_follow_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.bin");
        write_atomic(&p, b"abc").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        // The same mode as a file created the ordinary way (0666 less the umask), not 0600.
        let plain = d.path().join("plain.bin");
        std::fs::write(&plain, b"abc").unwrap();
        assert_eq!(mode(&p), mode(&plain), "{:o} vs {:o}", mode(&p), mode(&plain));
        assert_eq!(std::fs::read(&p).unwrap(), b"abc");
    }
}
