//! Watching a run: metrics appended to `metrics.jsonl`, reconstruction grids, the loss-curve plot
//! (the progress bar is [`crate::io::step_progress`]).

use crate::data::save_png;
use anyhow::{Context, Result};
use image::RgbImage;
use serde_json::{Map, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

/// `RUN/metrics.jsonl`: one JSON object per logged step.
pub struct MetricsLog {
    /// `None`: a log that keeps nothing (the other processes of a multi-process job).
    path: Option<PathBuf>,
}

impl MetricsLog {
    /// The log of run folder `run_dir`. On resume, lines after `keep_through_step` (written after
    /// the checkpoint being resumed, by the run that crashed) are dropped so the file tells one
    /// consistent story.
    pub fn open(run_dir: &Path, keep_through_step: Option<usize>) -> Result<Self> {
        let path = run_dir.join("metrics.jsonl");
        if let Some(last) = keep_through_step
            && path.exists()
        {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let kept: String = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<Value>(l)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_some_and(|s| s as usize <= last)
                })
                .map(|l| format!("{l}\n"))
                .collect();
            crate::io::write_atomic(&path, kept.as_bytes())?;
        }
        Ok(Self { path: Some(path) })
    }

    /// A log that keeps nothing (the processes other than rank 0 of a multi-process job).
    pub fn disabled() -> Self {
        Self { path: None }
    }

    /// Appends one record as one whole line in a single write (`O_APPEND`), so a killed process
    /// leaves at most one partial last line, which the next session drops.
    pub fn append(&self, record: &Map<String, Value>) -> Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let line = format!("{}\n", Value::Object(record.clone()));
        f.write_all(line.as_bytes()).with_context(|| format!("writing {}", path.display()))
    }

    /// Every record so far.
    pub fn read(&self) -> Result<Vec<Map<String, Value>>> {
        match &self.path {
            Some(path) => read_metrics(path),
            None => Ok(Vec::new()),
        }
    }
}

/// Reads a `metrics.jsonl` file.
pub fn read_metrics(path: &Path) -> Result<Vec<Map<String, Value>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| match serde_json::from_str::<Value>(l) {
            Ok(Value::Object(m)) => Ok(m),
            _ => anyhow::bail!("{}:{}: not a JSON object", path.display(), i + 1),
        })
        .collect()
}

/// Originals above their reconstructions, `columns` images per row pair, 2 px gaps.
pub fn reconstruction_grid(originals: &[RgbImage], reconstructions: &[RgbImage], columns: usize) -> RgbImage {
    let n = originals.len().min(reconstructions.len());
    let columns = columns.clamp(1, n.max(1));
    let rows = n.div_ceil(columns);
    let (w, h) = originals.first().map(|i| (i.width(), i.height())).unwrap_or((1, 1));
    let gap = 2;
    let width = columns as u32 * (w + gap) + gap;
    let height = rows as u32 * (2 * h + 2 * gap) + gap;
    let mut grid = RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));
    for i in 0..n {
        let (c, r) = ((i % columns) as u32, (i / columns) as u32);
        let x = gap + c * (w + gap);
        let y = gap + r * (2 * h + 2 * gap);
        image::imageops::replace(&mut grid, &originals[i], x as i64, y as i64);
        image::imageops::replace(&mut grid, &reconstructions[i], x as i64, (y + h + gap) as i64);
    }
    grid
}

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSansMono.ttf");

pub(crate) fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, FONT);
    });
}

/// The axes of one panel of [`plot_metrics`].
#[derive(Debug)]
struct PanelAxes {
    /// Step range: at least 2 whole steps wide (around a lone point), so step labels differ.
    x: (f64, f64),
    /// Labels on the step axis: no more than whole steps in the range.
    x_labels: usize,
    /// Value range, padded by 5 % of the span (of the value itself for a constant series).
    y: (f64, f64),
    /// Decimals of the value labels: enough to tell ticks a tenth of the range apart.
    digits: usize,
    /// Logarithmic value axis (positive values spanning more than a factor 20).
    log: bool,
}

impl PanelAxes {
    fn of(pts: &[(f64, f64)]) -> Self {
        let (first, last) = (pts.first().map_or(0.0, |p| p.0), pts.last().map_or(1.0, |p| p.0));
        let x = if last - first >= 2.0 {
            (first, last)
        } else {
            let start = ((first + last) / 2.0 - 1.0).floor();
            (start, start + 2.0)
        };
        let x_labels = ((x.1 - x.0).floor() as usize + 1).clamp(2, 6);
        let lo = pts.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let hi = pts.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        if lo > 0.0 && hi / lo > 20.0 {
            return Self { x, x_labels, y: (lo * 0.9, hi * 1.1), digits: 1, log: true };
        }
        let span = hi - lo;
        let pad = if span > 1e-9 * hi.abs().max(lo.abs()) { span * 0.05 } else { (hi.abs() * 0.05).max(1e-6) };
        let y = (lo - pad, hi + pad);
        let digits = (-((y.1 - y.0) / 10.0).log10().floor()).clamp(0.0, 8.0) as usize;
        Self { x, x_labels, y, digits, log: false }
    }
}

/// `y` with `digits` decimals, without the sign of a value that rounds to zero ("-0.000").
fn value_label(y: f64, digits: usize) -> String {
    let s = format!("{y:.digits$}");
    match s.strip_prefix('-') {
        Some(rest) if rest.chars().all(|c| c == '0' || c == '.') => rest.to_string(),
        _ => s,
    }
}

/// Plots the named metrics against `step` (log-scale y when all values are positive), one panel
/// per metric, into a PNG.
pub fn plot_metrics(records: &[Map<String, Value>], keys: &[&str], title: &str, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    register_font();
    let series: Vec<(&str, Vec<(f64, f64)>)> = keys
        .iter()
        .map(|k| {
            let pts = records
                .iter()
                .filter_map(|r| Some((r.get("step")?.as_f64()?, r.get(*k)?.as_f64()?)))
                .filter(|(_, v)| v.is_finite())
                .collect::<Vec<_>>();
            (*k, pts)
        })
        // Series that never leave 0 (a GAN term before its start epoch) say nothing.
        .filter(|(_, p)| p.iter().any(|&(_, v)| v != 0.0))
        .collect();
    if series.is_empty() {
        anyhow::bail!("nothing to plot: no records with {}", keys.join(", "));
    }
    let cols = 2usize.min(series.len());
    let rows = series.len().div_ceil(cols);
    let (width, height) = (520 * cols as u32, 60 + 300 * rows as u32);
    let mut pixels = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, ("sans-serif", 22))?;
        let panels = root.split_evenly((rows, cols));
        for ((name, pts), area) in series.iter().zip(panels.iter()) {
            let axes = PanelAxes::of(pts);
            let (x0, x1) = axes.x;
            // One panel; the y axis is logarithmic when the values span decades.
            macro_rules! panel {
                ($y:expr, $fmt:expr) => {{
                    let mut chart = ChartBuilder::on(area)
                        .caption(*name, ("sans-serif", 16))
                        .margin(8)
                        .x_label_area_size(28)
                        .y_label_area_size(60)
                        .build_cartesian_2d(x0..x1, $y)?;
                    chart
                        .configure_mesh()
                        .x_desc("step")
                        .x_labels(axes.x_labels)
                        .y_labels(6)
                        .x_label_formatter(&|x| format!("{x:.0}"))
                        .y_label_formatter($fmt)
                        .label_style(("sans-serif", 12))
                        .draw()?;
                    chart.draw_series(LineSeries::new(pts.iter().copied(), &BLUE))?;
                    // Markers, so that a series of one or a few points shows.
                    if pts.len() <= 20 {
                        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, BLUE.filled())))?;
                    }
                }};
            }
            let (lo, hi) = axes.y;
            if axes.log {
                panel!((lo..hi).log_scale(), &|y: &f64| format!("{y:.1e}"));
            } else {
                let digits = axes.digits;
                panel!(lo..hi, &|y: &f64| value_label(*y, digits));
            }
        }
        root.present()?;
    }
    save_png(&RgbImage::from_raw(width, height, pixels).expect("buffer size"), path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tick labels of evenly spaced positions on `range`, formatted as the plot formats them.
    fn labels(range: (f64, f64), n: usize, fmt: impl Fn(f64) -> String) -> Vec<String> {
        (0..n).map(|i| fmt(range.0 + (range.1 - range.0) * i as f64 / (n - 1) as f64)).collect()
    }

    fn all_distinct(v: &[String]) -> bool {
        v.iter().collect::<std::collections::BTreeSet<_>>().len() == v.len()
    }

    #[test]
    fn a_single_point_or_a_constant_series_gets_readable_axes() {
        // The demo's stage 1 logs val_psnr once; a constant loss; two close steps; a long run.
        for pts in [
            vec![(512.0, 21.64)],
            vec![(1.0, 0.5), (2.0, 0.5), (3.0, 0.5)],
            vec![(7.0, 1.0), (8.0, 1.001)],
            vec![(0.0, 3.0), (1536.0, 2.5), (3072.0, 2.4)],
            vec![(10.0, 0.0)],
        ] {
            let a = PanelAxes::of(&pts);
            assert!(a.x.1 - a.x.0 >= 2.0 && a.y.1 > a.y.0, "{pts:?}: {a:?}");
            assert!(pts.iter().all(|&(x, y)| (a.x.0..=a.x.1).contains(&x) && (a.y.0..=a.y.1).contains(&y)));
            let xs = labels(a.x, a.x_labels, |x| format!("{x:.0}"));
            assert!(all_distinct(&xs), "{pts:?}: step labels {xs:?}");
            let digits = a.digits;
            let ys = labels(a.y, 11, |y| value_label(y, digits));
            assert!(all_distinct(&ys), "{pts:?}: value labels {ys:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let mut record = Map::new();
        record.insert("step".into(), 512.into());
        record.insert("val_psnr".into(), 21.64.into());
        plot_metrics(&[record], &["val_psnr"], "one point", &dir.path().join("one.png")).unwrap();
        assert_eq!(
            (value_label(-1e-9, 3), value_label(-0.5, 1), value_label(2.25, 1)),
            ("0.000".into(), "-0.5".into(), "2.2".into())
        );
    }

    #[test]
    fn metrics_are_truncated_on_resume_and_plotted() {
        let dir = tempfile::tempdir().unwrap();
        let log = MetricsLog::open(dir.path(), None).unwrap();
        for step in 1..=6 {
            let mut m = Map::new();
            m.insert("step".into(), step.into());
            m.insert("loss".into(), (1.0 / step as f64).into());
            m.insert("psnr".into(), (10.0 + step as f64).into());
            log.append(&m).unwrap();
        }
        let log = MetricsLog::open(dir.path(), Some(4)).unwrap();
        let records = log.read().unwrap();
        assert_eq!(records.len(), 4);
        let png = dir.path().join("loss.png");
        plot_metrics(&records, &["loss", "psnr"], "test", &png).unwrap();
        let img = image::open(&png).unwrap();
        assert_eq!(img.width(), 1040);
        // Something besides the white background was drawn.
        assert!(img.to_rgb8().pixels().any(|p| p.0 != [255, 255, 255]));
    }

    #[test]
    fn grid_layout() {
        let a = vec![RgbImage::from_pixel(4, 4, image::Rgb([255, 0, 0])); 3];
        let b = vec![RgbImage::from_pixel(4, 4, image::Rgb([0, 0, 255])); 3];
        let g = reconstruction_grid(&a, &b, 2);
        assert_eq!((g.width(), g.height()), (2 * 6 + 2, 2 * 12 + 2));
        assert_eq!(g.get_pixel(2, 2).0, [255, 0, 0]);
        assert_eq!(g.get_pixel(2, 8).0, [0, 0, 255]);
    }
}
