//! A training session's hold on its run folder: one process at a time (a lock naming its pid),
//! and leftovers of a killed process cleaned up at start. (Signals: [`crate::signals`].)

use crate::io::TEMP_PREFIX;
use anyhow::{Context, Result, bail};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// An exclusive lock on a run folder (`RUN/.lock`, holding the owner's pid), released when the
/// process ends, however it ends.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Locks `run_dir` (creating it) for this process, or fails naming the process that holds it.
    /// Training runs, the demo and ablations hold their output folder's lock.
    pub fn acquire(run_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
        let path = run_dir.join(".lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("{}: cannot write in the folder (its lock file .lock)", run_dir.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(in_use(run_dir, &mut file)),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        file.flush()?;
        Ok(Self { _file: file })
    }

    /// Fails when another process holds `run_dir`'s lock (naming its pid), without creating
    /// anything: a check before a folder's contents are judged.
    pub fn check_free(run_dir: &Path) -> Result<()> {
        let Ok(mut file) = File::open(run_dir.join(".lock")) else { return Ok(()) };
        match file.try_lock_shared() {
            Err(std::fs::TryLockError::WouldBlock) => Err(in_use(run_dir, &mut file)),
            _ => Ok(()),
        }
    }
}

/// The error for a folder whose lock another process holds: its pid, from the lock file.
fn in_use(run_dir: &Path, lock: &mut File) -> anyhow::Error {
    let mut holder = String::new();
    let _ = lock.read_to_string(&mut holder);
    let holder = holder.trim();
    anyhow::anyhow!(
        "{}: another rectok process{} is working in this folder (a training run, demo or ablation); wait for it \
            to finish or stop it first",
        run_dir.display(),
        if holder.is_empty() { String::new() } else { format!(" (pid {holder})") }
    )
}

/// Where a session starts, once its run folder is open.
#[derive(Debug)]
pub enum Start {
    /// A new run (the folder holds none, or one that stopped before its first checkpoint).
    Fresh,
    /// `--resume` of a run that stopped before its first checkpoint: start it over from its
    /// `config.toml`.
    Restart(PathBuf),
    /// `--resume` from this checkpoint.
    Resume(PathBuf),
}

impl Start {
    /// As bytes (a kind, a newline, the path's own bytes), for rank 0 to send to the other
    /// processes of a job.
    pub fn encode(&self) -> Vec<u8> {
        use std::os::unix::ffi::OsStrExt;
        let (kind, path) = match self {
            Start::Fresh => ("fresh", Path::new("")),
            Start::Restart(p) => ("restart", p.as_path()),
            Start::Resume(p) => ("resume", p.as_path()),
        };
        [kind.as_bytes(), b"\n", path.as_os_str().as_bytes()].concat()
    }

    /// From [`encode`](Self::encode)'s bytes.
    pub fn decode(bytes: &[u8]) -> anyhow::Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        let split = bytes.iter().position(|&b| b == b'\n').unwrap_or(bytes.len());
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(bytes.get(split + 1..).unwrap_or_default()));
        Ok(match &bytes[..split] {
            b"fresh" => Start::Fresh,
            b"restart" => Start::Restart(path),
            b"resume" => Start::Resume(path),
            other => anyhow::bail!("rank 0 sent an unknown run start {:?}", String::from_utf8_lossy(other)),
        })
    }
}

/// Opens `run_dir` for a training session: locks it, removes leftovers of a killed process, and
/// decides where training starts. A run that stopped before its first checkpoint is started
/// over (its metrics and grids are removed), with or without `--resume`, and the log says so.
/// `command` is the subcommand (`tokenizer`, `generator`) for messages.
pub fn open_run(run_dir: &Path, resume: bool, command: &str) -> Result<(RunLock, Start)> {
    if resume && !run_dir.is_dir() {
        // Refused before the lock creates the folder: a failed resume leaves nothing behind.
        bail!("{}: no training run to resume (no such folder); start one without --resume", run_dir.display());
    }
    let lock = RunLock::acquire(run_dir)?;
    if let Some(kind) = run_kind(run_dir).filter(|k| *k != command) {
        bail!(
            "{}: holds a `rectok train {kind}` run, not a {command} run; choose another --out (or continue that run \
            with `rectok train {kind} --out {} --resume`)",
            run_dir.display(),
            crate::io::shell_quoted(run_dir)
        );
    }
    clean_leftovers(run_dir)?;
    let checkpoint = super::checkpoint::CheckpointStore::new(run_dir, 1).latest()?;
    let config = run_dir.join("config.toml");
    let started = config.exists() || run_dir.join("metrics.jsonl").exists();
    let start = match (resume, checkpoint) {
        (true, Some(ckpt)) => Start::Resume(ckpt),
        (false, Some(ckpt)) => bail!(
            "{} already holds a training run (newest checkpoint {}); continue it with `rectok train {command} --out \
                {} --resume`, or choose another --out",
            run_dir.display(),
            ckpt.display(),
            crate::io::shell_quoted(run_dir)
        ),
        (true, None) if config.exists() => {
            tracing::warn!(
                "{}: the run stopped before its first checkpoint; starting it over from step 0 with its config.toml",
                run_dir.display()
            );
            Start::Restart(config)
        }
        (true, None) => bail!(
            "{}: no training run to resume (no checkpoint and no config.toml); start one without --resume",
            run_dir.display()
        ),
        (false, None) => {
            if started {
                tracing::warn!(
                    "{}: the run there stopped before its first checkpoint; starting a new run from step 0 in its \
                        place",
                    run_dir.display()
                );
            }
            Start::Fresh
        }
    };
    if !matches!(start, Start::Resume(_)) {
        forget_progress(run_dir)?;
    }
    Ok((lock, start))
}

/// Which trainer made the run in `run_dir`, from the sections of its `config.toml`: generator
/// recipes have `[sample]`, tokenizer recipes `[loss]`.
fn run_kind(run_dir: &Path) -> Option<&'static str> {
    let table: toml::Table = std::fs::read_to_string(run_dir.join("config.toml")).ok()?.parse().ok()?;
    match (table.contains_key("sample"), table.contains_key("loss")) {
        (true, false) => Some("generator"),
        (false, true) => Some("tokenizer"),
        _ => None,
    }
}

/// Undoes what [`open_run`] and the start of a new run wrote (`.lock`, `config.toml`, and the
/// folder itself when nothing else is in it), after the run failed to get going: a refused run
/// leaves no trace. Caches built on the way (latent statistics, latent cache) stay.
pub fn discard_unstarted(run_dir: &Path) {
    for f in ["config.toml", ".lock"] {
        let _ = std::fs::remove_file(run_dir.join(f));
    }
    let _ = std::fs::remove_dir(run_dir);
}

/// Removes the metrics and grids of a run that is started over.
fn forget_progress(run_dir: &Path) -> Result<()> {
    let metrics = run_dir.join("metrics.jsonl");
    if metrics.exists() {
        std::fs::remove_file(&metrics).with_context(|| format!("removing {}", metrics.display()))?;
    }
    if let Ok(entries) = std::fs::read_dir(run_dir.join("samples")) {
        for e in entries.flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step_")) {
                std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            }
        }
    }
    Ok(())
}

/// Removes what a killed process may have left in a run folder: temporary files of atomic
/// writes (`.rectok-tmp-*`, anywhere in the folder) and half-written or half-deleted checkpoint
/// folders (`checkpoints/.step_*`). Returns what was removed.
pub fn clean_leftovers(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let mut stack = vec![run_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() && dir.file_name().is_some_and(|n| n == "checkpoints") && name.starts_with(".step_") {
                std::fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
                removed.push(path);
            } else if kind.is_dir() && !kind.is_symlink() {
                stack.push(path);
            } else if kind.is_file() && name.starts_with(TEMP_PREFIX) {
                std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
                removed.push(path);
            }
        }
    }
    if !removed.is_empty() {
        tracing::info!("{}: removed {} leftover(s) of an interrupted process", run_dir.display(), removed.len());
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_start_travels_to_the_other_processes_unchanged() {
        use std::os::unix::ffi::OsStrExt;
        let odd = PathBuf::from(std::ffi::OsStr::from_bytes(b"runs/caf\xe9\nx/checkpoints/step_00000002"));
        for start in [Start::Fresh, Start::Restart(PathBuf::from("r/config.toml")), Start::Resume(odd)] {
            let back = Start::decode(&start.encode()).unwrap();
            assert_eq!(format!("{back:?}"), format!("{start:?}"));
        }
        assert!(Start::decode(b"later\n/x").is_err());
    }

    #[test]
    fn a_locked_run_folder_names_its_holder_and_leftovers_go() {
        let d = tempfile::tempdir().unwrap();
        let lock = RunLock::acquire(d.path()).unwrap();
        let err = RunLock::acquire(d.path()).unwrap_err().to_string();
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(lock);
        let _again = RunLock::acquire(d.path()).unwrap();

        std::fs::create_dir_all(d.path().join("checkpoints/.step_00000040.tmp")).unwrap();
        std::fs::create_dir_all(d.path().join("checkpoints/step_00000020")).unwrap();
        std::fs::write(d.path().join("samples.rectok"), b"kept").unwrap();
        std::fs::create_dir_all(d.path().join("samples")).unwrap();
        std::fs::write(d.path().join("samples").join(format!("{TEMP_PREFIX}x")), b"partial").unwrap();
        let removed = clean_leftovers(d.path()).unwrap();
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(d.path().join("checkpoints/step_00000020").exists() && d.path().join("samples.rectok").exists());
    }
}
