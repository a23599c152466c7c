//! Ctrl-C (SIGINT), SIGTERM and SIGUSR1, turned into "finish what is safe, then stop" while a training run
//! holds a [`Deferral`]: the first signal only raises a flag that the run reads at safe points
//! (after each optimizer step, between batches of long setup work) — it then saves what it can
//! and returns [`Interrupted`]; a second signal exits at once (status 128 + signal). Without a
//! deferral, both signals end the process at once, as by default.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

/// The signal that asked to stop (0: none).
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// How many deferrals are alive.
static DEFERRALS: AtomicUsize = AtomicUsize::new(0);

/// Work stopped by a signal, after saving what it could.
#[derive(Debug, thiserror::Error)]
#[error(
    "stopped by {name} {}{}",
    match (step, checkpoint) {
        (Some(step), Some(checkpoint)) => format!("after step {step}: the run is saved in {checkpoint}"),
        // A run's setup keeps what it finished (caches) for the resume; other commands stage
        // their outputs and remove them.
        _ if resume.is_some() => format!("while {doing}; nothing finished is lost"),
        _ => format!("while {doing}; no output was written"),
    },
    resume.as_ref().map(|r| format!("; continue it with `{r}`")).unwrap_or_default()
)]
pub struct Interrupted {
    /// The signal number (SIGINT 2, SIGUSR1 10, SIGTERM 15).
    pub signal: i32,
    /// Its name.
    pub name: &'static str,
    /// What was being done.
    pub doing: String,
    /// Steps taken, when a training loop stopped.
    pub step: Option<usize>,
    /// The checkpoint written, when one was.
    pub checkpoint: Option<String>,
    /// The command that continues.
    pub resume: Option<String>,
}

impl Interrupted {
    /// The conventional exit status: 128 + the signal number.
    pub fn exit_code(&self) -> i32 {
        128 + self.signal
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        signal_hook::consts::SIGINT => "SIGINT (Ctrl-C)",
        signal_hook::consts::SIGTERM => "SIGTERM",
        signal_hook::consts::SIGUSR1 => "SIGUSR1",
        _ => "a signal",
    }
}

fn install_handlers() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        // SIGUSR1 too: `mpirun` passes it on to every process at once, where its own SIGINT and
        // SIGTERM kill them a second later (docs/DISTRIBUTED.md); SLURM's `--signal` sends it.
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM, signal_hook::consts::SIGUSR1] {
            // SAFETY: the handler only touches atomics and calls `_exit`, both async-signal-safe.
            let registered = unsafe {
                signal_hook::low_level::register(signal, move || {
                    if DEFERRALS.load(Ordering::SeqCst) == 0 || STOP_SIGNAL.swap(signal, Ordering::SeqCst) != 0 {
                        signal_hook::low_level::exit(128 + signal);
                    }
                })
            };
            if let Err(e) = registered {
                tracing::warn!(
                    "cannot handle {}: {e}; it will stop training without a checkpoint",
                    signal_name(signal)
                );
            }
        }
    });
}

/// Defers SIGINT, SIGTERM and SIGUSR1 to the safe points of the work while alive.
#[derive(Debug)]
pub struct Deferral(());

impl Deferral {
    /// Starts deferring. A signal that arrived earlier in this process still counts.
    pub fn start() -> Self {
        install_handlers();
        DEFERRALS.fetch_add(1, Ordering::SeqCst);
        Self(())
    }
}

impl Drop for Deferral {
    fn drop(&mut self) {
        DEFERRALS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The signal that asked to stop, if any.
pub fn requested() -> Option<i32> {
    Some(STOP_SIGNAL.load(Ordering::SeqCst)).filter(|&s| s != 0)
}

/// An [`Interrupted`] of `doing` by `signal`, with nothing finished to report.
pub fn interrupted(signal: i32, doing: &str) -> Interrupted {
    Interrupted { signal, name: signal_name(signal), doing: doing.into(), step: None, checkpoint: None, resume: None }
}

/// At a safe point of `doing` (e.g. "building the latent cache"): fails with [`Interrupted`]
/// when a signal asked to stop.
pub fn check(doing: &str) -> Result<(), Interrupted> {
    requested().map_or(Ok(()), |signal| Err(interrupted(signal, doing)))
}

/// The error of a training loop that stopped after `step` steps and saved `checkpoint`.
pub fn stopped_after(signal: i32, step: usize, checkpoint: &std::path::Path, resume: String) -> Interrupted {
    Interrupted {
        step: Some(step),
        checkpoint: Some(checkpoint.display().to_string()),
        resume: Some(resume),
        ..interrupted(signal, "training")
    }
}
