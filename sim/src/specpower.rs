//! SPECpower_ssj2008 results shipped in `data/specpower/` (see data/README.md for attribution):
//! measured whole-server watts at idle and 10 %…100 % load; and `models/held_out.csv`, the results
//! the shipped power models were not trained on. The simulator's nodes and the local demo's fake
//! BMCs draw these watts.

use thiserror::Error;

const CURATED: &str = include_str!("../../data/specpower/specpower_curated.csv");
/// Written by models/train.py.
const HELD_OUT: &str = include_str!("../../models/held_out.csv");

/// The load-level columns, idle first.
const LEVEL_COLUMNS: [&str; 11] = [
    "idle_w", "w_at_10", "w_at_20", "w_at_30", "w_at_40", "w_at_50", "w_at_60", "w_at_70",
    "w_at_80", "w_at_90", "w_at_100",
];

/// Temperature sensitivity used wherever inlet temperature is turned into true watts (the demo's
/// BMCs, the simulator's nodes): about +0.4 % power per °C above 23 °C (sanity_numbers.csv:
/// +0.35–0.5 %/°C between 23 and 30 °C).
const WATTS_PER_CELSIUS_FRACTION: f64 = 0.004;
const REFERENCE_INLET_CELSIUS: f64 = 23.0;

/// A shipped table that does not read as expected.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SpecError {
    #[error("{file} line {line}: {problem}")]
    Row {
        file: &'static str,
        line: usize,
        problem: String,
    },
    #[error("{file}: {problem}")]
    Table { file: &'static str, problem: String },
    #[error("no SPECpower result {id} in {file}")]
    UnknownResult { id: String, file: &'static str },
}

/// One published result.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecServer {
    pub name: String,
    pub year: u32,
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
    /// Installed memory, GB.
    pub memory_gb: f64,
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

/// How much more a server draws at `inlet_celsius` than at the reference inlet (a factor).
pub fn inlet_factor(inlet_celsius: f64) -> f64 {
    1.0 + WATTS_PER_CELSIUS_FRACTION * (inlet_celsius - REFERENCE_INLET_CELSIUS)
}

impl SpecServer {
    /// Watts at utilisation `u` (0..1), linear between the published load levels.
    pub fn watts_at(&self, u: f64) -> f64 {
        interpolate(&self.watts, u)
    }

    /// Watts at `u` and an inlet temperature.
    pub fn watts_at_inlet(&self, u: f64, inlet_celsius: f64) -> f64 {
        self.watts_at(u) * inlet_factor(inlet_celsius)
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

/// A shipped CSV table: its header and rows, each row checked for its field count.
struct Table {
    file: &'static str,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn parse(text: &str, file: &'static str) -> Result<Self, SpecError> {
        let mut lines = text.lines();
        let header = fields(lines.next().ok_or(SpecError::Table {
            file,
            problem: "is empty".into(),
        })?);
        let mut rows = Vec::new();
        for (n, line) in lines.enumerate() {
            let row = fields(line);
            if row.len() != header.len() {
                return Err(SpecError::Row {
                    file,
                    line: n + 2,
                    problem: format!("{} fields, expected {}", row.len(), header.len()),
                });
            }
            rows.push(row);
        }
        Ok(Self { file, header, rows })
    }

    /// Index of column `name`.
    fn column(&self, name: &str) -> Result<usize, SpecError> {
        self.header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| SpecError::Table {
                file: self.file,
                problem: format!("has no column {name:?}"),
            })
    }

    /// Row `index`'s value in column `name`, parsed.
    fn value<T: std::str::FromStr>(&self, index: usize, name: &str) -> Result<T, SpecError> {
        let text = &self.rows[index][self.column(name)?];
        text.parse().map_err(|_| SpecError::Row {
            file: self.file,
            line: index + 2,
            problem: format!("{name} {text:?} is not a number"),
        })
    }

    fn text(&self, index: usize, name: &str) -> Result<String, SpecError> {
        Ok(self.rows[index][self.column(name)?].clone())
    }

    /// The 11 level watts of row `index`.
    fn level_watts(&self, index: usize) -> Result<[f64; 11], SpecError> {
        let mut watts = [0.0; 11];
        for (w, name) in watts.iter_mut().zip(LEVEL_COLUMNS) {
            *w = self.value(index, name)?;
        }
        Ok(watts)
    }
}

/// The 68 curated single-node results.
pub fn curated() -> Result<Vec<SpecServer>, SpecError> {
    let table = Table::parse(CURATED, "data/specpower/specpower_curated.csv")?;
    (0..table.rows.len())
        .map(|i| {
            Ok(SpecServer {
                name: table.text(i, "name")?,
                year: table.value(i, "year")?,
                sockets: table.value(i, "sockets")?,
                cores: table.value(i, "cores")?,
                threads: table.value(i, "threads")?,
                memory_gb: table.value(i, "mem_gb")?,
                result_id: table.text(i, "result_id")?,
                url: table.text(i, "url")?,
                watts: table.level_watts(i)?,
            })
        })
        .collect()
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
pub fn held_out(id: &str) -> Result<HeldOutServer, SpecError> {
    let file = "models/held_out.csv";
    let table = Table::parse(HELD_OUT, file)?;
    let column = table.column("result_id")?;
    let i = table
        .rows
        .iter()
        .position(|row| row[column] == id)
        .ok_or_else(|| SpecError::UnknownResult {
            id: id.into(),
            file,
        })?;
    Ok(HeldOutServer {
        result_id: table.text(i, "result_id")?,
        url: table.text(i, "url")?,
        name: table.text(i, "name")?,
        watts: table.level_watts(i)?,
    })
}

/// The curated result with this `result_id`.
pub fn by_result_id(id: &str) -> Result<SpecServer, SpecError> {
    curated()?
        .into_iter()
        .find(|s| s.result_id == id)
        .ok_or_else(|| SpecError::UnknownResult {
            id: id.into(),
            file: "data/specpower/specpower_curated.csv",
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
            assert!(s.threads >= s.cores && s.memory_gb > 0.0, "{}", s.name);
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
        assert!((s.watts_at_inlet(1.0, 33.0) - 71.7 * 1.04).abs() < 1e-9);
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
