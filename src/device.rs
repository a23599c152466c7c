//! Run-time device selection: the one place that knows which burn backends were compiled in.
//!
//! burn 0.22 tensors carry no backend type parameter; the [`Device`] picks the backend when the
//! program runs. The CPU backend (`flex`, pure Rust) is always available; `vulkan` and `cuda` exist
//! when the crate is built with the cargo features of the same names.

use burn::tensor::kind::Basic;
use burn::tensor::{Device, Tensor, TensorData};
use std::fmt;
use std::str::FromStr;

/// A device the user can ask for on the command line (`--device cpu|vulkan|wgpu|cuda`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// burn's `flex` backend: multi-threaded pure-Rust CPU kernels.
    #[default]
    Cpu,
    /// burn's wgpu backend pinned to Vulkan, compiling kernels to SPIR-V (cargo feature `vulkan`).
    Vulkan,
    /// burn's wgpu backend on the platform's own graphics API (Metal, DirectX 12 or Vulkan),
    /// compiling kernels to WGSL (cargo feature `wgpu`; in a build that also has `vulkan`, a
    /// Vulkan adapter gets SPIR-V).
    Wgpu,
    /// burn's CUDA backend (cargo feature `cuda`).
    Cuda,
}

impl FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" | "flex" => Ok(Self::Cpu),
            "vulkan" | "gpu" => Ok(Self::Vulkan),
            "wgpu" | "webgpu" => Ok(Self::Wgpu),
            "cuda" => Ok(Self::Cuda),
            other => Err(format!("unknown device '{other}' (expected cpu, vulkan, wgpu or cuda)")),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Vulkan => "vulkan",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        })
    }
}

/// The backends this binary was compiled with, for error messages and `--help`.
pub fn compiled_devices() -> Vec<DeviceChoice> {
    let compiled = [
        (DeviceChoice::Cpu, true),
        (DeviceChoice::Vulkan, cfg!(feature = "vulkan")),
        (DeviceChoice::Wgpu, cfg!(feature = "wgpu")),
        (DeviceChoice::Cuda, cfg!(feature = "cuda")),
    ];
    compiled.into_iter().filter_map(|(device, on)| on.then_some(device)).collect()
}

/// Builds the burn [`Device`] for a choice, or explains which cargo feature is missing.
pub fn select_device(choice: DeviceChoice) -> Result<Device, String> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::flex()),
        #[cfg(feature = "vulkan")]
        DeviceChoice::Vulkan => Ok(Device::vulkan(gpu_kind())),
        #[cfg(not(feature = "vulkan"))]
        DeviceChoice::Vulkan => Err("this rectok binary was built without the `vulkan` feature; rebuild with \
                     `cargo build --release --features vulkan`"
            .into()),
        #[cfg(feature = "wgpu")]
        DeviceChoice::Wgpu => Ok(Device::wgpu(gpu_kind())),
        #[cfg(not(feature = "wgpu"))]
        DeviceChoice::Wgpu => Err("this rectok binary was built without the `wgpu` feature; rebuild with \
                     `cargo build --release --features wgpu`"
            .into()),
        #[cfg(feature = "cuda")]
        DeviceChoice::Cuda => Ok(Device::cuda(gpu_index())),
        #[cfg(not(feature = "cuda"))]
        DeviceChoice::Cuda => Err("this rectok binary was built without the `cuda` feature; rebuild with \
                     `cargo build --release --features cuda` (needs network access at build time)"
            .into()),
    }
}

/// The GPU a process takes: in a multi-process job, the one of its node-local rank (`mpirun -np 8`
/// on an 8-GPU machine gives each rank its own), unless the launcher already made one GPU visible
/// to each rank (`CUDA_VISIBLE_DEVICES` with a single entry, as SLURM's `--gpus-per-task=1`).
pub fn gpu_index() -> usize {
    let world = crate::dist::world();
    let one_visible = std::env::var("CUDA_VISIBLE_DEVICES").is_ok_and(|v| !v.is_empty() && !v.contains(','));
    if world.local_size() > 1 && !one_visible { world.local_rank() } else { 0 }
}

/// Whether a Vulkan driver is installed: an ICD manifest where the Vulkan loader looks, or
/// `VK_ICD_FILENAMES` set (the Vulkan tests skip, saying so, without one).
pub fn vulkan_driver_installed() -> bool {
    ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d"]
        .iter()
        .any(|d| std::fs::read_dir(d).is_ok_and(|mut e| e.next().is_some()))
        || std::env::var_os("VK_ICD_FILENAMES").is_some()
}

/// The Vulkan / wgpu device kind of [`gpu_index`]: the default adapter for a single process.
#[cfg(any(feature = "vulkan", feature = "wgpu"))]
fn gpu_kind() -> burn::tensor::DeviceKind {
    match gpu_index() {
        0 if crate::dist::world().local_size() == 1 => Default::default(),
        i => burn::tensor::DeviceKind::DiscreteGpu(i),
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
    // Processes sharing a machine share its cores — unless the launcher already bound each to
    // its own (the affinity mask, which `available_parallelism` follows, is then smaller than
    // the machine).
    let local = crate::dist::world().local_size();
    let split = || {
        let usable = std::thread::available_parallelism().map_or(1, |n| n.get());
        // SAFETY: sysconf only reads a system value.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
        if usable < online { usable } else { (usable / local).max(1) }
    };
    let threads = threads.filter(|&n| n > 0).or_else(|| (local > 1).then(split));
    if let Some(n) = threads {
        // An error only means the pool already exists; the first setting wins.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    }
}

/// Whether `device` is the CPU (flex), with or without autodiff.
pub fn is_cpu(device: &Device) -> bool {
    device.clone().without_autodiff() == Device::flex()
}

/// Device-to-host reads made through [`read_back`] since the program started.
static HOST_READS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many times tensor values were read back to the host through [`read_back`],
/// [`read_f32`] or [`read_scalars`]. On a GPU each read waits for the queued kernels to finish,
/// so the sampling loops, encode/decode batches and training steps make none beyond what their
/// logging needs (tests/host_reads.rs counts them).
pub fn host_reads() -> usize {
    HOST_READS.load(std::sync::atomic::Ordering::Relaxed)
}

/// A GPU device's kernels failed (e.g. a buffer the driver could not allocate). It is only
/// detected when values are read back, deep inside a computation, so [`read_back`] unwinds with
/// this payload (without the panic hook's backtrace) and `cli::run` reports it as one error line.
#[derive(Debug)]
pub struct DeviceFailure(pub String);

impl std::fmt::Display for DeviceFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the device failed: {}", self.0)?;
        if self.0.contains("allocate") {
            write!(
                f,
                " (out of device memory or over the driver's largest buffer: lower the batch size, or use --precision f16)"
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for DeviceFailure {}

/// Reads a tensor's values back to the host (counted by [`host_reads`]).
///
/// # Errors
/// A failed device computation unwinds with a [`DeviceFailure`] payload (see there).
pub fn read_back<const D: usize, K: Basic>(tensor: Tensor<D, K>) -> TensorData {
    HOST_READS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match tensor.try_into_data() {
        Ok(data) => data,
        Err(e) => std::panic::resume_unwind(Box::new(DeviceFailure(innermost_cause(&format!("{e}"))))),
    }
}

/// The innermost cause of a device error's text: the driver's message, under the chain of
/// "Caused by:" lines that list the kernels skipped because of it.
fn innermost_cause(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let innermost = lines.windows(2).rev().find(|w| w[0] == "Caused by:").map(|w| w[1]);
    innermost.or(lines.first().copied()).unwrap_or("a kernel failed").to_string()
}

/// A float tensor's values on the host as f32, whatever its precision (f16 and bf16 widen
/// exactly).
pub fn read_f32<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    read_back(tensor).try_into_vec_as::<f32>().expect("a float tensor converts to f32")
}

/// Several scalars (each a one-element tensor) read back in one transfer, as f64.
pub fn read_scalars(scalars: Vec<Tensor<1>>) -> Vec<f64> {
    if scalars.is_empty() {
        return Vec::new();
    }
    let flat: Vec<Tensor<1>> = scalars.into_iter().map(|t| t.detach().without_autodiff().reshape([1])).collect();
    read_f32(Tensor::cat(flat, 0)).into_iter().map(f64::from).collect()
}

/// Arithmetic precision of the heavy operations (`--precision`, `run.precision`).
///
/// Half precision follows PyTorch's autocast, as the reference runs (docs/TRAINING.md: "bf16
/// autocast for forward; losses in fp32; fp32 master weights"): the transformer blocks' matrix
/// products and attention run in f16 or bf16 (burn's flash-attention kernels accumulate in f32);
/// weights, optimizer state, embeddings, norms, residual streams, losses and reductions stay f32.
/// Only GPU devices take it: the CPU backend has no half-precision matrix kernels, so there it
/// would only convert back and forth and run slower.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// Everything in f32 (the default; the golden cases' precision).
    #[default]
    F32,
    /// Matrix products and attention in IEEE half precision (training scales the loss).
    F16,
    /// Matrix products and attention in bfloat16 (f32's range; no loss scaling needed).
    Bf16,
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "f16" | "fp16" | "float16" | "half" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            other => Err(format!("unknown precision '{other}' (expected f32, f16 or bf16)")),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        })
    }
}

impl Precision {
    /// The half type, or `None` for f32.
    pub fn half(self) -> Option<burn::tensor::FloatDType> {
        match self {
            Self::F32 => None,
            Self::F16 => Some(burn::tensor::FloatDType::F16),
            Self::Bf16 => Some(burn::tensor::FloatDType::BF16),
        }
    }
}

/// The autocast type of this process: 0 = off, 1 = f16, 2 = bf16.
static AUTOCAST: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Turns half-precision autocast on or off for work on `device` (for the whole process); `option`
/// names the setting in errors. Refuses half precision on the CPU and on a GPU whose driver
/// lacks the type.
pub fn set_precision(precision: Precision, device: &Device, option: &str) -> Result<(), String> {
    let code = match precision.half() {
        None => 0,
        Some(half) => {
            if is_cpu(device) {
                return Err(half_on_cpu(precision, option));
            }
            if !device.supports_dtype(half) {
                return Err(format!(
                    "{option} {precision}: this GPU's driver does not support {precision} arithmetic; use f32{}",
                    if precision == Precision::F16 { " or bf16" } else { " or f16" }
                ));
            }
            if precision == Precision::F16 { 1 } else { 2 }
        }
    };
    AUTOCAST.store(code, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// The precision [`set_precision`] put in force (f32 until it is called).
pub fn precision_in_force() -> Precision {
    match AUTOCAST.load(std::sync::atomic::Ordering::Relaxed) {
        0 => Precision::F32,
        1 => Precision::F16,
        _ => Precision::Bf16,
    }
}

/// The half type the heavy operations run in under autocast ([`set_precision`]), for an f32
/// tensor off the CPU; `None` where they run in f32.
pub fn autocast<const D: usize>(x: &Tensor<D>) -> Option<burn::tensor::FloatDType> {
    let half = match AUTOCAST.load(std::sync::atomic::Ordering::Relaxed) {
        0 => return None,
        1 => burn::tensor::FloatDType::F16,
        _ => burn::tensor::FloatDType::BF16,
    };
    (x.dtype() == burn::tensor::DType::F32 && !is_cpu(&x.device())).then_some(half)
}

/// Refuses half precision on the CPU before anything starts (`option` names the setting).
pub fn check_precision_device(precision: Precision, device: DeviceChoice, option: &str) -> Result<(), String> {
    if precision != Precision::F32 && device == DeviceChoice::Cpu {
        return Err(half_on_cpu(precision, option));
    }
    Ok(())
}

fn half_on_cpu(precision: Precision, option: &str) -> String {
    format!(
        "{option} {precision} needs a GPU device (vulkan, wgpu or cuda): the CPU backend has no half-precision matrix \
         kernels, so it would only run slower than f32"
    )
}

#[cfg(test)]
mod device_failure_tests {
    use super::*;

    /// The text of a failed read on an NVIDIA H200 through Vulkan (DiT^DH-S f32 training, batch 32).
    const H200_ERROR: &str = "An error happened during execution\nCaused by:\n  Several failures at once\n\
        Caused by:\n  The bytes were never written (failure #47750, still claiming 221 buffer(s))\n  skipped \
        `SliceAssignKernel`: it needed memory ManagedMemoryId { value: 62942 }, which carried the failure\n\
        Caused by:\n  An IO error happened\nCaused by:\n  can't allocate buffer of size: 3221225472\n\
        No backtrace available\nAsked at:\nNo backtrace available";

    #[test]
    fn a_device_failure_names_the_drivers_message_and_what_to_do() {
        let failure = DeviceFailure(innermost_cause(H200_ERROR));
        assert_eq!(failure.0, "can't allocate buffer of size: 3221225472");
        let text = failure.to_string();
        assert!(text.starts_with("the device failed: can't allocate buffer of size: 3221225472 (out of device memory"));
        assert!(text.contains("lower the batch size"), "{text}");
        assert_eq!(innermost_cause("lost device"), "lost device");
    }
}
