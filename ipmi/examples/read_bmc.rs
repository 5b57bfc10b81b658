//! Prints a BMC's sensor data records, every sensor's reading and the DCMI power reading: the
//! operator's tool for checking what the agent will see.
//!
//! ```text
//! IPMI_PASSWORD=secret cargo run -p wattwise-ipmi --example read_bmc -- HOST [PORT] [USER]
//! ```
//!
//! The password comes from the environment so it stays out of shell history and `ps`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use wattwise_ipmi::{Bmc, SensorReading, Target};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(host) = args.next() else {
        eprintln!("usage: IPMI_PASSWORD=... read_bmc HOST [PORT] [USER]");
        return ExitCode::from(2);
    };
    let port = match args.next().map(|p| p.parse::<u16>()) {
        None => 623,
        Some(Ok(port)) => port,
        Some(Err(e)) => {
            eprintln!("bad port: {e}");
            return ExitCode::from(2);
        }
    };
    let username = args.next().unwrap_or_else(|| "admin".to_owned());
    let Ok(password) = std::env::var("IPMI_PASSWORD") else {
        eprintln!("set IPMI_PASSWORD");
        return ExitCode::from(2);
    };
    let target = Target::Lan {
        host,
        port,
        username,
        password: password.into(),
    };
    match run(&target) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(target: &Target) -> wattwise_ipmi::Result<()> {
    let started = Instant::now();
    let mut bmc = Bmc::connect(target, Duration::from_secs(2))?;
    println!("connected to {target} at {} privilege", bmc.privilege());

    let info = bmc.sdr_repository_info()?;
    println!(
        "SDR: {} records, last addition {}, last erase {}",
        info.record_count, info.most_recent_addition, info.most_recent_erase
    );
    let records = bmc.read_sdr()?;
    println!(
        "{:<6} {:<18} {:>4} {:>7} {:>5} {:>5}  reading",
        "id", "name", "num", "entity", "type", "rtype"
    );
    for record in &records {
        let reading = match bmc.read_sensor(record) {
            Ok(SensorReading::Value { value, raw }) => {
                format!("{value} {} (raw {raw:#04X})", record.unit)
            }
            Ok(SensorReading::Discrete { states, .. }) => format!("states {states:#06X}"),
            Ok(SensorReading::Unavailable) => "unavailable".to_owned(),
            Err(e) => format!("error: {e}"),
        };
        println!(
            "{:<#6X} {:<18} {:>4} {:>4}.{:<2} {:>#5X} {:>#5X}  {reading}",
            record.record_id,
            record.name,
            record.number,
            record.entity_id,
            record.entity_instance,
            record.sensor_type,
            record.reading_type
        );
    }

    match bmc.dcmi_capabilities()? {
        None => println!("DCMI: not supported"),
        Some(caps) => println!(
            "DCMI {}.{} (power management: {})",
            caps.major_version, caps.minor_version, caps.power_management
        ),
    }
    match bmc.dcmi_power_reading() {
        Ok(p) => println!(
            "DCMI power: {} W (min {}, max {}, avg {} over {} ms, active {})",
            p.current_watts, p.min, p.max, p.average, p.period, p.active
        ),
        Err(e) => println!("DCMI power: {e}"),
    }
    println!("read cycle took {:?}", started.elapsed());
    Ok(())
}
