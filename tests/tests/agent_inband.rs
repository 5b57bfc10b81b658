//! The agent's in-band IPMI path on a real kernel: the real `wattwise-agent` runs in a qemu guest
//! (Debian's stock kernel, TCG) with `bmc: {mode: in-band, device: /dev/ipmi0}`. The guest's KCS
//! system interface is an ipmi_sim BMC on the host, so `ipmi_si` finds the BMC, `ipmi_devintf`
//! creates /dev/ipmi0, and the agent's readings travel agent → ioctl → kernel IPMI driver → KCS →
//! ipmi_sim. The test sets the readings on the BMC and reads them back through the agent's gRPC
//! and metrics, forwarded from the guest to host loopback ports.

use std::time::{Duration, Instant};

use serde_json::Value;
use wattwise_testenv::bmc::{Bmc, BmcSpec};
use wattwise_testenv::grpcurl::Grpcurl;
use wattwise_testenv::inband::{InBandAgent, MARK_DEVICE};
use wattwise_testenv::node_power::{
    get_report, poll_report, role_status, role_temperatures, temperature,
};
use wattwise_testenv::onnx::write_linear_model;

/// [`poll_report`] that shows the guest's console when it times out.
async fn wait_report(
    grpcurl: &Grpcurl,
    guest: &InBandAgent,
    timeout: Duration,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    poll_report(grpcurl, timeout, check)
        .await
        .unwrap_or_else(|last| {
            panic!(
                "{what}: not within {timeout:?}; last report {last}\nguest console:\n{}",
                guest.console_tail(60)
            )
        })
}

/// Boots the guest with the agent reading `bmc` in-band (linear model 80..280 W, 50 % CPU) and
/// checks from the console that the guest kernel found ipmi_sim behind its KCS interface.
async fn boot(bmc: &Bmc, node: &str) -> (InBandAgent, Grpcurl, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.onnx");
    write_linear_model(&model, 80.0, 280.0, 0.0).unwrap();
    let util = dir.path().join("util");
    std::fs::write(&util, "0.5").unwrap();
    let yaml = format!(
        "node_name: {node}\ninterval: 500ms\n\
         model: {{path: /agent/model.onnx}}\n\
         cpu: {{source: file, file: /agent/util, capacity_millicores: 4000}}\n\
         bmc: {{mode: in-band, device: /dev/ipmi0, timeout: 5s}}\n"
    );
    let guest = InBandAgent::start(
        bmc,
        &yaml,
        &[("model.onnx", model.as_path()), ("util", util.as_path())],
    )
    .await
    .unwrap();
    let console = guest.console();
    assert!(console.contains(MARK_DEVICE), "{console}");
    assert!(
        console.contains("IPMI kcs interface initialized"),
        "ipmi_si found the KCS interface:\n{console}"
    );
    // ipmi_sim's identity as the guest kernel saw it (mc_add: manufacturer 0x1291, product 0xf02).
    assert!(
        console.contains("man_id: 0x001291, prod_id: 0x0f02"),
        "the guest's BMC is the ipmi_sim on the host:\n{console}"
    );
    let grpc = Grpcurl::new(guest.grpc_addr()).unwrap();
    (guest, grpc, dir)
}

#[tokio::test]
async fn the_agent_in_a_vm_reads_the_bmc_in_band_through_dev_ipmi0() {
    let started = Instant::now();
    // The Dell-like layout (SDR temperatures, an SDR power meter, DCMI), with values none of the
    // layout's defaults has, so a reading can only have come from this BMC as set here.
    let mut bmc = Bmc::start_with_system_interface(BmcSpec::dell_like())
        .await
        .unwrap();
    bmc.set_reading("Inlet Temp", 27.0).unwrap();
    bmc.set_reading("Pwr Consumption", 204.0).unwrap();
    bmc.set_dcmi_watts(231.0).unwrap();

    let (guest, grpc, _dir) = boot(&bmc, "node-inband").await;
    let booted = started.elapsed();
    assert_eq!(get_report(&grpc).await.unwrap()["nodeName"], "node-inband");
    let r = wait_report(
        &grpc,
        &guest,
        Duration::from_secs(60),
        "first in-band BMC read",
        |r| {
            r["measured"]["source"] == "READING_SOURCE_DCMI"
                && role_status(r, "inlet") == "SENSOR_STATUS_OK"
        },
    )
    .await;
    assert_eq!(
        role_temperatures(&r),
        [
            Some((27.0, "Inlet Temp".into())),
            Some((48.0, "Temp".into())),
            Some((51.0, "Temp".into())),
        ],
        "inlet, CPU 1, CPU 2: {r}"
    );
    assert_eq!(
        r["measured"]["watts"].as_f64(),
        Some(231.0),
        "DCMI Get Power Reading in-band: {r}"
    );
    let text = guest.metrics_text().await.unwrap();
    for line in [
        "ipmi_up{collector=\"ipmi\"} 1",
        "ipmi_up{collector=\"dcmi\"} 1",
        "ipmi_temperature_celsius{id=\"4\",name=\"Inlet Temp\"} 27",
        "ipmi_dcmi_power_consumption_watts 231",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }

    // A changed reading on the BMC reaches the agent in the guest.
    bmc.set_reading("Inlet Temp", 31.0).unwrap();
    bmc.set_dcmi_watts(262.0).unwrap();
    let changed_at = Instant::now();
    let r = wait_report(
        &grpc,
        &guest,
        Duration::from_secs(30),
        "the changed readings",
        |r| {
            temperature(r, "TEMPERATURE_ROLE_INLET", 0).map(|t| t.0) == Some(31.0)
                && r["measured"]["watts"].as_f64() == Some(262.0)
        },
    )
    .await;
    let followed = changed_at.elapsed();
    assert_eq!(r["measured"]["source"], "READING_SOURCE_DCMI", "{r}");
    let text = guest.metrics_text().await.unwrap();
    assert!(
        text.contains("ipmi_temperature_celsius{id=\"4\",name=\"Inlet Temp\"} 31"),
        "{text}"
    );
    eprintln!(
        "in-band guest: kernel {}, agent ready after {booted:?}, change seen after {followed:?}, \
         total {:?}",
        guest.kernel().release,
        started.elapsed()
    );
}

#[tokio::test]
async fn the_agent_in_a_vm_reads_an_sdr_power_sensor_in_band() {
    // The Lenovo-like layout: no DCMI, so node watts come from the SDR meter "Sys Power" (2 W
    // resolution) read with Get Sensor Reading through /dev/ipmi0.
    let mut bmc = Bmc::start_with_system_interface(BmcSpec::lenovo_like())
        .await
        .unwrap();
    bmc.set_reading("Ambient Temp", 26.0).unwrap();
    bmc.set_reading("Sys Power", 188.0).unwrap();
    let (guest, grpc, _dir) = boot(&bmc, "node-inband-sdr").await;

    let r = wait_report(
        &grpc,
        &guest,
        Duration::from_secs(60),
        "first in-band SDR power reading",
        |r| r["measured"]["source"] == "READING_SOURCE_SDR_SENSOR",
    )
    .await;
    assert_eq!(r["measured"]["sensorName"], "Sys Power", "{r}");
    assert_eq!(r["measured"]["watts"].as_f64(), Some(188.0), "{r}");
    assert_eq!(
        role_temperatures(&r),
        [
            Some((26.0, "Ambient Temp".into())),
            Some((31.0, "CPU1 Temp".into())),
            Some((32.0, "CPU2 Temp".into())),
        ],
        "inlet, CPU 1, CPU 2: {r}"
    );
    let text = guest.metrics_text().await.unwrap();
    for line in [
        "ipmi_up{collector=\"ipmi\"} 1",
        "ipmi_up{collector=\"dcmi\"} 0",
        "ipmi_power_watts{id=\"66\",name=\"Sys Power\"} 188",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }

    bmc.set_reading("Sys Power", 246.0).unwrap();
    bmc.set_reading("CPU1 Temp", 40.0).unwrap();
    wait_report(
        &grpc,
        &guest,
        Duration::from_secs(30),
        "the changed readings",
        |r| {
            r["measured"]["watts"].as_f64() == Some(246.0)
                && temperature(r, "TEMPERATURE_ROLE_CPU", 0).map(|t| t.0) == Some(40.0)
        },
    )
    .await;
    let text = guest.metrics_text().await.unwrap();
    assert!(
        text.contains("ipmi_power_watts{id=\"66\",name=\"Sys Power\"} 246"),
        "{text}"
    );
}
