//! Bar charts as inline SVG, drawn by the server (no script, no font files): one bar per stage,
//! an optional threshold line. The table next to each chart carries the same numbers for screen readers.

use maud::{Markup, html};

const WIDTH: f64 = 420.0;
const HEIGHT: f64 = 230.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 44.0;

/// One bar: its axis label and value (`None`: no data, drawn as an empty slot).
pub struct Bar {
    pub label: String,
    pub value: Option<f64>,
}

/// A horizontal line across the chart, e.g. the 5% error-rate limit.
pub struct Threshold {
    pub value: f64,
    pub label: String,
}

/// What a chart's values are: fractions (printed as percentages) or whole counts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    Fraction,
    Count,
}

impl Scale {
    fn format(self, v: f64) -> String {
        match self {
            Self::Fraction => format!("{:.1}%", v * 100.0),
            Self::Count => format!("{v:.0}"),
        }
    }
}

/// A bar chart; bars at or above the threshold are drawn in the warning colour.
pub fn bar_chart(id: &str, title: &str, bars: &[Bar], scale: Scale, threshold: Option<&Threshold>) -> Markup {
    let format = |v: f64| scale.format(v);
    let max_value = bars.iter().filter_map(|b| b.value).fold(0.0_f64, f64::max);
    let top = max_value.max(threshold.map_or(0.0, |t| t.value)) * 1.15;
    // Counts get an even whole-number top, so the middle tick is a whole number too.
    let top = match scale {
        Scale::Count => ((top / 2.0).ceil() * 2.0).max(2.0),
        Scale::Fraction if top > 0.0 => top,
        Scale::Fraction => 1.0,
    };
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let y = |v: f64| TOP + plot_h - (v / top) * plot_h;
    let slot = plot_w / bars.len().max(1) as f64;
    let bar_w = (slot * 0.6).min(60.0);
    let title_id = format!("{id}-title");
    html! {
        svg id=(id) class="chart" viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img" aria-labelledby=(title_id) xmlns="http://www.w3.org/2000/svg" {
            title id=(title_id) { (title) }
            line x1=(LEFT) y1=(TOP + plot_h) x2=(WIDTH - RIGHT) y2=(TOP + plot_h) stroke="#1b1b1b" {}
            line x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(TOP + plot_h) stroke="#1b1b1b" {}
            @for tick in [0.0, 0.5, 1.0] {
                text x=(LEFT - 6.0) y=(y(top * tick) + 4.0) text-anchor="end" font-size="11" fill="#1b1b1b" { (format(top * tick)) }
            }
            @for (i, bar) in bars.iter().enumerate() {
                @let cx = LEFT + slot * (i as f64 + 0.5);
                @if let Some(v) = bar.value {
                    @let over = threshold.is_some_and(|t| v >= t.value);
                    rect class="bar" data-stage=(i + 1) x=(cx - bar_w / 2.0) y=(y(v)) width=(bar_w) height=((TOP + plot_h - y(v)).max(0.5))
                        fill=(if over { "#b50909" } else { "#005ea2" }) {
                        title { (bar.label) ": " (format(v)) }
                    }
                    text x=(cx) y=(y(v) - 4.0) text-anchor="middle" font-size="11" fill="#1b1b1b" { (format(v)) }
                } @else {
                    rect class="bar empty" data-stage=(i + 1) x=(cx - bar_w / 2.0) y=(TOP + plot_h - 0.5) width=(bar_w) height="0.5" fill="#565c65" {
                        title { (bar.label) ": no data" }
                    }
                    text x=(cx) y=(TOP + plot_h - 4.0) text-anchor="middle" font-size="11" fill="#565c65" { "n/a" }
                }
                text x=(cx) y=(HEIGHT - BOTTOM + 16.0) text-anchor="middle" font-size="11" fill="#1b1b1b" { (bar.label) }
            }
            @if let Some(t) = threshold {
                line class="threshold" x1=(LEFT) y1=(y(t.value)) x2=(WIDTH - RIGHT) y2=(y(t.value)) stroke="#b50909" stroke-width="2" stroke-dasharray="6 4" {}
                text x=(WIDTH - RIGHT) y=(y(t.value) - 5.0) text-anchor="end" font-size="11" fill="#b50909" { (t.label) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bar_per_value_and_the_threshold_line() {
        let bars = vec![
            Bar { label: "S1".into(), value: Some(0.01) },
            Bar { label: "S2".into(), value: Some(0.08) },
            Bar { label: "S3".into(), value: None },
        ];
        let t = Threshold { value: 0.05, label: "5% limit".into() };
        let svg = bar_chart("c", "Error rate", &bars, Scale::Fraction, Some(&t)).into_string();
        assert_eq!(svg.matches("class=\"bar").count(), 3);
        assert_eq!(svg.matches("class=\"threshold\"").count(), 1);
        assert!(svg.contains("#b50909"), "the bar above the limit is marked");
    }

    #[test]
    fn labels_are_escaped() {
        let bars = vec![Bar { label: "<script>".into(), value: Some(1.0) }];
        let svg = bar_chart("c", "t", &bars, Scale::Count, None).into_string();
        assert!(!svg.contains("<script>"));
    }
}
