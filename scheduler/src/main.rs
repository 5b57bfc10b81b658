//! `wattwise-scheduler`: not implemented yet (issue 5). It exits with an error rather than
//! pretending to schedule, so a deployment of it fails loudly.

use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--version" || a == "-V") {
        println!("wattwise-scheduler {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "wattwise-scheduler {}: the scheduler is not implemented yet; see README (Status)",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::FAILURE
}
