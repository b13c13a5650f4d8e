//! `compattn plot`: SVG heatmaps of an attention maps file (`compattn forward --maps`), one per
//! batch row and search for the search attention (query rows × keys) and for the retrieval
//! selection (query rows × retrievals), and an `index.html` that shows them all. No GPU.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use compositional_attention::io;
use compositional_attention::{AttentionMaps, Error};

use crate::common::CliResult;
use crate::output::svg_plot::plot_error;

/// The most cells a heatmap draws along either axis; larger maps are drawn in blocks of
/// neighbouring rows or keys, each showing the block's largest value (the SVG stays a few MB).
const MAX_CELLS: usize = 256;

#[derive(clap::Args)]
pub struct Args {
    /// An attention maps file written by `compattn forward --maps` (`search_attention`,
    /// `retrieval_selection`, `query_rows`).
    #[arg(value_name = "MAPS.safetensors")]
    maps: PathBuf,
    /// Directory to write the SVGs and index.html into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Draw only this batch row (default: every batch row; each one writes 2 × searches files).
    #[arg(long, value_name = "B")]
    batch: Option<usize>,
}

pub fn run(args: &Args) -> CliResult {
    let maps = AttentionMaps::from_safetensors(&io::read_file(&args.maps)?)?;
    let batches: Vec<usize> = match args.batch {
        Some(b) if b >= maps.batch => {
            return Err(Error::InvalidConfig {
                field: "--batch",
                value: format!("{b} (the file has {} batch rows)", maps.batch),
                reason: "must be below the number of batch rows in the maps file",
            }
            .into());
        }
        Some(b) => vec![b],
        None => (0..maps.batch).collect(),
    };
    println!(
        "maps: {} batch rows, {} searches, {} retrievals, seq {}, {} query rows",
        maps.batch,
        maps.searches,
        maps.retrievals,
        maps.seq,
        maps.queries()
    );
    std::fs::create_dir_all(&args.out).map_err(|source| Error::Io {
        path: args.out.clone(),
        source,
    })?;

    let mut index = Vec::new();
    for &b in &batches {
        for sigma in 0..maps.searches {
            let search = search_heatmap(&maps, b, sigma);
            let selection = selection_heatmap(&maps, b, sigma);
            for (kind, heatmap) in [("search", search), ("selection", selection)] {
                let name = format!("{kind}_b{b}_s{sigma}.svg");
                let path = args.out.join(&name);
                io::write_file(&path, heatmap.draw()?.as_bytes())?;
                println!("wrote {}", path.display());
                index.push((heatmap.title, name));
            }
        }
    }
    let html = args.out.join("index.html");
    io::write_file(&html, index_html(&args.maps, &maps, &index).as_bytes())?;
    println!("wrote {}", html.display());
    Ok(())
}

/// One heatmap: `rows × cols` values, row `i` labelled `row_labels[i]`, drawn top to bottom.
struct Heatmap {
    title: String,
    x_desc: &'static str,
    rows: usize,
    cols: usize,
    values: Vec<f32>,
    row_labels: Vec<usize>,
    /// The top of the colour scale (the bottom is 0).
    max: f32,
}

fn search_heatmap(maps: &AttentionMaps, b: usize, sigma: usize) -> Heatmap {
    let values: Vec<f32> = (0..maps.queries())
        .flat_map(|q| maps.search_row(b, sigma, q).iter().copied())
        .collect();
    let max = values
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0f32, f32::max);
    Heatmap {
        title: format!("search attention, batch row {b}, search {sigma}"),
        x_desc: "key j",
        rows: maps.queries(),
        cols: maps.seq,
        values,
        row_labels: maps.query_rows.clone(),
        max,
    }
}

fn selection_heatmap(maps: &AttentionMaps, b: usize, sigma: usize) -> Heatmap {
    Heatmap {
        title: format!("retrieval selection, batch row {b}, search {sigma}"),
        x_desc: "retrieval ρ",
        rows: maps.queries(),
        cols: maps.retrievals,
        values: (0..maps.queries())
            .flat_map(|q| maps.selection_row(b, sigma, q).iter().copied())
            .collect(),
        row_labels: maps.query_rows.clone(),
        max: 1.0,
    }
}

/// About `count` evenly spaced indices below `len`, always including the first.
fn ticks(len: usize, count: usize) -> Vec<usize> {
    let step = len.div_ceil(count.max(1)).max(1);
    (0..len).step_by(step).collect()
}

impl Heatmap {
    /// The SVG text: the heatmap on the left, its colour bar on the right.
    fn draw(&self) -> Result<String, Error> {
        use plotters::prelude::*;
        use plotters::style::colors::colormaps::ViridisRGB;

        let (rows, cols) = (self.rows, self.cols);
        // Cells per drawn block along each axis.
        let (block_r, block_c) = (rows.div_ceil(MAX_CELLS), cols.div_ceil(MAX_CELLS));
        let max = if self.max > 0.0 { self.max } else { 1.0 };
        let colour = |v: f32| {
            let v = if v.is_finite() {
                v.clamp(0.0, max)
            } else {
                0.0
            };
            ViridisRGB::get_color_normalized(v, 0.0, max)
        };
        // Coordinates are in half cells (integers, so that plotters' default formatting applies
        // with our own key points): column j spans x ∈ [2j, 2j + 2], its tick at 2j + 1; row i
        // spans y ∈ [2(rows - 1 - i), 2(rows - i)], so the first query row is on top.
        let x_of = |j: usize| 2 * j as i32;
        let y_of = |i: usize| 2 * (rows - i) as i32;
        let row_ticks = ticks(rows, 16);
        let col_ticks = ticks(cols, 16);
        let mut caption = self.title.clone();
        if block_r > 1 || block_c > 1 {
            let _ = write!(
                caption,
                " (blocks of {block_r} rows × {block_c} columns, their largest value)"
            );
        }

        let mut svg = String::new();
        {
            let size = (880, 80 + (rows.min(MAX_CELLS) * 12).clamp(240, 720) as u32);
            let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
            root.fill(&WHITE).map_err(|e| plot_error(&e))?;
            let (main, bar) = root.split_horizontally(size.0 - 120);

            let mut chart = ChartBuilder::on(&main)
                .caption(&caption, ("sans-serif", 15))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(56)
                .build_cartesian_2d(
                    (0..x_of(cols))
                        .with_key_points(col_ticks.iter().map(|&j| x_of(j) + 1).collect()),
                    (0..y_of(0)).with_key_points(row_ticks.iter().map(|&i| y_of(i) - 1).collect()),
                )
                .map_err(|e| plot_error(&e))?;
            chart
                .configure_mesh()
                .disable_mesh()
                .label_style(("sans-serif", 12))
                .axis_desc_style(("sans-serif", 13))
                .x_desc(self.x_desc)
                .y_desc("query i")
                .x_label_formatter(&|x| format!("{}", x / 2))
                .y_label_formatter(&|y| {
                    let i = rows.saturating_sub(1 + (*y).max(0) as usize / 2);
                    self.row_labels
                        .get(i)
                        .map_or(String::new(), |r| r.to_string())
                })
                .draw()
                .map_err(|e| plot_error(&e))?;
            let mut cells = Vec::new();
            for i0 in (0..rows).step_by(block_r) {
                let i1 = (i0 + block_r).min(rows);
                for j0 in (0..cols).step_by(block_c) {
                    let j1 = (j0 + block_c).min(cols);
                    let v = (i0..i1)
                        .flat_map(|i| &self.values[i * cols + j0..i * cols + j1])
                        .copied()
                        .fold(f32::NEG_INFINITY, f32::max);
                    cells.push(Rectangle::new(
                        [(x_of(j0), y_of(i0)), (x_of(j1), y_of(i1))],
                        colour(v).filled(),
                    ));
                }
            }
            chart.draw_series(cells).map_err(|e| plot_error(&e))?;

            // The colour bar: 0 at the bottom, `max` at the top.
            let mut scale = ChartBuilder::on(&bar)
                .margin_top(40)
                .margin_bottom(52)
                .margin_right(12)
                .y_label_area_size(48)
                .build_cartesian_2d(0.0..1.0, 0.0..max as f64)
                .map_err(|e| plot_error(&e))?;
            scale
                .configure_mesh()
                .disable_mesh()
                .disable_x_axis()
                .y_labels(6)
                .y_label_style(("sans-serif", 12))
                .y_label_formatter(&|v| format!("{v:.2}"))
                .draw()
                .map_err(|e| plot_error(&e))?;
            const STEPS: usize = 64;
            scale
                .draw_series((0..STEPS).map(|k| {
                    let (lo, hi) = (k as f64 / STEPS as f64, (k + 1) as f64 / STEPS as f64);
                    let v = ((lo + hi) / 2.0) as f32 * max;
                    Rectangle::new(
                        [(0.0, lo * max as f64), (1.0, hi * max as f64)],
                        colour(v).filled(),
                    )
                }))
                .map_err(|e| plot_error(&e))?;
            root.present().map_err(|e| plot_error(&e))?;
        }
        Ok(svg)
    }
}

/// A page that shows every SVG under its heading.
fn index_html(source: &Path, maps: &AttentionMaps, files: &[(String, String)]) -> String {
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let mut html = String::new();
    let _ = writeln!(
        html,
        "<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>Attention maps: {}</title>\n\
         <style>body {{ font-family: sans-serif; }} img {{ max-width: 100%; }}</style>\n\
         </head>\n<body>\n<h1>Attention maps: {}</h1>",
        escape(&source.display().to_string()),
        escape(&source.display().to_string()),
    );
    let rows: Vec<String> = maps.query_rows.iter().map(usize::to_string).collect();
    let _ = writeln!(
        html,
        "<p>{} batch rows, {} searches, {} retrievals, seq {}; query rows {}.</p>",
        maps.batch,
        maps.searches,
        maps.retrievals,
        maps.seq,
        if rows.len() == maps.seq {
            "all".to_string()
        } else {
            rows.join(", ")
        }
    );
    for (title, file) in files {
        let _ = writeln!(
            html,
            "<h2>{}</h2>\n<img src=\"{}\" alt=\"{}\">",
            escape(title),
            escape(file),
            escape(title)
        );
    }
    html.push_str("</body>\n</html>\n");
    html
}
