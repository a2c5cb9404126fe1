//! PNG and SVG plots: the latency percentile curve and the rate over time.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::stats::RatePoint;
use crate::Error;

const SIZE: (u32, u32) = (1024, 640);

/// Writes `latency.png`, `latency.svg`, `rate.png` and `rate.svg` into `dir`.
pub fn write_plots(
    dir: &Path,
    title: &str,
    latency_us: &Histogram<u64>,
    timeline: &[RatePoint],
) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let curve = percentile_curve(latency_us);
    let lat_png = dir.join("latency.png");
    let lat_svg = dir.join("latency.svg");
    let rate_png = dir.join("rate.png");
    let rate_svg = dir.join("rate.svg");
    draw_latency(
        BitMapBackend::new(&lat_png, SIZE).into_drawing_area(),
        title,
        &curve,
    )
    .map_err(|e| plot_error(&lat_png, e))?;
    draw_latency(
        SVGBackend::new(&lat_svg, SIZE).into_drawing_area(),
        title,
        &curve,
    )
    .map_err(|e| plot_error(&lat_svg, e))?;
    draw_rate(
        BitMapBackend::new(&rate_png, SIZE).into_drawing_area(),
        title,
        timeline,
    )
    .map_err(|e| plot_error(&rate_png, e))?;
    draw_rate(
        SVGBackend::new(&rate_svg, SIZE).into_drawing_area(),
        title,
        timeline,
    )
    .map_err(|e| plot_error(&rate_svg, e))?;
    Ok(())
}

fn plot_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io(format!("{}: plotting failed: {e}", path.display()))
}

/// Points `(1/(1-p), latency ms)` for the classic HdrHistogram percentile plot.
pub fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    h.iter_quantiles(5)
        .map(|s| {
            (
                s.quantile_iterated_to(),
                s.value_iterated_to() as f64 / 1000.0,
            )
        })
        .filter(|(q, _)| *q < 1.0)
        .map(|(q, ms)| (1.0 / (1.0 - q), ms))
        .collect()
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw_latency<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    curve: &[(f64, f64)],
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let x_max = curve.iter().map(|p| p.0).fold(10.0, f64::max).max(1000.0);
    let y_max = curve.iter().map(|p| p.1).fold(0.0, f64::max).max(0.001) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{title}: injection latency by percentile"),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((1.0..x_max).log_scale(), 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| format!("{:.4}%", 100.0 * (1.0 - 1.0 / x)))
        .draw()?;
    chart.draw_series(LineSeries::new(curve.iter().copied(), BLUE.stroke_width(2)))?;
    root.present()?;
    Ok(())
}

fn draw_rate<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    timeline: &[RatePoint],
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let x_max = timeline.iter().map(|p| p.at_secs).fold(1.0, f64::max);
    let y_max = timeline
        .iter()
        .map(|p| p.accepted_per_sec)
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{title}: accepted messages per second"),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("messages/s")
        .draw()?;
    chart.draw_series(LineSeries::new(
        timeline.iter().map(|p| (p.at_secs, p.accepted_per_sec)),
        RED.stroke_width(2),
    ))?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_four_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = crate::hdr::latency_histogram();
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        let timeline: Vec<RatePoint> = (1..=10)
            .map(|i| RatePoint {
                at_secs: i as f64,
                accepted_per_sec: 100.0 * i as f64,
            })
            .collect();
        write_plots(dir.path(), "test", &h, &timeline).unwrap();
        for f in ["latency.png", "latency.svg", "rate.png", "rate.svg"] {
            let meta = std::fs::metadata(dir.path().join(f)).unwrap();
            assert!(meta.len() > 1000, "{f} is {} bytes", meta.len());
        }
        let png = std::fs::read(dir.path().join("latency.png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        // Empty inputs still draw (axes only) rather than fail.
        let empty = dir.path().join("empty");
        write_plots(&empty, "empty", &crate::hdr::latency_histogram(), &[]).unwrap();
    }
}
