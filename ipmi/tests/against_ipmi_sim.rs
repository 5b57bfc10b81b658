//! The client against a real BMC implementation: OpenIPMI's `ipmi_sim` over RMCP+ on loopback,
//! configured like the vendors' BMCs the agent meets (wattwise-testenv's presets).

use std::time::{Duration, Instant};

use wattwise_ipmi::{Bmc, IpmiError, Privilege, SensorReading, SensorRecord, Target};
use wattwise_testenv::bmc::{Bmc as SimBmc, BmcSpec};

const TIMEOUT: Duration = Duration::from_millis(800);

fn target(sim: &SimBmc, password: &str) -> Target {
    Target::Lan {
        host: "127.0.0.1".into(),
        port: sim.port(),
        username: sim.username().into(),
        password: password.into(),
    }
}

/// The client is blocking by design; keep it off the runtime's worker threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// Every configured sensor is in the SDR with its number, entity and name, and reads back its
/// configured value within the sensor's resolution.
fn check_sensors(spec: &BmcSpec, bmc: &mut Bmc, records: &[SensorRecord]) {
    assert_eq!(records.len(), spec.sensors.len(), "records: {records:#?}");
    for sensor in &spec.sensors {
        let record = records
            .iter()
            .find(|r| r.number == sensor.number)
            .unwrap_or_else(|| panic!("no record for sensor {:?}", sensor.name));
        assert_eq!(record.name, sensor.name);
        assert_eq!(
            (record.entity_id, record.entity_instance),
            (sensor.entity_id, sensor.entity_instance),
            "{}",
            sensor.name
        );
        let resolution = record.conversion.expect("analog sensor").resolution();
        assert_eq!(resolution, f64::from(sensor.m), "{}", sensor.name);
        match bmc.read_sensor(record).expect("read sensor") {
            SensorReading::Value { value, .. } => assert!(
                (value - sensor.value).abs() <= resolution / 2.0,
                "{}: read {value}, configured {}",
                sensor.name,
                sensor.value
            ),
            other => panic!("{}: {other:?}", sensor.name),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dell_like_bmc_sdr_sensors_and_dcmi() {
    let mut sim = SimBmc::start(BmcSpec::dell_like()).await.expect("ipmi_sim");
    let spec = sim.spec().clone();
    let target = target(&sim, sim.password());

    let (mut bmc, records) = blocking(move || {
        let mut bmc = Bmc::connect(&target, TIMEOUT).expect("connect");
        let started = Instant::now();
        let info = bmc.sdr_repository_info().expect("SDR info");
        let records = bmc.read_sdr().expect("SDR");
        for record in &records {
            bmc.read_sensor(record).expect("sensor");
        }
        let power = bmc.dcmi_power_reading().expect("DCMI");
        eprintln!(
            "full read cycle (SDR info + {} records + {} readings + DCMI): {:?}",
            records.len(),
            records.len(),
            started.elapsed()
        );
        assert_eq!(usize::from(info.record_count), records.len());
        assert_eq!(power.current_watts, 196);
        (bmc, records)
    })
    .await;
    assert_eq!(bmc.privilege(), Privilege::Administrator);

    let (mut bmc, records) = blocking(move || {
        check_sensors(&spec, &mut bmc, &records);
        let caps = bmc
            .dcmi_capabilities()
            .expect("capabilities")
            .expect("DCMI present");
        assert_eq!((caps.major_version, caps.minor_version), (1, 5));
        assert!(caps.power_management);
        let power = bmc.dcmi_power_reading().expect("power");
        assert!(power.active);
        (bmc, records)
    })
    .await;

    // Values change while the BMC runs; ipmi_sim polls its files every 250 ms.
    sim.set_reading("Pwr Consumption", 250.0)
        .expect("set reading");
    sim.set_dcmi_watts(321.0).expect("set watts");
    blocking(move || {
        let record = records
            .iter()
            .find(|r| r.name == "Pwr Consumption")
            .expect("power sensor");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let reading = bmc.read_sensor(record).expect("read");
            if reading
                == (SensorReading::Value {
                    value: 250.0,
                    raw: 125,
                })
            {
                break;
            }
            assert!(Instant::now() < deadline, "still {reading:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(bmc.dcmi_power_reading().expect("power").current_watts, 321);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lenovo_like_bmc_without_dcmi() {
    let sim = SimBmc::start(BmcSpec::lenovo_like())
        .await
        .expect("ipmi_sim");
    let spec = sim.spec().clone();
    let target = target(&sim, sim.password());
    blocking(move || {
        let mut bmc = Bmc::connect(&target, TIMEOUT).expect("connect");
        let records = bmc.read_sdr().expect("SDR");
        check_sensors(&spec, &mut bmc, &records);
        assert_eq!(bmc.dcmi_capabilities().expect("capabilities"), None);
        let err = bmc.dcmi_power_reading().expect_err("no DCMI");
        assert_eq!(err.completion_code(), Some(0xC1), "{err}");
        assert_eq!(
            err.to_string(),
            "DCMI Get Power Reading: completion code 0xC1 (invalid command)"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_is_an_authentication_error() {
    let sim = SimBmc::start(BmcSpec::lenovo_like())
        .await
        .expect("ipmi_sim");
    let target = target(&sim, "not-the-password");
    let err = blocking(move || Bmc::connect(&target, TIMEOUT).expect_err("wrong password")).await;
    assert!(matches!(err, IpmiError::Authentication { .. }), "{err}");
    assert!(!err.to_string().contains("not-the-password"));
    assert!(!format!("{err:?}").contains("not-the-password"));
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_bmc_fails_fast_and_the_session_comes_back_after_restart() {
    let mut sim = SimBmc::start(BmcSpec::dell_like()).await.expect("ipmi_sim");
    let target = target(&sim, sim.password());
    let (bmc, records) = blocking(move || {
        let mut bmc = Bmc::connect(&target, TIMEOUT).expect("connect");
        let records = bmc.read_sdr().expect("SDR");
        (bmc, records)
    })
    .await;

    sim.kill();
    let (bmc, records) = blocking(move || {
        let mut bmc = bmc;
        let started = Instant::now();
        let err = bmc.read_sensor(&records[0]).expect_err("BMC is gone");
        let elapsed = started.elapsed();
        assert!(err.is_unreachable(), "{err}");
        assert!(
            elapsed < TIMEOUT + Duration::from_millis(500),
            "{elapsed:?}"
        );
        let started = Instant::now();
        let err = bmc.dcmi_power_reading().expect_err("still gone");
        assert!(err.is_unreachable(), "{err}");
        assert!(started.elapsed() < TIMEOUT * 2 + Duration::from_millis(500));
        (bmc, records)
    })
    .await;

    sim.restart().await.expect("restart");
    blocking(move || {
        let mut bmc = bmc;
        // The dropped session is re-established by the next call.
        let reading = bmc.read_sensor(&records[0]).expect("reconnected");
        assert!(
            matches!(reading, SensorReading::Value { .. }),
            "{reading:?}"
        );
        assert_eq!(bmc.privilege(), Privilege::Administrator);
        assert_eq!(bmc.dcmi_power_reading().expect("power").current_watts, 196);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unresponsive_bmc_times_out_within_the_timeout() {
    // Nothing answers on a port we hold open ourselves: packets vanish, like a hung BMC.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let target = Target::Lan {
        host: "127.0.0.1".into(),
        port: silent.local_addr().expect("addr").port(),
        username: "root".into(),
        password: "x".into(),
    };
    let started = Instant::now();
    let err = blocking(move || Bmc::connect(&target, TIMEOUT).expect_err("silent")).await;
    assert!(matches!(err, IpmiError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < TIMEOUT + Duration::from_millis(500));
    drop(silent);
}
