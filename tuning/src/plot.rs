//! The sweep's plot: median throughput and median injection p99 against
//! shard count, one line per layout (pinning, placement, commit window).

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use crate::sweep::PointSummary;

/// Pixel size of the SVG (two panels side by side).
const SIZE: (u32, u32) = (1400, 560);

/// A plot that could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("plot {path}: {message}")]
pub struct PlotError {
    /// The file being written.
    pub path: String,
    /// What the drawing backend said.
    pub message: String,
}

/// Writes an SVG with throughput (left) and injection p99 (right) against
/// shard count. Needs at least one summary.
pub fn plot_sweep(summaries: &[PointSummary], path: &Path) -> Result<(), PlotError> {
    let fail = |message: String| PlotError {
        path: path.display().to_string(),
        message,
    };
    if summaries.is_empty() {
        return Err(fail("no points to plot".into()));
    }
    // Series name -> (shards, throughput, p99) sorted by shards.
    let mut series: BTreeMap<String, Vec<(u32, f64, f64)>> = BTreeMap::new();
    for s in summaries {
        let shards = s.point.layout.shard_cpus.len() as u32;
        series
            .entry(s.point.series())
            .or_default()
            .push((shards, s.msgs_per_sec, s.inject_p99_ms));
    }
    for points in series.values_mut() {
        points.sort_by_key(|p| p.0);
    }
    let shards_max = summaries
        .iter()
        .map(|s| s.point.layout.shard_cpus.len())
        .max()
        .unwrap_or(1);
    let rate_max = summaries.iter().map(|s| s.msgs_per_sec).fold(1.0, f64::max) * 1.1;
    let p99_max = summaries
        .iter()
        .map(|s| s.inject_p99_ms)
        .fold(0.001, f64::max)
        * 1.1;

    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let (left, right) = root.split_horizontally(SIZE.0 / 2);
    let panels = [
        (left, "throughput (median msgs/s)", rate_max, true),
        (right, "injection p99 (median ms)", p99_max, false),
    ];
    for (area, title, y_max, is_rate) in panels {
        let mut chart = ChartBuilder::on(&area)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0u32..(shards_max as u32 + 1), 0f64..y_max)
            .map_err(|e| fail(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("shards")
            .draw()
            .map_err(|e| fail(e.to_string()))?;
        for (index, (name, points)) in series.iter().enumerate() {
            let color = Palette99::pick(index).to_rgba();
            let data = points
                .iter()
                .map(|&(x, rate, p99)| (x, if is_rate { rate } else { p99 }));
            chart
                .draw_series(LineSeries::new(data.clone(), color.stroke_width(2)))
                .map_err(|e| fail(e.to_string()))?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            chart
                .draw_series(data.map(|p| Circle::new(p, 3, color.filled())))
                .map_err(|e| fail(e.to_string()))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| fail(e.to_string()))?;
    }
    root.present().map_err(|e| fail(e.to_string()))?;
    Ok(())
}
