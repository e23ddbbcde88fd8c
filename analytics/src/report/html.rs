//! The report as one self-contained HTML page, every value escaped.

use std::fmt::Write as _;

use super::tables::{
    Table, dur, recommendations_table, regressions_note, regressions_table, summary_table, time,
    trends_table,
};
use super::{ChartEmbed, ReportChart, ReportData};

/// Escapes text for HTML element content and quoted attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn html_table(o: &mut String, id: &str, t: &Table) {
    let _ = write!(o, "<table id=\"{id}\">\n<thead><tr>");
    for h in &t.header {
        let _ = write!(o, "<th>{}</th>", html_escape(h));
    }
    o.push_str("</tr></thead>\n<tbody>\n");
    for r in &t.rows {
        o.push_str("<tr>");
        for c in r {
            let _ = write!(o, "<td>{}</td>", html_escape(c));
        }
        o.push_str("</tr>\n");
    }
    o.push_str("</tbody>\n</table>\n");
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:70em;\
padding:0 1em;color:#222}table{border-collapse:collapse;margin:1em 0}\
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}\
th{background:#f4f4f4}td{font-variant-numeric:tabular-nums}\
figure{margin:1em 0}figure svg,figure img{max-width:100%;height:auto}";

/// The report as one self-contained HTML page: charts inline, no external resource
/// unless a chart is a [`ChartEmbed::Link`].
pub fn html(d: &ReportData, charts: &[ReportChart]) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>webaccel report</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <h1>webaccel report</h1>\n<p>Generated {}.</p>\n",
        html_escape(&time(d.generated_at_s))
    );
    o.push_str("<section id=\"summary-section\">\n<h2>Summary</h2>\n");
    html_table(&mut o, "summary", &summary_table(d));
    o.push_str("</section>\n<section id=\"recommendations-section\">\n<h2>Recommendations per model</h2>\n");
    if d.recommendations.is_empty() {
        let _ = writeln!(
            o,
            "<p>No recommendation: fewer than {} successful requests per choice.</p>",
            d.min_samples
        );
    } else {
        html_table(&mut o, "recommendations", &recommendations_table(d));
    }
    let _ = writeln!(
        o,
        "</section>\n<section id=\"regressions-section\">\n<h2>Regressions</h2>\n<p>{}</p>",
        html_escape(&regressions_note(d))
    );
    if d.regressions.is_empty() {
        o.push_str("<p>No significant slowdown.</p>\n");
    } else {
        html_table(&mut o, "regressions", &regressions_table(d));
    }
    o.push_str("</section>\n");
    if !charts.is_empty() {
        o.push_str("<section id=\"charts-section\">\n<h2>Charts</h2>\n");
        for c in charts {
            o.push_str("<figure>\n");
            match &c.embed {
                ChartEmbed::Svg(svg) => {
                    // plotters' own markup, its text escaped by plotters; any XML
                    // prolog would be out of place inside HTML.
                    let start = svg.find("<svg").unwrap_or(0);
                    o.push_str(svg[start..].trim());
                }
                ChartEmbed::Link(href) => {
                    let _ = write!(
                        o,
                        "<img src=\"{}\" alt=\"{}\">",
                        html_escape(href),
                        html_escape(&c.title)
                    );
                }
            }
            let _ = write!(
                o,
                "\n<figcaption>{}</figcaption>\n</figure>\n",
                html_escape(&c.title)
            );
        }
        o.push_str("</section>\n");
    }
    let (table, omitted) = trends_table(d);
    let _ = writeln!(
        o,
        "<section id=\"trends-section\">\n<h2>Trends</h2>\n\
         <p>Latency of successful requests per {} bucket (UTC).</p>",
        html_escape(&dur(d.bucket_s))
    );
    if table.rows.is_empty() {
        o.push_str("<p>No successful requests in the window.</p>\n");
    } else {
        if omitted > 0 {
            let _ = writeln!(o, "<p>The {omitted} oldest rows are left out.</p>");
        }
        html_table(&mut o, "trends", &table);
    }
    o.push_str("</section>\n</body>\n</html>\n");
    o
}
