//! The embedded default end to end: `rectok demo --quick` trains, samples, evaluates and writes
//! its report (continuing after Ctrl-C); `rectok ablate --quick` runs two variants side by side
//! and writes the table.

mod common;
use common::{rectok, stderr, stdout, wait_for};
use std::path::Path;
use std::process::{Command, Stdio};

/// Every image `out/report.html` references exists (paths relative to `out`).
fn assert_report_images_exist(out: &Path) {
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for part in html.split("src=\"").skip(1) {
        let path = &part[..part.find('"').unwrap()];
        assert!(out.join(path).exists(), "{path} is referenced but missing");
    }
}

/// `rectok <command> --quick` refuses a folder (in `dir`) of other files and leaves it untouched.
fn assert_refuses_folder_of_other_files(dir: &Path, command: &str) {
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let o = rectok().args([command, "--quick", "--out"]).arg(&other).output().unwrap();
    let refusal = format!("not a `rectok {command}` run");
    assert!(!o.status.success() && stderr(&o).contains(&refusal), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(&other).unwrap().count(), 1, "the refused {command} wrote into the folder");
}

/// The quick demo, stopped by Ctrl-C during its tokenizer training and continued by running the
/// same command again, writes a report with real numbers; run once more, it reads the finished
/// report back. A folder in use, of another budget or of other files is refused.
#[cfg(unix)]
#[test]
fn quick_demo_continues_after_ctrl_c_and_writes_a_report_with_real_numbers() {
    let dir = tempfile::tempdir().unwrap();
    // A space and a quote in the path: the printed command that continues must be quoted.
    let out = dir.path().join("my demo's");
    let demo = || {
        let mut c = rectok();
        c.args(["demo", "--quick", "--out"]).arg(&out);
        c
    };
    let mut child = demo().stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let metrics = out.join("run/tokenizer/metrics.jsonl");
    let lines = || std::fs::read_to_string(&metrics).map(|t| t.lines().count()).unwrap_or(0);
    wait_for("the tokenizer's first logged steps", || lines() >= 2, &mut child);
    // A second demo on the folder in use is refused, naming the process that holds it.
    let o = demo().output().unwrap();
    let pid = format!("pid {}", child.id());
    assert!(!o.status.success() && stderr(&o).contains(&pid), "{}", stderr(&o));
    assert!(Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap().success());
    let o = child.wait_with_output().unwrap();
    let message = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{message}");
    assert!(message.contains("stopped by SIGINT") && message.contains("continue it with `rectok "), "{message}");
    // The printed command, pasted into a shell, names the same folder.
    let again = message.split("continue it with `").nth(1).and_then(|m| m.split('`').next()).unwrap();
    let words = Command::new("sh").arg("-c").arg(again.replacen("rectok", "printf '%s\\n'", 1)).output().unwrap();
    let expected = format!("demo\n--out\n{}\n--quick\n", out.display());
    assert_eq!(String::from_utf8_lossy(&words.stdout), expected, "{again}");
    assert!(out.join("run/tokenizer/checkpoints/latest").exists(), "no checkpoint saved: {message}");
    // The other budget is refused, pointing at the command that continues this one.
    let o = rectok().args(["demo", "--out"]).arg(&out).output().unwrap();
    assert!(!o.status.success() && stderr(&o).contains("of the other budget"), "{}", stderr(&o));

    // The same command continues: stage 1 resumes from its checkpoint (logged at info level).
    let o = demo().env("RUST_LOG", "info").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming"), "{}", stderr(&o));
    let printed = stdout(&o);
    assert!(printed.contains("continued the run stopped earlier"), "{printed}");
    assert!(printed.contains("reconstruction PSNR") && printed.contains("generation FD-effnet"), "{printed}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<table>") && html.contains("samples/step_"), "report without metrics or samples");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let r = &json["result"];
    let (before, after) = (r["untrained"]["psnr"].as_f64().unwrap(), r["trained"]["psnr"].as_f64().unwrap());
    eprintln!("quick demo: PSNR {before:.2} → {after:.2} dB; {r}");
    assert!(after > before + 1.0, "the tokenizer did not learn: {before} → {after} dB");
    // The untrained generator was measured by the first process, the trained one by the second.
    assert!(r["generation_fd"][0].as_f64().unwrap().is_finite());
    assert!(r["generation_fd"][1].as_f64().unwrap().is_finite());
    assert_report_images_exist(&out);
    // Once more: the finished run is read back, nothing is trained or written over.
    let written = std::fs::metadata(out.join("report.json")).unwrap().modified().unwrap();
    let o = demo().output().unwrap();
    assert!(o.status.success() && stdout(&o).contains("finished earlier"), "{}", stderr(&o));
    assert_eq!(std::fs::metadata(out.join("report.json")).unwrap().modified().unwrap(), written);
    // A folder of other files is never written into.
    assert_refuses_folder_of_other_files(dir.path(), "demo");
}

#[test]
fn quick_ablation_writes_the_table_and_reuses_finished_variants() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ablate");
    let o = rectok().args(["ablate", "--quick", "--only", "a-no,d-fsd", "--out"]).arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = std::fs::read_to_string(out.join("ablation.md")).unwrap();
    assert!(md.contains("(a) no semantic loss") && md.contains("(d) FSD + RAD"), "{md}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("ablation.json")).unwrap()).unwrap();
    assert_eq!(json["results"].as_array().unwrap().len(), 2);
    // --quick runs one seed: each metric's spread is over one run, into `seed-0/`.
    assert_eq!(json["seeds"], 1);
    assert_eq!(json["summary"][0]["psnr"]["n"], 1);
    assert!(json["summary"][0]["psnr"]["mean"].as_f64().unwrap() > 5.0);
    assert!(out.join("seed-0/a-no-semantic/result.json").exists());
    assert!(out.join("ablation.png").exists());
    // Every image the report and the JSON reference exists (paths from the ablation's folder).
    assert_report_images_exist(&out);
    let samples = json["results"][0]["runs"][0]["files"]["samples"].as_str().unwrap();
    assert!(samples.starts_with("seed-0/") && out.join(samples).exists(), "{samples}");
    // Run again: both variants are reused, nothing is retrained.
    let t = std::time::Instant::now();
    let o = rectok().args(["ablate", "--quick", "--only", "a-no,d-fsd", "--out"]).arg(&out).output().unwrap();
    assert!(o.status.success());
    assert!(t.elapsed().as_secs() < 20, "finished variants were retrained");
    let o = rectok().args(["ablate", "--only", "z", "--out"]).arg(&out).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("matches no variant"));
    // The other budget is refused (never a silent restart), and so is a folder of other files.
    // The refusal names the command line of the run there, which continues or reads it back.
    let o = rectok().args(["ablate", "--only", "a-no", "--out"]).arg(&out).output().unwrap();
    assert!(!o.status.success() && stderr(&o).contains("of the other budget (--quick)"), "{}", stderr(&o));
    assert!(stderr(&o).contains("--only 'a-no,d-fsd' --quick --seeds 1` continues it"), "{}", stderr(&o));
    assert!(out.join("seed-0/a-no-semantic/result.json").exists());
    assert_refuses_folder_of_other_files(dir.path(), "ablate");
}
