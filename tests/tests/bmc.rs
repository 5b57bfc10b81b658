//! The real BMC fixture: ipmi_sim BMCs read with the reference client, ipmitool, over RMCP+.

use std::time::{Duration, Instant};

use wattwise_testenv::bmc::{Bmc, BmcSpec};

/// `ipmitool sensor reading NAME` → value, e.g. "Inlet Temp       | 22" → 22.
async fn reading(bmc: &Bmc, name: &str) -> f64 {
    let out = bmc.ipmitool(&["sensor", "reading", name]).await.unwrap();
    out.rsplit('|')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{out}"))
}

/// The current watts of `ipmitool dcmi power reading`.
async fn dcmi_watts(bmc: &Bmc) -> anyhow::Result<f64> {
    let out = bmc.ipmitool(&["dcmi", "power", "reading"]).await?;
    let line = out
        .lines()
        .find(|l| l.contains("Instantaneous power reading"))
        .ok_or_else(|| anyhow::anyhow!("no power reading in {out}"))?;
    Ok(line
        .split(':')
        .nth(1)
        .unwrap()
        .trim()
        .trim_end_matches("Watts")
        .trim()
        .parse()?)
}

async fn sdr_lists_every_sensor_with_its_value(spec: BmcSpec) {
    let bmc = Bmc::start(spec.clone()).await.unwrap();
    let sdr = bmc.ipmitool(&["sdr", "elist", "full"]).await.unwrap();
    for sensor in &spec.sensors {
        let line = sdr
            .lines()
            .find(|l| l.starts_with(&format!("{:<16} | {:02X}h", sensor.name, sensor.number)))
            .unwrap_or_else(|| {
                panic!(
                    "{} (#{:02x}) missing from:\n{sdr}",
                    sensor.name, sensor.number
                )
            });
        let entity = format!("{}.{}", sensor.entity_id, sensor.entity_instance);
        assert!(line.contains(&entity), "entity {entity} not in {line:?}");
        let expected = sensor.resolved(sensor.value).unwrap();
        let unit = if line.contains("degrees C") {
            "degrees C"
        } else {
            "Watts"
        };
        assert!(
            line.trim_end().ends_with(&format!("{expected} {unit}")),
            "expected {expected} {unit} in {line:?}"
        );
    }
}

#[tokio::test]
async fn dell_like_sdr_is_served_as_configured() {
    sdr_lists_every_sensor_with_its_value(BmcSpec::dell_like()).await;
}

#[tokio::test]
async fn lenovo_like_sdr_is_served_as_configured() {
    sdr_lists_every_sensor_with_its_value(BmcSpec::lenovo_like()).await;
}

#[tokio::test]
async fn dcmi_power_reading_follows_the_module_and_is_absent_without_it() {
    let mut dell = Bmc::start(BmcSpec::dell_like()).await.unwrap();
    assert_eq!(dcmi_watts(&dell).await.unwrap(), 196.0);
    dell.set_dcmi_watts(243.0).unwrap();
    assert_eq!(
        dcmi_watts(&dell).await.unwrap(),
        243.0,
        "read on every request"
    );

    let lenovo = Bmc::start(BmcSpec::lenovo_like()).await.unwrap();
    assert!(
        dcmi_watts(&lenovo).await.is_err(),
        "no DCMI without the module"
    );
}

#[tokio::test]
async fn a_changed_reading_is_visible_within_two_seconds() {
    let mut bmc = Bmc::start(BmcSpec::lenovo_like()).await.unwrap();
    assert_eq!(reading(&bmc, "Ambient Temp").await, 24.0);
    bmc.set_reading("Ambient Temp", 29.0).unwrap();
    bmc.set_reading("Sys Power", 301.0).unwrap();
    let changed = Instant::now();
    loop {
        if reading(&bmc, "Ambient Temp").await == 29.0 && reading(&bmc, "Sys Power").await == 302.0
        {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(2),
            "new readings not seen within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_wrong_password_is_refused() {
    let bmc = Bmc::start(BmcSpec::dell_like()).await.unwrap();
    let err = bmc
        .ipmitool_as(bmc.username(), "not-the-password", &["mc", "info"])
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("Unable to establish"),
        "{err:#}"
    );
    bmc.ipmitool(&["mc", "info"])
        .await
        .expect("the right password still works");
}

#[tokio::test]
async fn a_killed_bmc_comes_back_with_its_readings() {
    let mut bmc = Bmc::start(BmcSpec::dell_like()).await.unwrap();
    bmc.set_reading("Inlet Temp", 27.0).unwrap();
    bmc.kill();
    assert!(!bmc.is_running());
    assert!(
        bmc.ipmitool(&["mc", "info"]).await.is_err(),
        "a dead BMC does not answer"
    );
    bmc.restart().await.unwrap();
    assert_eq!(reading(&bmc, "Inlet Temp").await, 27.0);
    assert_eq!(dcmi_watts(&bmc).await.unwrap(), 196.0);
}
