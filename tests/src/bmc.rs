//! Real BMCs: OpenIPMI's `ipmi_sim` speaking RMCP+ on a loopback UDP port, with a generated SDR
//! (names, entity ids, units, values), one poll file per sensor so a test changes readings while
//! the BMC runs, and optional DCMI power readings from a loadable module (`tests/bmc/dcmi_power.c`,
//! compiled once per source content). Every BMC also loads `tests/bmc/add_sdr.c`, a spec-conforming
//! Add SDR (ipmi_sim 2.0.33's own rejects well-formed records), so a test can change the SDR while
//! the BMC runs ([`Bmc::add_sdr`]).
//!
//! [`Bmc::start_with_system_interface`] also opens the BMC's system interface (channel 15) as a
//! TCP listener speaking qemu's `ipmi-bmc-extern` protocol (ipmi_sim's `VM` codec), so a virtual
//! machine's KCS interface reaches this same BMC in-band (see [`crate::inband`]).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::process::{
    cache_dir, free_tcp_port, free_udp_port, require_program, ManagedProcess, CHILD_MARKER_ENV,
};

const DCMI_MODULE_SOURCE: &str = include_str!("../bmc/dcmi_power.c");
const ADD_SDR_MODULE_SOURCE: &str = include_str!("../bmc/add_sdr.c");

/// IPMI sensor types and unit codes used here (IPMI 2.0 tables 42-3 and 43-15).
const SENSOR_TYPE_TEMPERATURE: u8 = 0x01;
const SENSOR_TYPE_CURRENT: u8 = 0x03;
const UNIT_DEGREES_C: u8 = 1;
const UNIT_WATTS: u8 = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SensorKind {
    Temperature,
    /// A whole-node or component power meter in watts.
    Power,
}

/// One sensor of a simulated BMC.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorSpec {
    pub name: String,
    pub number: u8,
    pub entity_id: u8,
    pub entity_instance: u8,
    pub kind: SensorKind,
    /// Resolution: engineering value = m × raw (linear, B = 0, no exponents).
    pub m: u8,
    pub value: f64,
    /// Whether the sensor's record is in the SDR repository when the BMC starts. Without it the
    /// sensor still exists and answers Get Sensor Reading, but a reader of the SDR cannot find it
    /// until [`Bmc::add_sdr`] adds the record.
    pub in_sdr: bool,
}

impl SensorSpec {
    /// A temperature sensor with 1 °C resolution (0..255 °C).
    pub fn temperature(
        name: &str,
        number: u8,
        entity_id: u8,
        entity_instance: u8,
        celsius: f64,
    ) -> Self {
        Self {
            name: name.into(),
            number,
            entity_id,
            entity_instance,
            kind: SensorKind::Temperature,
            m: 1,
            value: celsius,
            in_sdr: true,
        }
    }

    /// A power sensor with 2 W resolution (0..510 W).
    pub fn power(name: &str, number: u8, entity_id: u8, entity_instance: u8, watts: f64) -> Self {
        Self {
            name: name.into(),
            number,
            entity_id,
            entity_instance,
            kind: SensorKind::Power,
            m: 2,
            value: watts,
            in_sdr: true,
        }
    }

    /// The same sensor with its record left out of the SDR repository at start.
    pub fn without_sdr(mut self) -> Self {
        self.in_sdr = false;
        self
    }

    /// The raw reading that represents `value` (rounded to the resolution).
    pub fn raw(&self, value: f64) -> Result<u8> {
        let raw = (value / f64::from(self.m)).round();
        ensure!(
            value.is_finite() && (0.0..=255.0).contains(&raw),
            "sensor {:?}: {value} is outside 0..={}",
            self.name,
            255 * u32::from(self.m)
        );
        Ok(raw as u8)
    }

    /// What a reader sees for `value` after the raw round trip.
    pub fn resolved(&self, value: f64) -> Result<f64> {
        Ok(f64::from(self.raw(value)?) * f64::from(self.m))
    }

    /// The Full Sensor Record (IPMI 2.0 table 43-1) of this sensor, header included.
    pub fn sdr_record(&self) -> Result<Vec<u8>> {
        let name = self.name.as_bytes();
        ensure!(
            !name.is_empty() && name.len() <= 16 && self.name.is_ascii(),
            "sensor name {:?} must be 1..=16 ASCII bytes",
            self.name
        );
        let (sensor_type, unit) = match self.kind {
            SensorKind::Temperature => (SENSOR_TYPE_TEMPERATURE, UNIT_DEGREES_C),
            SensorKind::Power => (SENSOR_TYPE_CURRENT, UNIT_WATTS),
        };
        let mut body = vec![
            0x20,
            0x00,
            self.number, // owner (BMC), LUN, sensor number
            self.entity_id,
            self.entity_instance,
            0x41, // initialisation: scanning on at init and by default
            0x40, // capabilities: auto re-arm, no hysteresis, no thresholds
            sensor_type,
            0x01, // event/reading type: threshold
            0x00,
            0x00,
            0x00,
            0x00,
            0x00,
            0x00, // event and reading masks
            0x00, // units 1: unsigned analog, no rate, no modifier, not a percentage
            unit,
            0x00, // base unit, modifier unit
            0x00, // linearisation: linear
            self.m,
            0x00, // M (10 bits) and tolerance
            0x00,
            0x00, // B (10 bits) and accuracy
            0x00, // accuracy, exponent, direction
            0x00, // R (K2) and B (K1) exponents
            0x00, // analog characteristics
            0x00,
            0x00,
            0x00, // nominal, normal max, normal min
            0xff,
            0x00, // sensor max and min reading
            0x00,
            0x00,
            0x00,
            0x00,
            0x00,
            0x00, // thresholds
            0x00,
            0x00, // hysteresis
            0x00,
            0x00,
            0x00,                    // reserved, OEM
            0xc0 | name.len() as u8, // ID string: 8-bit ASCII
        ];
        body.extend_from_slice(name);
        let mut record = vec![0x00, 0x00, 0x51, 0x01, body.len() as u8];
        record.extend(body);
        Ok(record)
    }
}

/// A simulated BMC's sensors, DCMI support and user.
#[derive(Debug, Clone, PartialEq)]
pub struct BmcSpec {
    pub sensors: Vec<SensorSpec>,
    /// `Some(watts)` loads the DCMI module answering Get Power Reading with these watts.
    pub dcmi_watts: Option<f64>,
    pub username: String,
    pub password: String,
}

impl BmcSpec {
    /// Modelled on a Dell PowerEdge iDRAC: "Inlet Temp" and "Exhaust Temp" on the system board
    /// (entity 7.1), both CPU packages named just "Temp" on processor entities 3.1 and 3.2,
    /// "Pwr Consumption" in watts, and DCMI power readings.
    pub fn dell_like() -> Self {
        Self {
            sensors: vec![
                SensorSpec::temperature("Inlet Temp", 0x04, 0x07, 1, 22.0),
                SensorSpec::temperature("Exhaust Temp", 0x01, 0x07, 1, 35.0),
                SensorSpec::temperature("Temp", 0x0e, 0x03, 1, 48.0),
                SensorSpec::temperature("Temp", 0x0f, 0x03, 2, 51.0),
                SensorSpec::power("Pwr Consumption", 0x77, 0x07, 1, 196.0),
            ],
            dcmi_watts: Some(196.0),
            username: "root".into(),
            password: "calvin-test".into(),
        }
    }

    /// Modelled on the Lenovo nodes of FASRC's per-minute BMC sample (fasrc/hpc_sustainability_dataset,
    /// MIT; 2025-06-03): "Ambient Temp" on the
    /// air-inlet entity 0x40, "CPU1 Temp"/"CPU2 Temp" on the system board (so only their names
    /// tell the socket), component meters beside "Sys Power", and no DCMI. Values are the
    /// sample's idle readings.
    pub fn lenovo_like() -> Self {
        Self {
            sensors: vec![
                SensorSpec::temperature("Ambient Temp", 0x31, 0x40, 1, 24.0),
                SensorSpec::temperature("CPU1 Temp", 0x32, 0x07, 1, 31.0),
                SensorSpec::temperature("CPU2 Temp", 0x33, 0x07, 1, 32.0),
                SensorSpec::power("CPU Power", 0x40, 0x03, 1, 110.0),
                SensorSpec::power("Mem Power", 0x41, 0x20, 1, 16.0),
                SensorSpec::power("Sys Power", 0x42, 0x07, 1, 170.0),
            ],
            dcmi_watts: None,
            username: "USERID".into(),
            password: "PASSW0RD-test".into(),
        }
    }

    pub fn sensor(&self, name: &str) -> Option<&SensorSpec> {
        self.sensors.iter().find(|s| s.name == name)
    }
}

/// A running simulated BMC; stopped on drop.
pub struct Bmc {
    ipmi_sim: PathBuf,
    spec: BmcSpec,
    dir: tempfile::TempDir,
    port: u16,
    /// TCP port of the system interface for qemu, when started with one.
    vm_port: Option<u16>,
    process: Option<ManagedProcess>,
}

impl Bmc {
    /// Writes the configuration and starts `ipmi_sim`, waiting until it answers over RMCP+.
    pub async fn start(spec: BmcSpec) -> Result<Self> {
        Self::start_inner(spec, false).await
    }

    /// [`Bmc::start`], plus the system interface on a loopback TCP port ([`Bmc::vm_port`]) for a
    /// qemu `ipmi-bmc-extern` device: the guest's kernel IPMI driver talks to this BMC.
    pub async fn start_with_system_interface(spec: BmcSpec) -> Result<Self> {
        Self::start_inner(spec, true).await
    }

    async fn start_inner(spec: BmcSpec, system_interface: bool) -> Result<Self> {
        let ipmi_sim = require_program("ipmi_sim")?;
        require_program("ipmitool")?;
        let dir = tempfile::Builder::new().prefix("wattwise-bmc-").tempdir()?;
        std::fs::create_dir(dir.path().join("state"))?;
        let port = free_udp_port()?;
        let vm_port = if system_interface {
            Some(free_tcp_port()?)
        } else {
            None
        };
        let dcmi = match spec.dcmi_watts {
            Some(_) => Some(compile_module("dcmi_power", DCMI_MODULE_SOURCE)?),
            None => None,
        };
        let add_sdr = compile_module("add_sdr", ADD_SDR_MODULE_SOURCE)?;
        let mut bmc = Self {
            ipmi_sim,
            spec,
            dir,
            port,
            vm_port,
            process: None,
        };
        std::fs::write(
            bmc.dir.path().join("lan.conf"),
            bmc.lan_conf(&add_sdr, dcmi.as_deref()),
        )?;
        std::fs::write(bmc.dir.path().join("bmc.emu"), bmc.command_file()?)?;
        for sensor in &bmc.spec.sensors {
            bmc.write_poll_file(sensor, sensor.value)?;
        }
        if let Some(watts) = bmc.spec.dcmi_watts {
            bmc.write_atomically(&bmc.dcmi_file(), &format!("{watts}\n"))?;
        }
        bmc.launch().await?;
        Ok(bmc)
    }

    async fn launch(&mut self) -> Result<()> {
        let d = self.dir.path();
        let mut cmd = Command::new(&self.ipmi_sim);
        cmd.arg("-c")
            .arg(d.join("lan.conf"))
            .arg("-f")
            .arg(d.join("bmc.emu"))
            .arg("-s")
            .arg(d.join("state"))
            .arg("-n");
        self.process = Some(ManagedProcess::spawn("ipmi_sim", cmd, d)?);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(p) = self.process.as_mut() {
                p.ensure_running()?;
            }
            let last = match self.ipmitool(&["mc", "info"]).await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if tokio::time::Instant::now() >= deadline {
                let log = self
                    .process
                    .as_ref()
                    .map(|p| p.log_tail(20))
                    .unwrap_or_default();
                bail!("ipmi_sim not answering within 20 s ({last:#}); log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn spec(&self) -> &BmcSpec {
        &self.spec
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TCP port of the system interface (qemu `ipmi-bmc-extern`), if started with one.
    pub fn vm_port(&self) -> Option<u16> {
        self.vm_port
    }

    pub fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn username(&self) -> &str {
        &self.spec.username
    }

    pub fn password(&self) -> &str {
        &self.spec.password
    }

    /// Changes a sensor's reading; ipmi_sim polls the file every 250 ms.
    pub fn set_reading(&mut self, name: &str, value: f64) -> Result<()> {
        let index = self
            .spec
            .sensors
            .iter()
            .position(|s| s.name == name)
            .with_context(|| format!("no sensor named {name:?}"))?;
        let sensor = self.spec.sensors[index].clone();
        self.write_poll_file(&sensor, value)?;
        self.spec.sensors[index].value = value;
        Ok(())
    }

    /// Changes the DCMI power reading (read by the module on every request).
    pub fn set_dcmi_watts(&mut self, watts: f64) -> Result<()> {
        ensure!(self.spec.dcmi_watts.is_some(), "this BMC has no DCMI");
        ensure!(
            (0.0..=65535.0).contains(&watts),
            "{watts} W does not fit DCMI's 16 bits"
        );
        self.write_atomically(&self.dcmi_file(), &format!("{watts}\n"))?;
        self.spec.dcmi_watts = Some(watts);
        Ok(())
    }

    /// SIGKILL: the BMC crashes.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Starts again on the same port with the same configuration and current readings.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.launch().await
    }

    pub fn is_running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(ManagedProcess::is_running)
    }

    /// Runs ipmitool over RMCP+ (cipher suite 3) against this BMC; the password travels in the
    /// environment (`-E`), never on the command line.
    pub async fn ipmitool(&self, args: &[&str]) -> Result<String> {
        self.ipmitool_as(&self.spec.username, &self.spec.password, args)
            .await
    }

    /// ipmitool with other credentials (e.g. a wrong password).
    pub async fn ipmitool_as(
        &self,
        username: &str,
        password: &str,
        args: &[&str],
    ) -> Result<String> {
        let port = self.port.to_string();
        let output = tokio::process::Command::new("ipmitool")
            .args([
                "-I",
                "lanplus",
                "-C",
                "3",
                "-H",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                username,
                "-E",
            ])
            .args(["-N", "1", "-R", "2"])
            .args(args)
            .env("IPMI_PASSWORD", password)
            .env(CHILD_MARKER_ENV, crate::process::run_id())
            .kill_on_drop(true)
            .output()
            .await
            .context("running ipmitool")?;
        if !output.status.success() {
            bail!(
                "ipmitool {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8(output.stdout)?)
    }

    /// Adds `name`'s record to the SDR repository with IPMI Add SDR (NetFn 0x0A, cmd 0x24) over
    /// RMCP+, as a firmware update or hot-plugged part would change it; returns the record ID the
    /// BMC assigned. The repository's record count and most recent addition change with it.
    pub async fn add_sdr(&mut self, name: &str) -> Result<u16> {
        let index = self
            .spec
            .sensors
            .iter()
            .position(|s| s.name == name)
            .with_context(|| format!("no sensor named {name:?}"))?;
        ensure!(
            !self.spec.sensors[index].in_sdr,
            "sensor {name:?} is already in the SDR"
        );
        let record: Vec<String> = self.spec.sensors[index]
            .sdr_record()?
            .iter()
            .map(|b| format!("0x{b:02x}"))
            .collect();
        let mut args = vec!["raw", "0x0a", "0x24"];
        args.extend(record.iter().map(String::as_str));
        let out = self.ipmitool(&args).await?;
        let bytes = out
            .split_whitespace()
            .map(|b| u8::from_str_radix(b, 16))
            .collect::<Result<Vec<u8>, _>>()
            .with_context(|| format!("Add SDR answered {out:?}"))?;
        ensure!(
            bytes.len() == 2,
            "Add SDR answered {out:?}, expected a record ID"
        );
        self.spec.sensors[index].in_sdr = true;
        Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
    }

    fn lan_conf(&self, add_sdr: &Path, dcmi: Option<&Path>) -> String {
        let mut conf = format!(
            "name \"wattwise\"\n\
             set_working_mc 0x20\n\
             \x20 startlan 1\n\
             \x20   addr 127.0.0.1 {port}\n\
             \x20   priv_limit admin\n\
             \x20   allowed_auths_callback none md2 md5 straight\n\
             \x20   allowed_auths_user none md2 md5 straight\n\
             \x20   allowed_auths_operator none md2 md5 straight\n\
             \x20   allowed_auths_admin none md2 md5 straight\n\
             \x20   guid a123456789abcdefa123456789abcdef\n\
             \x20 endlan\n\
             {serial}\
             \x20 user 2 true \"{user}\" \"{password}\" admin 10 none md2 md5 straight\n",
            port = self.port,
            serial = match self.vm_port {
                Some(vm_port) => format!("  serial 15 127.0.0.1 {vm_port} codec VM\n"),
                None => String::new(),
            },
            user = self.spec.username,
            password = self.spec.password,
        );
        conf.push_str(&format!("loadlib \"{}\" \"\"\n", add_sdr.display()));
        if let Some(module) = dcmi {
            conf.push_str(&format!(
                "loadlib \"{}\" \"{}\"\n",
                module.display(),
                self.dcmi_file().display()
            ));
        }
        conf
    }

    fn command_file(&self) -> Result<String> {
        let mut emu = String::from(
            "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n",
        );
        for sensor in &self.spec.sensors {
            let record: Vec<String> = sensor
                .sdr_record()?
                .iter()
                .map(|b| format!("0x{b:02x}"))
                .collect();
            if sensor.in_sdr {
                emu.push_str(&format!("main_sdr_add 0x20 {}\n", record.join(" ")));
            }
            emu.push_str(&format!(
                "sensor_add 0x20 0 {n} {t} 0x01 poll 250 file \"{file}\"\n\
                 sensor_set_event_support 0x20 0 {n} enable scanning per-state \
                 000000000000000 000000000000000 000000000000000 000000000000000\n",
                n = sensor.number,
                t = match sensor.kind {
                    SensorKind::Temperature => SENSOR_TYPE_TEMPERATURE,
                    SensorKind::Power => SENSOR_TYPE_CURRENT,
                },
                file = self.poll_file(sensor.number).display(),
            ));
        }
        emu.push_str("mc_enable 0x20\n");
        Ok(emu)
    }

    fn poll_file(&self, number: u8) -> PathBuf {
        self.dir.path().join(format!("sensor-{number:02x}"))
    }

    fn dcmi_file(&self) -> PathBuf {
        self.dir.path().join("dcmi-watts")
    }

    fn write_poll_file(&self, sensor: &SensorSpec, value: f64) -> Result<()> {
        let raw = sensor.raw(value)?;
        self.write_atomically(&self.poll_file(sensor.number), &format!("{raw}\n"))
    }

    /// Write then rename, so the poller never reads a half-written number.
    fn write_atomically(&self, path: &Path, text: &str) -> Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
    }
}

/// An ipmi_sim module (`tests/bmc/<name>.c`), compiled once per source content into the cache.
fn compile_module(name: &str, source_text: &str) -> Result<PathBuf> {
    let mut hasher = DefaultHasher::new();
    source_text.hash(&mut hasher);
    let dir = cache_dir().join("bmc");
    let module = dir.join(format!("{name}-{:016x}.so", hasher.finish()));
    if module.is_file() {
        return Ok(module);
    }
    let gcc = require_program("gcc")?;
    ensure!(
        Path::new("/usr/include/OpenIPMI/serv.h").is_file(),
        "OpenIPMI headers are missing (libopenipmi-dev): run scripts/install-deps.sh"
    );
    std::fs::create_dir_all(&dir)?;
    // Unique temporary names: parallel tests may compile at the same time; rename is atomic.
    let unique = format!("{}-{:?}", std::process::id(), std::thread::current().id());
    let source = dir.join(format!("{name}-{unique}.c"));
    let tmp = dir.join(format!("{name}-{unique}.so.tmp"));
    std::fs::write(&source, source_text)?;
    let out = Command::new(gcc)
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-o"])
        .arg(&tmp)
        .arg(&source)
        .output()
        .context("running gcc")?;
    let _ = std::fs::remove_file(&source);
    if !out.status.success() {
        bail!(
            "compiling the ipmi_sim module {name} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::rename(&tmp, &module)?;
    Ok(module)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_values_round_to_the_resolution_and_reject_what_does_not_fit() {
        let t = SensorSpec::temperature("T", 1, 0x37, 1, 0.0);
        assert_eq!(t.raw(23.4).unwrap(), 23);
        let p = SensorSpec::power("P", 2, 0x07, 1, 0.0);
        assert_eq!(p.raw(197.0).unwrap(), 99, "2 W resolution rounds half up");
        assert_eq!(p.resolved(197.0).unwrap(), 198.0);
        assert!(p.raw(600.0).is_err());
        assert!(t.raw(-1.0).is_err());
        assert!(t.raw(f64::NAN).is_err());
    }

    #[test]
    fn full_sensor_record_bytes() {
        let record = SensorSpec::temperature("Inlet", 0x04, 0x37, 1, 20.0)
            .sdr_record()
            .unwrap();
        // Header: record id (assigned by the BMC), SDR version 51h, type 01h, length.
        assert_eq!(
            &record[..5],
            &[0x00, 0x00, 0x51, 0x01, (record.len() - 5) as u8]
        );
        // Key and entity.
        assert_eq!(&record[5..10], &[0x20, 0x00, 0x04, 0x37, 0x01]);
        assert_eq!(record[12], 0x01, "sensor type temperature");
        assert_eq!(record[21], 1, "base unit degrees C");
        assert_eq!(record[24], 1, "M");
        assert_eq!(record[47], 0xc5, "8-bit ASCII, 5 bytes");
        assert_eq!(&record[48..], b"Inlet");
        let power = SensorSpec::power("Sys Power", 0x42, 0x07, 1, 0.0)
            .sdr_record()
            .unwrap();
        assert_eq!((power[12], power[21], power[24]), (0x03, 6, 2));
        assert!(
            SensorSpec::temperature("a name that is far too long", 1, 1, 1, 0.0)
                .sdr_record()
                .is_err()
        );
    }
}
