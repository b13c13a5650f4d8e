//! SVG line plots with logarithmic axes, drawn into a string by plotters without system fonts:
//! `bench --sweep` (GFLOP/s against n) and `bench --decode --sweep` (ms against the context).
//! Also the one conversion of a plotters failure into the crate's error, which `plot`'s heatmaps
//! use too.

use std::path::Path;

use compositional_attention::Error;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::RGBColor;

/// Colours of a plot's lines, in order (the last one grey, for reference lines).
pub const COLOURS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x7f, 0x7f, 0x7f),
];

/// One line of a plot.
pub struct Series {
    /// Its legend.
    pub label: String,
    pub colour: RGBColor,
    /// `(x, y)` points, x increasing; points whose y is not finite and positive are left out.
    pub points: Vec<(f64, f64)>,
    /// A dashed line without markers (a reference level) instead of a line with markers.
    pub dashed: bool,
}

/// A log–log plot: axes, lines and a legend in the lower right.
pub struct LinePlot<'a> {
    pub title: &'a str,
    pub x_desc: &'a str,
    pub y_desc: &'a str,
    /// The x values that get labels and bold grid lines (the measured ones); x is logarithmic in
    /// base 2 and spans them with a margin of 1.25× on either side.
    pub x_keys: Vec<f64>,
    /// The y range is the points' from `lowest / below` to `highest × above`: room for the
    /// legend below the lowest point.
    pub y_room: (f64, f64),
    pub series: Vec<Series>,
}

/// A plotters failure as this crate's error (the SVG goes to a string, so only plotting fails).
pub fn plot_error(e: &dyn std::fmt::Display) -> Error {
    Error::Io {
        path: Path::new("<svg plot>").into(),
        source: std::io::Error::other(format!("plotting failed: {e}")),
    }
}

/// y labels with about three significant digits.
fn y_label(y: &f64) -> String {
    if *y >= 10.0 {
        format!("{y:.0}")
    } else if *y >= 1.0 {
        format!("{y:.1}")
    } else {
        format!("{y:.2}")
    }
}

impl LinePlot<'_> {
    /// The SVG text, 960 × 600.
    pub fn draw(&self) -> Result<String, Error> {
        let x_min = self.x_keys.iter().copied().fold(f64::INFINITY, f64::min);
        let x_max = self.x_keys.iter().copied().fold(0.0f64, f64::max);
        let (x_min, x_max) = match x_min.is_finite() && x_min > 0.0 {
            true => (x_min, x_max),
            false => (1.0, 1.0),
        };
        let visible = |&(_, y): &(f64, f64)| y.is_finite() && y > 0.0;
        let (y_min, y_max) = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied().filter(visible))
            .fold((f64::INFINITY, 0.0f64), |(lo, hi), (_, y)| {
                (lo.min(y), hi.max(y))
            });
        let (y_min, y_max) = if y_max > 0.0 {
            (y_min / self.y_room.0, y_max * self.y_room.1)
        } else {
            (0.1, 10.0)
        };
        let x_range = (x_min / 1.25, x_max * 1.25);

        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (960, 600)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| plot_error(&e))?;
            let mut chart = ChartBuilder::on(&root)
                .caption(self.title, ("sans-serif", 16))
                .margin(16)
                .x_label_area_size(44)
                .y_label_area_size(64)
                .build_cartesian_2d(
                    (x_range.0..x_range.1)
                        .log_scale()
                        .base(2.0)
                        .with_key_points(self.x_keys.clone()),
                    (y_min..y_max).log_scale(),
                )
                .map_err(|e| plot_error(&e))?;
            chart
                .configure_mesh()
                .x_desc(self.x_desc)
                .y_desc(self.y_desc)
                .x_label_formatter(&|x| format!("{}", x.round()))
                .y_label_formatter(&y_label)
                .draw()
                .map_err(|e| plot_error(&e))?;
            for series in &self.series {
                let colour = series.colour;
                let points: Vec<(f64, f64)> =
                    series.points.iter().copied().filter(visible).collect();
                if points.is_empty() {
                    continue;
                }
                if series.dashed {
                    let y = points[0].1;
                    chart
                        .draw_series(DashedLineSeries::new(
                            [(x_range.0, y), (x_range.1, y)],
                            6,
                            4,
                            colour.stroke_width(1),
                        ))
                        .map_err(|e| plot_error(&e))?
                        .label(&series.label)
                        .legend(move |(x, y)| {
                            DashedPathElement::new([(x, y), (x + 20, y)], 6, 4, colour)
                        });
                    continue;
                }
                chart
                    .draw_series(LineSeries::new(
                        points.iter().copied(),
                        colour.stroke_width(2),
                    ))
                    .map_err(|e| plot_error(&e))?
                    .label(&series.label)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                    });
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                    .map_err(|e| plot_error(&e))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| plot_error(&e))?;
            root.present().map_err(|e| plot_error(&e))?;
        }
        Ok(svg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plot_renders_without_fonts_even_when_empty() {
        let empty = LinePlot {
            title: "title",
            x_desc: "x",
            y_desc: "y",
            x_keys: vec![128.0, 256.0],
            y_room: (6.0, 1.5),
            series: vec![],
        };
        assert!(empty.draw().unwrap().starts_with("<svg"));
        let lines = LinePlot {
            series: vec![
                Series {
                    label: "measured".into(),
                    colour: COLOURS[0],
                    points: vec![(128.0, 1.0), (256.0, 3.0), (512.0, f64::NAN)],
                    dashed: false,
                },
                Series {
                    label: "reference".into(),
                    colour: COLOURS[3],
                    points: vec![(128.0, 5.0)],
                    dashed: true,
                },
            ],
            ..empty
        };
        let svg = lines.draw().unwrap();
        assert!(
            svg.contains("measured") && svg.contains("reference"),
            "{svg}"
        );
    }
}
