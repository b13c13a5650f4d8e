//! The loss curve of `compattn train --plot` as a self-contained SVG, written by hand (no fonts,
//! scripts or external references): axes with ticks and labels, one polyline, the y axis
//! logarithmic when the loss spans more than one decade.

use std::fmt::Write;

/// Canvas and plot area, in SVG user units.
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 56.0;

/// How the y axis maps a loss.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Scale {
    /// `log10(y)` between these decades.
    Log { low: f64, high: f64 },
    /// `y` between these values.
    Linear { low: f64, high: f64 },
}

impl Scale {
    /// Logarithmic when every loss is positive and they span more than a decade; else linear
    /// over the losses' range (with a margin, and around a constant).
    fn of(losses: &[f64]) -> Scale {
        let finite = losses.iter().copied().filter(|v| v.is_finite());
        let (min, max) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        if !min.is_finite() {
            return Scale::Linear {
                low: 0.0,
                high: 1.0,
            };
        }
        if min > 0.0 && max / min > 10.0 {
            return Scale::Log {
                low: min.log10().floor(),
                high: max.log10().ceil(),
            };
        }
        let pad = if max > min {
            (max - min) * 0.05
        } else {
            max.abs().max(1e-12) * 0.1
        };
        let low = if min >= 0.0 {
            (min - pad).max(0.0)
        } else {
            min - pad
        };
        Scale::Linear {
            low,
            high: max + pad,
        }
    }

    /// Where `y` falls between the bottom (0) and the top (1); `None` for a value the axis
    /// cannot show (non-finite, or not positive on a log axis).
    fn fraction(self, y: f64) -> Option<f64> {
        match self {
            _ if !y.is_finite() => None,
            Scale::Log { low, high } => (y > 0.0).then(|| (y.log10() - low) / (high - low)),
            Scale::Linear { low, high } => Some((y - low) / (high - low)),
        }
    }

    /// The ticks: each decade on a log axis, about five round values on a linear one.
    fn ticks(self) -> Vec<f64> {
        match self {
            Scale::Log { low, high } => {
                let step = ((high - low) / 8.0).ceil().max(1.0);
                let mut ticks = Vec::new();
                let mut e = low;
                while e <= high + 1e-9 {
                    ticks.push(10f64.powf(e));
                    e += step;
                }
                ticks
            }
            Scale::Linear { low, high } => round_ticks(low, high),
        }
    }
}

/// About five round values (1, 2 or 5 × 10^k apart) within `[low, high]`.
fn round_ticks(low: f64, high: f64) -> Vec<f64> {
    let raw = (high - low) / 5.0;
    if !(raw > 0.0 && raw.is_finite()) {
        return vec![low];
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * magnitude);
    let first = (low / step).ceil() as i64;
    let last = (high / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// A tick label with about three significant digits.
fn label(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        // Enough decimals for three significant digits, trailing zeros trimmed.
        let decimals = (2 - a.log10().floor() as i32).max(0) as usize;
        let text = format!("{v:.decimals$}");
        match text.contains('.') {
            true => text.trim_end_matches('0').trim_end_matches('.').to_string(),
            false => text,
        }
    }
}

/// Escapes text for SVG.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG of `losses` (step 1 first) with `title`.
pub fn loss_svg(losses: &[f64], title: &str) -> String {
    let scale = Scale::of(losses);
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let steps = losses.len().max(1);
    let x_of = |step: f64| match steps {
        1 => LEFT + plot_w / 2.0,
        _ => LEFT + (step - 1.0) / (steps - 1) as f64 * plot_w,
    };
    let y_of = |fraction: f64| TOP + (1.0 - fraction) * plot_h;
    let mut svg = String::new();
    // `write!` into a String cannot fail.
    let _ = writeln!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(
        svg,
        r##"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"##
    );
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"##,
        WIDTH / 2.0,
        escape(title)
    );
    // y ticks and grid.
    for tick in scale.ticks() {
        let Some(f) = scale.fraction(tick) else {
            continue;
        };
        if !(-1e-9..=1.0 + 1e-9).contains(&f) {
            continue;
        }
        let y = y_of(f);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            label(tick)
        );
    }
    // x ticks (steps).
    let x_ticks: Vec<f64> = match steps {
        1 => vec![1.0],
        _ => round_ticks(1.0, steps as f64)
            .into_iter()
            .filter(|&s| s >= 1.0)
            .collect(),
    };
    for step in x_ticks {
        let x = x_of(step);
        let bottom = TOP + plot_h;
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{bottom}" x2="{x:.1}" y2="{:.1}" stroke="black"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            bottom + 5.0,
            bottom + 19.0,
            label(step)
        );
    }
    // Axes.
    let _ = writeln!(
        svg,
        r##"<path d="M{LEFT},{TOP} V{:.1} H{:.1}" fill="none" stroke="black"/>"##,
        TOP + plot_h,
        LEFT + plot_w
    );
    let _ = writeln!(
        svg,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">step</text>"##,
        LEFT + plot_w / 2.0,
        HEIGHT - 12.0
    );
    let y_desc = match scale {
        Scale::Log { .. } => "loss (MSE, log scale)",
        Scale::Linear { .. } => "loss (MSE)",
    };
    let _ = writeln!(
        svg,
        r##"<text x="18" y="{0:.1}" text-anchor="middle" transform="rotate(-90 18 {0:.1})">{y_desc}</text>"##,
        TOP + plot_h / 2.0
    );
    // The curve.
    let points: Vec<String> = losses
        .iter()
        .enumerate()
        .filter_map(|(i, &loss)| {
            let f = scale.fraction(loss)?;
            Some(format!("{:.2},{:.2}", x_of((i + 1) as f64), y_of(f)))
        })
        .collect();
    let _ = writeln!(
        svg,
        r##"<polyline points="{}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>"##,
        points.join(" ")
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_y_axis_is_logarithmic_past_one_decade() {
        assert_eq!(
            Scale::of(&[2.0, 0.05]),
            Scale::Log {
                low: -2.0,
                high: 1.0
            }
        );
        assert!(matches!(Scale::of(&[2.0, 0.5]), Scale::Linear { .. }));
        assert!(matches!(Scale::of(&[1.0, 1.0]), Scale::Linear { .. }));
        assert_eq!(
            Scale::of(&[]),
            Scale::Linear {
                low: 0.0,
                high: 1.0
            }
        );
        let ticks = Scale::of(&[2.0, 0.05]).ticks();
        assert_eq!(ticks, [0.01, 0.1, 1.0, 10.0]);
    }

    #[test]
    fn linear_ticks_are_round_and_inside() {
        let labels: Vec<String> = round_ticks(0.0, 1.0).into_iter().map(label).collect();
        assert_eq!(labels, ["0", "0.2", "0.4", "0.6", "0.8", "1"]);
        assert_eq!(round_ticks(1.0, 30.0), [10.0, 20.0, 30.0]);
        assert_eq!(label(0.0123456), "0.0123");
        assert_eq!(label(12.5), "12.5");
        assert_eq!(label(250.0), "250");
        assert_eq!(label(1e-5), "1.0e-5");
    }

    #[test]
    fn the_svg_has_axes_labels_and_a_polyline() {
        let losses: Vec<f64> = (0..30).map(|i| 3.0 * 0.8f64.powi(i)).collect();
        let svg = loss_svg(&losses, "a <title> & more");
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("log scale"));
        assert!(svg.contains("&lt;title&gt; &amp; more"));
        let points = svg.split("points=\"").nth(1).unwrap();
        assert_eq!(points.split('"').next().unwrap().split(' ').count(), 30);
        // A NaN loss is left out of the curve, not drawn at NaN.
        let svg = loss_svg(&[1.0, f64::NAN, 0.5], "t");
        assert!(!svg.contains("NaN"));
    }
}
