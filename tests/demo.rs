//! The embedded default end to end: `rectok demo --quick` trains, samples, evaluates and writes
//! its report; `rectok ablate --quick` runs two variants side by side and writes the table.

mod common;
use common::rectok;

#[test]
fn quick_demo_writes_a_report_with_real_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let o = rectok().args(["demo", "--quick", "--out"]).arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("reconstruction PSNR") && stdout.contains("generation FD-effnet"), "{stdout}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<table>") && html.contains("samples/step_"), "report without metrics or samples");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let r = &json["result"];
    let (before, after) = (r["untrained"]["psnr"].as_f64().unwrap(), r["trained"]["psnr"].as_f64().unwrap());
    eprintln!("quick demo: PSNR {before:.2} → {after:.2} dB; {r}");
    assert!(after > before + 1.0, "the tokenizer did not learn: {before} → {after} dB");
    assert!(r["generation_fd"][1].as_f64().unwrap().is_finite());
    // Every image the report references exists.
    for part in html.split("src=\"").skip(1) {
        let path = &part[..part.find('"').unwrap()];
        assert!(out.join(path).exists(), "{path} is referenced but missing");
    }
    // The demo never overwrites a previous run.
    let o = rectok().args(["demo", "--quick", "--out"]).arg(&out).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("not empty"));
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
    assert!(out.join("ablation.png").exists() && out.join("report.html").exists());
    // Run again: both variants are reused, nothing is retrained.
    let t = std::time::Instant::now();
    let o = rectok().args(["ablate", "--quick", "--only", "a-no,d-fsd", "--out"]).arg(&out).output().unwrap();
    assert!(o.status.success());
    assert!(t.elapsed().as_secs() < 20, "finished variants were retrained");
    let o = rectok().args(["ablate", "--only", "z", "--out"]).arg(&out).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("matches no variant"));
}
