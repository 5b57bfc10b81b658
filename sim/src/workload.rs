//! Pods to simulate: read from a trace in the column layout of the public Alibaba cluster traces,
//! or generated from a published cluster-utilisation series.
//!
//! Trace layout (times in seconds; header required, columns in any order):
//! `name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time`.
//! A pod arrives at `creation_time` and, once bound, runs for `deletion_time − scheduled_time`
//! (`deletion_time − creation_time` when it was never scheduled in the original cluster); an
//! empty `deletion_time` runs to the end of the simulation. The GPU columns, `qos` and
//! `pod_phase` are read but ignored: the simulated nodes are CPU servers. Node list layout:
//! `sn,cpu_milli,memory_mib,gpu,model` (GPU columns ignored likewise).

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use thiserror::Error;

use crate::scenario::Synthetic;

/// A pod as the trace gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct TracePod {
    pub name: String,
    pub cpu_millicores: u64,
    pub memory_mib: u64,
    /// Seconds from the start.
    pub arrival: f64,
    /// Seconds it runs once bound; `None`: until the end.
    pub lifetime: Option<f64>,
}

/// A node of a node list.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedNode {
    pub name: String,
    pub cpu_millicores: u64,
    pub memory_mib: u64,
}

#[derive(Debug, Error)]
pub enum TraceError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: header lacks column {column:?}")]
    MissingColumn { file: String, column: String },
    #[error("{file} line {line}: {field}: {problem}")]
    Row {
        file: String,
        line: usize,
        field: String,
        problem: String,
    },
}

pub const POD_COLUMNS: [&str; 11] = [
    "name",
    "cpu_milli",
    "memory_mib",
    "num_gpu",
    "gpu_milli",
    "gpu_spec",
    "qos",
    "pod_phase",
    "creation_time",
    "deletion_time",
    "scheduled_time",
];

pub const NODE_COLUMNS: [&str; 5] = ["sn", "cpu_milli", "memory_mib", "gpu", "model"];

/// A CSV's rows with a column lookup; fields are plain (trace files quote nothing).
struct Csv<'a> {
    file: String,
    columns: Vec<usize>,
    rows: Vec<(usize, Vec<&'a str>)>,
}

impl<'a> Csv<'a> {
    fn parse(text: &'a str, file: &str, wanted: &[&str]) -> Result<Self, TraceError> {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let header: Vec<&str> = lines
            .next()
            .map(|(_, l)| l.split(',').map(str::trim).collect())
            .unwrap_or_default();
        let columns = wanted
            .iter()
            .map(|&column| {
                header
                    .iter()
                    .position(|h| *h == column)
                    .ok_or_else(|| TraceError::MissingColumn {
                        file: file.into(),
                        column: column.into(),
                    })
            })
            .collect::<Result<_, _>>()?;
        let mut rows = Vec::new();
        for (n, line) in lines {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if fields.len() != header.len() {
                return Err(TraceError::Row {
                    file: file.into(),
                    line: n + 1,
                    field: "(row)".into(),
                    problem: format!("{} fields, the header has {}", fields.len(), header.len()),
                });
            }
            rows.push((n + 1, fields));
        }
        Ok(Self {
            file: file.into(),
            columns,
            rows,
        })
    }

    fn error(&self, line: usize, field: &str, problem: String) -> TraceError {
        TraceError::Row {
            file: self.file.clone(),
            line,
            field: field.into(),
            problem,
        }
    }
}

/// One row's fields by the wanted columns' order.
struct Row<'c, 'a> {
    csv: &'c Csv<'a>,
    line: usize,
    fields: &'c [&'a str],
    names: &'c [&'static str],
}

impl Row<'_, '_> {
    fn raw(&self, field: &'static str) -> &str {
        let i = self
            .names
            .iter()
            .position(|n| *n == field)
            .expect("a known column");
        self.fields[self.csv.columns[i]]
    }

    fn count(&self, field: &'static str) -> Result<u64, TraceError> {
        let text = self.raw(field);
        text.parse().map_err(|_| {
            self.csv
                .error(self.line, field, format!("{text:?} is not a whole number"))
        })
    }

    /// Seconds ≥ 0; `None` when empty.
    fn seconds(&self, field: &'static str) -> Result<Option<f64>, TraceError> {
        let text = self.raw(field);
        if text.is_empty() {
            return Ok(None);
        }
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Ok(Some(v)),
            _ => Err(self.csv.error(
                self.line,
                field,
                format!("{text:?} is not a time in seconds (>= 0)"),
            )),
        }
    }
}

fn read(path: &Path) -> Result<String, TraceError> {
    std::fs::read_to_string(path).map_err(|source| TraceError::Read {
        file: path.display().to_string(),
        source,
    })
}

/// Reads a pod trace file.
pub fn read_trace(path: &Path) -> Result<Vec<TracePod>, TraceError> {
    parse_trace(&read(path)?, &path.display().to_string())
}

/// Parses a pod trace; `file` names it in errors. Pods come out in arrival order (stable).
pub fn parse_trace(text: &str, file: &str) -> Result<Vec<TracePod>, TraceError> {
    let csv = Csv::parse(text, file, &POD_COLUMNS)?;
    let mut pods = Vec::with_capacity(csv.rows.len());
    for (line, fields) in &csv.rows {
        let row = Row {
            csv: &csv,
            line: *line,
            fields,
            names: &POD_COLUMNS,
        };
        let name = row.raw("name");
        if name.is_empty() {
            return Err(csv.error(*line, "name", "is empty".into()));
        }
        let arrival = row
            .seconds("creation_time")?
            .ok_or_else(|| csv.error(*line, "creation_time", "is empty".into()))?;
        let started = row.seconds("scheduled_time")?.unwrap_or(arrival);
        if started < arrival {
            return Err(csv.error(
                *line,
                "scheduled_time",
                format!("{started} is before creation_time {arrival}"),
            ));
        }
        let lifetime = match row.seconds("deletion_time")? {
            None => None,
            Some(end) if end < started => {
                return Err(csv.error(
                    *line,
                    "deletion_time",
                    format!("{end} is before the pod started ({started})"),
                ))
            }
            Some(end) => Some(end - started),
        };
        pods.push(TracePod {
            name: name.into(),
            cpu_millicores: row.count("cpu_milli")?,
            memory_mib: row.count("memory_mib")?,
            arrival,
            lifetime,
        });
    }
    pods.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
    Ok(pods)
}

/// Reads a node list file.
pub fn read_node_list(path: &Path) -> Result<Vec<ListedNode>, TraceError> {
    let file = path.display().to_string();
    let text = read(path)?;
    let csv = Csv::parse(&text, &file, &NODE_COLUMNS)?;
    let mut nodes = Vec::new();
    for (line, fields) in &csv.rows {
        let row = Row {
            csv: &csv,
            line: *line,
            fields,
            names: &NODE_COLUMNS,
        };
        let positive = |field| match row.count(field)? {
            0 => Err(csv.error(*line, field, "must be positive".into())),
            v => Ok(v),
        };
        nodes.push(ListedNode {
            name: row.raw("sn").into(),
            cpu_millicores: positive("cpu_milli")?,
            memory_mib: positive("memory_mib")?,
        });
    }
    Ok(nodes)
}

/// A column of a CSV file as numbers (a published series).
/// A series in any unit as percent of its own peak (an all-zero series stays zero).
pub fn to_percent_of_peak(series: &mut [f64]) {
    let peak = series.iter().copied().fold(0.0, f64::max);
    if peak > 0.0 {
        series.iter_mut().for_each(|v| *v = *v / peak * 100.0);
    }
}

pub fn read_column(path: &Path, column: &str) -> Result<Vec<f64>, TraceError> {
    let file = path.display().to_string();
    let text = read(path)?;
    let csv = Csv::parse(&text, &file, &[column])?;
    csv.rows
        .iter()
        .map(|(line, fields)| {
            let text = fields[csv.columns[0]];
            text.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| csv.error(*line, column, format!("{text:?} is not a number")))
        })
        .collect()
}

/// Exponentially distributed with this mean.
fn exponential(rng: &mut StdRng, mean: f64) -> f64 {
    -mean * (1.0 - rng.random::<f64>()).ln()
}

/// Pods whose requested CPU follows `series` (percent per `step_seconds`) scaled to a cluster of
/// `capacity_millicores`, for `duration` seconds. Services arrive as a Poisson process whose rate
/// keeps the expected requested CPU on target (Little's law) and live exponentially long; short
/// jobs take `short_job_share` of the target with durations drawn from `short_durations`. The
/// cluster starts in the steady state of the first step (its services already running).
pub fn synthesise(
    config: &Synthetic,
    series: &[f64],
    short_durations: &[f64],
    capacity_millicores: u64,
    duration: f64,
    seed: u64,
) -> Vec<TracePod> {
    let mut rng = StdRng::seed_from_u64(seed ^ crate::stream::WORKLOAD);
    let sizes = &config.cpu_millicores;
    let mean_cpu = sizes.iter().sum::<u64>() as f64 / sizes.len() as f64;
    // Functions that ran for under a second still hold a pod for a second.
    let shorts: Vec<f64> = short_durations.iter().map(|d| d.max(1.0)).collect();
    let mean_short = shorts.iter().sum::<f64>() / shorts.len().max(1) as f64;
    let target = |t: f64| {
        let step = (t / config.step_seconds) as usize;
        let value = series[(config.start_row + step) % series.len()];
        (value / 100.0 * config.load_scale).max(0.0) * capacity_millicores as f64
    };
    let mut pods = Vec::new();
    let mut next_name = {
        let mut n = 0u64;
        move |kind: &str| {
            n += 1;
            format!("{kind}-{n:07}")
        }
    };
    let pod = |rng: &mut StdRng, name: String, arrival: f64, lifetime: f64| {
        let cpu = sizes[rng.random_range(0..sizes.len())];
        TracePod {
            name,
            cpu_millicores: cpu,
            memory_mib: cpu * config.memory_mib_per_core / 1000,
            arrival,
            lifetime: Some(lifetime),
        }
    };
    // The steady state at t = 0: services already running, with memoryless remaining lives.
    let services_cpu = (1.0 - config.short_job_share) * target(0.0);
    let initial = (services_cpu / mean_cpu).round() as usize;
    for _ in 0..initial {
        let life = exponential(&mut rng, config.service_mean_seconds);
        let name = next_name("svc");
        pods.push(pod(&mut rng, name, 0.0, life));
    }
    // Arrivals step by step, each step's rate from its target.
    let steps = (duration / config.step_seconds).ceil() as usize;
    for k in 0..steps {
        let start = k as f64 * config.step_seconds;
        let end = (start + config.step_seconds).min(duration);
        let goal = target(start);
        let kinds = [
            (
                "svc",
                1.0 - config.short_job_share,
                config.service_mean_seconds,
            ),
            ("job", config.short_job_share, mean_short),
        ];
        for (kind, share, mean_life) in kinds {
            if share <= 0.0 || mean_life <= 0.0 {
                continue;
            }
            let rate = share * goal / (mean_cpu * mean_life);
            if rate <= 0.0 {
                continue;
            }
            let mut t = start + exponential(&mut rng, 1.0 / rate);
            while t < end {
                let life = if kind == "svc" {
                    exponential(&mut rng, mean_life)
                } else {
                    shorts[rng.random_range(0..shorts.len())]
                };
                let name = next_name(kind);
                pods.push(pod(&mut rng, name, t, life));
                t += exponential(&mut rng, 1.0 / rate);
            }
        }
    }
    pods.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
    pods
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time";

    #[test]
    fn trace_rows_become_pods_in_arrival_order() {
        let text = format!(
            "{HEADER}\n\
             b,4000,8192,1,1000,V100,LS,Running,100,700,110\n\
             a,500,1024,0,0,,BE,Succeeded,50,80,\n\
             c,1000,2048,0,0,,LS,Running,60,,60\n"
        );
        let pods = parse_trace(&text, "t.csv").unwrap();
        assert_eq!(
            pods.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            ["a", "c", "b"]
        );
        assert_eq!(
            pods[0].lifetime,
            Some(30.0),
            "never scheduled: from creation"
        );
        assert_eq!(pods[1].lifetime, None, "no deletion: runs to the end");
        assert_eq!(pods[2].lifetime, Some(590.0), "from scheduled_time");
        assert_eq!((pods[2].cpu_millicores, pods[2].memory_mib), (4000, 8192));
    }

    #[test]
    fn malformed_rows_are_rejected_with_line_and_field() {
        let cases = [
            ("a,five,1024,0,0,,BE,Running,1,2,1", 3, "cpu_milli"),
            ("a,500,1024,0,0,,BE,Running,,2,", 3, "creation_time"),
            ("a,500,1024,0,0,,BE,Running,-4,2,", 3, "creation_time"),
            ("a,500,1024,0,0,,BE,Running,10,5,", 3, "deletion_time"),
            ("a,500,1024,0,0,,BE,Running,10,50,5", 3, "scheduled_time"),
            ("a,500,1.5,0,0,,BE,Running,10,50,", 3, "memory_mib"),
            (",500,1024,0,0,,BE,Running,10,50,", 3, "name"),
            ("a,500,1024,0,0,BE,Running,10,50,", 3, "(row)"),
        ];
        for (row, line, field) in cases {
            let text = format!("{HEADER}\nok,1,1,0,0,,BE,Running,0,1,0\n{row}\n");
            let err = parse_trace(&text, "pods.csv").unwrap_err();
            let TraceError::Row {
                line: l, field: f, ..
            } = &err
            else {
                panic!("{err}");
            };
            assert_eq!((*l, f.as_str()), (line, field), "{row}: {err}");
            assert!(
                err.to_string()
                    .starts_with(&format!("pods.csv line {line}: {field}: ")),
                "{err}"
            );
        }
        let err = parse_trace("name,cpu_milli\n", "p.csv").unwrap_err();
        assert_eq!(err.to_string(), "p.csv: header lacks column \"memory_mib\"");
    }

    #[test]
    fn node_lists_need_positive_capacities() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nodes.csv");
        std::fs::write(
            &path,
            "sn,cpu_milli,memory_mib,gpu,model\nn1,96000,786432,8,V100M32\nn2,0,1024,0,\n",
        )
        .unwrap();
        let err = read_node_list(&path).unwrap_err().to_string();
        assert!(
            err.ends_with("nodes.csv line 3: cpu_milli: must be positive"),
            "{err}"
        );
        std::fs::write(
            &path,
            "sn,cpu_milli,memory_mib,gpu,model\nn1,96000,786432,8,V100M32\n",
        )
        .unwrap();
        let nodes = read_node_list(&path).unwrap();
        assert_eq!(nodes[0].cpu_millicores, 96000);
    }

    #[test]
    fn a_series_in_any_unit_becomes_percent_of_its_peak() {
        let mut series = [2.0e6, 8.0e6, 4.0e6];
        to_percent_of_peak(&mut series);
        assert_eq!(series, [25.0, 100.0, 50.0]);
        let mut zeros = [0.0, 0.0];
        to_percent_of_peak(&mut zeros);
        assert_eq!(zeros, [0.0, 0.0]);
    }

    #[test]
    fn synthetic_load_follows_the_series_and_the_seed() {
        let config = Synthetic {
            utilisation_series: "x".into(),
            column: "cpu".into(),
            percent_of_peak: false,
            step_seconds: 3600.0,
            start_row: 0,
            load_scale: 1.0,
            short_job_share: 0.0,
            short_job_durations: None,
            service_mean_seconds: 600.0,
            cpu_millicores: vec![1000],
            memory_mib_per_core: 2048,
        };
        // 20 % then 60 % of 1,000 cores.
        let series = [20.0, 60.0];
        let pods = synthesise(&config, &series, &[], 1_000_000, 7200.0, 7);
        assert_eq!(
            pods,
            synthesise(&config, &series, &[], 1_000_000, 7200.0, 7)
        );
        assert_ne!(
            pods,
            synthesise(&config, &series, &[], 1_000_000, 7200.0, 8)
        );
        // Mean requested CPU over each hour's second half (past the transient).
        let busy = |from: f64, to: f64| {
            let n = 100;
            (0..n)
                .map(|i| {
                    let t = from + (to - from) * i as f64 / n as f64;
                    pods.iter()
                        .filter(|p| p.arrival <= t && t < p.arrival + p.lifetime.unwrap())
                        .map(|p| p.cpu_millicores)
                        .sum::<u64>() as f64
                })
                .sum::<f64>()
                / n as f64
        };
        let first = busy(1800.0, 3600.0) / 1_000_000.0;
        let second = busy(5400.0, 7200.0) / 1_000_000.0;
        assert!((first - 0.2).abs() < 0.04, "{first}");
        assert!((second - 0.6).abs() < 0.06, "{second}");
    }
}
