//! Small SVG charts: line charts over time and a distribution (CDF), written as plain text.

use std::fmt::Write as _;

const W: f64 = 720.0;
const H: f64 = 360.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// A line chart of `series` (name, values) over `x`.
pub(crate) fn lines(
    title: &str,
    x_label: &str,
    y_label: &str,
    x: &[f64],
    series: &[(&str, &[f64])],
) -> String {
    let x_max = x.iter().copied().fold(0.0, f64::max).max(1e-9);
    let y_max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.05;
    let mut svg = frame(title, x_label, y_label, x_max, y_max);
    for (i, (name, values)) in series.iter().enumerate() {
        let points: Vec<String> = x
            .iter()
            .zip(values.iter())
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x, x_max), py(*y, y_max)))
            .collect();
        let colour = COLOURS[i % COLOURS.len()];
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.0}" y="{:.0}" fill="{colour}" font-size="13">{}</text>"#,
            W - RIGHT - 90.0,
            TOP + 18.0 * (i as f64 + 1.0),
            escape(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The cumulative distribution of `sorted` values (ascending).
pub(crate) fn cdf(title: &str, x_label: &str, sorted: &[f64]) -> String {
    let x_max = sorted.last().copied().unwrap_or(0.0).max(1e-9) * 1.05;
    let mut svg = frame(title, x_label, "share of cars", x_max, 1.0);
    let n = sorted.len().max(1) as f64;
    let step = (sorted.len() / 500).max(1);
    let points: Vec<String> = sorted
        .iter()
        .enumerate()
        .step_by(step)
        .map(|(i, v)| format!("{:.1},{:.1}", px(*v, x_max), py((i + 1) as f64 / n, 1.0)))
        .collect();
    let _ = writeln!(
        svg,
        r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
        COLOURS[0],
        points.join(" ")
    );
    svg.push_str("</svg>\n");
    svg
}

fn frame(title: &str, x_label: &str, y_label: &str, x_max: f64, y_max: f64) -> String {
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif">"#
    );
    let _ = writeln!(svg, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="24" font-size="16" text-anchor="middle">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    let (x0, y0, x1, y1) = (LEFT, H - BOTTOM, W - RIGHT, TOP);
    let _ = writeln!(
        svg,
        r##"<path d="M{x0},{y1} L{x0},{y0} L{x1},{y0}" fill="none" stroke="#333"/>"##
    );
    for k in 0..=4 {
        let f = f64::from(k) / 4.0;
        let (x, y) = (x0 + f * (x1 - x0), y0 - f * (y0 - y1));
        let _ = writeln!(
            svg,
            r#"<text x="{x:.0}" y="{:.0}" font-size="11" text-anchor="middle">{}</text>"#,
            y0 + 16.0,
            tick(f * x_max)
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.0}" y="{:.0}" font-size="11" text-anchor="end">{}</text>"#,
            x0 - 6.0,
            y + 4.0,
            tick(f * y_max)
        );
        let _ = writeln!(
            svg,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#ddd"/>"##
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" font-size="12" text-anchor="middle">{}</text>"#,
        (x0 + x1) / 2.0,
        H - 12.0,
        escape(x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{}" font-size="12" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#,
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0,
        escape(y_label)
    );
    svg
}

fn px(x: f64, x_max: f64) -> f64 {
    LEFT + x / x_max * (W - LEFT - RIGHT)
}

fn py(y: f64, y_max: f64) -> f64 {
    H - BOTTOM - y / y_max * (H - TOP - BOTTOM)
}

fn tick(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1_000.0)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed_svg_with_one_polyline_per_series() {
        let x = [0.0, 1.0, 2.0];
        let svg = lines(
            "t <1>",
            "h",
            "n",
            &x,
            &[("a", &[1.0, 2.0, 3.0]), ("b", &[0.0, 0.0, 5.0])],
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("t &lt;1&gt;"));
        let c = cdf("c", "x", &[0.1, 0.2, 0.3]);
        assert_eq!(c.matches("<polyline").count(), 1);
    }
}
