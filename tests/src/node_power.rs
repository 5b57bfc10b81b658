//! An agent's `NodePower` reports as grpcurl returns them (protobuf JSON), and the lookups the
//! agent tests make in them.

use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};

use crate::grpcurl::Grpcurl;

/// `NodePower/GetReport`.
pub async fn get_report(grpcurl: &Grpcurl) -> Result<Value> {
    grpcurl
        .call("wattwise.v1.NodePower/GetReport", &json!({}))
        .await
}

/// Polls GetReport until `check` holds, for at most `timeout`; on timeout the last report is the
/// error, so a caller can add what it knows (a console, a log) before failing.
pub async fn poll_report(
    grpcurl: &Grpcurl,
    timeout: Duration,
    check: impl Fn(&Value) -> bool,
) -> Result<Value, Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let report = get_report(grpcurl)
            .await
            .unwrap_or_else(|e| json!({ "error": e.to_string() }));
        if check(&report) {
            return Ok(report);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(report);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`poll_report`] that panics, naming `what`, on timeout.
pub async fn wait_report(
    grpcurl: &Grpcurl,
    timeout: Duration,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    poll_report(grpcurl, timeout, check)
        .await
        .unwrap_or_else(|last| panic!("{what}: not within {timeout:?}; last report {last}"))
}

/// The temperature of `role` (e.g. `TEMPERATURE_ROLE_CPU`) at `index`: °C and sensor name.
pub fn temperature(report: &Value, role: &str, index: u64) -> Option<(f64, String)> {
    report["temperatures"].as_array()?.iter().find_map(|t| {
        let same_index = t["index"].as_u64().unwrap_or(0) == index;
        (t["role"] == role && same_index).then(|| {
            (
                t["celsius"].as_f64().unwrap_or(f64::NAN),
                t["sensorName"].as_str().unwrap_or_default().to_string(),
            )
        })
    })
}

/// The inlet, CPU 1 and CPU 2 temperatures (°C and sensor name), the roles every BMC layout in
/// the tests has.
pub fn role_temperatures(report: &Value) -> [Option<(f64, String)>; 3] {
    [
        temperature(report, "TEMPERATURE_ROLE_INLET", 0),
        temperature(report, "TEMPERATURE_ROLE_CPU", 0),
        temperature(report, "TEMPERATURE_ROLE_CPU", 1),
    ]
}

/// The health status of sensor role `role` (e.g. `inlet`), empty when the report has none.
pub fn role_status(report: &Value, role: &str) -> String {
    report["sensors"]
        .as_array()
        .and_then(|s| s.iter().find(|h| h["role"] == role))
        .map(|h| h["status"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}
