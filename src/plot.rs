//! A small line-chart writer: panels side by side, one polyline per series,
//! a shared legend, ticks on "nice" numbers and an optional dashed reference
//! line, written as a standalone SVG string. Enough for the benchmark plots
//! without pulling a plotting crate into the binary.

use std::fmt::Write;

/// Colours of the series, in order (matplotlib's `tab10`, which stays
/// distinguishable for the usual forms of colour blindness up to about 6).
const PALETTE: [&str; 10] =
    ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

/// Size of one panel, margins included.
const PANEL_WIDTH: f64 = 460.0;
const PANEL_HEIGHT: f64 = 360.0;
/// Margins between a panel's edge and its plot area (room for labels).
const MARGIN_LEFT: f64 = 64.0;
const MARGIN_RIGHT: f64 = 16.0;
const MARGIN_TOP: f64 = 32.0;
const MARGIN_BOTTOM: f64 = 52.0;
/// Height of the figure's title (and subtitle) above the panels.
const HEADER_HEIGHT: f64 = 48.0;
const LEGEND_WIDTH: f64 = 150.0;
/// Most ticks an axis gets.
const MAX_TICKS: usize = 8;
/// Pixels between the plot area's left and right edges and the ends of the
/// x range, so that points at the ends are not cut in half by the frame.
const X_INSET: f64 = 10.0;

/// One line: its points in data coordinates, drawn in the order given.
#[derive(Debug, Clone)]
pub struct Series {
    pub points: Vec<(f64, f64)>,
}

/// A horizontal dashed reference line across a panel, labelled above its left
/// end (where accuracy curves are still low, so the label rarely covers data).
#[derive(Debug, Clone)]
pub struct HLine {
    pub y: f64,
    pub label: String,
}

/// One chart. Series `i` of every panel share the colour and legend entry `i`.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Axis ranges in data coordinates; points outside are clipped.
    pub x_range: (f64, f64),
    pub y_range: (f64, f64),
    /// Ticks only on whole numbers (epochs).
    pub integer_x: bool,
    pub series: Vec<Series>,
    pub hline: Option<HLine>,
}

/// Panels side by side with one legend on the right.
#[derive(Debug, Clone)]
pub struct Figure {
    pub title: String,
    pub subtitle: String,
    pub panels: Vec<Panel>,
    /// One label per series index.
    pub legend: Vec<String>,
}

/// The colour of series `index`.
pub fn colour(index: usize) -> &'static str {
    PALETTE[index % PALETTE.len()]
}

/// Tick positions covering `[lo, hi]`: multiples of 1, 2 or 5 × 10^k, at
/// most `max` of them (whole numbers only with `integer`).
pub fn ticks(lo: f64, hi: f64, max: usize, integer: bool) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo || max < 2 {
        return vec![lo];
    }
    let mut step = tick_step(hi - lo, max);
    if integer {
        step = step.max(1.0);
    }
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// The smallest 1, 2 or 5 × 10^k step that cuts `span` into at most `max - 1` intervals.
fn tick_step(span: f64, max: usize) -> f64 {
    let raw = span / (max - 1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|&s| s >= raw * (1.0 - 1e-9)).unwrap_or(10.0 * magnitude)
}

/// `value` rounded up to the next tick boundary, for an axis that should end on a tick.
pub fn nice_upper(value: f64) -> f64 {
    if !(value.is_finite() && value > 0.0) {
        return 1.0;
    }
    let step = tick_step(value, MAX_TICKS);
    (value / step - 1e-9).ceil() * step
}

/// Decimals that show every tick of a step (0.01 → 2, 0.05 → 2, 5 → 0).
fn decimals(ticks: &[f64]) -> usize {
    match ticks {
        // The step is a difference of floats: 0.01 may come out as 0.00999….
        [a, b, ..] => (-(b - a).abs().log10() - 1e-6).ceil().max(0.0) as usize,
        _ => 0,
    }
}

/// Escapes text for use in SVG content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The figure as a standalone SVG document.
pub fn render(figure: &Figure) -> String {
    let width = PANEL_WIDTH * figure.panels.len() as f64 + LEGEND_WIDTH;
    let height = HEADER_HEIGHT + PANEL_HEIGHT;
    let mut svg = String::new();
    let _ = writeln!(svg, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{width}" height="{height}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{x}" y="20" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        escape(&figure.title),
        x = width / 2.0
    );
    let _ = writeln!(
        svg,
        r##"<text x="{x}" y="38" text-anchor="middle" fill="#555">{}</text>"##,
        escape(&figure.subtitle),
        x = width / 2.0
    );
    for (index, panel) in figure.panels.iter().enumerate() {
        render_panel(&mut svg, panel, index, PANEL_WIDTH * index as f64, HEADER_HEIGHT);
    }
    render_legend(&mut svg, &figure.legend, PANEL_WIDTH * figure.panels.len() as f64, HEADER_HEIGHT + MARGIN_TOP);
    svg.push_str("</svg>\n");
    svg
}

/// Maps data coordinates into one panel's plot area.
struct Frame {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
    x_range: (f64, f64),
    y_range: (f64, f64),
}

impl Frame {
    fn x(&self, x: f64) -> f64 {
        self.left + X_INSET + (x - self.x_range.0) / span(self.x_range) * (self.width - 2.0 * X_INSET)
    }

    fn y(&self, y: f64) -> f64 {
        self.top + self.height - (y - self.y_range.0) / span(self.y_range) * self.height
    }
}

/// Width of a range, never zero (a one-point axis still maps somewhere).
fn span((lo, hi): (f64, f64)) -> f64 {
    if hi > lo { hi - lo } else { 1.0 }
}

fn render_panel(svg: &mut String, panel: &Panel, index: usize, left: f64, top: f64) {
    let frame = Frame {
        left: left + MARGIN_LEFT,
        top: top + MARGIN_TOP,
        width: PANEL_WIDTH - MARGIN_LEFT - MARGIN_RIGHT,
        height: PANEL_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM,
        x_range: panel.x_range,
        y_range: panel.y_range,
    };
    let (right, bottom) = (frame.left + frame.width, frame.top + frame.height);
    let _ = writeln!(svg, "<g>");
    let _ = writeln!(
        svg,
        r#"<defs><clipPath id="plot-{index}"><rect x="{}" y="{}" width="{}" height="{}"/></clipPath></defs>"#,
        frame.left, frame.top, frame.width, frame.height
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="13" font-weight="bold">{}</text>"#,
        frame.left + frame.width / 2.0,
        frame.top - 10.0,
        escape(&panel.title)
    );

    // Grid and ticks.
    let x_ticks = ticks(panel.x_range.0, panel.x_range.1, MAX_TICKS, panel.integer_x);
    let x_decimals = if panel.integer_x { 0 } else { decimals(&x_ticks) };
    for &t in &x_ticks {
        let x = frame.x(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="#e4e4e4"/><line x1="{x:.1}" y1="{bottom:.1}" x2="{x:.1}" y2="{:.1}" stroke="#333"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{t:.x_decimals$}</text>"##,
            frame.top,
            bottom + 5.0,
            bottom + 19.0
        );
    }
    let y_ticks = ticks(panel.y_range.0, panel.y_range.1, MAX_TICKS, false);
    let y_decimals = decimals(&y_ticks);
    for &t in &y_ticks {
        let y = frame.y(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{right:.1}" y2="{y:.1}" stroke="#e4e4e4"/><line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#333"/><text x="{:.1}" y="{:.1}" text-anchor="end">{t:.y_decimals$}</text>"##,
            frame.left,
            frame.left - 5.0,
            frame.left,
            frame.left - 8.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
        frame.left, frame.top, frame.width, frame.height
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        frame.left + frame.width / 2.0,
        bottom + 40.0,
        escape(&panel.x_label)
    );
    let (label_x, label_y) = (left + 16.0, frame.top + frame.height / 2.0);
    let _ = writeln!(
        svg,
        r#"<text x="{label_x:.1}" y="{label_y:.1}" text-anchor="middle" transform="rotate(-90 {label_x:.1} {label_y:.1})">{}</text>"#,
        escape(&panel.y_label)
    );

    // Reference line, then the data on top of it, clipped to the plot area.
    if let Some(hline) = &panel.hline
        && (panel.y_range.0..=panel.y_range.1).contains(&hline.y)
    {
        let y = frame.y(hline.y);
        let _ = writeln!(
            svg,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{right:.1}" y2="{y:.1}" stroke="#555" stroke-width="1.2" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" fill="#555">{}</text>"##,
            frame.left,
            frame.left + 6.0,
            y - 5.0,
            escape(&hline.label)
        );
    }
    let _ = writeln!(svg, r#"<g clip-path="url(#plot-{index})">"#);
    for (i, series) in panel.series.iter().enumerate() {
        let points: Vec<String> =
            series.points.iter().map(|&(x, y)| format!("{:.2},{:.2}", frame.x(x), frame.y(y))).collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2" stroke-linejoin="round"/>"#,
            points.join(" "),
            colour(i)
        );
        for &(x, y) in &series.points {
            let _ =
                writeln!(svg, r#"<circle cx="{:.2}" cy="{:.2}" r="3" fill="{}"/>"#, frame.x(x), frame.y(y), colour(i));
        }
    }
    let _ = writeln!(svg, "</g>");
    let _ = writeln!(svg, "</g>");
}

fn render_legend(svg: &mut String, labels: &[String], left: f64, top: f64) {
    let _ = writeln!(svg, "<g>");
    for (i, label) in labels.iter().enumerate() {
        let y = top + 10.0 + 22.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{c}" stroke-width="2"/><circle cx="{:.1}" cy="{y:.1}" r="3" fill="{c}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            left + 4.0,
            left + 32.0,
            left + 18.0,
            left + 40.0,
            y + 4.0,
            escape(label),
            c = colour(i)
        );
    }
    let _ = writeln!(svg, "</g>");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks that every element of `svg` is closed in order, and returns the
    /// element names in document order (a crude well-formedness check).
    fn elements(svg: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut open: Vec<String> = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let end = rest[start..].find('>').expect("every tag is closed") + start;
            let tag = &rest[start + 1..end];
            rest = &rest[end + 1..];
            if tag.starts_with('?') {
                continue;
            }
            assert!(!tag.contains('<'), "nested '<' in {tag:?}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(open.pop().as_deref(), Some(name.trim()), "mismatched </{name}>");
                continue;
            }
            let name = tag.split_whitespace().next().expect("element name").trim_end_matches('/').to_owned();
            names.push(name.clone());
            if !tag.ends_with('/') {
                open.push(name);
            }
        }
        assert!(open.is_empty(), "unclosed elements {open:?}");
        names
    }

    fn figure() -> Figure {
        let series =
            |n: usize| Series { points: (1..=5).map(|e| (e as f64, 0.95 + 0.009 * e as f64 / n as f64)).collect() };
        let panel = |title: &str| Panel {
            title: title.to_owned(),
            x_label: "epoch".to_owned(),
            y_label: "test accuracy".to_owned(),
            x_range: (0.0, 5.0),
            y_range: (0.95, 1.0),
            integer_x: true,
            series: vec![series(1), series(2), series(4)],
            hline: Some(HLine { y: 0.98, label: "target 0.98".to_owned() }),
        };
        Figure {
            title: "a & b <c>".to_owned(),
            subtitle: "seeds 1, 2".to_owned(),
            panels: vec![panel("left"), panel("right")],
            legend: vec!["N = 1".to_owned(), "N = 2".to_owned(), "N = 4".to_owned()],
        }
    }

    #[test]
    fn the_svg_is_well_formed_with_one_polyline_per_series_and_panel() {
        let svg = render(&figure());
        let names = elements(&svg);
        assert_eq!(names[0], "svg");
        assert_eq!(names.iter().filter(|n| *n == "polyline").count(), 6);
        assert_eq!(names.iter().filter(|n| *n == "clipPath").count(), 2);
        // Two dashed target lines, one per panel.
        assert_eq!(svg.matches("stroke-dasharray").count(), 2);
        // Text is escaped.
        assert!(svg.contains("a &amp; b &lt;c&gt;"));
        assert!(svg.contains("N = 4"));
        // Every coordinate is a number.
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn points_map_into_the_plot_area() {
        let svg = render(&figure());
        let first = svg.split("<polyline points=\"").nth(1).unwrap().split('"').next().unwrap();
        for pair in first.split(' ') {
            let (x, y) = pair.split_once(',').unwrap();
            let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
            assert!((MARGIN_LEFT..=PANEL_WIDTH - MARGIN_RIGHT).contains(&x), "{x}");
            assert!((HEADER_HEIGHT + MARGIN_TOP..=HEADER_HEIGHT + PANEL_HEIGHT - MARGIN_BOTTOM).contains(&y), "{y}");
        }
    }

    #[test]
    fn ticks_fall_on_round_numbers() {
        let close = |a: &[f64], b: &[f64]| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9);
        let t = ticks(0.95, 1.0, 8, false);
        assert!(close(&t, &[0.95, 0.96, 0.97, 0.98, 0.99, 1.0]), "{t:?}");
        let t = ticks(0.0, 3.0, 8, true);
        assert!(close(&t, &[0.0, 1.0, 2.0, 3.0]), "{t:?}");
        let t = ticks(0.0, 140.0, 8, false);
        assert!(close(&t, &[0.0, 20.0, 40.0, 60.0, 80.0, 100.0, 120.0, 140.0]), "{t:?}");
        assert_eq!(decimals(&ticks(0.9, 1.0, 8, false)), 2);
        assert_eq!(nice_upper(37.2), 40.0);
        assert_eq!(nice_upper(8.0), 8.0);
    }
}
