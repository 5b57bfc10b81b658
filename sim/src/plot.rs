//! PNG plots drawn in Rust (plotters' bitmap backend with an embedded font, so no Python, no
//! system fonts): lines over time per policy, and energy levels over time as stacked areas, one
//! panel per policy.

use std::path::{Path, PathBuf};

use crate::Run;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};
use thiserror::Error;

/// DejaVu Sans cut to ASCII and a few symbols (sim/assets/DejaVu-LICENSE.txt).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");
const WIDTH: u32 = 1200;
const HEIGHT: u32 = 700;

#[derive(Debug, Error)]
#[error("plot {file}: {message}")]
pub struct PlotError {
    pub file: PathBuf,
    pub message: String,
}

/// One line: a label and (hours, value) points in time order.
pub struct Line {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// One panel of [`levels`]: a label and (hours, nodes per level) samples in time order, levels
/// in `EnergyLevel::index` order (powerless first).
pub struct LevelPanel {
    pub label: String,
    pub samples: Vec<(f64, [f64; 4])>,
}

/// Colours of the policies, in order (Tableau 10).
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Powerless, low-powered, vulnerable, well-powered.
const LEVEL_COLOURS: [RGBColor; 4] = [
    RGBColor(120, 120, 120),
    RGBColor(214, 39, 40),
    RGBColor(255, 187, 60),
    RGBColor(44, 160, 44),
];
const LEVEL_NAMES: [&str; 4] = ["powerless", "low-powered", "vulnerable", "well-powered"];

fn font() -> Result<(), String> {
    // Registering again replaces the same bytes: harmless, and cheap next to drawing.
    register_font("sans-serif", FontStyle::Normal, FONT).map_err(|_| "bad font".to_string())
}

/// A chart of `lines` over hours, written to `file`.
pub fn lines(file: &Path, title: &str, y_label: &str, lines: &[Line]) -> Result<(), PlotError> {
    draw(file, |root| {
        let x_max = lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.0))
            .fold(0.0_f64, f64::max)
            .max(f64::MIN_POSITIVE);
        let y_max = lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .filter(|v| v.is_finite())
            .fold(0.0_f64, f64::max)
            .max(f64::MIN_POSITIVE)
            * 1.05;
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 28))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(80)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("hours")
            .y_desc(y_label)
            .label_style(("sans-serif", 16))
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, line) in lines.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    line.points.iter().copied(),
                    colour.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(line.label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 16))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())
    })
}

/// Nodes per energy level over hours, stacked, one panel per entry of `panels`.
pub fn levels(file: &Path, title: &str, panels: &[LevelPanel]) -> Result<(), PlotError> {
    draw(file, |root| {
        let root = root
            .titled(title, ("sans-serif", 28))
            .map_err(|e| e.to_string())?;
        let columns = panels.len().clamp(1, 2);
        let rows = panels.len().div_ceil(columns).max(1);
        let areas = root.split_evenly((rows, columns));
        for (panel, area) in panels.iter().zip(areas.iter()) {
            let x_max = panel
                .samples
                .last()
                .map_or(f64::MIN_POSITIVE, |s| s.0.max(f64::MIN_POSITIVE));
            let y_max = panel
                .samples
                .iter()
                .map(|s| s.1.iter().sum::<f64>())
                .fold(1.0_f64, f64::max);
            let mut chart = ChartBuilder::on(area)
                .caption(panel.label.as_str(), ("sans-serif", 20))
                .margin(8)
                .x_label_area_size(32)
                .y_label_area_size(48)
                .build_cartesian_2d(0.0..x_max, 0.0..y_max)
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("hours")
                .y_desc("nodes")
                .label_style(("sans-serif", 13))
                .draw()
                .map_err(|e| e.to_string())?;
            // Stacked: draw each level's cumulative top, best level (the total) first, so the
            // lower ones paint over it.
            for level in (0..4).rev() {
                let colour = LEVEL_COLOURS[level];
                let top = panel
                    .samples
                    .iter()
                    .map(|(t, counts)| (*t, counts[..=level].iter().sum::<f64>()));
                chart
                    .draw_series(AreaSeries::new(top, 0.0, colour.mix(0.9)).border_style(colour))
                    .map_err(|e| e.to_string())?
                    .label(LEVEL_NAMES[level])
                    .legend(move |(x, y)| {
                        Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled())
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .label_font(("sans-serif", 12))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

/// The scenario's plots for the first seed of `runs`, written into `dir` as `<name>-power.png`,
/// `<name>-energy.png` and, when some node has a battery, `<name>-levels.png`; returns the files.
pub fn scenario(dir: &Path, name: &str, runs: &[Run]) -> Result<Vec<PathBuf>, PlotError> {
    let Some(seed) = runs.first().map(|r| r.seed) else {
        return Ok(Vec::new());
    };
    let runs: Vec<&Run> = runs.iter().filter(|r| r.seed == seed).collect();
    if let Some(r) = runs.iter().find(|r| r.outcome.series.len() < 2) {
        return Err(PlotError {
            file: dir.to_path_buf(),
            message: format!("{} recorded no time series to plot", r.policy.label()),
        });
    }
    let hours = |t: f64| t / 3600.0;
    let line = |r: &Run, value: fn(&crate::report::Sample) -> f64| Line {
        label: r.policy.label().to_string(),
        points: r
            .outcome
            .series
            .iter()
            .map(|s| (hours(s.t_seconds), value(s)))
            .collect(),
    };
    let mut files = Vec::new();
    let power = dir.join(format!("{name}-power.png"));
    let watts: Vec<Line> = runs.iter().map(|r| line(r, |s| s.watts)).collect();
    lines(
        &power,
        &format!("{name}: cluster power (seed {seed})"),
        "W",
        &watts,
    )?;
    files.push(power);
    let energy = dir.join(format!("{name}-energy.png"));
    let kwh: Vec<Line> = runs.iter().map(|r| line(r, |s| s.energy_kwh)).collect();
    let title = format!("{name}: cumulative IT energy (seed {seed})");
    lines(&energy, &title, "kWh", &kwh)?;
    files.push(energy);
    let batteries = runs
        .iter()
        .flat_map(|r| &r.outcome.series)
        .any(|s| s.well_powered + s.vulnerable + s.low_powered + s.powerless > 0);
    if batteries {
        let panels: Vec<LevelPanel> = runs
            .iter()
            .map(|r| LevelPanel {
                label: r.policy.label().to_string(),
                samples: r
                    .outcome
                    .series
                    .iter()
                    .map(|s| {
                        let counts = [s.powerless, s.low_powered, s.vulnerable, s.well_powered];
                        (hours(s.t_seconds), counts.map(|c| c as f64))
                    })
                    .collect(),
            })
            .collect();
        let levels_png = dir.join(format!("{name}-levels.png"));
        let title = format!("{name}: battery nodes per true energy level (seed {seed})");
        levels(&levels_png, &title, &panels)?;
        files.push(levels_png);
    }
    Ok(files)
}

fn draw(
    file: &Path,
    paint: impl FnOnce(&DrawingArea<BitMapBackend, plotters::coord::Shift>) -> Result<(), String>,
) -> Result<(), PlotError> {
    let error = |message: String| PlotError {
        file: file.to_path_buf(),
        message,
    };
    font().map_err(error)?;
    let root = BitMapBackend::new(file, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| error(e.to_string()))?;
    paint(&root).map_err(error)?;
    root.present().map_err(|e| error(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Width and height from a PNG's IHDR, after checking the signature.
    fn png_size(file: &Path) -> (u32, u32) {
        let bytes = std::fs::read(file).unwrap();
        assert_eq!(
            &bytes[..8],
            b"\x89PNG\r\n\x1a\n",
            "{} is a PNG",
            file.display()
        );
        let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        (be(16), be(20))
    }

    #[test]
    fn charts_are_written_as_pngs_and_a_bad_path_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let power = dir.path().join("power.png");
        let line = |label: &str, k: f64| Line {
            label: label.into(),
            points: (0..100).map(|i| (i as f64 / 10.0, k * i as f64)).collect(),
        };
        lines(&power, "power", "W", &[line("a", 1.0), line("b", 2.0)]).unwrap();
        assert_eq!(png_size(&power), (WIDTH, HEIGHT));

        let levels_png = dir.path().join("levels.png");
        let panel = |label: &str| LevelPanel {
            label: label.into(),
            samples: (0..50)
                .map(|i| (i as f64 / 10.0, [1.0, 2.0, (i % 3) as f64, 4.0]))
                .collect(),
        };
        levels(&levels_png, "levels", &[panel("a"), panel("b"), panel("c")]).unwrap();
        assert_eq!(png_size(&levels_png), (WIDTH, HEIGHT));

        let bad = dir.path().join("missing-dir").join("x.png");
        let err = lines(&bad, "power", "W", &[line("a", 1.0)]).unwrap_err();
        assert_eq!(err.file, bad);
        assert!(err.to_string().contains("missing-dir"), "{err}");
    }
}
