//! `--svg`: a plain horizontal bar chart of the headline ratios, per scenario against one
//! reference system of the same run (the Linux bridge, the 2-port vswitch, the bridge CNI
//! plugin), turned so that longer is better (RTT, RSS and latency ratios are inverted). A
//! vertical line marks 1.0 (as good as the reference).

use std::fmt::Write as _;

use crate::report::{ratio, scenario_metrics, systems, Better, Record, SCENARIOS};

const COLORS: &[&str] = &["#3b6fb6", "#e08a2c", "#4c9a55", "#b64a3b", "#7d5aa6"];
const LEFT: f64 = 190.0;
const BAR_W: f64 = 560.0;
const BAR_H: f64 = 11.0;
const WIDTH: f64 = LEFT + BAR_W + 90.0;

/// The reference of one row: in the scale scenario each switch against its own 2-port case.
fn row_reference(scenario: &str, system: &str, default: &str, syss: &[String]) -> String {
    if scenario == "scale" && system.starts_with("br-") && syss.iter().any(|s| s == "br-2p") {
        return "br-2p".into();
    }
    default.to_string()
}

/// The reference system of a scenario: the first of the preferred names present, else the first.
pub fn reference(scenario: &str, syss: &[String]) -> Option<String> {
    let preferred: &[&str] = match scenario {
        "traffic" => &["bridge", "veth"],
        "scale" => &["vs-2p"],
        "cni" => &["cni-bridge"],
        _ => &[],
    };
    preferred
        .iter()
        .find(|p| syss.iter().any(|s| s == *p))
        .map(|p| p.to_string())
        .or_else(|| syss.first().cloned())
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn render(records: &[Record]) -> String {
    let mut body = String::new();
    let mut y = 30.0;
    for (scen, _, _) in SCENARIOS {
        let syss = systems(records, scen);
        let Some(refsys) = reference(scen, &syss) else {
            continue;
        };
        let defs: Vec<_> = scenario_metrics(scen)
            .iter()
            .filter(|d| d.headline)
            .collect();
        // Rows: (system, [(metric index, value)]).
        let mut rows = Vec::new();
        let mut max: f64 = 1.0;
        let mut refs: Vec<String> = vec![refsys.clone()];
        for s in syss.iter() {
            let rs = row_reference(scen, s, &refsys, &syss);
            if *s == rs {
                continue;
            }
            if !refs.contains(&rs) {
                refs.push(rs.clone());
            }
            let mut vals = Vec::new();
            for (i, d) in defs.iter().enumerate() {
                let r = ratio(records, scen, s, &rs, d.key).map(|r| {
                    if d.better == Better::Lower && r > 0.0 {
                        1.0 / r
                    } else {
                        r
                    }
                });
                if let Some(r) = r {
                    max = max.max(r);
                }
                vals.push((i, r));
            }
            let label = if rs == refsys {
                s.clone()
            } else {
                format!("{s} (vs {rs})")
            };
            rows.push((label, vals));
        }
        if rows.is_empty() {
            continue;
        }
        let scale = BAR_W / (max * 1.05);
        let _ = writeln!(
            body,
            r#"<text x="10" y="{y}" font-size="14" font-weight="bold">{} — ratio vs {} (same run; longer is better)</text>"#,
            esc(scen),
            esc(&refs.join(" / "))
        );
        y += 8.0;
        // Legend.
        let mut lx = LEFT;
        for (i, d) in defs.iter().enumerate() {
            let label = if d.better == Better::Lower {
                format!("{} (inverted)", d.label)
            } else {
                d.label.to_string()
            };
            let _ = writeln!(
                body,
                r#"<rect x="{lx}" y="{y}" width="10" height="10" fill="{}"/><text x="{}" y="{}" font-size="11">{}</text>"#,
                COLORS[i % COLORS.len()],
                lx + 14.0,
                y + 9.0,
                esc(&label)
            );
            lx += 14.0 + 7.0 * label.len() as f64 + 14.0;
        }
        y += 18.0;
        let top = y;
        for (s, vals) in &rows {
            let _ = writeln!(
                body,
                r#"<text x="{}" y="{}" font-size="12" text-anchor="end">{}</text>"#,
                LEFT - 6.0,
                y + BAR_H * vals.len() as f64 / 2.0 + 4.0,
                esc(s)
            );
            for (i, v) in vals {
                match v {
                    Some(v) => {
                        let w = (v * scale).max(1.0);
                        let _ = writeln!(
                            body,
                            r#"<rect x="{LEFT}" y="{y}" width="{w:.1}" height="{}" fill="{}"/><text x="{:.1}" y="{}" font-size="10">{v:.2}</text>"#,
                            BAR_H - 1.0,
                            COLORS[i % COLORS.len()],
                            LEFT + w + 3.0,
                            y + BAR_H - 2.0
                        );
                    }
                    None => {
                        let _ = writeln!(
                            body,
                            r##"<text x="{}" y="{}" font-size="10" fill="#888">n/a</text>"##,
                            LEFT + 3.0,
                            y + BAR_H - 2.0
                        );
                    }
                }
                y += BAR_H;
            }
            y += 6.0;
        }
        let x1 = LEFT + scale;
        let _ = writeln!(
            body,
            r##"<line x1="{x1:.1}" y1="{}" x2="{x1:.1}" y2="{y}" stroke="#000" stroke-dasharray="4,3"/><text x="{x1:.1}" y="{}" font-size="10" text-anchor="middle">1.0 = {}</text>"##,
            top - 4.0,
            y + 12.0,
            esc(&refsys)
        );
        y += 40.0;
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{y}\" font-family=\"sans-serif\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>\n{body}</svg>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_a_bar_per_measured_ratio() {
        let mut rs = Vec::new();
        for (s, v) in [("bridge", 10.0), ("vs-tap", 5.0)] {
            let mut r = Record::new("traffic", s, "", 1);
            r.set("tcp1_gbps", Some(v));
            r.set("ping_p50_us", Some(v));
            rs.push(r);
        }
        let svg = render(&rs);
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains(">vs-tap<"));
        // TCP 0.5; ping 5/10 inverted = 2.0.
        assert!(svg.contains(">0.50<"), "{svg}");
        assert!(svg.contains(">2.00<"), "{svg}");
        assert!(svg.contains("n/a"));
    }
}
