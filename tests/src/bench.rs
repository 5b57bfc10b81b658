//! Helpers shared by the benchmark binaries (`wattwise-bench-throughput`, `wattwise-bench-ingest`):
//! which `wattwise-scheduler` build to measure, starting it with a given configuration, creating
//! many fake nodes at once, and reading a process' CPU time and memory from `/proc`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use futures::{StreamExt, TryStreamExt};

use crate::control_plane::{ControlPlane, FakeNode};
use crate::served::ServedProcess;

/// The `wattwise-scheduler` binary a benchmark measures, and which build it is.
#[derive(Debug, Clone)]
pub struct SchedulerBinary {
    pub path: PathBuf,
    /// "release", "debug" or "given" (a path passed on the command line).
    pub build: &'static str,
}

impl std::fmt::Display for SchedulerBinary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} build)", self.path.display(), self.build)
    }
}

/// `target/` of this workspace: the benchmark binaries live in `target/<profile>/`.
fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("this binary is not in a target/<profile>/ directory; pass --scheduler PATH")
}

/// The newest modification time of the scheduler's sources, to warn about a stale build.
fn newest_source() -> Option<SystemTime> {
    fn walk(dir: &Path, newest: &mut Option<SystemTime>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, newest);
            } else if let Ok(modified) = entry.metadata().and_then(|m| m.modified()) {
                *newest = Some(newest.map_or(modified, |n| n.max(modified)));
            }
        }
    }
    let mut newest = None;
    let scheduler = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scheduler/src");
    walk(&scheduler, &mut newest);
    newest
}

/// Picks the scheduler to measure: `given` if set, else `target/release/wattwise-scheduler`;
/// the debug build only with `allow_debug` (its figures say nothing about the product).
pub fn scheduler_binary(given: Option<PathBuf>, allow_debug: bool) -> Result<SchedulerBinary> {
    if let Some(path) = given {
        ensure!(path.is_file(), "{} does not exist", path.display());
        return Ok(SchedulerBinary {
            path,
            build: "given",
        });
    }
    let target = target_dir()?;
    let release = target.join("release").join("wattwise-scheduler");
    let debug = target.join("debug").join("wattwise-scheduler");
    let chosen = if release.is_file() {
        SchedulerBinary {
            path: release,
            build: "release",
        }
    } else if allow_debug && debug.is_file() {
        eprintln!(
            "WARNING: {} is missing; measuring the DEBUG build {} (--allow-debug): \
             these figures are not representative",
            release.display(),
            debug.display()
        );
        SchedulerBinary {
            path: debug,
            build: "debug",
        }
    } else {
        bail!(
            "{} is missing: run `cargo build --release -p wattwise-scheduler` first (the \
             benchmark measures the release build; --allow-debug measures the debug build, \
             --scheduler PATH another one)",
            release.display()
        );
    };
    if let (Ok(built), Some(source)) = (
        std::fs::metadata(&chosen.path).and_then(|m| m.modified()),
        newest_source(),
    ) {
        if source > built {
            eprintln!(
                "WARNING: {} is older than scheduler/src: rebuild it (cargo build --release -p \
                 wattwise-scheduler) or the figures describe old code",
                chosen.path.display()
            );
        }
    }
    Ok(chosen)
}

/// Starts `binary` with exactly `config_yaml` (plus free listen addresses) against `plane`, with
/// production logging (`RUST_LOG=info`, not the tests' debug), and waits until it is ready.
pub async fn start_scheduler(
    plane: &ControlPlane,
    binary: &SchedulerBinary,
    identity: &str,
    config_yaml: &str,
) -> Result<ServedProcess> {
    let kubeconfig = plane.kubeconfig_path().to_path_buf();
    let path = binary.path.clone();
    let identity = identity.to_string();
    let mut served = ServedProcess::spawn("wattwise-scheduler", config_yaml, move |_, config| {
        let mut cmd = Command::new(&path);
        cmd.arg("--config")
            .arg(config)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--identity")
            .arg(&identity)
            .env("RUST_LOG", "info")
            .env_remove("POD_NAMESPACE")
            .env_remove("POD_NAME");
        Ok(cmd)
    })?;
    served.wait_ready(Duration::from_secs(120)).await?;
    Ok(served)
}

/// Creates `count` Ready fake nodes `node(name)` (e.g. `FakeNode::new`: 4 CPUs, 16 GiB, 110 pods)
/// named `<prefix>-00000`, … with `concurrency` creations in flight; returns their names.
pub async fn create_nodes(
    plane: &ControlPlane,
    prefix: &str,
    count: usize,
    concurrency: usize,
    node: fn(&str) -> FakeNode,
) -> Result<Vec<String>> {
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}-{i:05}")).collect();
    futures::stream::iter(
        names
            .iter()
            .map(|name| async move { plane.create_ready_node(&node(name)).await.map(drop) }),
    )
    .buffer_unordered(concurrency.max(1))
    .try_collect::<Vec<()>>()
    .await?;
    Ok(names)
}

/// utime + stime of all of a process' threads, from `/proc/<pid>/stat` (`"self"` for this one).
pub fn cpu_time(pid: &str) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // After "(comm)": state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("malformed /proc/<pid>/stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Ok(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// A process' memory from `/proc/<pid>/status`, bytes: resident set, its anonymous part, peak.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss: u64,
    pub anon: u64,
    pub hwm: u64,
    pub threads: u64,
}

pub fn memory(pid: &str) -> Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok(Memory {
        rss: field("VmRSS")? * 1024,
        anon: field("RssAnon")? * 1024,
        hwm: field("VmHWM")? * 1024,
        threads: field("Threads")?,
    })
}

pub const MIB: f64 = 1024.0 * 1024.0;

pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "target met"
    } else {
        "TARGET MISSED"
    }
}

/// The value after `--flag`, parsed.
pub fn flag_value<T: std::str::FromStr>(flag: &str, value: Option<String>) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    let value = value.with_context(|| format!("{flag} needs a value"))?;
    value
        .parse()
        .map_err(|e| anyhow::anyhow!("{flag} {value:?}: {e}"))
}
