//! SPECpower_ssj2008 results shipped in `data/specpower/` (see data/README.md for attribution):
//! measured whole-server watts at idle and 10 %…100 % load; and `models/held_out.csv`, the results
//! the shipped power models were not trained on.

use anyhow::{bail, Context, Result};

const CURATED: &str = include_str!("../../data/specpower/specpower_curated.csv");
/// Written by models/train.py.
const HELD_OUT: &str = include_str!("../../models/held_out.csv");

/// The load-level columns, idle first.
const LEVEL_COLUMNS: [&str; 11] = [
    "idle_w", "w_at_10", "w_at_20", "w_at_30", "w_at_40", "w_at_50", "w_at_60", "w_at_70",
    "w_at_80", "w_at_90", "w_at_100",
];

/// Temperature sensitivity used wherever the demo turns inlet temperature into watts: about
/// +0.4 % power per °C above 23 °C (sanity_numbers.csv: +0.35–0.5 %/°C between 23 and 30 °C).
const WATTS_PER_CELSIUS_FRACTION: f64 = 0.004;
const REFERENCE_INLET_CELSIUS: f64 = 23.0;

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

/// Watts at utilisation `u` (0..1), linear between the 11 published load levels.
fn interpolate(watts: &[f64; 11], u: f64) -> f64 {
    let x = u.clamp(0.0, 1.0) * 10.0;
    let i = (x.floor() as usize).min(9);
    watts[i] + (watts[i + 1] - watts[i]) * (x - i as f64)
}

impl SpecServer {
    /// Watts at utilisation `u` (0..1), linear between the published load levels.
    pub fn watts_at(&self, u: f64) -> f64 {
        interpolate(&self.watts, u)
    }

    /// Watts at `u` and an inlet temperature.
    pub fn watts_at_inlet(&self, u: f64, inlet_celsius: f64) -> f64 {
        self.watts_at(u)
            * (1.0 + WATTS_PER_CELSIUS_FRACTION * (inlet_celsius - REFERENCE_INLET_CELSIUS))
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

/// A CSV file's rows as (header index by name, rows), each row checked for its field count.
fn table(text: &str, file: &str) -> Result<(Vec<String>, Vec<Vec<String>>)> {
    let mut lines = text.lines();
    let header = fields(lines.next().with_context(|| format!("{file} is empty"))?);
    let mut rows = Vec::new();
    for (n, line) in lines.enumerate() {
        let row = fields(line);
        if row.len() != header.len() {
            bail!(
                "{file} line {}: {} fields, expected {}",
                n + 2,
                row.len(),
                header.len()
            );
        }
        rows.push(row);
    }
    Ok((header, rows))
}

/// Index of column `name`.
fn column(header: &[String], file: &str, name: &str) -> Result<usize> {
    header
        .iter()
        .position(|h| h == name)
        .with_context(|| format!("{file} has no column {name:?}"))
}

/// The 11 level watts of `row`.
fn level_watts(header: &[String], row: &[String], file: &str, line: usize) -> Result<[f64; 11]> {
    let mut watts = [0.0; 11];
    for (w, name) in watts.iter_mut().zip(LEVEL_COLUMNS) {
        let text = &row[column(header, file, name)?];
        *w = text
            .parse()
            .with_context(|| format!("{file} line {line}: {text:?} is not watts"))?;
    }
    Ok(watts)
}

/// The 68 curated single-node results.
pub fn curated() -> Result<Vec<SpecServer>> {
    let file = "specpower_curated.csv";
    let (header, rows) = table(CURATED, file)?;
    let col = |name: &str| column(&header, file, name);
    let (name, year, sockets, threads, result_id, url) = (
        col("name")?,
        col("year")?,
        col("sockets")?,
        col("threads")?,
        col("result_id")?,
        col("url")?,
    );
    let mut servers = Vec::new();
    for (n, row) in rows.iter().enumerate() {
        servers.push(SpecServer {
            name: row[name].clone(),
            year: row[year].parse()?,
            sockets: row[sockets].parse()?,
            threads: row[threads].parse()?,
            result_id: row[result_id].clone(),
            url: row[url].clone(),
            watts: level_watts(&header, row, file, n + 2)?,
        });
    }
    Ok(servers)
}

/// A result the shipped power models were not trained on (models/held_out.csv).
#[derive(Debug, Clone, PartialEq)]
pub struct HeldOutServer {
    pub result_id: String,
    pub url: String,
    pub name: String,
    /// Watts at 0 %, 10 %, …, 100 % load.
    pub watts: [f64; 11],
}

impl HeldOutServer {
    /// Watts at utilisation `u` (0..1), linear between the published load levels.
    pub fn watts_at(&self, u: f64) -> f64 {
        interpolate(&self.watts, u)
    }
}

/// The held-out result with this `result_id`.
pub fn held_out(id: &str) -> Result<HeldOutServer> {
    let file = "models/held_out.csv";
    let (header, rows) = table(HELD_OUT, file)?;
    let col = |name: &str| column(&header, file, name);
    let (result_id, url, name) = (col("result_id")?, col("url")?, col("name")?);
    let (n, row) = rows
        .iter()
        .enumerate()
        .find(|(_, row)| row[result_id] == id)
        .with_context(|| format!("no SPECpower result {id} in {file}"))?;
    Ok(HeldOutServer {
        result_id: row[result_id].clone(),
        url: row[url].clone(),
        name: row[name].clone(),
        watts: level_watts(&header, row, file, n + 2)?,
    })
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
    fn interpolation_follows_the_published_levels() {
        let s = by_result_id("power_ssj2008-20181125-00869").unwrap();
        assert_eq!(s.watts_at(0.0), 10.0);
        assert_eq!(s.watts_at(1.0), 71.7);
        let mid = s.watts_at(0.55);
        assert!(mid > s.watts[5] && mid < s.watts[6]);
        // The demo's five servers (tests/src/bin/demo.rs).
        for id in [
            "power_ssj2008-20181125-00869",
            "power_ssj2008-20220204-01163",
            "power_ssj2008-20191203-01014",
            "power_ssj2008-20130304-00599",
            "power_ssj2008-20130610-00616",
        ] {
            let server = by_result_id(id).unwrap();
            assert!(
                server.watts.windows(2).all(|w| w[0] <= w[1]),
                "{}: published watts rise with load",
                server.name
            );
        }
    }

    #[test]
    fn held_out_results_parse() {
        let s = held_out("power_ssj2008-20090316-00130").unwrap();
        assert_eq!(s.name, "Apple Inc. Xserve3,1", "a quoted name");
        assert_eq!(s.watts[0], 173.0);
        assert_eq!(s.watts[10], 334.0);
        assert_eq!(s.watts_at(0.45), (228.0 + 244.0) / 2.0);
        assert!(s.url.ends_with("power_ssj2008-20090316-00130.html"));
        let err = held_out("power_ssj2008-00000000-00000").unwrap_err();
        assert!(err.to_string().contains("held_out.csv"), "{err}");
    }
}
