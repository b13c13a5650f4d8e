//! How the subcommands print: milliseconds and MiB, notes that keep `--json` stdout clean, JSON,
//! progress bars, and (in [`svg_plot`]) SVG line plots. One place, so that every command
//! formats a number the same way.

pub mod loss_plot;
pub mod svg_plot;

use std::time::Duration;

use compositional_attention::Error;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// Milliseconds with about three significant digits, without the unit (table cells).
pub fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

/// A duration in milliseconds with its unit: [`fmt_ms`] and ` ms`.
pub fn ms(duration: Duration) -> String {
    format!("{} ms", fmt_ms(duration.as_secs_f64() * 1e3))
}

/// Bytes in MiB.
pub fn fmt_mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// `yes` or `no`.
pub fn yes_no(flag: bool) -> &'static str {
    if flag { "yes" } else { "no" }
}

/// A note for the user: stderr with `--json` (stdout holds only the JSON), stdout otherwise.
pub fn note(json: bool, message: &str) {
    if json {
        eprintln!("{message}");
    } else {
        println!("{message}");
    }
}

/// `value` as pretty JSON on stdout.
pub fn print_json(value: &impl Serialize) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Io {
        path: "<stdout>".into(),
        source: std::io::Error::other(e),
    })?;
    println!("{text}");
    Ok(())
}

/// A progress bar of `len` forwards on stderr (drawn only when stderr is a terminal).
pub fn progress_bar(len: u64) -> ProgressBar {
    progress_bar_of(len, "forwards")
}

/// A progress bar of `len` `units` (`forwards`, `steps`) on stderr, drawn only when stderr is a
/// terminal; its message follows the count.
pub fn progress_bar_of(len: u64, units: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let template = format!("[{{elapsed_precise}}] {{bar:32}} {{pos}}/{{len}} {units}  {{msg}}");
    bar.set_style(
        ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_keep_about_three_digits() {
        assert_eq!(fmt_ms(123.456), "123");
        assert_eq!(fmt_ms(12.345), "12.3");
        assert_eq!(fmt_ms(1.2345), "1.23");
        assert_eq!(ms(Duration::from_micros(1500)), "1.50 ms");
        assert_eq!(fmt_mib(3 << 19), "1.5 MiB");
    }
}
