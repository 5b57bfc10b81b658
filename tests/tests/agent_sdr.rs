//! The agent re-reads the BMC's SDR when it changes: a sensor whose record appears in the
//! repository while the agent runs (IPMI Add SDR against ipmi_sim) fills its role within a few
//! `bmc.sdr_check_interval`s, without restarting anything.

use std::time::Duration;

use wattwise_testenv::agent::AgentProcess;
use wattwise_testenv::bmc::{Bmc, BmcSpec};
use wattwise_testenv::grpcurl::Grpcurl;
use wattwise_testenv::node_power::{get_report, role_status, wait_report};
use wattwise_testenv::onnx::write_linear_model;

/// The Lenovo-like layout without its component meters (whose names would make the power role
/// ambiguous rather than missing), and with its whole-node meter "Sys Power" present in the
/// simulator but absent from the SDR: the power role is missing until the record arrives.
fn bmc_without_power_record() -> BmcSpec {
    let mut spec = BmcSpec::lenovo_like();
    spec.sensors
        .retain(|s| s.name != "CPU Power" && s.name != "Mem Power");
    for sensor in &mut spec.sensors {
        if sensor.name == "Sys Power" {
            *sensor = sensor.clone().without_sdr();
        }
    }
    spec
}

/// The value of the series `name` (with its labels, if any; an empty label set may show as `{}`)
/// in a text exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let rest = rest.strip_prefix("{}").unwrap_or(rest);
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// `sdr info`'s record count, through ipmitool (the reference client).
async fn record_count(bmc: &Bmc) -> u32 {
    let info = bmc.ipmitool(&["sdr", "info"]).await.unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("Record Count")?.split(':').nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no record count in:\n{info}"))
}

#[tokio::test]
async fn a_power_sensor_added_to_the_sdr_at_runtime_fills_the_power_role() {
    let mut bmc = Bmc::start(bmc_without_power_record()).await.unwrap();
    // A value no other sensor of the layout has, at the sensor's 2 W resolution.
    bmc.set_reading("Sys Power", 214.0).unwrap();
    let sys_power = bmc.spec().sensor("Sys Power").unwrap().clone();
    let before_count = record_count(&bmc).await;
    assert_eq!(
        before_count as usize,
        bmc.spec().sensors.len() - 1,
        "every record but Sys Power's is in the repository"
    );
    let listed = bmc.ipmitool(&["sdr", "list", "full"]).await.unwrap();
    assert!(!listed.contains("Sys Power"), "{listed}");

    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    write_linear_model(&model, 80.0, 280.0, 0.0).unwrap();
    std::fs::write(dir.path().join("util"), "0.5").unwrap();
    let yaml = format!(
        "node_name: node-sdr\ninterval: 250ms\n\
         model: {{path: {model}}}\n\
         cpu: {{source: file, file: {util}, capacity_millicores: 8000}}\n\
         bmc: {{mode: lan, host: 127.0.0.1, port: {port}, username: {user}, \
         password_env: BMC_PASSWORD, timeout: 500ms, sdr_check_interval: 500ms}}\n",
        model = model.display(),
        util = dir.path().join("util").display(),
        port = bmc.port(),
        user = bmc.username(),
    );
    let agent = AgentProcess::start(&yaml, &[("BMC_PASSWORD", bmc.password())])
        .await
        .unwrap();
    let grpc = Grpcurl::new(agent.grpc_addr()).unwrap();

    // The SDR as first read: sensors work, the power role has no sensor, nothing is measured.
    let before = wait_report(&grpc, Duration::from_secs(10), "first BMC read", |r| {
        role_status(r, "inlet") == "SENSOR_STATUS_OK"
    })
    .await;
    assert_eq!(
        role_status(&before, "power"),
        "SENSOR_STATUS_MISSING",
        "{before}"
    );
    assert_eq!(
        before["measured"]["source"], "READING_SOURCE_NONE",
        "{before}"
    );
    let text = agent.metrics_text().await.unwrap();
    assert!(
        text.contains("wattwise_sensor_role_status{role=\"power\",status=\"missing\"} 1"),
        "{text}"
    );
    assert!(!text.contains("ipmi_power_watts{"), "{text}");
    // Several check intervals pass without a change: nothing is re-read, the role stays missing.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let unchanged = get_report(&grpc).await.unwrap();
    assert_eq!(role_status(&unchanged, "power"), "SENSOR_STATUS_MISSING");
    assert!(
        !agent.log_tail(500).contains("SDR repository changed"),
        "no change yet, no re-read:\n{}",
        agent.log_tail(50)
    );

    // The record arrives through IPMI Add SDR; the reference client sees the repository change.
    let record_id = bmc.add_sdr("Sys Power").await.unwrap();
    assert_ne!(record_id, 0x0000);
    assert_ne!(record_id, 0xffff);
    assert_eq!(record_count(&bmc).await, before_count + 1);
    let listed = bmc.ipmitool(&["sdr", "list", "full"]).await.unwrap();
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("Sys Power") && l.contains("214 Watts")),
        "{listed}"
    );

    // A few check intervals later the agent measures through the new sensor.
    let after = wait_report(
        &grpc,
        Duration::from_secs(10),
        "measured watts from the added SDR sensor",
        |r| r["measured"]["source"] == "READING_SOURCE_SDR_SENSOR",
    )
    .await;
    assert_eq!(after["measured"]["sensorName"], "Sys Power", "{after}");
    assert_eq!(after["measured"]["watts"].as_f64(), Some(214.0), "{after}");
    assert_eq!(role_status(&after, "power"), "SENSOR_STATUS_OK", "{after}");
    assert_eq!(
        role_status(&after, "inlet"),
        "SENSOR_STATUS_OK",
        "the other roles survive the re-read: {after}"
    );
    let text = agent.metrics_text().await.unwrap();
    let id = sys_power.number;
    assert!(
        text.contains(&format!(
            "ipmi_power_watts{{id=\"{id}\",name=\"Sys Power\"}} 214"
        )),
        "{text}"
    );
    assert!(
        text.contains("wattwise_sensor_role_status{role=\"power\",status=\"ok\"} 1"),
        "{text}"
    );
    assert!(
        !text.contains("wattwise_sensor_role_status{role=\"power\",status=\"missing\"}"),
        "{text}"
    );
    // The model predicts 80 + 200 × 0.5 = 180 W against 214 W measured (before calibration,
    // which the measurement now starts, moves the prediction toward it).
    assert_eq!(
        sample(&text, "wattwise_model_uncalibrated_error_watts"),
        Some(180.0 - 214.0),
        "{text}"
    );
    assert!(agent.log_tail(500).contains("SDR repository changed"));

    // The new sensor is read every interval like the others, not only when the SDR is re-read.
    bmc.set_reading("Sys Power", 250.0).unwrap();
    wait_report(&grpc, Duration::from_secs(10), "the new reading", |r| {
        r["measured"]["watts"].as_f64() == Some(250.0)
    })
    .await;
}
