//! SPECpower_ssj2008 results shipped in `data/specpower/` (see data/README.md for attribution):
//! measured whole-server watts at idle and 10 %…100 % load.

use anyhow::{bail, Context, Result};

const CURATED: &str = include_str!("../../data/specpower/specpower_curated.csv");

/// Temperature sensitivity used wherever the demo turns inlet temperature into watts: about
/// +0.4 % power per °C above 23 °C (sanity_numbers.csv: +0.35–0.5 %/°C between 23 and 30 °C).
pub const WATTS_PER_CELSIUS_FRACTION: f64 = 0.004;
pub const REFERENCE_INLET_CELSIUS: f64 = 23.0;

/// One published result.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecServer {
    pub name: String,
    pub year: u32,
    pub sockets: u32,
    pub threads: u32,
    pub result_id: String,
    pub url: String,
    /// Watts at 0 %, 10 %, …, 100 % load.
    pub watts: [f64; 11],
}

impl SpecServer {
    /// Watts at utilisation `u` (0..1), linear between the published load levels.
    pub fn watts_at(&self, u: f64) -> f64 {
        let x = u.clamp(0.0, 1.0) * 10.0;
        let i = (x.floor() as usize).min(9);
        self.watts[i] + (self.watts[i + 1] - self.watts[i]) * (x - i as f64)
    }

    /// Watts at `u` and an inlet temperature.
    pub fn watts_at_inlet(&self, u: f64, inlet_celsius: f64) -> f64 {
        self.watts_at(u)
            * (1.0 + WATTS_PER_CELSIUS_FRACTION * (inlet_celsius - REFERENCE_INLET_CELSIUS))
    }

    /// Least-squares `(a, b)` of `watts ≈ idle + a·u + b·u²` over the published levels.
    pub fn quadratic_fit(&self) -> (f64, f64) {
        let idle = self.watts[0];
        let (mut s11, mut s12, mut s22, mut r1, mut r2) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (i, w) in self.watts.iter().enumerate() {
            let u = i as f64 / 10.0;
            let (f1, f2, y) = (u, u * u, w - idle);
            s11 += f1 * f1;
            s12 += f1 * f2;
            s22 += f2 * f2;
            r1 += f1 * y;
            r2 += f2 * y;
        }
        let det = s11 * s22 - s12 * s12;
        ((r1 * s22 - r2 * s12) / det, (s11 * r2 - s12 * r1) / det)
    }
}

/// Splits one CSV line, honouring double quotes (names contain commas).
fn fields(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut field)),
            _ => field.push(c),
        }
    }
    out.push(field);
    out
}

/// The 68 curated single-node results.
pub fn curated() -> Result<Vec<SpecServer>> {
    let mut lines = CURATED.lines();
    let header = fields(lines.next().context("empty CSV")?);
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("specpower_curated.csv has no column {name:?}"))
    };
    let levels = [
        "idle_w", "w_at_10", "w_at_20", "w_at_30", "w_at_40", "w_at_50", "w_at_60", "w_at_70",
        "w_at_80", "w_at_90", "w_at_100",
    ];
    let level_columns = levels
        .iter()
        .map(|l| column(l))
        .collect::<Result<Vec<_>>>()?;
    let (name, year, sockets, threads, result_id, url) = (
        column("name")?,
        column("year")?,
        column("sockets")?,
        column("threads")?,
        column("result_id")?,
        column("url")?,
    );
    let mut servers = Vec::new();
    for (n, line) in lines.enumerate() {
        let row = fields(line);
        if row.len() != header.len() {
            bail!(
                "specpower_curated.csv line {}: {} fields, expected {}",
                n + 2,
                row.len(),
                header.len()
            );
        }
        let mut watts = [0.0; 11];
        for (w, &c) in watts.iter_mut().zip(&level_columns) {
            *w = row[c]
                .parse()
                .with_context(|| format!("line {}: {:?} is not watts", n + 2, row[c]))?;
        }
        servers.push(SpecServer {
            name: row[name].clone(),
            year: row[year].parse()?,
            sockets: row[sockets].parse()?,
            threads: row[threads].parse()?,
            result_id: row[result_id].clone(),
            url: row[url].clone(),
            watts,
        });
    }
    Ok(servers)
}

/// The curated result with this `result_id`.
pub fn by_result_id(id: &str) -> Result<SpecServer> {
    curated()?
        .into_iter()
        .find(|s| s.result_id == id)
        .with_context(|| {
            format!("no SPECpower result {id} in data/specpower/specpower_curated.csv")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_curated_row_parses_and_rises_with_load() {
        let servers = curated().unwrap();
        assert_eq!(servers.len(), 68);
        for s in &servers {
            assert!(s.watts[0] > 0.0 && s.watts[10] > s.watts[0], "{}", s.name);
            assert!(s.url.starts_with("https://www.spec.org/"), "{}", s.url);
        }
        let quoted = servers
            .iter()
            .find(|s| s.name.contains(','))
            .expect("a quoted name");
        assert!(quoted.name.starts_with("Dell Inc. PowerEdge 2970"));
    }

    #[test]
    fn interpolation_and_fit_follow_the_published_levels() {
        let s = by_result_id("power_ssj2008-20181125-00869").unwrap();
        assert_eq!(s.watts_at(0.0), 10.0);
        assert_eq!(s.watts_at(1.0), 71.7);
        let mid = s.watts_at(0.55);
        assert!(mid > s.watts[5] && mid < s.watts[6]);
        let (a, b) = s.quadratic_fit();
        for (i, w) in s.watts.iter().enumerate() {
            let u = i as f64 / 10.0;
            let fit = s.watts[0] + a * u + b * u * u;
            assert!((fit - w).abs() < 0.1 * w.max(10.0), "{u}: {fit} vs {w}");
        }
    }
}
