//! Training and evaluation across processes under Open MPI's `mpirun` (built with the `mpi`
//! feature; `.ci/run` installs Open MPI): two processes train as one, a stopped job resumes
//! exactly on two processes and correctly on one, a failing process ends the job within seconds,
//! and sharded evaluations equal one process's.
#![cfg(feature = "mpi")]

mod common;

use common::{losses, rectok, stderr, stdout};
use rectok::weights::{CheckpointEntry, StateDict};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// `mpirun -np N rectok …` on this machine: oversubscribed (CI has 2 cores), unbound, allowed as
/// root (CI containers), with quiet logs.
fn mpirun(np: usize) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--oversubscribe", "--bind-to", "none", "-np", &np.to_string()])
        .arg(env!("CARGO_BIN_EXE_rectok"))
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        // Containers often forbid the cross-process memory reads of Open MPI's single-copy
        // shared-memory transfers; plain copies work everywhere.
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    c
}

fn ok(o: Output, what: &str) -> Output {
    assert!(o.status.success(), "{what} failed:\n{}\n{}", stdout(&o), stderr(&o));
    o
}

/// A tiny tokenizer run without the GAN (whose BatchNorm keeps per-process statistics, as
/// DDP's, and so differs between one and two processes), 8 images per micro-batch, 2 micro-batches
/// per step, one CPU thread per process.
const TOKENIZER: &[&str] = &[
    "train",
    "tokenizer",
    "--config",
    "tiny",
    "--set",
    "data.source=\"procedural:256\"",
    "--set",
    "optim.batch_size=8",
    "--set",
    "optim.accum_steps=2",
    "--set",
    "loss.gan_weight=0",
    "--set",
    "teacher.resolution=32",
    "--set",
    "run.log_every=1",
    "--set",
    "run.sample_every=0",
    "--set",
    "run.threads=1",
    "--set",
    "run.data_parallel=1",
];

fn with(base: &[&str], out: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = base.iter().map(|s| s.to_string()).collect();
    v.extend(["--out".to_string(), out.display().to_string()]);
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// Every logged value of two runs' records (timings aside) within `tol` relative.
fn assert_same_losses(a: &Path, b: &Path, tol: f64) {
    let (la, lb) = (losses(a), losses(b));
    assert_eq!(la.len(), lb.len(), "{} and {} logged different steps", a.display(), b.display());
    for (ra, rb) in la.iter().zip(&lb) {
        for ((ka, va), (kb, vb)) in ra.iter().zip(rb) {
            assert_eq!(ka, kb);
            let (x, y): (f64, f64) = (va.parse().unwrap_or(f64::NAN), vb.parse().unwrap_or(f64::NAN));
            if x.is_nan() {
                assert_eq!(va, vb, "{ka}");
                continue;
            }
            let rel = (x - y).abs() / x.abs().max(1e-12);
            assert!(rel <= tol, "{ka} at {:?}: {x} vs {y} ({rel:e} relative)", ra.first());
        }
    }
}

/// The largest relative difference (by tensor norm) between two safetensors files' tensors.
fn max_weight_difference(a: &Path, b: &Path) -> f64 {
    let (sa, sb) =
        (StateDict::open(a, CheckpointEntry::Auto).unwrap(), StateDict::open(b, CheckpointEntry::Auto).unwrap());
    let mut keys: Vec<String> = sa.keys_with_prefix("").map(|k| k.to_string()).collect();
    keys.sort();
    assert!(!keys.is_empty());
    keys.iter()
        .map(|k| {
            let (x, y) = (sa.read_f32(k).unwrap(), sb.read_f32(k).unwrap());
            let diff: f64 = x.iter().zip(&y).map(|(p, q)| f64::from(p - q).powi(2)).sum::<f64>().sqrt();
            let norm: f64 = x.iter().map(|p| f64::from(*p).powi(2)).sum::<f64>().sqrt();
            diff / norm.max(1e-12)
        })
        .fold(0.0, f64::max)
}

#[test]
fn two_processes_train_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let steps = ["--set", "run.max_steps=4"];
    ok(rectok().args(with(TOKENIZER, &one, &steps)).output().unwrap(), "one process");
    let o = ok(mpirun(2).args(with(TOKENIZER, &two, &steps)).output().unwrap(), "two processes");
    // Rank 0 alone reports and writes.
    assert_eq!(stdout(&o).matches("trained 4 steps").count(), 1, "{}", stdout(&o));
    assert_same_losses(&one, &two, 1e-5);
    for file in ["model.safetensors", "ema.safetensors"] {
        let d = max_weight_difference(
            &one.join("checkpoints/step_00000004").join(file),
            &two.join("checkpoints/step_00000004").join(file),
        );
        assert!(d <= 1e-5, "{file}: weights differ by {d:e} after 4 steps");
        println!("tokenizer {file} after 4 steps: 1 vs 2 processes differ by {d:.2e} (relative)");
    }

    // The generator, with its latent statistics and latent cache built across the processes.
    let generator = |out: &Path| -> Vec<String> {
        let mut v = vec![
            "train".to_string(),
            "generator".into(),
            "--config".into(),
            "ditdh-tiny".into(),
            "--tokenizer".into(),
            one.join("tokenizer.safetensors").display().to_string(),
            "--cache".into(),
            "cache".into(),
            "--out".into(),
            out.display().to_string(),
        ];
        for s in [
            "data.source=\"procedural:200\"",
            "optim.batch_size=8",
            "optim.accum_steps=2",
            "run.max_steps=4",
            "run.log_every=1",
            "run.sample_every=0",
            "run.fd_images=0",
            "run.threads=1",
            "run.data_parallel=1",
        ] {
            v.extend(["--set".to_string(), s.to_string()]);
        }
        v
    };
    let (g1, g2) = (dir.path().join("g1"), dir.path().join("g2"));
    ok(rectok().args(generator(&g1)).output().unwrap(), "one-process generator");
    ok(mpirun(2).args(generator(&g2)).output().unwrap(), "two-process generator");
    assert_eq!(
        std::fs::read(g1.join("latent_stats.safetensors")).unwrap(),
        std::fs::read(g2.join("latent_stats.safetensors")).unwrap(),
        "latent statistics differ"
    );
    assert_eq!(
        std::fs::read(g1.join("cache/moments.f32")).unwrap(),
        std::fs::read(g2.join("cache/moments.f32")).unwrap(),
        "latent caches differ"
    );
    assert_same_losses(&g1, &g2, 1e-5);
    let d = max_weight_difference(
        &g1.join("checkpoints/step_00000004/model.safetensors"),
        &g2.join("checkpoints/step_00000004/model.safetensors"),
    );
    assert!(d <= 1e-5, "generator weights differ by {d:e} after 4 steps");
    println!("generator weights after 4 steps: 1 vs 2 processes differ by {d:.2e} (relative)");

    // A global micro-batch smaller than the job is refused, by name.
    let o = mpirun(2).args(with(TOKENIZER, &dir.path().join("small"), &["--set", "optim.batch_size=1"])).output();
    let o = o.unwrap();
    assert!(!o.status.success() && stderr(&o).contains("optim.batch_size = 1"), "{}", stderr(&o));
    // So is a command that runs in one process.
    let out = dir.path().join("decoded");
    let mut args = vec!["decode", "--tokenizer", "t.safetensors", "--input", "l.safetensors", "--output"];
    args.push(out.to_str().unwrap());
    let o = mpirun(2).args(args).output().unwrap();
    assert!(!o.status.success() && stderr(&o).contains("runs in one process"), "{}", stderr(&o));
    assert!(!out.exists());
    // An error every process meets is said once, by rank 0, as a whole line; so is a usage error.
    assert_eq!(stderr(&o).matches("error:").count(), 1, "{}", stderr(&o));
    assert!(stderr(&o).lines().any(|l| l.starts_with("error: this command runs in one process")), "{}", stderr(&o));
    let o = mpirun(2).args(["latent-stats", "--no-such-option"]).output().unwrap();
    assert!(!o.status.success());
    assert_eq!(stderr(&o).matches("unexpected argument").count(), 1, "{}", stderr(&o));
}

/// The processes `mpirun` (pid `launcher`) started, by rank.
fn ranks_of(launcher: u32) -> Vec<(usize, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The parent pid is the second field after the parenthesised command name.
        let ppid = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(1)).and_then(|p| p.parse().ok());
        if ppid != Some(launcher) {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        let rank = environ
            .split(|&b| b == 0)
            .filter_map(|kv| std::str::from_utf8(kv).ok())
            .find_map(|kv| kv.strip_prefix("OMPI_COMM_WORLD_RANK="))
            .and_then(|r| r.parse().ok());
        if let Some(rank) = rank {
            found.push((rank, pid));
        }
    }
    found.sort();
    found
}

fn wait_until(what: &str, child: &mut Child, mut ready: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ready() {
        assert!(t0.elapsed() < Duration::from_secs(300), "{what} never happened");
        assert!(child.try_wait().unwrap().is_none(), "the job ended before {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits for `child` at most `limit`; returns its output and how long it took.
fn wait_at_most(child: Child, limit: Duration) -> (Output, Duration) {
    let t0 = Instant::now();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(o) => (o.unwrap(), t0.elapsed()),
        Err(_) => {
            // Do not leave a hung job behind.
            let _ = Command::new("pkill").args(["-KILL", "-P", &pid.to_string()]).status();
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("the job did not end within {limit:?}");
        }
    }
}

/// `mpirun -np 2 rectok args…` started, its output captured.
fn spawn_job(args: &[String]) -> Child {
    mpirun(2).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

/// A two-process tokenizer job into `out`, running once its first checkpoint exists.
fn running_until_first_checkpoint(out: &Path, extra: &[&str]) -> Child {
    let mut job = spawn_job(&with(TOKENIZER, out, extra));
    wait_until("the first checkpoint", &mut job, || out.join("checkpoints/latest").exists());
    job
}

fn copy_dir(from: &Path, to: &Path) {
    let s = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(s.success());
}

#[test]
fn a_stopped_job_resumes_exactly_and_a_failing_process_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str| -> PathBuf { dir.path().join(name) };
    let schedule = ["--set", "run.max_steps=12", "--set", "run.checkpoint_every=2", "--set", "run.keep_checkpoints=20"];
    // References: the uninterrupted job on two processes and on one.
    ok(mpirun(2).args(with(TOKENIZER, &run("full2"), &schedule)).output().unwrap(), "reference job");
    ok(rectok().args(with(TOKENIZER, &run("full1"), &schedule)).output().unwrap(), "reference process");
    assert_eq!(losses(&run("full2")).len(), 12);

    // SIGUSR1 to mpirun, which passes it on to every process: they agree on a step, rank 0 saves
    // it, and all stop.
    let stopped = run("stopped");
    let job = running_until_first_checkpoint(&stopped, &schedule);
    let s = Command::new("kill").args(["-USR1", &job.id().to_string()]).status().unwrap();
    assert!(s.success());
    let (o, took) = wait_at_most(job, Duration::from_secs(60));
    assert!(!o.status.success(), "a stopped job reports it");
    assert!(stderr(&o).contains("stopped by SIGUSR1 after step"), "{}", stderr(&o));
    let done = losses(&stopped).len();
    assert!(done < 12, "stopped after {done} of 12 steps");
    println!("SIGUSR1: the job stopped with a checkpoint after step {done} in {took:.1?}");

    // Resumed on two processes: the uninterrupted job, bit for bit.
    let copy = run("stopped-copy");
    copy_dir(&stopped, &copy);
    let resume = |out: &Path| {
        vec!["train".to_string(), "tokenizer".into(), "--resume".into(), "--out".into(), out.display().to_string()]
    };
    ok(mpirun(2).args(resume(&stopped)).output().unwrap(), "resume on two processes");
    assert_eq!(losses(&stopped), losses(&run("full2")), "resuming on two processes changed the trajectory");
    // Resumed on one process: the same global batch, so the one-process run to 1e-5.
    ok(rectok().args(resume(&copy)).output().unwrap(), "resume on one process");
    assert_same_losses(&copy, &run("full1"), 1e-5);
    assert_same_losses(&copy, &run("full2"), 1e-5);

    // A process killed outright (SIGKILL) ends the whole job within seconds; the last
    // checkpoint then resumes it exactly.
    let killed = run("killed");
    let job = running_until_first_checkpoint(&killed, &schedule);
    let ranks = ranks_of(job.id());
    assert_eq!(ranks.len(), 2, "the job's processes: {ranks:?}");
    let t0 = Instant::now();
    let s = Command::new("kill").args(["-KILL", &ranks[1].1.to_string()]).status().unwrap();
    assert!(s.success());
    let (o, _) = wait_at_most(job, Duration::from_secs(30));
    let took = t0.elapsed();
    assert!(!o.status.success());
    assert!(took < Duration::from_secs(15), "the job took {took:?} to end after a process died");
    println!("rank 1 killed: the job ended in {took:.1?}");
    ok(mpirun(2).args(resume(&killed)).output().unwrap(), "resume after a killed process");
    assert_eq!(losses(&killed), losses(&run("full2")), "resuming after a kill changed the trajectory");

    // A process whose work fails (an unreadable image in its part of a batch) fails the step on
    // every process: rank 0 saves the state before it, the error names the file, and the job
    // ends within seconds.
    let data = run("data");
    for class in 0..2 {
        let folder = data.join(format!("class{class}"));
        std::fs::create_dir_all(&folder).unwrap();
        for i in 0..8 {
            let (img, _) = rectok::data::Procedural::held_out(class, 4).render(i, 32);
            img.save(folder.join(format!("{i}.png"))).unwrap();
        }
    }
    std::fs::write(data.join("class1/broken.png"), b"not a png").unwrap();
    let failing = run("failing");
    let t0 = Instant::now();
    let job =
        spawn_job(&with(TOKENIZER, &failing, &["--data", data.to_str().unwrap(), "--set", "optim.accum_steps=1"]));
    let (o, _) = wait_at_most(job, Duration::from_secs(120));
    let took = t0.elapsed();
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("broken.png"), "{e}");
    assert!(e.contains("the state before it is saved"), "{e}");
    assert!(failing.join("checkpoints/latest").exists(), "rank 0 saved no checkpoint");
    println!("an unreadable image on one process: the job stopped in {took:.1?} with a checkpoint");
}

#[test]
fn sharded_evaluation_equals_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let tok_run = dir.path().join("tok");
    ok(rectok().args(with(TOKENIZER, &tok_run, &["--set", "run.max_steps=2"])).output().unwrap(), "tokenizer");
    let tokenizer = tok_run.join("tokenizer.safetensors");
    let images = dir.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    for i in 0..21 {
        let (img, _) = rectok::data::Procedural::held_out(0, 4).render(i, 32);
        img.save(images.join(format!("{i:02}.png"))).unwrap();
    }
    // Run with 1 and with 2 processes; their JSON results (or files) must be equal.
    let both = |args: &dyn Fn(&Path) -> Vec<String>, out: &str| -> (Vec<u8>, Vec<u8>) {
        let (a, b) = (dir.path().join(format!("{out}-1")), dir.path().join(format!("{out}-2")));
        ok(rectok().args(args(&a)).output().unwrap(), out);
        let o = ok(mpirun(2).args(args(&b)).output().unwrap(), out);
        assert!(stdout(&o).lines().count() > 0);
        (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap())
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();

    // latent-stats: 21 images in batches of 4 (6 batches, the last short).
    let (a, b) = both(
        &|out| {
            let mut v = s(&["latent-stats", "--batch-size", "4", "--tokenizer"]);
            v.extend([tokenizer.display().to_string(), "--data".into(), images.display().to_string()]);
            v.extend(["--output".into(), out.display().to_string()]);
            v
        },
        "stats.safetensors",
    );
    assert_eq!(a, b, "latent statistics differ");

    // eval tokenizer: PSNR, SSIM, FD-effnet, IS and KID against the originals.
    let results = |bytes: &[u8]| serde_json::from_slice::<serde_json::Value>(bytes).unwrap()["results"].clone();
    let (a, b) = both(
        &|out| {
            let mut v = s(&["eval", "tokenizer", "--data", "procedural", "--limit", "23", "--batch-size", "5"]);
            v.extend(s(&["--extractor", "effnet"]));
            v.extend(["--kid".into(), "--tokenizer".into(), tokenizer.display().to_string()]);
            v.extend(["--json".into(), out.display().to_string()]);
            v
        },
        "tokenizer.json",
    );
    assert_eq!(results(&a), results(&b), "tokenizer evaluations differ");
    assert_eq!(results(&a)["images"], 23);

    // eval generator: class-balanced samples, FD-effnet against reference data, IS, class check
    // (a one-step generator of the procedural classes, with its tokenizer and statistics).
    let gen_run = dir.path().join("gen");
    let mut v = s(&["train", "generator", "--config", "ditdh-tiny", "--tokenizer"]);
    v.extend([tokenizer.display().to_string(), "--out".into(), gen_run.display().to_string()]);
    for o in ["data.source=\"procedural:200\"", "optim.batch_size=8", "optim.accum_steps=1", "run.max_steps=1"] {
        v.extend(["--set".to_string(), o.to_string()]);
    }
    v.extend(s(&["--set", "run.sample_every=0", "--set", "run.fd_images=0"]));
    ok(rectok().args(v).output().unwrap(), "generator");
    let (generator, tokenizer) = (gen_run.join("generator.safetensors"), gen_run.join("tokenizer.safetensors"));
    let (a, b) = both(
        &|out| {
            let mut v = s(&["eval", "generator", "--num-samples", "22", "--batch-size", "4", "--steps", "3"]);
            v.extend(s(&["--extractor", "effnet", "--ref-data", "procedural:20", "--class-check", "procedural:40"]));
            v.extend(["--tokenizer".into(), tokenizer.display().to_string()]);
            v.extend(["--generator".into(), generator.display().to_string()]);
            v.extend(["--json".into(), out.display().to_string()]);
            v
        },
        "generator.json",
    );
    let (ja, jb): (serde_json::Value, serde_json::Value) =
        (serde_json::from_slice(&a).unwrap(), serde_json::from_slice(&b).unwrap());
    assert_eq!(ja["results"], jb["results"], "generator evaluations differ");
    assert_eq!(ja["class_accuracy"], jb["class_accuracy"], "class checks differ");
    assert_eq!(ja["results"]["samples"], 22);
}
