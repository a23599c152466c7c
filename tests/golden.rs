//! Golden parity against the reference PyTorch implementation.
//!
//! Runs every case in `$RECTOK_GOLDEN_DIR` (default: this crate's `tests/golden`), compares every
//! `out.*` tensor at the case's tolerance and prints one line per case with its max abs and rel
//! error (relative error over values with |want| ≥ 1e-3). A case the harness cannot run fails; nothing is skipped. Sizes, seeds and options come
//! from each case's JSON, so the same code runs the cases at other sizes and seeds.

mod golden_runner;

fn main() {
    let dir = std::env::var_os("RECTOK_GOLDEN_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden"));
    std::process::exit(golden_runner::run_dir(&dir));
}
