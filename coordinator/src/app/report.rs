//! Files a run leaves behind besides the model: the per-epoch metrics CSV
//! and the accuracy plot.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use common::progress::EpochReport;
use plotters::prelude::*;

use super::{AppError, AppResult};

/// The CSV columns, in order.
/// `training_cost`, `training_accuracy` and `validation_cost` are empty when
/// not monitored (`--monitor`); `eta` is the rate the epoch trained at.
pub const CSV_HEADER: &str = "epoch,test_accuracy,validation_accuracy,training_cost,seconds,samples_per_sec,step_p50_ms,step_p99_ms,compute_p50_ms,codec_p50_ms,transport_p50_ms,reduce_p50_ms,workers,recomputed,training_accuracy,validation_cost,eta,backups";

/// A metrics file being written, one row per epoch, flushed after each.
pub struct MetricsCsv {
    path: PathBuf,
    out: BufWriter<File>,
}

impl MetricsCsv {
    /// Creates (or truncates) `path` and writes the header.
    ///
    /// # Errors
    /// If the file cannot be created.
    pub fn create(path: PathBuf) -> AppResult<Self> {
        let file = File::create(&path).map_err(AppError::write(&path))?;
        let mut out = BufWriter::new(file);
        writeln!(out, "{CSV_HEADER}")
            .and_then(|()| out.flush())
            .map_err(AppError::write(&path))?;
        Ok(MetricsCsv { path, out })
    }

    /// Appends the row of `r`.
    ///
    /// # Errors
    /// If writing fails.
    pub fn append(&mut self, r: &EpochReport) -> AppResult<()> {
        writeln!(self.out, "{}", csv_row(r))
            .and_then(|()| self.out.flush())
            .map_err(AppError::write(&self.path))
    }
}

/// One CSV row (see [`CSV_HEADER`]); times in milliseconds, accuracy in percent.
pub fn csv_row(r: &EpochReport) -> String {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let opt = |v: Option<f64>, digits: usize| v.map_or(String::new(), |v| format!("{v:.digits$}"));
    let s = &r.step_times;
    format!(
        "{},{:.2},{:.2},{},{:.3},{:.0},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{},{},{},{},{},{}",
        r.epoch,
        r.test_accuracy(),
        r.validation_accuracy(),
        opt(r.training_cost, 6),
        r.train_time.as_secs_f64(),
        r.samples_per_sec(),
        ms(s.p50),
        ms(s.p99),
        ms(s.compute_p50),
        ms(s.codec_p50),
        ms(s.transport_p50),
        ms(s.reduce_p50),
        r.workers,
        r.recomputed,
        opt(r.training_accuracy(), 2),
        opt(r.validation_cost, 6),
        r.eta,
        r.backups
    )
}

/// Registers the embedded DejaVu Sans as plotters' "sans-serif", once: the
/// plot needs no system fonts.
fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .is_err()
        {
            tracing::warn!("the embedded font did not load; the plot will have no text");
        }
    });
}

/// Draws test and validation accuracy per epoch into a PNG at `path`
/// (written to a temporary file, then renamed over `path`, so a viewer never
/// sees half a file while the run rewrites it each epoch).
///
/// # Errors
/// If there is nothing to draw, drawing fails or the file cannot be written.
pub fn plot_accuracy(path: &Path, reports: &[EpochReport]) -> AppResult<()> {
    let Some(r) = reports.first() else {
        return Err(AppError::Plot("no epoch to plot".into()));
    };
    let curve = |label: String, value: fn(&EpochReport) -> f64| -> Curve {
        (label, reports.iter().map(|r| (r.epoch, value(r))).collect())
    };
    let curves = [
        curve(
            format!("test ({} images)", r.test_total),
            EpochReport::test_accuracy,
        ),
        curve(
            format!("validation ({} images)", r.validation_total),
            EpochReport::validation_accuracy,
        ),
    ];
    let lowest = curves
        .iter()
        .flat_map(|c| c.1.iter().map(|p| p.1))
        .fold(100.0_f64, f64::min);
    // A floor at a round number below the lowest point, so the curves fill the plot.
    let floor = ((lowest - 1.0) / 5.0).floor().max(0.0) * 5.0;
    let tmp = path.with_extension("png.tmp");
    let chart = Chart {
        title: "Accuracy per epoch",
        y_desc: "accuracy (%)",
        size: (900, 560),
    };
    draw(&tmp, &chart, &curves, floor)?;
    std::fs::rename(&tmp, path).map_err(AppError::write(path))
}

fn draw_error(e: impl std::fmt::Display) -> AppError {
    AppError::Plot(e.to_string())
}

/// A PNG that could not be encoded or written to `path`.
fn image_write_error(path: &Path, e: image::ImageError) -> AppError {
    match e {
        image::ImageError::IoError(source) => AppError::Write {
            path: path.to_path_buf(),
            source,
        },
        other => AppError::Plot(other.to_string()),
    }
}

/// One curve of [`plot_runs`]: a label and `(epoch, accuracy %)` points.
pub type Curve = (String, Vec<(usize, f64)>);

/// Reads `column` (e.g. `test_accuracy`) per epoch from a `--metrics` CSV.
///
/// # Errors
/// If the file cannot be read or lacks the column.
pub fn read_metrics_column(path: &Path, column: &str) -> AppResult<Vec<(usize, f64)>> {
    let bytes = common::regular_file::read(path, common::regular_file::MAX_SMALL_FILE)
        .map_err(AppError::read(path))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        AppError::read(path)(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    })?;
    let bad = |why: String| AppError::Metrics {
        path: path.to_path_buf(),
        why,
    };
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let col = header
        .iter()
        .position(|h| *h == column)
        .ok_or_else(|| bad(format!("no column {column:?}")))?;
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let fields: Vec<&str> = l.split(',').collect();
            let parse = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
            match (parse(0), parse(col)) {
                (Some(e), Some(v)) => Ok((e as usize, v)),
                _ => Err(bad(format!("bad row {l:?}"))),
            }
        })
        .collect()
}

/// Draws several runs' accuracy per epoch on one chart (PNG at `path`),
/// `floor` the lowest accuracy shown.
///
/// # Errors
/// If there is nothing to draw or the file cannot be written.
pub fn plot_runs(
    path: &Path,
    title: &str,
    y_desc: &str,
    curves: &[Curve],
    floor: f64,
) -> AppResult<()> {
    if curves.iter().all(|c| c.1.is_empty()) {
        return Err(AppError::Plot("no run to plot".into()));
    }
    let chart = Chart {
        title,
        y_desc,
        size: (1000, 620),
    };
    draw(path, &chart, curves, floor)
}

/// What tells one chart from another.
struct Chart<'a> {
    title: &'a str,
    y_desc: &'a str,
    size: (u32, u32),
}

/// The one chart both plots draw: `curves` per epoch (points marked),
/// `floor..100` on the y axis, a legend, written as a PNG to `path`.
fn draw(path: &Path, chart: &Chart<'_>, curves: &[Curve], floor: f64) -> AppResult<()> {
    let Chart {
        title,
        y_desc,
        size: (width, height),
    } = *chart;
    register_font();
    let palette = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    let epochs = || curves.iter().flat_map(|c| c.1.iter().map(|p| p.0 as i32));
    let first = epochs().min().unwrap_or(0);
    let last = epochs().max().unwrap_or(1).max(first + 1);
    let mut pixels = vec![0u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 24))
            .margin(16)
            .x_label_area_size(46)
            .y_label_area_size(60)
            .build_cartesian_2d(first..last, floor..100.0)
            .map_err(draw_error)?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc(y_desc)
            .x_labels(((last - first + 1) as usize).min(16))
            .y_label_formatter(&|y| format!("{y:.1}"))
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18))
            .draw()
            .map_err(draw_error)?;
        for (i, (label, points)) in curves.iter().enumerate() {
            let color = palette[i % palette.len()];
            let points: Vec<(i32, f64)> = points
                .iter()
                .map(|&(e, v)| (e as i32, v.max(floor)))
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(draw_error)?
                .label(label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
                });
            chart
                .draw_series(
                    points
                        .into_iter()
                        .map(|p| Circle::new(p, 3, color.filled())),
                )
                .map_err(draw_error)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .draw()
            .map_err(draw_error)?;
        root.present().map_err(draw_error)?;
    }
    image::save_buffer_with_format(
        path,
        &pixels,
        width,
        height,
        image::ColorType::Rgb8,
        image::ImageFormat::Png,
    )
    .map_err(|e| image_write_error(path, e))
}
