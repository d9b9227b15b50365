//! SVG plots for `wasp bench … --plot FILE.svg`: the latency CDF of a
//! figure's samples, for spawn a stacked bar per clone of its phases, and
//! plain lines against time (a soak's p50/p99 per window).
//! plotters with its SVG backend only (no font files: text is placed by
//! estimate and rendered by the viewer).

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use thiserror::Error;

/// Plot failures.
#[derive(Debug, Error)]
pub enum PlotError {
    /// Not an `.svg` path.
    #[error("--plot {0}: plots are SVG only; name the file *.svg")]
    NotSvg(PathBuf),
    /// No samples.
    #[error("nothing to plot into {0}: the run produced no samples (did every clone fail?)")]
    Empty(PathBuf),
    /// Drawing or writing failed.
    #[error("cannot draw {path}: {message}")]
    Draw {
        /// The file.
        path: PathBuf,
        /// plotters' error.
        message: String,
    },
}

/// One sample set of the CDF.
#[derive(Debug, Clone, Copy)]
pub struct Series<'a> {
    /// Legend label.
    pub label: &'a str,
    /// The samples, any order.
    pub samples: &'a [f64],
}

/// Per-clone phase times for the stacked bars.
#[derive(Debug, Clone, Copy)]
pub struct PhaseBars<'a> {
    /// The phase names, bottom to top.
    pub names: &'a [&'a str],
    /// One row per clone, values in `names` order (same unit as the CDF).
    pub rows: &'a [Vec<f64>],
}

/// What to draw.
#[derive(Debug, Clone, Copy)]
pub struct Plot<'a> {
    /// Title.
    pub title: &'a str,
    /// The x axis of the CDF, with its unit (`clone latency (ms)`).
    pub x_label: &'a str,
    /// The CDF's series.
    pub series: &'a [Series<'a>],
    /// The stacked bars, below the CDF (spawn only).
    pub phases: Option<PhaseBars<'a>>,
}

/// The CDF's y axis label.
pub const CDF_Y_LABEL: &str = "fraction of samples <= x";
/// The stacked bars' x axis label.
pub const BARS_X_LABEL: &str = "clone (sorted by total latency)";
/// The stacked bars' y axis label.
pub const BARS_Y_LABEL: &str = "time per phase (ms)";

const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Checks a plot path before a long run: it must name an `.svg` file.
pub fn check_path(path: &Path) -> Result<(), PlotError> {
    if path.extension().and_then(|e| e.to_str()) != Some("svg") {
        return Err(PlotError::NotSvg(path.to_owned()));
    }
    Ok(())
}

/// Draws the CDF of labelled sample sets (no phase bars) into `path`.
pub fn cdf_svg(
    path: &Path,
    title: &str,
    x_label: &str,
    sets: &[(&str, &[f64])],
) -> Result<(), PlotError> {
    let series: Vec<Series<'_>> = sets
        .iter()
        .map(|(label, samples)| Series { label, samples })
        .collect();
    draw_svg(
        path,
        &Plot {
            title,
            x_label,
            series: &series,
            phases: None,
        },
    )
}

/// Draws `p` into the SVG file `path`.
pub fn draw_svg(path: &Path, p: &Plot<'_>) -> Result<(), PlotError> {
    check_path(path)?;
    if p.series.iter().all(|s| s.samples.is_empty()) {
        return Err(PlotError::Empty(path.to_owned()));
    }
    draw(path, p).map_err(|message| PlotError::Draw {
        path: path.to_owned(),
        message,
    })
}

/// Draws labelled lines of `(x, y)` points (e.g. p50 and p99 per window
/// of a soak against time) into the SVG file `path`, one point marked per
/// sample.
pub fn lines_svg(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    lines: &[(&str, &[(f64, f64)])],
) -> Result<(), PlotError> {
    check_path(path)?;
    if lines.iter().all(|(_, pts)| pts.is_empty()) {
        return Err(PlotError::Empty(path.to_owned()));
    }
    draw_lines(path, title, x_label, y_label, lines).map_err(|message| PlotError::Draw {
        path: path.to_owned(),
        message,
    })
}

fn draw_lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    lines: &[(&str, &[(f64, f64)])],
) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let finite = || {
        lines
            .iter()
            .flat_map(|(_, p)| p.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    };
    let max_x = finite().map(|(x, _)| x).fold(0.0f64, f64::max);
    let max_y = finite().map(|(_, y)| y).fold(0.0f64, f64::max);
    let max_x = if max_x > 0.0 { max_x * 1.02 } else { 1.0 };
    let max_y = if max_y > 0.0 { max_y * 1.1 } else { 1.0 };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_x, 0f64..max_y)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(|x| e(&x))?;
    for (i, (label, pts)) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<(f64, f64)> = pts
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 2, color.filled())))
            .map_err(|x| e(&x))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

fn draw(path: &Path, p: &Plot<'_>) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let height = if p.phases.is_some() { 900 } else { 480 };
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let (top, bottom) = match p.phases {
        Some(_) => {
            let (t, b) = root.split_vertically(450);
            (t, Some(b))
        }
        None => (root.clone(), None),
    };
    cdf(&top, p).map_err(|x| e(&x))?;
    if let (Some(area), Some(bars)) = (bottom, p.phases) {
        stacked(&area, &bars).map_err(|x| e(&x))?;
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

fn cdf(area: &Area<'_>, p: &Plot<'_>) -> DrawResult {
    let max_x = p
        .series
        .iter()
        .flat_map(|s| s.samples.iter().copied())
        .filter(|x| x.is_finite())
        .fold(0.0f64, f64::max);
    let max_x = if max_x > 0.0 { max_x * 1.05 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(p.title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_x, 0f64..1f64)?;
    chart
        .configure_mesh()
        .x_desc(p.x_label)
        .y_desc(CDF_Y_LABEL)
        .draw()?;
    for (i, s) in p.series.iter().enumerate() {
        let mut v: Vec<f64> = s
            .samples
            .iter()
            .copied()
            .filter(|x| x.is_finite())
            .collect();
        v.sort_by(f64::total_cmp);
        let n = v.len() as f64;
        let mut pts = vec![(0.0, 0.0)];
        for (k, x) in v.iter().enumerate() {
            pts.push((*x, k as f64 / n));
            pts.push((*x, (k + 1) as f64 / n));
        }
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))?
            .label(format!("{} (n={})", s.label, v.len()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn stacked(area: &Area<'_>, b: &PhaseBars<'_>) -> DrawResult {
    let mut rows: Vec<&Vec<f64>> = b.rows.iter().collect();
    rows.sort_by(|x, y| x.iter().sum::<f64>().total_cmp(&y.iter().sum::<f64>()));
    let max_y = rows
        .iter()
        .map(|r| r.iter().sum::<f64>())
        .fold(0.0f64, f64::max);
    let max_y = if max_y > 0.0 { max_y * 1.05 } else { 1.0 };
    let n = rows.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption("phases per clone", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n, 0f64..max_y)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc(BARS_X_LABEL)
        .y_desc(BARS_Y_LABEL)
        .draw()?;
    for (pi, name) in b.names.iter().enumerate() {
        let color = COLORS[pi % COLORS.len()];
        let bars = rows.iter().enumerate().map(|(ci, r)| {
            let below: f64 = r.iter().take(pi).sum();
            let v = r.get(pi).copied().unwrap_or(0.0);
            let x = ci as f64;
            Rectangle::new([(x + 0.1, below), (x + 0.9, below + v)], color.filled())
        });
        chart
            .draw_series(bars)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_svg_and_empty_are_clear_errors() {
        let t = tempfile::tempdir().unwrap();
        let s = [Series {
            label: "x",
            samples: &[],
        }];
        let p = Plot {
            title: "t",
            x_label: "x (ms)",
            series: &s,
            phases: None,
        };
        assert!(matches!(
            draw_svg(&t.path().join("a.png"), &p),
            Err(PlotError::NotSvg(_))
        ));
        assert!(matches!(
            draw_svg(&t.path().join("a.svg"), &p),
            Err(PlotError::Empty(_))
        ));
        assert!(!t.path().join("a.svg").exists());
    }

    #[test]
    fn draws_both_panels_with_named_axes() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("p.svg");
        let lat = [3.0, 1.0, 2.0];
        let rows = vec![vec![1.0, 2.0], vec![0.5, 0.5], vec![1.0, 1.0]];
        draw_svg(
            &f,
            &Plot {
                title: "spawn",
                x_label: "clone latency (ms)",
                series: &[Series {
                    label: "ready",
                    samples: &lat,
                }],
                phases: Some(PhaseBars {
                    names: &["load", "resume"],
                    rows: &rows,
                }),
            },
        )
        .unwrap();
        let svg = std::fs::read_to_string(&f).unwrap();
        for label in [
            "clone latency (ms)",
            CDF_Y_LABEL,
            BARS_X_LABEL,
            BARS_Y_LABEL,
        ] {
            let escaped = label.replace('<', "&lt;").replace('>', "&gt;");
            assert!(svg.contains(&escaped), "no {label:?} in the SVG");
        }
        assert!(svg.contains("resume") && svg.contains("<rect"));
    }
}
