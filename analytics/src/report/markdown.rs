//! The report as Markdown: GitHub-flavoured tables, every cell escaped.

use std::fmt::Write as _;

use base64::Engine as _;

use super::tables::{
    Table, dur, recommendations_table, regressions_note, regressions_table, summary_table, time,
    trends_table,
};
use super::{ChartEmbed, ReportChart, ReportData};

/// Escapes Markdown's inline syntax in a table cell: CommonMark lets any ASCII
/// punctuation be backslash-escaped, and `|` would end the cell.
fn md_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '&' | '~' | '#' | '!' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn md_table(out: &mut String, t: &Table) {
    let row = |cells: &mut dyn Iterator<Item = String>| {
        let cells: Vec<String> = cells.collect();
        format!("| {} |\n", cells.join(" | "))
    };
    out.push_str(&row(&mut t.header.iter().map(|h| md_escape(h))));
    out.push_str(&row(&mut t.header.iter().map(|_| "---".to_owned())));
    for r in &t.rows {
        out.push_str(&row(&mut r.iter().map(|c| md_escape(c))));
    }
    out.push('\n');
}

/// The report as Markdown (GitHub flavour tables).
pub fn markdown(d: &ReportData, charts: &[ReportChart]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# webaccel report\n\nGenerated {}.\n",
        time(d.generated_at_s)
    );
    o.push_str("## Summary\n\n");
    md_table(&mut o, &summary_table(d));
    o.push_str("## Recommendations per model\n\n");
    if d.recommendations.is_empty() {
        let _ = writeln!(
            o,
            "No recommendation: fewer than {} successful requests per choice.\n",
            d.min_samples
        );
    } else {
        md_table(&mut o, &recommendations_table(d));
    }
    let _ = writeln!(o, "## Regressions\n\n{}\n", regressions_note(d));
    if d.regressions.is_empty() {
        o.push_str("No significant slowdown.\n\n");
    } else {
        md_table(&mut o, &regressions_table(d));
    }
    if !charts.is_empty() {
        o.push_str("## Charts\n\n");
        for c in charts {
            let src = match &c.embed {
                ChartEmbed::Svg(svg) => format!(
                    "data:image/svg+xml;base64,{}",
                    base64::engine::general_purpose::STANDARD.encode(svg)
                ),
                // Spaces and parentheses would end a Markdown link target.
                ChartEmbed::Link(href) => format!("<{}>", href.replace(['<', '>', '\n'], "")),
            };
            let _ = writeln!(o, "![{}]({src})\n", md_escape(&c.title));
        }
    }
    let (table, omitted) = trends_table(d);
    let _ = writeln!(
        o,
        "## Trends\n\nLatency of successful requests per {} bucket (UTC).\n",
        dur(d.bucket_s)
    );
    if table.rows.is_empty() {
        o.push_str("No successful requests in the window.\n");
    } else {
        if omitted > 0 {
            let _ = writeln!(o, "The {omitted} oldest rows are left out.\n");
        }
        md_table(&mut o, &table);
    }
    o
}
