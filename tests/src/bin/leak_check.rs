//! `wattwise-testenv-leaks RUN_ID`: fails, listing and killing them, if any process started by a
//! fixture of test run RUN_ID is still alive. The test command runs it after the suite.

use std::process::ExitCode;

use wattwise_testenv::process::{pid_alive, processes_of_run, RUN_ID_ENV};

fn main() -> ExitCode {
    let Some(run_id) = std::env::args()
        .nth(1)
        .or_else(|| std::env::var(RUN_ID_ENV).ok())
    else {
        eprintln!("usage: wattwise-testenv-leaks RUN_ID (or set {RUN_ID_ENV})");
        return ExitCode::from(2);
    };
    // A process that is exiting right now may still show for a moment.
    let mut left = processes_of_run(&run_id);
    for _ in 0..20 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        left.retain(|(pid, _)| pid_alive(*pid));
    }
    if left.is_empty() {
        println!("leak check: no process of test run {run_id} is left");
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "leak check: {} process(es) of test run {run_id} outlived the suite:",
        left.len()
    );
    for (pid, cmdline) in &left {
        eprintln!("  pid {pid}: {cmdline}");
        unsafe {
            libc::kill(*pid as i32, libc::SIGKILL);
        }
    }
    ExitCode::FAILURE
}
