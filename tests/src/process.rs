//! Child processes owned by a test: spawned in their own process group with logs in a temp dir,
//! stopped (SIGTERM, then SIGKILL) when the owner drops — also while a failing test unwinds.
//!
//! Every process a fixture starts carries `WATTWISE_TESTENV_CHILD=<run id>` in its environment so
//! that `wattwise-testenv-leaks` can prove, after the suite, that nothing was left behind.

use std::collections::HashSet;
use std::fs::File;
use std::future::Future;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Environment variable a test run sets to name itself; children get [`CHILD_MARKER_ENV`] = its value.
pub const RUN_ID_ENV: &str = "WATTWISE_TESTENV_RUN";
/// Marker every fixture-spawned process carries.
pub const CHILD_MARKER_ENV: &str = "WATTWISE_TESTENV_CHILD";

/// The id of this test run (from [`RUN_ID_ENV`], else "adhoc").
pub fn run_id() -> String {
    std::env::var(RUN_ID_ENV).unwrap_or_else(|_| "adhoc".to_string())
}

/// A running child process that is stopped when dropped.
pub struct ManagedProcess {
    name: String,
    child: Child,
    log_path: PathBuf,
    /// Set when [`ManagedProcess::wait_with_usage`] reaped the child behind `child`'s back.
    reaped: Option<ExitStatus>,
}

impl ManagedProcess {
    /// Spawns `cmd` as `name`, with stdout and stderr appended to `<log_dir>/<name>.log`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Self> {
        let log_path = log_dir.join(format!("{name}.log"));
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("{name}: creating log file {}", log_path.display()))?;
        let program = cmd.get_program().to_string_lossy().into_owned();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env(CHILD_MARKER_ENV, run_id())
            // Own process group: stopping the fixture stops everything it forked.
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("{name}: spawning {program}"))?;
        Ok(Self {
            name: name.to_string(),
            child,
            log_path,
            reaped: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of the process log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Whether the process is still running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        self.reaped.is_none() && matches!(self.child.try_wait(), Ok(None))
    }

    /// The exit code once the process has exited (None while running or when killed by a signal).
    pub fn exit_code(&mut self) -> Option<i32> {
        if let Some(status) = self.reaped {
            return status.code();
        }
        self.child
            .try_wait()
            .ok()
            .flatten()
            .and_then(|status| status.code())
    }

    /// Waits for the process to exit and returns its exit status with the resources it used
    /// (`wait4`: user and system CPU time, maximum resident set size), for measuring what a
    /// short-lived child costs.
    pub fn wait_with_usage(&mut self) -> Result<(ExitStatus, libc::rusage)> {
        if self.reaped.is_some() {
            bail!("{} was already waited for", self.name);
        }
        let pid = self.child.id() as libc::pid_t;
        let mut status = 0;
        // SAFETY: rusage is plain old data; wait4 fills it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: valid pointers to locals; pid is our own unreaped child.
            let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
            if rc == pid {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err).with_context(|| format!("{}: wait4 on pid {pid}", self.name));
            }
        }
        let status = ExitStatus::from_raw(status);
        self.reaped = Some(status);
        Ok((status, usage))
    }

    /// Fails with the log tail if the process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.reaped {
            bail!("{} exited with {status}", self.name);
        }
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!(
                "{} exited with {status}; last log lines:\n{}",
                self.name,
                self.log_tail(30)
            ),
            Err(e) => bail!("{}: waiting on pid {}: {e}", self.name, self.pid()),
        }
    }

    /// SIGTERM to the process group, SIGKILL after `grace`. Idempotent.
    pub fn stop_with_grace(&mut self, grace: Duration) {
        if !self.is_running() {
            self.signal_group(libc::SIGKILL); // stray group members, if any
            return;
        }
        self.signal_group(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.is_running() {
                self.signal_group(libc::SIGKILL);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    pub fn stop(&mut self) {
        self.stop_with_grace(Duration::from_secs(10));
    }

    /// SIGKILL to the process group and reap: a crash, as a test of recovery wants it.
    pub fn kill(&mut self) {
        self.signal_group(libc::SIGKILL);
        if self.reaped.is_none() {
            let _ = self.child.wait();
        }
    }

    fn signal_group(&self, signal: i32) {
        // The child leads its own group, so -pid addresses the group.
        let pgid = self.child.id() as i32;
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Ports handed out by this process, so parallel tests in one binary never get the same one.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

fn claim(port: u16) -> bool {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    guard.get_or_insert_with(HashSet::new).insert(port)
}

/// A TCP port on 127.0.0.1 that is free now and not handed out before by this process.
pub fn free_tcp_port() -> Result<u16> {
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if claim(port) {
            return Ok(port);
        }
    }
    bail!("no free TCP port on 127.0.0.1 after 100 tries")
}

/// A UDP port on 127.0.0.1 that is free now and not handed out before by this process.
pub fn free_udp_port() -> Result<u16> {
    for _ in 0..100 {
        let port = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
        if claim(port) {
            return Ok(port);
        }
    }
    bail!("no free UDP port on 127.0.0.1 after 100 tries")
}

/// Polls `check` until it returns `Ok(true)`, failing after `timeout` with `what` and the last
/// error `check` returned.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(e) => bail!("timed out after {timeout:?} waiting for {what}: {e:#}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The absolute path of `program` on PATH, or an error that says how to install it. Tests never
/// skip for a missing peer: the set-up script (`scripts/install-deps.sh`) must provide it.
pub fn require_program(program: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .with_context(|| {
            format!(
                "`{program}` is not on PATH: run scripts/install-deps.sh (the test command does)"
            )
        })
}

/// wattwise's cache directory: `$XDG_CACHE_HOME/wattwise`, else `~/.cache/wattwise`.
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache")
        });
    base.join("wattwise")
}

/// Processes (pid, command line) whose environment carries the child marker of `run_id`.
pub fn processes_of_run(run_id: &str) -> Vec<(u32, String)> {
    let needle = format!("{CHILD_MARKER_ENV}={run_id}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|var| var == needle.as_bytes()))
                .unwrap_or(false)
        })
        .map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (pid, cmdline.trim().to_string())
        })
        .collect()
}

/// Whether a process with this pid exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 (after the parenthesised command) is the state; Z = zombie, X = dead.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Live (non-zombie) processes whose process group is `pgid`.
    fn live_group_members(pgid: u32) -> Vec<u32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                // After "(comm)": state, ppid, pgrp.
                let fields: Vec<&str> = stat
                    .rsplit_once(')')
                    .map(|(_, rest)| rest.split_whitespace().collect())
                    .unwrap_or_default();
                fields.get(2) == Some(&pgid.to_string().as_str()) && pid_alive(*pid)
            })
            .collect()
    }

    fn sleeper(dir: &Path) -> ManagedProcess {
        let mut cmd = Command::new("sh");
        // A child of the child: stopping must take the whole group.
        cmd.args(["-c", "sleep 300 & sleep 300"]);
        ManagedProcess::spawn("sleeper", cmd, dir).unwrap()
    }

    #[test]
    fn drop_stops_the_whole_process_group_even_while_unwinding() {
        let dir = tempfile::tempdir().unwrap();
        let pid = std::sync::Arc::new(Mutex::new(0u32));
        let pid_in = pid.clone();
        let dir_path = dir.path().to_path_buf();
        let result = std::panic::catch_unwind(move || {
            let p = sleeper(&dir_path);
            *pid_in.lock().unwrap() = p.pid();
            std::thread::sleep(Duration::from_millis(100));
            panic!("a failing test");
        });
        assert!(result.is_err());
        let pid = *pid.lock().unwrap();
        assert!(pid > 0);
        assert!(!pid_alive(pid), "leader {pid} survived the unwinding drop");
        // The background `sleep` was in the same group; no live process of the group remains.
        // It is not our child, so nothing waits for it: give the kernel a moment to deliver the
        // group's SIGKILL to it and init to reap it.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        let mut members = live_group_members(pid);
        while !members.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            members = live_group_members(pid);
        }
        assert!(
            members.is_empty(),
            "process group {pid} still has {members:?} 2 s after the drop"
        );
    }

    #[test]
    fn children_carry_the_run_marker() {
        let dir = tempfile::tempdir().unwrap();
        let p = sleeper(dir.path());
        std::thread::sleep(Duration::from_millis(100));
        let found = processes_of_run(&run_id());
        assert!(
            found.iter().any(|(pid, _)| *pid == p.pid()),
            "pid {} not found among marked processes {found:?}",
            p.pid()
        );
    }

    #[test]
    fn wait_with_usage_reports_the_childs_cpu_and_memory() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        // Busy for a measurable moment, then exit 3.
        cmd.args([
            "-c",
            "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; exit 3",
        ]);
        let mut p = ManagedProcess::spawn("busy", cmd, dir.path()).unwrap();
        let (status, usage) = p.wait_with_usage().unwrap();
        assert_eq!(status.code(), Some(3));
        let cpu = Duration::from_secs(usage.ru_utime.tv_sec as u64)
            + Duration::from_micros(usage.ru_utime.tv_usec as u64);
        assert!(cpu > Duration::ZERO, "{cpu:?}");
        assert!(usage.ru_maxrss > 0, "max RSS in KiB: {}", usage.ru_maxrss);
        assert!(!p.is_running());
        assert_eq!(p.exit_code(), Some(3));
        assert!(p.wait_with_usage().is_err(), "a child is reaped once");
    }

    #[test]
    fn ports_are_never_handed_out_twice() {
        let ports: HashSet<u16> = (0..50).map(|_| free_tcp_port().unwrap()).collect();
        assert_eq!(ports.len(), 50);
    }

    #[test]
    fn missing_program_names_the_install_script() {
        let err = require_program("definitely-not-a-real-program-wattwise").unwrap_err();
        assert!(err.to_string().contains("scripts/install-deps.sh"), "{err}");
    }
}
