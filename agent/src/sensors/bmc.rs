//! The BMC's readings as the rest of the agent sees them: per role, the last good value and its
//! health. The collector (`collector.rs`) writes them; reports and metrics read them.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use wattwise_proto::v1 as pb;

use super::roles::Role;

/// One role's latest state.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleReading {
    /// The BMC's name of the sensor filling the role (empty when none does).
    pub sensor_name: String,
    /// SDR sensor number, for metrics' `id` label.
    pub sensor_number: Option<u8>,
    /// The last good value; kept (and marked stale) when a read fails.
    pub value: Option<f64>,
    pub source: pb::ReadingSource,
    pub status: pb::SensorStatus,
    /// Why the status is not OK.
    pub detail: String,
    pub last_ok: Option<SystemTime>,
}

impl RoleReading {
    /// A role no sensor fills (missing, ambiguous, misconfigured): `detail` says which.
    pub fn unfilled(status: pb::SensorStatus, detail: String) -> Self {
        Self {
            sensor_name: String::new(),
            sensor_number: None,
            value: None,
            source: pb::ReadingSource::None,
            status,
            detail,
            last_ok: None,
        }
    }

    /// A successful read.
    pub fn record(&mut self, value: f64, at: SystemTime) {
        self.value = Some(value);
        self.status = pb::SensorStatus::Ok;
        self.detail.clear();
        self.last_ok = Some(at);
    }

    /// A failed read: the last good value stays, flagged stale (or error if there never was one).
    pub fn fail(&mut self, detail: String) {
        self.status = if self.value.is_some() {
            pb::SensorStatus::Stale
        } else {
            pb::SensorStatus::Error
        };
        self.detail = detail;
    }

    /// The value when it is usable for prediction (fresh or stale, not absent).
    pub fn usable(&self) -> Option<f64> {
        self.value
    }
}

/// Where measured watts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerPath {
    Dcmi,
    SdrSensor,
    None,
}

/// Everything read from the BMC.
#[derive(Debug, Clone, PartialEq)]
pub struct BmcReadings {
    pub roles: BTreeMap<Role, RoleReading>,
    /// DCMI when the BMC has it, else the SDR power sensor, else none.
    pub power_path: PowerPath,
    /// Whether the last sensor read cycle reached the BMC.
    pub sensors_up: bool,
    /// Whether the last DCMI reading succeeded (false when the BMC has no DCMI).
    pub dcmi_up: bool,
}

impl BmcReadings {
    /// No BMC configured: nothing measured, nothing to flag.
    pub fn none() -> Self {
        Self {
            roles: BTreeMap::new(),
            power_path: PowerPath::None,
            sensors_up: false,
            dcmi_up: false,
        }
    }

    /// Every role's value stale after a failed read cycle (roles no sensor fills stay as they are).
    pub fn fail_all(&mut self, reason: &str) {
        self.sensors_up = false;
        self.dcmi_up = false;
        for reading in self.roles.values_mut() {
            if matches!(
                reading.status,
                pb::SensorStatus::Ok | pb::SensorStatus::Stale | pb::SensorStatus::Error
            ) {
                reading.fail(reason.to_string());
            }
        }
    }

    /// Flags the readings stale when any value still marked OK is older than `max_age`: a
    /// collector that stopped reading (a hung BMC call) must not have its last values reported
    /// as current.
    pub fn expire(&mut self, now: SystemTime, max_age: Duration) {
        let oldest_ok = self
            .roles
            .values()
            .filter(|r| r.status == pb::SensorStatus::Ok)
            .filter_map(|r| now.duration_since(r.last_ok?).ok())
            .max();
        if let Some(age) = oldest_ok.filter(|age| *age > max_age) {
            self.fail_all(&format!(
                "no BMC read for {:.1}s (limit {:.1}s)",
                age.as_secs_f64(),
                max_age.as_secs_f64()
            ));
        }
    }

    pub fn inlet_celsius(&self) -> Option<f64> {
        self.roles.get(&Role::Inlet).and_then(RoleReading::usable)
    }

    /// CPU temperatures by socket; a gap (socket without a usable reading) is `None`.
    pub fn cpu_celsius(&self) -> Vec<Option<f64>> {
        let sockets = self
            .roles
            .keys()
            .filter_map(|r| match r {
                Role::Cpu(i) => Some(*i as usize + 1),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        (0..sockets)
            .map(|i| {
                self.roles
                    .get(&Role::Cpu(i as u8))
                    .and_then(RoleReading::usable)
            })
            .collect()
    }

    /// Temperatures for the report.
    pub fn temperatures(&self) -> Vec<pb::Temperature> {
        self.roles
            .iter()
            .filter_map(|(role, reading)| {
                let (role, index) = match role {
                    Role::Inlet => (pb::TemperatureRole::Inlet, 0),
                    Role::Cpu(i) => (pb::TemperatureRole::Cpu, u32::from(*i)),
                    Role::Power => return None,
                };
                Some(pb::Temperature {
                    role: role as i32,
                    index,
                    celsius: reading.usable()?,
                    sensor_name: reading.sensor_name.clone(),
                    source: reading.source as i32,
                })
            })
            .collect()
    }

    /// Measured watts for the report (source NONE and 0 W when there is no usable value).
    pub fn measured(&self) -> pb::PowerMeasurement {
        match self.roles.get(&Role::Power) {
            Some(r) if r.usable().is_some() && self.power_path != PowerPath::None => {
                pb::PowerMeasurement {
                    source: r.source as i32,
                    watts: r.usable().unwrap_or_default(),
                    sensor_name: r.sensor_name.clone(),
                }
            }
            _ => pb::PowerMeasurement {
                source: pb::ReadingSource::None as i32,
                watts: 0.0,
                sensor_name: String::new(),
            },
        }
    }

    /// Per-role health for the report.
    pub fn health(&self) -> Vec<pb::SensorHealth> {
        self.roles
            .iter()
            .map(|(role, r)| pb::SensorHealth {
                role: role.to_string(),
                status: r.status as i32,
                detail: r.detail.clone(),
                last_ok: r.last_ok.map(Into::into),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(value: f64, name: &str, source: pb::ReadingSource) -> RoleReading {
        let mut r = RoleReading::unfilled(pb::SensorStatus::Ok, String::new());
        r.sensor_name = name.into();
        r.source = source;
        r.record(value, SystemTime::UNIX_EPOCH);
        r
    }

    #[test]
    fn stale_values_stay_usable_and_never_read_values_are_errors() {
        let mut r = ok(24.0, "Inlet Temp", pb::ReadingSource::SdrSensor);
        r.fail("timeout".into());
        assert_eq!(r.status, pb::SensorStatus::Stale);
        assert_eq!(r.usable(), Some(24.0));
        let mut never = RoleReading::unfilled(pb::SensorStatus::Ok, String::new());
        never.fail("timeout".into());
        assert_eq!(never.status, pb::SensorStatus::Error);
        assert_eq!(never.usable(), None);
    }

    #[test]
    fn values_the_collector_stopped_reading_go_stale() {
        let mut b = BmcReadings::none();
        b.sensors_up = true;
        b.roles.insert(
            Role::Inlet,
            ok(22.0, "Inlet Temp", pb::ReadingSource::SdrSensor),
        );
        b.roles.insert(
            Role::Cpu(0),
            RoleReading::unfilled(pb::SensorStatus::Missing, "no sensor found".into()),
        );
        let read_at = SystemTime::UNIX_EPOCH;
        let limit = Duration::from_secs(10);
        let mut recent = b.clone();
        recent.expire(read_at + limit, limit);
        assert_eq!(recent, b, "within the limit nothing changes");
        b.expire(read_at + Duration::from_secs(11), limit);
        let inlet = &b.roles[&Role::Inlet];
        assert_eq!(inlet.status, pb::SensorStatus::Stale);
        assert_eq!(inlet.usable(), Some(22.0), "stale values stay usable");
        assert!(
            inlet.detail.contains("no BMC read for 11.0s"),
            "{}",
            inlet.detail
        );
        assert_eq!(b.roles[&Role::Cpu(0)].status, pb::SensorStatus::Missing);
        assert!(!b.sensors_up);
    }

    #[test]
    fn report_parts_follow_the_roles() {
        let mut b = BmcReadings::none();
        b.power_path = PowerPath::Dcmi;
        b.roles.insert(
            Role::Inlet,
            ok(22.0, "Inlet Temp", pb::ReadingSource::SdrSensor),
        );
        b.roles.insert(
            Role::Cpu(1),
            ok(61.0, "CPU2 Temp", pb::ReadingSource::SdrSensor),
        );
        b.roles
            .insert(Role::Power, ok(180.0, "", pb::ReadingSource::Dcmi));
        assert_eq!(b.inlet_celsius(), Some(22.0));
        assert_eq!(
            b.cpu_celsius(),
            vec![None, Some(61.0)],
            "socket 0 has no reading"
        );
        let temps = b.temperatures();
        assert_eq!(temps.len(), 2);
        assert_eq!(temps[1].index, 1);
        assert_eq!(b.measured().watts, 180.0);
        assert_eq!(b.measured().source, pb::ReadingSource::Dcmi as i32);
        assert_eq!(b.health().len(), 3);
        assert_eq!(
            BmcReadings::none().measured().source,
            pb::ReadingSource::None as i32
        );
    }
}
