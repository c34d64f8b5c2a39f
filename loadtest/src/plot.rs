//! `--plot FILE.svg`: the latency percentile curve and latency over time, hand-written SVG.
//!
//! Two panels side by side, both with a logarithmic latency axis (a p99.9 a hundred times the
//! median is common and must stay readable): on the left latency by percentile, the x axis
//! spaced by "nines" as HdrHistogram's plotter does; on the right p50, p99 and max of each
//! second. No dependency: the SVG is a few polylines and labels.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::progress::SecondSample;
use crate::stats::us_to_ms;

const WIDTH: f64 = 1_000.0;
const HEIGHT: f64 = 420.0;
const PANEL_WIDTH: f64 = 420.0;
const PANEL_HEIGHT: f64 = 300.0;
const TOP: f64 = 60.0;
const LEFT_X: f64 = 70.0;
const RIGHT_X: f64 = 560.0;
/// Deepest percentile drawn: 99.999% (five nines).
const NINES_MAX: f64 = 5.0;

/// Returns the SVG document.
pub fn render(title: &str, overall: &Histogram<u64>, seconds: &[SecondSample]) -> String {
    let curve = percentile_curve(overall);
    let mut values: Vec<f64> = curve.iter().map(|p| p.1).collect();
    for s in seconds {
        values.extend([s.p50_ms, s.p99_ms, s.max_ms]);
    }
    let (y_low, y_high) = log_range(&values);
    let mut svg = String::new();
    // Writing into a String cannot fail.
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" font-size="16" text-anchor="middle">{}</text>
"#,
        WIDTH / 2.0,
        escape(title)
    );
    let y_of = |ms: f64| {
        TOP + PANEL_HEIGHT
            * (1.0 - (ms.max(y_low).log10() - y_low.log10()) / (y_high.log10() - y_low.log10()))
    };
    for x0 in [LEFT_X, RIGHT_X] {
        axes(&mut svg, x0, y_low, y_high, &y_of);
    }
    // Left panel: percentile curve.
    let x_left = |nines: f64| LEFT_X + PANEL_WIDTH * nines / NINES_MAX;
    for (nines, label) in [
        (0.0, "0%"),
        (1.0, "90%"),
        (2.0, "99%"),
        (3.0, "99.9%"),
        (4.0, "99.99%"),
        (5.0, "99.999%"),
    ] {
        let x = x_left(nines);
        let _ = write!(
            svg,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            TOP + PANEL_HEIGHT + 16.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT_X + PANEL_WIDTH / 2.0,
        TOP + PANEL_HEIGHT + 34.0
    );
    let points: Vec<(f64, f64)> = curve
        .iter()
        .map(|&(nines, ms)| (x_left(nines), y_of(ms)))
        .collect();
    polyline(&mut svg, &points, "#1f77b4");
    // Right panel: latency over time.
    let t_max = seconds.len().max(2) as f64 - 1.0;
    let x_right = |i: usize| RIGHT_X + PANEL_WIDTH * i as f64 / t_max;
    if !seconds.is_empty() {
        let last = seconds.len() - 1;
        for i in [0, last / 2, last] {
            let _ = write!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{:.0}s</text>"#,
                x_right(i),
                TOP + PANEL_HEIGHT + 16.0,
                seconds[i].t_s
            );
        }
    }
    for (series, colour, pick) in [
        (
            "p50",
            "#2ca02c",
            (|s: &SecondSample| s.p50_ms) as fn(&SecondSample) -> f64,
        ),
        ("p99", "#ff7f0e", |s: &SecondSample| s.p99_ms),
        ("max", "#d62728", |s: &SecondSample| s.max_ms),
    ] {
        let points: Vec<(f64, f64)> = seconds
            .iter()
            .enumerate()
            .map(|(i, s)| (x_right(i), y_of(pick(s))))
            .collect();
        polyline(&mut svg, &points, colour);
        let legend_y = TOP
            + 14.0
                * (1.0
                    + ["p50", "p99", "max"]
                        .iter()
                        .position(|n| *n == series)
                        .unwrap_or(0) as f64);
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{legend_y:.1}" fill="{colour}">{series}</text>"#,
            RIGHT_X + PANEL_WIDTH - 30.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds ({} samples)</text>"#,
        RIGHT_X + PANEL_WIDTH / 2.0,
        TOP + PANEL_HEIGHT + 34.0,
        seconds.len()
    );
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">latency by percentile</text>"#,
        LEFT_X + PANEL_WIDTH / 2.0,
        TOP - 10.0
    );
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">latency per second</text>"#,
        RIGHT_X + PANEL_WIDTH / 2.0,
        TOP - 10.0
    );
    svg.push_str("</svg>\n");
    svg
}

/// Returns `(nines, latency_ms)` points: nines = -log10(1 - q), from q = 0 to five nines.
pub fn percentile_curve(histogram: &Histogram<u64>) -> Vec<(f64, f64)> {
    if histogram.is_empty() {
        return Vec::new();
    }
    (0..=100)
        .map(|step| {
            let nines = NINES_MAX * f64::from(step) / 100.0;
            let quantile = 1.0 - 10f64.powf(-nines);
            (nines, us_to_ms(histogram.value_at_quantile(quantile)))
        })
        .collect()
}

fn log_range(values: &[f64]) -> (f64, f64) {
    let positive = values.iter().copied().filter(|v| *v > 0.0);
    let low = positive.clone().fold(f64::INFINITY, f64::min);
    let high = positive.fold(0.0, f64::max);
    if !low.is_finite() || high <= 0.0 {
        return (0.01, 10.0);
    }
    let low = 10f64.powf(low.log10().floor());
    let high = 10f64.powf(high.log10().ceil()).max(low * 10.0);
    (low, high)
}

fn axes(svg: &mut String, x0: f64, y_low: f64, y_high: f64, y_of: &dyn Fn(f64) -> f64) {
    let bottom = TOP + PANEL_HEIGHT;
    let _ = write!(
        svg,
        r##"<rect x="{x0}" y="{TOP}" width="{PANEL_WIDTH}" height="{PANEL_HEIGHT}" fill="none" stroke="#333"/>"##
    );
    let mut decade = y_low;
    while decade <= y_high * 1.000_1 {
        let y = y_of(decade);
        let _ = write!(
            svg,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{} ms</text>"##,
            x0 + PANEL_WIDTH,
            x0 - 4.0,
            y + 4.0,
            format_ms(decade)
        );
        decade *= 10.0;
    }
    let _ = bottom;
}

fn format_ms(ms: f64) -> String {
    if ms >= 1.0 {
        format!("{ms:.0}")
    } else {
        format!("{ms}")
    }
}

fn polyline(svg: &mut String, points: &[(f64, f64)], colour: &str) {
    if points.is_empty() {
        return;
    }
    svg.push_str(r#"<polyline fill="none" stroke-width="1.5" stroke=""#);
    svg.push_str(colour);
    svg.push_str(r#"" points=""#);
    for (x, y) in points {
        let _ = write!(svg, "{x:.1},{y:.1} ");
    }
    svg.push_str("\"/>\n");
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_curve_rises_with_the_percentile() {
        let mut histogram = crate::stats::new_histogram();
        for us in 1..=100_000 {
            crate::stats::record_us(&mut histogram, us);
        }
        let curve = percentile_curve(&histogram);
        assert_eq!(curve.len(), 101);
        assert!(curve.windows(2).all(|w| w[0].1 <= w[1].1));
        assert!((curve[40].1 - 99.0).abs() < 0.5, "{:?}", curve[40]);
    }

    #[test]
    fn the_svg_is_well_formed_enough_to_open() {
        let mut histogram = crate::stats::new_histogram();
        crate::stats::record_us(&mut histogram, 1_500);
        let svg = render("a <title>", &histogram, &[]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("a &lt;title&gt;"));
        assert_eq!(svg.matches("<svg").count(), svg.matches("</svg>").count());
    }
}
