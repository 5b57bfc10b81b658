//! CPU utilisation and capacity of this node.

use std::path::PathBuf;

use thiserror::Error;

/// One CPU observation: utilisation over the last interval and schedulable capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuSample {
    /// Fraction of capacity in use, 0..=1.
    pub utilisation: f64,
    pub capacity_millicores: u64,
}

#[derive(Debug, Error)]
pub enum CpuError {
    #[error("sysinfo: {0}")]
    Sysinfo(String),
    #[error("cpu file {path}: {problem}")]
    File { path: PathBuf, problem: String },
}

/// Where CPU samples come from.
pub trait CpuSensor: Send {
    /// Utilisation since the previous call (the first call may report 0).
    fn sample(&mut self) -> Result<CpuSample, CpuError>;
}

/// Production source: the host's CPU counters through sysinfo.
pub struct SysinfoCpu {
    system: sysinfo::System,
    capacity_override: Option<u64>,
}

impl SysinfoCpu {
    pub fn new(capacity_override: Option<u64>) -> Result<Self, CpuError> {
        let mut system = sysinfo::System::new().map_err(|e| CpuError::Sysinfo(e.to_string()))?;
        // The first refresh sets the baseline the next sample is measured against.
        system.refresh_cpu_usage();
        Ok(Self {
            system,
            capacity_override,
        })
    }
}

impl CpuSensor for SysinfoCpu {
    fn sample(&mut self) -> Result<CpuSample, CpuError> {
        self.system.refresh_cpu_usage();
        let cpus = self.system.cpus().len() as u64;
        if cpus == 0 {
            return Err(CpuError::Sysinfo("no CPUs visible".into()));
        }
        let utilisation = f64::from(self.system.global_cpu_usage()) / 100.0;
        Ok(CpuSample {
            utilisation: sanitise(utilisation),
            capacity_millicores: self.capacity_override.unwrap_or(cpus * 1000),
        })
    }
}

/// Demo/test source: utilisation read from a file, so a driver outside the node controls it.
pub struct FileCpu {
    path: PathBuf,
    capacity_millicores: u64,
}

impl FileCpu {
    pub fn new(path: PathBuf, capacity_millicores: u64) -> Self {
        Self {
            path,
            capacity_millicores,
        }
    }
}

impl CpuSensor for FileCpu {
    fn sample(&mut self) -> Result<CpuSample, CpuError> {
        let file_error = |problem: String| CpuError::File {
            path: self.path.clone(),
            problem,
        };
        let text = std::fs::read_to_string(&self.path).map_err(|e| file_error(e.to_string()))?;
        let value: f64 = text
            .trim()
            .parse()
            .map_err(|_| file_error(format!("{:?} is not a number", text.trim())))?;
        if !(0.0..=1.0).contains(&value) {
            return Err(file_error(format!("{value} is outside 0..=1")));
        }
        Ok(CpuSample {
            utilisation: value,
            capacity_millicores: self.capacity_millicores,
        })
    }
}

/// Keeps a utilisation inside 0..=1 (counters can overshoot slightly between refreshes).
fn sanitise(u: f64) -> f64 {
    if u.is_finite() {
        u.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysinfo_reports_this_hosts_cpus() {
        let mut cpu = SysinfoCpu::new(None).unwrap();
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let s = cpu.sample().unwrap();
        let expected = std::thread::available_parallelism().unwrap().get() as u64 * 1000;
        assert_eq!(s.capacity_millicores, expected);
        assert!((0.0..=1.0).contains(&s.utilisation));
        let mut overridden = SysinfoCpu::new(Some(3500)).unwrap();
        assert_eq!(overridden.sample().unwrap().capacity_millicores, 3500);
    }

    #[test]
    fn file_source_reads_and_rejects_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("util");
        let mut cpu = FileCpu::new(path.clone(), 4000);
        let missing = cpu.sample().unwrap_err().to_string();
        assert!(missing.contains(path.to_str().unwrap()), "{missing}");
        std::fs::write(&path, "0.42\n").unwrap();
        assert_eq!(cpu.sample().unwrap().utilisation, 0.42);
        std::fs::write(&path, "1.5").unwrap();
        assert!(cpu
            .sample()
            .unwrap_err()
            .to_string()
            .contains("outside 0..=1"));
        std::fs::write(&path, "lots").unwrap();
        assert!(cpu
            .sample()
            .unwrap_err()
            .to_string()
            .contains("not a number"));
    }

    #[test]
    fn sanitise_clamps_and_zeroes_nan() {
        assert_eq!(sanitise(1.02), 1.0);
        assert_eq!(sanitise(f64::NAN), 0.0);
        assert_eq!(sanitise(-0.1), 0.0);
    }
}
