//! Small server-side SVG charts: scatter points marked by trial outcome,
//! lines, and reference rules, on linear or log axes. Hand-made rather than
//! a plotting crate: the charts are few and simple, the output stays small
//! and readable, and no font files or rasterizer are needed.
//!
//! Non-finite values (and non-positive ones on a log axis) are dropped
//! before anything is drawn, so a chart never contains `NaN`.

use std::fmt::Write;

use super::escape;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale {
    Linear,
    Log,
}

/// How tick labels are written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Format {
    Number,
    Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Style {
    Line,
    Points,
}

#[derive(Debug, Clone)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    /// A trial outcome (`ok`, `out_of_memory`, ...) picks the marker.
    pub outcome: Option<String>,
    /// Drawn larger, with a ring: the chosen point.
    pub highlight: bool,
    /// Tooltip text.
    pub label: String,
}

impl Point {
    pub fn new(x: f64, y: f64, label: String) -> Point {
        Point {
            x,
            y,
            outcome: None,
            highlight: false,
            label,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub style: Style,
    pub color: &'static str,
    pub dashed: bool,
    pub points: Vec<Point>,
}

/// A horizontal or vertical reference line.
#[derive(Debug, Clone)]
pub struct Rule {
    pub value: f64,
    pub label: String,
    pub color: &'static str,
}

#[derive(Debug, Clone)]
pub struct Chart {
    /// Used as the SVG's id and class (`chart-<id>`).
    pub id: &'static str,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_scale: Scale,
    pub y_scale: Scale,
    pub x_format: Format,
    pub y_format: Format,
    pub series: Vec<Series>,
    pub horizontal: Vec<Rule>,
    pub vertical: Vec<Rule>,
    /// Shown instead of the plot when there is nothing to draw.
    pub empty_note: String,
}

pub const PALETTE: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#17becf",
];
pub const BUDGET_COLOR: &str = "#d62728";
/// The noise scale over training (the ramp chart): a colour no other chart
/// uses, so the browser test can tell it drew.
pub const NOISE_COLOR: &str = "#e377c2";

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 340.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 46.0;
/// Room under the plot for the legend.
const LEGEND_ROW: f64 = 18.0;

/// How each outcome is drawn: (label, color, shape).
fn outcome_marker(outcome: &str) -> (&'static str, &'static str) {
    match outcome {
        "ok" => ("#2ca02c", "circle"),
        "out_of_memory" => ("#d62728", "cross"),
        "diverged" => ("#ff7f0e", "triangle"),
        "timeout" => ("#9467bd", "diamond"),
        _ => ("#333333", "square"),
    }
}

struct Axis {
    scale: Scale,
    /// Ticks at round numbers of KiB/MiB/GiB rather than of bytes.
    bytes: bool,
    min: f64,
    max: f64,
    from: f64,
    to: f64,
}

impl Axis {
    fn new(
        scale: Scale,
        format: Format,
        values: &[f64],
        from: f64,
        to: f64,
        zero_based: bool,
    ) -> Axis {
        let (mut min, mut max) = values
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        if !min.is_finite() || !max.is_finite() {
            (min, max) = (1.0, 10.0);
        }
        match scale {
            Scale::Log => {
                if max / min < 1.5 {
                    min /= 2.0;
                    max *= 2.0;
                } else {
                    min /= 1.15;
                    max *= 1.15;
                }
            }
            Scale::Linear => {
                if zero_based && min >= 0.0 {
                    min = 0.0;
                }
                let span = max - min;
                let pad = if span > 0.0 {
                    span * 0.06
                } else {
                    max.abs().max(1.0) * 0.1
                };
                if !(zero_based && min == 0.0) {
                    min -= pad;
                }
                max += pad;
            }
        }
        Axis {
            scale,
            bytes: format == Format::Bytes,
            min,
            max,
            from,
            to,
        }
    }

    fn position(&self, value: f64) -> f64 {
        let t = match self.scale {
            Scale::Linear => (value - self.min) / (self.max - self.min),
            Scale::Log => (value.ln() - self.min.ln()) / (self.max.ln() - self.min.ln()),
        };
        self.from + t.clamp(-0.05, 1.05) * (self.to - self.from)
    }

    fn ticks(&self) -> Vec<f64> {
        match self.scale {
            Scale::Log => {
                let low = self.min.log10().ceil() as i32;
                let high = self.max.log10().floor() as i32;
                let mut ticks: Vec<f64> = (low..=high).map(|e| 10f64.powi(e)).collect();
                if ticks.len() < 3 {
                    // Few decades: add 2x and 5x.
                    let lowest = self.min.log10().floor() as i32;
                    ticks = (lowest..=high)
                        .flat_map(|e| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(e)))
                        .filter(|t| *t >= self.min && *t <= self.max)
                        .collect();
                }
                ticks
            }
            Scale::Linear => {
                let span = self.max - self.min;
                let unit = if self.bytes && span >= 1024.0 {
                    1024f64.powi(span.log(1024.0).floor() as i32)
                } else {
                    1.0
                };
                let rough = span / unit / 5.0;
                let magnitude = 10f64.powf(rough.log10().floor());
                let step = [1.0, 2.0, 5.0, 10.0]
                    .iter()
                    .map(|m| m * magnitude * unit)
                    .find(|s| span / s <= 6.0)
                    .unwrap_or(magnitude * 10.0 * unit);
                let first = (self.min / step).ceil() * step;
                (0..12)
                    .map(|i| first + step * f64::from(i))
                    .take_while(|t| *t <= self.max)
                    .collect()
            }
        }
    }
}

/// A tick label: compact numbers (1.5k, 2M, 3e-4) or sizes (512MiB).
pub fn tick_label(value: f64, format: Format) -> String {
    match format {
        Format::Bytes => {
            let units = ["B", "KiB", "MiB", "GiB", "TiB"];
            let mut v = value;
            let mut unit = 0;
            while v.abs() >= 1024.0 && unit < units.len() - 1 {
                v /= 1024.0;
                unit += 1;
            }
            if v.fract().abs() < 1e-9 {
                format!("{v:.0}{}", units[unit])
            } else {
                format!("{v:.1}{}", units[unit])
            }
        }
        Format::Number => {
            let a = value.abs();
            if a == 0.0 {
                "0".into()
            } else if a < 0.01 {
                format!("{value:.0e}")
            } else if a < 1000.0 {
                let text = format!("{value:.2}");
                text.trim_end_matches('0').trim_end_matches('.').to_string()
            } else if a < 1e6 {
                format!("{}k", trim(value / 1e3))
            } else if a < 1e9 {
                format!("{}M", trim(value / 1e6))
            } else {
                format!("{}G", trim(value / 1e9))
            }
        }
    }
}

fn trim(v: f64) -> String {
    let text = format!("{v:.1}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn usable(value: f64, scale: Scale) -> bool {
    value.is_finite() && (scale == Scale::Linear || value > 0.0)
}

impl Chart {
    /// The points that can be drawn.
    fn drawable(&self) -> Vec<(usize, Vec<&Point>)> {
        self.series
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    i,
                    s.points
                        .iter()
                        .filter(|p| usable(p.x, self.x_scale) && usable(p.y, self.y_scale))
                        .collect(),
                )
            })
            .collect()
    }

    pub fn render(&self) -> String {
        let drawable = self.drawable();
        let count: usize = drawable.iter().map(|(_, p)| p.len()).sum();
        let legend_rows = 1 + usize::from(self.series.len() > 3);
        let height = HEIGHT + LEGEND_ROW * legend_rows as f64;
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" id="chart-{id}" class="chart chart-{id}" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img" aria-label="{title}"><title>{title}</title>"#,
            id = self.id,
            title = escape(&self.title),
        );
        let _ = write!(
            svg,
            r#"<text x="{LEFT}" y="20" class="chart-title">{}</text>"#,
            escape(&self.title)
        );
        let plot_bottom = HEIGHT - BOTTOM;
        if count == 0 {
            let _ = write!(
                svg,
                r##"<rect x="{LEFT}" y="{TOP}" width="{w}" height="{h}" fill="none" stroke="#bbb" stroke-dasharray="4 4"/><text x="{cx}" y="{cy}" text-anchor="middle" class="chart-empty">{note}</text></svg>"##,
                w = WIDTH - LEFT - RIGHT,
                h = plot_bottom - TOP,
                cx = (LEFT + WIDTH - RIGHT) / 2.0,
                cy = (TOP + plot_bottom) / 2.0,
                note = escape(&self.empty_note),
            );
            return svg;
        }
        let mut xs: Vec<f64> = drawable
            .iter()
            .flat_map(|(_, p)| p.iter().map(|p| p.x))
            .collect();
        xs.extend(
            self.vertical
                .iter()
                .map(|r| r.value)
                .filter(|v| usable(*v, self.x_scale)),
        );
        let mut ys: Vec<f64> = drawable
            .iter()
            .flat_map(|(_, p)| p.iter().map(|p| p.y))
            .collect();
        ys.extend(
            self.horizontal
                .iter()
                .map(|r| r.value)
                .filter(|v| usable(*v, self.y_scale)),
        );
        let x_axis = Axis::new(self.x_scale, self.x_format, &xs, LEFT, WIDTH - RIGHT, false);
        let y_axis = Axis::new(self.y_scale, self.y_format, &ys, plot_bottom, TOP, true);

        // Grid, ticks and labels.
        let _ = write!(svg, r#"<g class="axes">"#);
        for tick in x_axis.ticks() {
            let x = x_axis.position(tick);
            let _ = write!(
                svg,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{plot_bottom}" stroke="#e5e5e5"/><text x="{x:.1}" y="{ty:.1}" text-anchor="middle" class="tick">{label}</text>"##,
                ty = plot_bottom + 16.0,
                label = escape(&tick_label(tick, self.x_format)),
            );
        }
        for tick in y_axis.ticks() {
            let y = y_axis.position(tick);
            let _ = write!(
                svg,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{x2}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{tx}" y="{ty:.1}" text-anchor="end" class="tick">{label}</text>"##,
                x2 = WIDTH - RIGHT,
                tx = LEFT - 6.0,
                ty = y + 4.0,
                label = escape(&tick_label(tick, self.y_format)),
            );
        }
        let _ = write!(
            svg,
            r##"<rect x="{LEFT}" y="{TOP}" width="{w}" height="{h}" fill="none" stroke="#888"/><text x="{cx}" y="{ly}" text-anchor="middle" class="axis-label">{xl}</text><text x="14" y="{cy}" text-anchor="middle" transform="rotate(-90 14 {cy})" class="axis-label">{yl}</text></g>"##,
            w = WIDTH - LEFT - RIGHT,
            h = plot_bottom - TOP,
            cx = (LEFT + WIDTH - RIGHT) / 2.0,
            ly = plot_bottom + 34.0,
            cy = (TOP + plot_bottom) / 2.0,
            xl = escape(&self.x_label),
            yl = escape(&self.y_label),
        );

        for rule in &self.horizontal {
            if usable(rule.value, self.y_scale) {
                let y = y_axis.position(rule.value);
                let _ = write!(
                    svg,
                    r#"<g class="rule"><line x1="{LEFT}" y1="{y:.1}" x2="{x2}" y2="{y:.1}" stroke="{c}" stroke-width="2" stroke-dasharray="6 3"/><text x="{tx}" y="{ty:.1}" text-anchor="end" fill="{c}" class="rule-label">{label}</text></g>"#,
                    x2 = WIDTH - RIGHT,
                    c = rule.color,
                    tx = WIDTH - RIGHT - 4.0,
                    ty = y - 5.0,
                    label = escape(&rule.label),
                );
            }
        }
        for (index, rule) in self.vertical.iter().enumerate() {
            if usable(rule.value, self.x_scale) {
                let x = x_axis.position(rule.value);
                let _ = write!(
                    svg,
                    r#"<g class="rule"><line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{plot_bottom}" stroke="{c}" stroke-width="2" stroke-dasharray="6 3"/><text x="{tx:.1}" y="{ty}" fill="{c}" class="rule-label">{label}</text></g>"#,
                    c = rule.color,
                    tx = x + 4.0,
                    // Staggered, so neighbouring rules keep legible labels.
                    ty = TOP + 14.0 + 13.0 * index as f64,
                    label = escape(&rule.label),
                );
            }
        }

        for (index, points) in &drawable {
            let series = &self.series[*index];
            let dash = if series.dashed {
                r#" stroke-dasharray="5 4""#
            } else {
                ""
            };
            match series.style {
                Style::Line => {
                    let mut sorted = points.clone();
                    sorted.sort_by(|a, b| a.x.total_cmp(&b.x));
                    let path: Vec<String> = sorted
                        .iter()
                        .map(|p| format!("{:.1},{:.1}", x_axis.position(p.x), y_axis.position(p.y)))
                        .collect();
                    let _ = write!(
                        svg,
                        r#"<polyline class="series" points="{}" fill="none" stroke="{}" stroke-width="2"{dash}><title>{}</title></polyline>"#,
                        path.join(" "),
                        series.color,
                        escape(&series.name)
                    );
                    for p in sorted.iter().filter(|p| p.highlight || p.outcome.is_some()) {
                        marker(&mut svg, p, series.color, &x_axis, &y_axis);
                    }
                }
                Style::Points => {
                    for p in points {
                        marker(&mut svg, p, series.color, &x_axis, &y_axis);
                    }
                }
            }
        }
        legend(&mut svg, self, &drawable, HEIGHT - 6.0);
        svg.push_str("</svg>");
        svg
    }
}

fn marker(svg: &mut String, p: &Point, color: &str, x_axis: &Axis, y_axis: &Axis) {
    let (x, y) = (x_axis.position(p.x), y_axis.position(p.y));
    let (fill, shape) = match &p.outcome {
        Some(outcome) => outcome_marker(outcome),
        None => (color, "circle"),
    };
    let r = if p.highlight { 6.5 } else { 4.0 };
    let title = format!("<title>{}</title>", escape(&p.label));
    let class = p
        .outcome
        .as_deref()
        .map_or("point".to_string(), |o| format!("point outcome-{o}"));
    let _ = match shape {
        "cross" => write!(
            svg,
            r#"<g class="{class}"><path d="M{a:.1},{b:.1}L{c:.1},{d:.1}M{a:.1},{d:.1}L{c:.1},{b:.1}" stroke="{fill}" stroke-width="2.5"/>{title}</g>"#,
            a = x - r,
            b = y - r,
            c = x + r,
            d = y + r,
        ),
        "triangle" => write!(
            svg,
            r#"<path class="{class}" d="M{x:.1},{a:.1}L{b:.1},{c:.1}L{d:.1},{c:.1}Z" fill="{fill}">{title}</path>"#,
            a = y - r,
            b = x + r,
            c = y + r * 0.8,
            d = x - r,
        ),
        "diamond" => write!(
            svg,
            r#"<path class="{class}" d="M{x:.1},{a:.1}L{b:.1},{y:.1}L{x:.1},{c:.1}L{d:.1},{y:.1}Z" fill="{fill}">{title}</path>"#,
            a = y - r,
            b = x + r,
            c = y + r,
            d = x - r,
        ),
        "square" => write!(
            svg,
            r#"<rect class="{class}" x="{a:.1}" y="{b:.1}" width="{s:.1}" height="{s:.1}" fill="{fill}">{title}</rect>"#,
            a = x - r,
            b = y - r,
            s = 2.0 * r,
        ),
        _ => write!(
            svg,
            r#"<circle class="{class}" cx="{x:.1}" cy="{y:.1}" r="{r}" fill="{fill}" stroke="white" stroke-width="1">{title}</circle>"#,
        ),
    };
    if p.highlight {
        let _ = write!(
            svg,
            r##"<circle class="chosen" cx="{x:.1}" cy="{y:.1}" r="{rr}" fill="none" stroke="#000" stroke-width="2"/>"##,
            rr = r + 4.0
        );
    }
}

/// Series names, and the outcome markers that appear.
fn legend(svg: &mut String, chart: &Chart, drawable: &[(usize, Vec<&Point>)], y: f64) {
    let mut entries: Vec<(String, String)> = Vec::new();
    for (index, points) in drawable {
        if points.is_empty() {
            continue;
        }
        let series = &chart.series[*index];
        let swatch = match series.style {
            Style::Line => format!(
                r#"<line x1="0" y1="-4" x2="16" y2="-4" stroke="{}" stroke-width="2"/>"#,
                series.color
            ),
            Style::Points => format!(r#"<circle cx="8" cy="-4" r="4" fill="{}"/>"#, series.color),
        };
        entries.push((swatch, series.name.clone()));
    }
    let mut outcomes: Vec<&str> = drawable
        .iter()
        .flat_map(|(_, p)| p.iter().filter_map(|p| p.outcome.as_deref()))
        .collect();
    outcomes.sort();
    outcomes.dedup();
    for outcome in outcomes {
        let (color, shape) = outcome_marker(outcome);
        let swatch = match shape {
            "cross" => {
                format!(r#"<path d="M4,-8L12,0M4,0L12,-8" stroke="{color}" stroke-width="2.5"/>"#)
            }
            "triangle" => format!(r#"<path d="M8,-9L13,0L3,0Z" fill="{color}"/>"#),
            "diamond" => format!(r#"<path d="M8,-9L13,-4L8,1L3,-4Z" fill="{color}"/>"#),
            "square" => format!(r#"<rect x="4" y="-8" width="8" height="8" fill="{color}"/>"#),
            _ => format!(r#"<circle cx="8" cy="-4" r="4" fill="{color}"/>"#),
        };
        entries.push((swatch, outcome.replace('_', " ")));
    }
    let mut x = LEFT;
    let mut row = 0.0;
    let _ = write!(svg, r#"<g class="legend">"#);
    for (swatch, name) in entries {
        let width = 28.0 + name.chars().count() as f64 * 6.6;
        if x + width > WIDTH - RIGHT {
            x = LEFT;
            row += LEGEND_ROW;
        }
        let _ = write!(
            svg,
            r#"<g transform="translate({x:.1} {yy:.1})">{swatch}<text x="20" y="0" class="legend-label">{}</text></g>"#,
            escape(&name),
            yy = y + row + LEGEND_ROW,
        );
        x += width;
    }
    svg.push_str("</g>");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(points: Vec<Point>) -> Chart {
        Chart {
            id: "t",
            title: "T <&>".into(),
            x_label: "batch".into(),
            y_label: "bytes".into(),
            x_scale: Scale::Log,
            y_scale: Scale::Linear,
            x_format: Format::Number,
            y_format: Format::Bytes,
            series: vec![Series {
                name: "trials".into(),
                style: Style::Points,
                color: PALETTE[0],
                dashed: false,
                points,
            }],
            horizontal: vec![Rule {
                value: 2e9,
                label: "budget".into(),
                color: BUDGET_COLOR,
            }],
            vertical: Vec::new(),
            empty_note: "nothing measured".into(),
        }
    }

    #[test]
    fn non_finite_and_non_positive_points_are_dropped_never_drawn_as_nan() {
        let mut bad = Point::new(f64::NAN, 1.0, "nan".into());
        bad.outcome = Some("crashed".into());
        let points = vec![
            bad,
            Point::new(0.0, 5.0, "zero on a log axis".into()),
            Point::new(64.0, f64::INFINITY, "inf".into()),
            Point::new(64.0, 1e9, "ok".into()),
            Point::new(1024.0, 1.5e9, "ok".into()),
        ];
        let svg = chart(points).render();
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        assert_eq!(svg.matches("<circle class=\"point\"").count(), 2);
        assert!(svg.contains("T &lt;&amp;&gt;"));
        assert!(svg.contains("budget"));
    }

    #[test]
    fn an_empty_chart_says_why() {
        let svg = chart(vec![Point::new(f64::NAN, f64::NAN, String::new())]).render();
        assert!(svg.contains("nothing measured"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }

    #[test]
    fn outcomes_get_their_markers_and_a_legend() {
        let mut oom = Point::new(2048.0, 2.1e9, "oom".into());
        oom.outcome = Some("out_of_memory".into());
        let mut ok = Point::new(1024.0, 1.0e9, "ok".into());
        ok.outcome = Some("ok".into());
        ok.highlight = true;
        let svg = chart(vec![oom, ok]).render();
        assert!(svg.contains("outcome-out_of_memory"));
        assert!(svg.contains("class=\"chosen\""));
        assert!(svg.contains(">out of memory</text>"));
    }

    #[test]
    fn byte_axes_tick_at_round_binary_sizes() {
        let axis = Axis::new(
            Scale::Linear,
            Format::Bytes,
            &[0.0, 470.0 * 1048576.0],
            0.0,
            1.0,
            true,
        );
        let ticks = axis.ticks();
        assert_eq!(ticks[1], 100.0 * 1048576.0, "{ticks:?}");
        assert!(ticks.iter().all(|t| (t / 1048576.0).fract() == 0.0));
    }

    #[test]
    fn tick_labels_are_compact() {
        assert_eq!(tick_label(1536.0, Format::Number), "1.5k");
        assert_eq!(tick_label(2e6, Format::Number), "2M");
        assert_eq!(tick_label(1e-4, Format::Number), "1e-4");
        assert_eq!(tick_label(0.25, Format::Number), "0.25");
        assert_eq!(tick_label(512.0 * 1024.0 * 1024.0, Format::Bytes), "512MiB");
        assert_eq!(
            tick_label(1.5 * 1024.0 * 1024.0 * 1024.0, Format::Bytes),
            "1.5GiB"
        );
    }
}
