//! The `rectok` command line: one file per subcommand; this file only parses and dispatches.

mod bench;
mod bench_serve;
mod common;
mod convert;
mod decode;
mod demo;
mod encode;
mod eval;
mod generate;
mod latent_stats;
mod probe;
mod reconstruct;
mod serve;
mod teacher;
mod train;

use clap::{Parser, Subcommand};
// Written without `eprintln!`, which panics when stderr is closed.
use std::io::Write;

/// RecTok: a visual tokenizer for latent diffusion (CVPR 2026), in Rust on burn.
#[derive(Parser, Debug)]
#[command(name = "rectok", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace). `RUST_LOG` overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Largest image accepted, in pixels (width × height), checked from the file's header before
    /// decoding (Pillow's decompression-bomb limit by default).
    #[arg(long, global = true, value_name = "PIXELS", default_value_t = crate::data::images::DEFAULT_MAX_IMAGE_PIXELS,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_image_pixels: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Encode images into latents (one [C, H, W] tensor per image in a safetensors file).
    Encode(encode::Args),
    /// Decode latents from a safetensors file into PNG images.
    Decode(decode::Args),
    /// Encode and decode images, write the reconstructions and print PSNR / SSIM.
    Reconstruct(reconstruct::Args),
    /// Sample class-conditional images with DiT^DH and decode them with the tokenizer.
    Generate(generate::Args),
    /// Compute per-channel latent statistics of a tokenizer over a folder of images.
    #[command(name = "latent-stats", alias = "stats")]
    LatentStats(latent_stats::Args),
    /// Convert an official PyTorch checkpoint into a self-describing safetensors file.
    Convert(convert::Args),
    /// Teachers of flow semantic distillation.
    #[command(subcommand)]
    Teacher(teacher::Which),
    /// Evaluation protocols (tokenizer, generator, probe) and feature statistics / distances.
    #[command(subcommand)]
    Eval(eval::Which),
    /// Linear probe of a tokenizer's latents (the same as `rectok eval probe`).
    #[command(hide = true)]
    Probe(probe::Args),
    /// Train a tokenizer (stage 1 or 2) or a generator from a TOML recipe.
    #[command(subcommand)]
    Train(train::Which),
    /// Time the networks with random weights.
    #[command(subcommand)]
    Bench(bench::Which),
    /// The whole pipeline on built-in data in minutes: train a tokenizer and a generator,
    /// sample, evaluate, write report.html.
    Demo(demo::DemoArgs),
    /// The paper's ablations in miniature (semantic loss variants, latent channels).
    Ablate(demo::AblateArgs),
    /// Serve the tokenizer and generator over HTTP (API, metrics, web page); by default the
    /// models of a finished `rectok demo`.
    Serve(serve::Args),
}

fn init_logging(verbose: u8, quiet: bool) {
    // In a multi-process job rank 0 tells the story; the others only warn (or log with -v).
    let other_rank = !crate::dist::world().is_root() && verbose == 0;
    let default = if quiet {
        "error"
    } else if other_rank {
        "warn"
    } else {
        ["info", "debug", "trace"][usize::from(verbose.min(2))]
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        // A log line that cannot be written is dropped, never a panic (stderr closed).
        .log_internal_errors(false)
        .try_init();
}

/// Parses the command line, runs the command and returns the process exit code: 0 on success,
/// 1 on an error (printed as one line), 2 on a usage error.
pub fn run() -> i32 {
    let world = crate::dist::world();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Every process parses the same command line: rank 0 alone says what is wrong.
            if world.is_root() {
                let _ = e.print();
            }
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    init_logging(cli.verbose, cli.quiet);
    crate::data::images::set_max_image_pixels(cli.max_image_pixels);
    if world.is_multi() && !cli.command.runs_across_processes() {
        if world.is_root() {
            print_line(
                "error: this command runs in one process; under mpirun / srun rectok runs `train tokenizer`, \
                 `train generator`, `eval tokenizer`, `eval generator` and `latent-stats` (docs/DISTRIBUTED.md)",
            );
        }
        return 2;
    }
    // A GPU device failure unwinds out of a read-back (`device::read_back`); it becomes this
    // command's error. Any other panic is a bug and keeps its message and backtrace.
    let command = cli.command;
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dispatch(command))).unwrap_or_else(|payload| {
            match payload.downcast::<crate::device::DeviceFailure>() {
                Ok(failure) => Err(anyhow::Error::new(*failure)),
                Err(other) => std::panic::resume_unwind(other),
            }
        });
    let Err(e) = result else { return 0 };
    // In a job, rank 0 reports a stop; each rank reports its own error, named.
    let who = if world.is_multi() { format!("rank {}: ", world.rank()) } else { String::new() };
    if let Some(stop) = e.downcast_ref::<crate::signals::Interrupted>() {
        if world.is_root() {
            print_line(&stop.to_string());
        }
        return stop.exit_code();
    }
    print_line(&format!("error: {who}{e:#}"));
    1
}

/// Runs one parsed command.
fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Encode(a) => encode::run(a),
        Command::Decode(a) => decode::run(a),
        Command::Reconstruct(a) => reconstruct::run(a),
        Command::Generate(a) => generate::run(a),
        Command::LatentStats(a) => latent_stats::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Teacher(w) => teacher::run(w),
        Command::Eval(w) => eval::run(w),
        Command::Probe(a) => probe::run(a),
        Command::Train(w) => train::run(w),
        Command::Bench(w) => bench::run(w),
        Command::Demo(a) => demo::run_demo_command(a),
        Command::Ablate(a) => demo::run_ablate_command(a),
        Command::Serve(a) => serve::run(a),
    }
}

/// Writes `line` and a newline to stderr in one write, so that the lines of the processes of a
/// job, which share one stderr, never interleave; never panics (stderr may be closed).
fn print_line(line: &str) {
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

impl Command {
    /// Whether the command splits its work across the processes of an MPI job.
    fn runs_across_processes(&self) -> bool {
        matches!(
            self,
            Command::Train(_)
                | Command::LatentStats(_)
                | Command::Eval(eval::Which::Tokenizer(_) | eval::Which::Generator(_))
                | Command::Bench(bench::Which::Allreduce(_))
        )
    }
}
