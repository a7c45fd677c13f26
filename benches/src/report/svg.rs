//! The latency chart: every target's percentile curve on one SVG, drawn the
//! way HdrHistogram's plotter draws them. The x axis is the percentile on a
//! log scale of 1 / (1 - p), so 90%, 99%, 99.9% and 99.99% sit one step
//! apart and the tail gets the room; the y axis is latency in milliseconds.
//!
//! Drawn with plotters' SVG backend, which writes text as `<text>` elements:
//! no font files are read, so this works on machines without fonts.

use plotters::prelude::*;

use crate::load::LoadResult;

/// Size of the chart in pixels.
const SIZE: (u32, u32) = (960, 560);
/// Text size of labels and legend, in pixels.
const FONT_SIZE: u32 = 14;
/// The x axis reaches at least 99.99%, and at most 99.9999%.
const MIN_NINES: f64 = 4.0;
const MAX_NINES: f64 = 6.0;
/// Tableau's ten colours: distinct, and readable on white.
const COLOURS: [RGBColor; 10] = [
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

/// Drawing the chart failed.
#[derive(Debug, thiserror::Error)]
#[error("draw the latency chart: {0}")]
pub struct SvgError(String);

/// One SVG chart of the latency percentile curves of all `results`, with a
/// legend naming each.
pub fn svg(results: &[LoadResult]) -> Result<String, SvgError> {
    let curves: Vec<Vec<(f64, f64)>> = results.iter().map(curve_points).collect();
    let nines = curves
        .iter()
        .flatten()
        .map(|&(x, _)| x)
        .filter(|x| x.is_finite())
        .fold(MIN_NINES, f64::max)
        .ceil()
        .min(MAX_NINES);
    let slowest_ms = curves.iter().flatten().map(|&(_, y)| y).fold(0.0, f64::max);

    let mut out = String::new();
    draw(&mut out, results, &curves, nines, nice_ceiling(slowest_ms))
        .map_err(|e| SvgError(e.to_string()))?;
    Ok(out)
}

fn draw(
    out: &mut String,
    results: &[LoadResult],
    curves: &[Vec<(f64, f64)>],
    nines: f64,
    y_max: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(out, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Latency by percentile", ("sans-serif", 22))
        .margin(20)
        // The last tick label (e.g. 99.9999%) is centred on the right edge.
        .margin_right(45)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..nines, 0.0..y_max)?;
    chart
        .configure_mesh()
        .label_style(("sans-serif", FONT_SIZE))
        .axis_desc_style(("sans-serif", FONT_SIZE))
        .x_desc("percentile")
        .y_desc("latency (ms)")
        // One label per whole number of nines (0%, 90%, 99%, ...): that many
        // labels leaves plotters no finer round step to choose. Light lines
        // between them would fall at meaningless percentiles.
        .x_labels(nines as usize + 1)
        .x_max_light_lines(0)
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| milliseconds_label(*y))
        .draw()?;
    for (i, (result, points)) in results.iter().zip(curves).enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        // 100% is at infinity on this scale; it is drawn at the right edge.
        let points = points.iter().map(|&(x, y)| (x.min(nines), y));
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
            .label(result.label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", FONT_SIZE))
        .draw()?;
    root.present()?;
    Ok(())
}

/// A result's curve as (nines, milliseconds): x is log10(1 / (1 - p)).
fn curve_points(result: &LoadResult) -> Vec<(f64, f64)> {
    result
        .curve()
        .iter()
        .map(|point| {
            let p = point.percentile / 100.0;
            let nines = if p < 1.0 {
                -(1.0 - p).log10()
            } else {
                f64::INFINITY
            };
            (nines, point.latency_us as f64 / 1e3)
        })
        .collect()
}

/// The percentile at `nines` on the x axis: 0 → "0%", 1 → "90%", 3 → "99.9%".
fn percentile_label(nines: f64) -> String {
    let percent = 100.0 * (1.0 - 10f64.powf(-nines));
    let decimals = (nines.round() as usize).saturating_sub(2);
    format!("{percent:.decimals$}%")
}

/// A y axis value without trailing zeros: 0.5, 2, 1000.
fn milliseconds_label(ms: f64) -> String {
    let text = format!("{ms:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The smallest 1, 2 or 5 times a power of ten at or above `value`, so the
/// y axis ends on a round number.
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 || !value.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|step| step * power)
        .find(|&ceiling| ceiling >= value)
        .unwrap_or(10.0 * power)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::result;

    #[test]
    fn one_curve_and_one_legend_entry_per_target() {
        let results = [
            result("direct", 1..=1000),
            result("via skiff & friends", (1..=1000).map(|us| us * 2)),
            result("nginx", (1..=1000).map(|us| us * 3)),
        ];
        let svg = svg(&results).expect("chart");
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        assert!(svg.trim_end().ends_with("</svg>"));
        // Each target draws its curve and its legend sample in its colour;
        // axes and ticks are drawn in black.
        for colour in &COLOURS[..results.len()] {
            let stroke = format!(
                "stroke=\"#{:02X}{:02X}{:02X}\"",
                colour.0, colour.1, colour.2
            );
            assert_eq!(svg.matches(&stroke).count(), 2, "{stroke}");
        }
        assert_eq!(svg.matches("stroke-width=\"2\"").count(), 2 * results.len());
        let texts = texts(&svg);
        for label in ["direct", "via skiff &amp; friends", "nginx"] {
            assert!(texts.contains(&label), "legend {label} in {texts:?}");
        }
        for label in [
            "0%",
            "90%",
            "99%",
            "99.9%",
            "99.99%",
            "percentile",
            "latency (ms)",
        ] {
            assert!(texts.contains(&label), "axis label {label} in {texts:?}");
        }
    }

    #[test]
    fn axis_labels_follow_the_nines() {
        let labels: Vec<String> = (0..=5).map(|n| percentile_label(n as f64)).collect();
        assert_eq!(labels, ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]);
        assert_eq!(milliseconds_label(0.5), "0.5");
        assert_eq!(milliseconds_label(1000.0), "1000");
        assert_eq!(milliseconds_label(0.0), "0");
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(17.0), 20.0);
        assert_eq!(nice_ceiling(0.42), 0.5);
    }

    #[test]
    fn an_empty_run_still_draws_axes() {
        let svg = svg(&[result("idle", [])]).expect("chart");
        assert!(svg.starts_with("<svg"));
        assert!(texts(&svg).contains(&"99.99%"));
    }

    /// The contents of the chart's `<text>` elements.
    fn texts(svg: &str) -> Vec<&str> {
        svg.split("<text")
            .skip(1)
            .filter_map(|element| {
                let content = &element[element.find('>')? + 1..element.find("</text>")?];
                Some(content.trim())
            })
            .collect()
    }
}
