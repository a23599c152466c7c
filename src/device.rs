//! Run-time device selection: the one place that knows which burn backends were compiled in.
//!
//! burn 0.22 tensors carry no backend type parameter; the [`Device`] picks the backend when the
//! program runs. The CPU backend (`flex`, pure Rust) is always available; `vulkan` and `cuda` exist
//! when the crate is built with the cargo features of the same names.

use burn::tensor::Device;
use std::fmt;
use std::str::FromStr;

/// A device the user can ask for on the command line (`--device cpu|vulkan|cuda`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// burn's `flex` backend: multi-threaded pure-Rust CPU kernels.
    #[default]
    Cpu,
    /// burn's wgpu backend pinned to Vulkan (cargo feature `vulkan`).
    Vulkan,
    /// burn's CUDA backend (cargo feature `cuda`).
    Cuda,
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" | "flex" => Ok(Self::Cpu),
            "vulkan" | "gpu" => Ok(Self::Vulkan),
            "cuda" => Ok(Self::Cuda),
            other => Err(format!("unknown device '{other}' (expected cpu, vulkan or cuda)")),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Vulkan => "vulkan",
            Self::Cuda => "cuda",
        })
    }
}

/// The backends this binary was compiled with, for error messages and `--help`.
pub fn compiled_devices() -> Vec<DeviceChoice> {
    let compiled = [
        (DeviceChoice::Cpu, true),
        (DeviceChoice::Vulkan, cfg!(feature = "vulkan")),
        (DeviceChoice::Cuda, cfg!(feature = "cuda")),
    ];
    compiled.into_iter().filter_map(|(device, on)| on.then_some(device)).collect()
}

/// Builds the burn [`Device`] for a choice, or explains which cargo feature is missing.
pub fn select_device(choice: DeviceChoice) -> Result<Device, String> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::flex()),
        #[cfg(feature = "vulkan")]
        DeviceChoice::Vulkan => Ok(Device::vulkan(Default::default())),
        #[cfg(not(feature = "vulkan"))]
        DeviceChoice::Vulkan => Err("this rectok binary was built without the `vulkan` feature; rebuild with \
                     `cargo build --release --features vulkan`"
            .into()),
        #[cfg(feature = "cuda")]
        DeviceChoice::Cuda => Ok(Device::cuda(0)),
        #[cfg(not(feature = "cuda"))]
        DeviceChoice::Cuda => Err("this rectok binary was built without the `cuda` feature; rebuild with \
                     `cargo build --release --features cuda` (needs network access at build time)"
            .into()),
    }
}

/// The most CPU worker threads accepted: 4 per core, at least 1024 (more only slows the work down,
/// and tens of thousands exhaust the process's thread limit).
pub fn max_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).saturating_mul(4).max(1024)
}

/// Checks a thread count (`--threads`, `run.threads`): `1..=max_threads()`.
pub fn check_threads(threads: usize, option: &str) -> Result<(), String> {
    let max = max_threads();
    if !(1..=max).contains(&threads) {
        return Err(format!("{option} must be between 1 and {max}, got {threads}"));
    }
    Ok(())
}

/// The most parameters a model may have here: half of this machine's memory at 4 bytes each (or
/// 20 G when the memory cannot be read). A larger model could not even be built; the point is a
/// clear error instead of an allocation failure for a mistyped size (training needs about five
/// copies: weights, EMA, gradients and two Adam moments).
pub fn max_parameters() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
    });
    total.map_or(20_000_000_000, |kib| (kib * 1024 / 8).max(1_000_000))
}

/// Refuses a model of about `params` parameters that this machine cannot hold (see
/// [`max_parameters`]); `what` names it.
pub fn check_parameter_count(params: u64, what: &str) -> Result<(), String> {
    check_parameters_within(params, what, max_parameters())
}

/// Bytes of memory per parameter in training: weights, EMA, gradients and the two AdamW
/// moments, 4 bytes each (activations come on top).
pub const TRAINING_BYTES_PER_PARAMETER: u64 = 20;

/// Refuses training a model of about `params` parameters whose weights, EMA, gradients and
/// optimizer state alone would not fit in this machine's memory; `what` names it.
pub fn check_trainable_parameter_count(params: u64, what: &str) -> Result<(), String> {
    check_parameters_within(params, &format!("{what} (trained)"), max_parameters() * 8 / TRAINING_BYTES_PER_PARAMETER)
}

fn check_parameters_within(params: u64, what: &str, max: u64) -> Result<(), String> {
    if params > max {
        return Err(format!(
            "{what} would have about {:.1} G parameters; this machine's memory holds at most about {:.1} G",
            params as f64 / 1e9,
            max as f64 / 1e9
        ));
    }
    Ok(())
}

/// Sets the number of CPU worker threads (rayon's global pool, which the flex backend and the
/// data pipeline share). Must run before any tensor work; later calls are ignored.
pub fn set_cpu_threads(threads: Option<usize>) {
    if let Some(n) = threads.filter(|&n| n > 0) {
        // An error only means the pool already exists; the first setting wins.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    }
}

/// Whether `device` is the CPU (flex), with or without autodiff.
pub fn is_cpu(device: &Device) -> bool {
    device.clone().without_autodiff() == Device::flex()
}
