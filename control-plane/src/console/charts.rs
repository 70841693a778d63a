//! Charts as SVG markup drawn on the server: horizontal bars and stacked columns over days.
//! Labels are escaped here; the markup goes into templates as it is.

use std::fmt::Write;

/// Text for SVG content and attributes.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// One bar per `(label, value, color)`, longest to scale, the value after each bar.
pub(crate) fn bars(items: &[(String, i64, &str)]) -> String {
    let max = items.iter().map(|i| i.1).max().unwrap_or(0).max(1);
    let (row, label_w, bar_w) = (24, 110, 300);
    let mut svg = format!(
        "<svg class=\"bars\" viewBox=\"0 0 460 {}\" width=\"100%\" role=\"img\" aria-label=\"{}\">",
        items.len() * row + 4,
        esc(&items.iter().map(|(l, v, _)| format!("{l}: {v}")).collect::<Vec<_>>().join(", "))
    );
    for (i, (label, value, color)) in items.iter().enumerate() {
        let y = i * row;
        let w = (*value).max(0) * bar_w / max;
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{}\">{}</text><rect x=\"{label_w}\" y=\"{}\" width=\"{w}\" height=\"16\" rx=\"3\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{value}</text>",
            y + 15,
            esc(label),
            y + 3,
            esc(color),
            label_w + w + 6,
            y + 15,
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Stacked columns: one per `(label, [values])`, the series named and colored by `series`;
/// a legend above. Values are counts or amounts (not negative).
pub(crate) fn columns(days: &[(String, Vec<f64>)], series: &[(&str, &str)], unit: &str) -> String {
    let max = days.iter().map(|(_, v)| v.iter().sum::<f64>()).fold(0.0, f64::max);
    let max = if max > 0.0 { max } else { 1.0 };
    let (left, top, height, width) = (48.0, 28.0, 140.0, 700.0);
    let step = width / days.len().max(1) as f64;
    let bar = (step * 0.7).max(1.0);
    let mut svg = format!("<svg class=\"bars\" viewBox=\"0 0 760 {}\" width=\"100%\" role=\"img\" aria-label=\"{}\">", top + height + 24.0, esc(unit));
    for (i, (name, color)) in series.iter().enumerate() {
        let x = left + i as f64 * 130.0;
        let _ = write!(svg, "<rect x=\"{x}\" y=\"4\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"13\">{}</text>", esc(color), x + 14.0, esc(name));
    }
    for k in 0..=2 {
        let v = max * f64::from(k) / 2.0;
        let y = top + height - height * f64::from(k) / 2.0;
        let label = format!("{v:.2}").trim_end_matches('0').trim_end_matches('.').to_string();
        let _ = write!(svg, "<line x1=\"{left}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#e2e7ee\"/><text x=\"0\" y=\"{}\">{label}</text>", left + width, y + 4.0);
    }
    for (i, (label, values)) in days.iter().enumerate() {
        let x = left + i as f64 * step + (step - bar) / 2.0;
        let mut y = top + height;
        for (v, (name, color)) in values.iter().zip(series) {
            let h = height * v.max(0.0) / max;
            y -= h;
            let _ = write!(svg, "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar:.1}\" height=\"{h:.1}\" fill=\"{}\"><title>{} {}: {v}</title></rect>", esc(color), esc(label), esc(name));
        }
        // Every day's label when there is room, else every seventh.
        if days.len() <= 14 || i % 7 == 0 {
            let _ = write!(svg, "<text x=\"{x:.1}\" y=\"{}\">{}</text>", top + height + 16.0, esc(label));
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_bars_scale_to_the_longest() {
        let svg = bars(&[("<b>".into(), 10, "#000"), ("half".into(), 5, "#111")]);
        assert!(svg.contains("&lt;b&gt;") && !svg.contains("<b>"));
        assert!(svg.contains("width=\"300\"") && svg.contains("width=\"150\""));
        let svg = columns(&[("12-01".into(), vec![1.0, 3.0]), ("12-02".into(), vec![0.0, 0.0])], &[("a", "#000"), ("b", "#111")], "calls");
        assert!(svg.contains("<title>12-01 b: 3</title>"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }
}
