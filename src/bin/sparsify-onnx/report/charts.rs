//! SVG charts for the HTML report, drawn with plotters' SVG backend. Text is emitted as SVG `<text>` and
//! laid out by the browser (plotters' built-in estimate, no font files or system font libraries).

use anyhow::Result;
use plotters::prelude::*;

/// One bar series: a legend name, a colour and one value per row.
pub struct Series<'a> {
    pub name: &'a str,
    pub color: RGBColor,
    pub values: Vec<f64>,
}

pub const BEFORE: RGBColor = RGBColor(160, 174, 192);
pub const AFTER: RGBColor = RGBColor(43, 108, 176);
pub const METRIC: RGBColor = RGBColor(221, 107, 32);

const WIDTH: u32 = 1100;
/// Pixel height of one row per series.
const BAR_PX: u32 = 10;
/// Longest row label drawn (longer names keep their start and end).
const LABEL_CHARS: usize = 44;

/// A horizontal bar chart: one row per label (first label on top), one bar per series in each row,
/// x from 0 to `x_max`.
pub fn hbars(title: &str, labels: &[String], series: &[Series<'_>], x_max: f64, x_desc: &str) -> Result<String> {
    let rows = labels.len().max(1);
    let row_px = BAR_PX * series.len().max(1) as u32 + 6;
    let (caption_px, x_axis_px, margin_px) = (30, 40, 10);
    let plot_px = row_px * rows as u32;
    let height = plot_px + caption_px + x_axis_px + 2 * margin_px;
    let x_max = if x_max > 0.0 && x_max.is_finite() { x_max } else { 1.0 };
    let short: Vec<String> = labels.iter().map(|l| shorten(l)).collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(margin_px)
            .x_label_area_size(x_axis_px)
            .y_label_area_size(330)
            // `rows` segments: plotters' integer ranges include their end.
            .build_cartesian_2d(0f64..x_max, (0..rows - 1).into_segmented())?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(rows)
            .y_label_style(("sans-serif", 11))
            .x_label_style(("sans-serif", 12))
            .axis_desc_style(("sans-serif", 13))
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(k) if *k < rows => short.get(rows - 1 - k).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .x_desc(x_desc)
            .draw()?;
        for (si, s) in series.iter().enumerate() {
            let si = si as u32;
            // The row's pixel band split into one strip per series (plotters margins are in pixels).
            let top = 3 + si * BAR_PX;
            let bottom = row_px.saturating_sub(3 + (si + 1) * BAR_PX).min(row_px);
            let color = s.color;
            let bars = s.values.iter().enumerate().map(move |(i, &v)| {
                let row = rows - 1 - i;
                let mut r = Rectangle::new(
                    [(0.0, SegmentValue::Exact(row)), (v.clamp(0.0, x_max), SegmentValue::Exact(row + 1))],
                    color.filled(),
                );
                r.set_margin(top, bottom, 0, 0);
                r
            });
            chart
                .draw_series(bars)?
                .label(s.name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        }
        if series.len() > 1 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK)
                .draw()?;
        }
        root.present()?;
    }
    Ok(svg)
}

/// Keep a label readable in the axis area: long names keep their start and end.
fn shorten(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= LABEL_CHARS {
        return s.to_string();
    }
    let head: String = chars[..LABEL_CHARS / 2 - 1].iter().collect();
    let tail: String = chars[chars.len() - (LABEL_CHARS / 2 - 1)..].iter().collect();
    format!("{head}…{tail}")
}
