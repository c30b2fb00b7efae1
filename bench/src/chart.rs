//! The sweep's chart: panels side by side sharing a y axis range, one line
//! per series in each, a legend and an optional dashed reference line, drawn
//! with `plotters` into a standalone SVG string.

use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Colours of the series, in order (matplotlib's `tab10`, which stays
/// distinguishable for the usual forms of colour blindness up to about 6).
const PALETTE: [RGBColor; 10] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
];

/// Size of one panel in pixels, axis labels included.
const PANEL_SIZE: (u32, u32) = (520, 400);
/// Height of the figure's title and subtitle above the panels.
const HEADER_HEIGHT: u32 = 52;
/// Most ticks an axis gets.
const MAX_TICKS: usize = 8;
const FONT: &str = "sans-serif";

/// One line: its points in data coordinates, drawn in the order given.
#[derive(Debug, Clone)]
pub struct Series {
    pub points: Vec<(f64, f64)>,
}

/// A horizontal dashed reference line across every panel, named in the legend.
#[derive(Debug, Clone)]
pub struct HLine {
    pub y: f64,
    pub label: String,
}

/// One chart of the figure. Series `i` of every panel share colour and
/// legend entry `i`.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    /// Axis range in data coordinates; points outside are clipped.
    pub x_range: (f64, f64),
    /// Ticks only on whole numbers (epochs).
    pub integer_x: bool,
    pub series: Vec<Series>,
}

/// Panels side by side; the legend is drawn in the last one.
#[derive(Debug, Clone)]
pub struct Figure {
    pub title: String,
    pub subtitle: String,
    pub y_label: String,
    pub y_range: (f64, f64),
    pub hline: Option<HLine>,
    pub panels: Vec<Panel>,
    /// One label per series index.
    pub legend: Vec<String>,
}

/// The colour of series `index`.
fn colour(index: usize) -> RGBColor {
    PALETTE[index % PALETTE.len()]
}

/// The figure as a standalone SVG document.
pub fn render(figure: &Figure) -> anyhow::Result<String> {
    let panels = u32::try_from(figure.panels.len().max(1)).context("too many panels")?;
    let size = (PANEL_SIZE.0 * panels, PANEL_SIZE.1 + HEADER_HEIGHT);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE)?;
        let (header, body) = root.split_vertically(HEADER_HEIGHT);
        let centre = Pos::new(HPos::Center, VPos::Top);
        let middle = (size.0 / 2) as i32;
        header.draw_text(
            &figure.title,
            &TextStyle::from((FONT, 20).into_font().style(FontStyle::Bold)).pos(centre),
            (middle, 6),
        )?;
        header.draw_text(
            &figure.subtitle,
            &TextStyle::from((FONT, 15).into_font()).color(&BLACK.mix(0.65)).pos(centre),
            (middle, 30),
        )?;
        let areas = body.split_evenly((1, figure.panels.len().max(1)));
        for (i, (panel, area)) in figure.panels.iter().zip(&areas).enumerate() {
            draw_panel(figure, panel, area, i + 1 == figure.panels.len())?;
        }
        root.present()?;
    }
    Ok(svg)
}

/// One panel into `area`, with the legend if `legend` is set.
fn draw_panel(
    figure: &Figure,
    panel: &Panel,
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    legend: bool,
) -> anyhow::Result<()> {
    let (x_lo, x_hi) = panel.x_range;
    let (y_lo, y_hi) = figure.y_range;
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 16).into_font().style(FontStyle::Bold))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)?;
    // Whole epochs: one tick per epoch while they fit, whatever plotters would pick.
    let x_ticks = if panel.integer_x { ((x_hi - x_lo).round() as usize + 1).min(MAX_TICKS) } else { MAX_TICKS };
    let integer_x = panel.integer_x;
    let x_format = move |x: &f64| if integer_x { format!("{x:.0}") } else { format!("{x}") };
    chart
        .configure_mesh()
        .x_desc(&panel.x_label)
        .y_desc(&figure.y_label)
        .x_labels(x_ticks)
        .y_labels(MAX_TICKS)
        .x_label_formatter(&x_format)
        .y_label_formatter(&|y| format!("{y:.3}"))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .light_line_style(WHITE)
        .bold_line_style(BLACK.mix(0.1))
        .draw()?;
    if let Some(hline) = &figure.hline {
        let dashed = DashedLineSeries::new([(x_lo, hline.y), (x_hi, hline.y)], 6, 4, BLACK.mix(0.6).stroke_width(1));
        let drawn = chart.draw_series(dashed)?;
        if legend {
            drawn.label(&hline.label).legend(|(x, y)| {
                PathElement::new([(x, y), (x + 6, y), (x + 10, y), (x + 16, y)], BLACK.mix(0.6).stroke_width(1))
            });
        }
    }
    for (i, series) in panel.series.iter().enumerate() {
        let colour = colour(i);
        let line = LineSeries::new(series.points.iter().copied(), colour.stroke_width(2)).point_size(3);
        let drawn = chart.draw_series(line)?;
        if let (true, Some(label)) = (legend, figure.legend.get(i)) {
            drawn.label(label).legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour.stroke_width(2)));
        }
    }
    if legend {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.3))
            .draw()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figure() -> Figure {
        let line =
            |offset: f64| Series { points: (1..=4).map(|e| (e as f64, 0.95 + offset + 0.005 * e as f64)).collect() };
        let panel = |title: &str, integer_x| Panel {
            title: title.to_owned(),
            x_label: "epoch".to_owned(),
            x_range: (1.0, 4.0),
            integer_x,
            series: vec![line(0.0), line(0.01)],
        };
        Figure {
            title: "lazyavg & co".to_owned(),
            subtitle: "seed 1".to_owned(),
            y_label: "test accuracy".to_owned(),
            y_range: (0.95, 1.0),
            hline: Some(HLine { y: 0.98, label: "target 0.98".to_owned() }),
            panels: vec![panel("left", true), panel("right", false)],
            legend: vec!["N = 1 worker".to_owned(), "N = 2 workers".to_owned()],
        }
    }

    /// The text of every `<text>` element.
    fn texts(svg: &str) -> Vec<String> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| t.split('>').nth(1))
            .map(|t| t.split('<').next().unwrap_or("").trim().to_owned())
            .collect()
    }

    #[test]
    fn every_panel_draws_each_series_and_the_last_holds_the_legend() {
        let svg = render(&figure()).unwrap();
        assert!(svg.trim_start().starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{svg}");
        let texts = texts(&svg);
        for (label, count) in [
            ("left", 1),
            ("right", 1),
            ("seed 1", 1),
            ("epoch", 2),
            ("test accuracy", 2),
            ("N = 1 worker", 1),
            ("N = 2 workers", 1),
            ("target 0.98", 1),
        ] {
            assert_eq!(texts.iter().filter(|t| *t == label).count(), count, "{label}: {texts:?}");
        }
        // Text is escaped, not markup.
        assert!(texts.iter().any(|t| t == "lazyavg &amp; co"), "{texts:?}");
        // Each series: a line in either panel and its sample in the legend.
        for colour in ["#1F77B4", "#FF7F0E"] {
            let lines =
                svg.split("<polyline").skip(1).filter(|p| p.split('>').next().is_some_and(|a| a.contains(colour)));
            assert_eq!(lines.count(), 3, "{colour}: {svg}");
        }
        // Whole epochs only on the integer axis (the left panel's); halves on the other.
        let (left, right) = texts.split_at(texts.iter().position(|t| t == "right").unwrap());
        assert!(left.iter().any(|t| t == "2") && !left.iter().any(|t| t == "2.5"), "{texts:?}");
        assert!(right.iter().any(|t| t == "2.5"), "{texts:?}");
    }
}
