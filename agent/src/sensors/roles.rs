//! Which BMC sensor fills which role (inlet temperature, each CPU's temperature, node watts).
//!
//! BMCs name and number sensors differently per vendor, so discovery goes from the most to the
//! least structured evidence: the configuration names a sensor → SDR entity id and sensor type →
//! common vendor names. Whatever stays missing or ambiguous is reported, never guessed.

use std::collections::BTreeMap;
use std::fmt;

/// IPMI sensor type "Temperature" and the base unit codes we care about (IPMI 2.0 §43.17).
pub const SENSOR_TYPE_TEMPERATURE: u8 = 0x01;
pub const UNIT_DEGREES_C: u8 = 1;
pub const UNIT_WATTS: u8 = 6;

/// SDR entity ids (IPMI 2.0 table 43-13, DCMI 1.5 table 6-3).
pub const ENTITY_PROCESSOR: u8 = 0x03;
pub const ENTITY_SYSTEM_BOARD: u8 = 0x07;
pub const ENTITY_POWER_UNIT: u8 = 0x13;
pub const ENTITY_SYSTEM_CHASSIS: u8 = 0x17;
pub const ENTITY_AIR_INLET: u8 = 0x37;
pub const ENTITY_AMBIENT: u8 = 0x40;
pub const ENTITY_DCMI_PROCESSOR: u8 = 0x41;

/// What the role mapping needs to know about one SDR sensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdrSensor {
    pub name: String,
    pub entity_id: u8,
    pub entity_instance: u8,
    pub sensor_type: u8,
    pub base_unit: u8,
}

impl SdrSensor {
    fn is_temperature(&self) -> bool {
        self.sensor_type == SENSOR_TYPE_TEMPERATURE || self.base_unit == UNIT_DEGREES_C
    }

    fn is_watts(&self) -> bool {
        self.base_unit == UNIT_WATTS
    }

    fn normalised_name(&self) -> String {
        normalise(&self.name)
    }
}

/// A role the agent reads from the BMC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Inlet,
    /// CPU socket, 0-based.
    Cpu(u8),
    Power,
}

impl Role {
    /// Parses the config spelling: `inlet`, `cpu0`, `cpu1`, …, `power`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "inlet" => Some(Role::Inlet),
            "power" => Some(Role::Power),
            _ => s.strip_prefix("cpu")?.parse().ok().map(Role::Cpu),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Inlet => f.write_str("inlet"),
            Role::Cpu(i) => write!(f, "cpu{i}"),
            Role::Power => f.write_str("power"),
        }
    }
}

/// How a role was filled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assignment {
    /// Index into the sensor list, and the evidence used.
    Found { sensor: usize, by: Evidence },
    /// No sensor fits.
    Missing,
    /// Several sensors fit equally; names them so an operator can pick one in `bmc.sensors`.
    Ambiguous { candidates: Vec<String> },
    /// The configuration names a sensor the SDR does not have.
    ConfiguredAbsent { name: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    Config,
    Entity,
    Name,
}

/// Roles and their assignments. CPU roles are those the SDR shows (or the config names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleMap {
    pub roles: BTreeMap<Role, Assignment>,
}

impl RoleMap {
    pub fn sensor(&self, role: Role) -> Option<usize> {
        match self.roles.get(&role) {
            Some(Assignment::Found { sensor, .. }) => Some(*sensor),
            _ => None,
        }
    }
}

/// Maps roles onto `sensors`; `configured` maps role → sensor name and wins over discovery.
pub fn assign_roles(sensors: &[SdrSensor], configured: &BTreeMap<Role, String>) -> RoleMap {
    let mut roles = BTreeMap::new();
    roles.insert(Role::Inlet, discover_inlet(sensors));
    roles.insert(Role::Power, discover_power(sensors));
    roles.extend(discover_cpus(sensors));
    for (role, name) in configured {
        let wanted = normalise(name);
        let assignment = match sensors.iter().position(|s| s.normalised_name() == wanted) {
            Some(sensor) => Assignment::Found {
                sensor,
                by: Evidence::Config,
            },
            None => Assignment::ConfiguredAbsent { name: name.clone() },
        };
        roles.insert(*role, assignment);
    }
    RoleMap { roles }
}

fn discover_inlet(sensors: &[SdrSensor]) -> Assignment {
    let temps: Vec<usize> = (0..sensors.len())
        .filter(|&i| sensors[i].is_temperature())
        .collect();
    // Inlet before ambient: the inlet is what the server actually breathes.
    for entity in [ENTITY_AIR_INLET, ENTITY_AMBIENT] {
        let by_entity: Vec<usize> = temps
            .iter()
            .copied()
            .filter(|&i| sensors[i].entity_id == entity)
            .collect();
        if !by_entity.is_empty() {
            return narrow(sensors, by_entity, Evidence::Entity, INLET_NAMES);
        }
    }
    by_name(sensors, &temps, INLET_NAMES)
}

fn discover_power(sensors: &[SdrSensor]) -> Assignment {
    let watts: Vec<usize> = (0..sensors.len())
        .filter(|&i| sensors[i].is_watts())
        .collect();
    // Component meters (CPU, memory, fan power) are also in watts: whole-node names decide first.
    match by_name(sensors, &watts, POWER_NAMES) {
        Assignment::Missing => {}
        found_or_ambiguous => return found_or_ambiguous,
    }
    let whole_node: Vec<usize> = watts
        .iter()
        .copied()
        .filter(|&i| {
            matches!(
                sensors[i].entity_id,
                ENTITY_SYSTEM_BOARD | ENTITY_POWER_UNIT | ENTITY_SYSTEM_CHASSIS
            )
        })
        .collect();
    if whole_node.is_empty() {
        return Assignment::Missing;
    }
    narrow(sensors, whole_node, Evidence::Entity, &[])
}

fn discover_cpus(sensors: &[SdrSensor]) -> BTreeMap<Role, Assignment> {
    let temps = |entity: u8| -> Vec<usize> {
        (0..sensors.len())
            .filter(|&i| sensors[i].is_temperature() && sensors[i].entity_id == entity)
            .collect()
    };
    let mut by_entity = temps(ENTITY_PROCESSOR);
    if by_entity.is_empty() {
        by_entity = temps(ENTITY_DCMI_PROCESSOR);
    }
    if !by_entity.is_empty() {
        return cpus_by_instance(sensors, by_entity);
    }
    cpus_by_name(sensors)
}

/// Processor entities carry the socket in their instance (1-based on most BMCs, 0-based on some):
/// the lowest instance is socket 0.
fn cpus_by_instance(sensors: &[SdrSensor], candidates: Vec<usize>) -> BTreeMap<Role, Assignment> {
    let mut by_instance: BTreeMap<u8, Vec<usize>> = BTreeMap::new();
    for i in candidates {
        by_instance
            .entry(sensors[i].entity_instance & 0x7f)
            .or_default()
            .push(i);
    }
    by_instance
        .into_values()
        .enumerate()
        .map(|(socket, group)| {
            let role = Role::Cpu(socket as u8);
            (
                role,
                narrow(sensors, group, Evidence::Entity, CPU_TEMP_WORDS),
            )
        })
        .collect()
}

/// "CPU1 Temp", "CPU 2 Temp", "Proc 1 Temp", "P1 Temp"… : the number is 1-based.
fn cpus_by_name(sensors: &[SdrSensor]) -> BTreeMap<Role, Assignment> {
    let mut by_socket: BTreeMap<u8, Vec<usize>> = BTreeMap::new();
    for (i, s) in sensors.iter().enumerate() {
        if !s.is_temperature() {
            continue;
        }
        if let Some(number) = cpu_number(&s.normalised_name()) {
            if number >= 1 {
                by_socket.entry(number - 1).or_default().push(i);
            }
        }
    }
    by_socket
        .into_iter()
        .map(|(socket, group)| {
            let assignment = match group.as_slice() {
                [only] => Assignment::Found {
                    sensor: *only,
                    by: Evidence::Name,
                },
                _ => ambiguous(sensors, &group),
            };
            (Role::Cpu(socket), assignment)
        })
        .collect()
}

/// The socket number in a normalised CPU temperature name, e.g. "cpu1 temp" → 1.
fn cpu_number(name: &str) -> Option<u8> {
    let rest = ["cpu", "proc", "processor", "p"]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))?;
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let after = rest.trim_start()[digits.len()..].trim();
    // "CPU1 Temp", "CPU 1", "P1 Temp": the rest is empty or a temperature word.
    let temperature_like = after.is_empty() || after == "temp" || after == "temperature";
    if digits.is_empty() || !temperature_like {
        return None;
    }
    digits.parse().ok()
}

/// Names of inlet/ambient sensors, most specific first.
const INLET_NAMES: &[&str] = &[
    "inlet temp",
    "system inlet temp",
    "sys inlet temp",
    "inlet ambient",
    "inlet",
    "ambient temp",
    "ambient",
    "front panel temp",
];

/// Names of whole-node power meters, most specific first.
const POWER_NAMES: &[&str] = &[
    "pwr consumption",
    "power consumption",
    "sys power",
    "system power",
    "total power",
    "total_power",
    "power meter",
    "power",
];

/// Words that mark a processor-entity sensor as the package temperature (not VR or DIMM).
const CPU_TEMP_WORDS: &[&str] = &["temp", "cpu temp", "cpu"];

/// Several structured candidates: keep the unique one whose name matches a preferred name.
fn narrow(
    sensors: &[SdrSensor],
    candidates: Vec<usize>,
    by: Evidence,
    preferred: &[&str],
) -> Assignment {
    if let [only] = candidates.as_slice() {
        return Assignment::Found { sensor: *only, by };
    }
    match by_name(sensors, &candidates, preferred) {
        Assignment::Found { sensor, .. } => Assignment::Found { sensor, by },
        Assignment::Missing => ambiguous(sensors, &candidates),
        other => other,
    }
}

/// The candidate whose normalised name equals the earliest preferred name (or, failing that,
/// contains it); ambiguous if that is not unique.
fn by_name(sensors: &[SdrSensor], candidates: &[usize], preferred: &[&str]) -> Assignment {
    let matches = |exact: bool| {
        preferred.iter().find_map(|wanted| {
            let hits: Vec<usize> = candidates
                .iter()
                .copied()
                .filter(|&i| {
                    let name = sensors[i].normalised_name();
                    if exact {
                        name == *wanted
                    } else {
                        name.contains(wanted)
                    }
                })
                .collect();
            (!hits.is_empty()).then_some(hits)
        })
    };
    match matches(true).or_else(|| matches(false)) {
        Some(hits) if hits.len() == 1 => Assignment::Found {
            sensor: hits[0],
            by: Evidence::Name,
        },
        Some(hits) => ambiguous(sensors, &hits),
        None => Assignment::Missing,
    }
}

fn ambiguous(sensors: &[SdrSensor], candidates: &[usize]) -> Assignment {
    Assignment::Ambiguous {
        candidates: candidates
            .iter()
            .map(|&i| sensors[i].name.clone())
            .collect(),
    }
}

/// Lowercase, `_`/`-` as spaces, single spaces: "CPU_1-Temp " → "cpu 1 temp".
fn normalise(name: &str) -> String {
    name.to_lowercase()
        .replace(['_', '-'], " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, entity: u8, instance: u8) -> SdrSensor {
        SdrSensor {
            name: name.into(),
            entity_id: entity,
            entity_instance: instance,
            sensor_type: SENSOR_TYPE_TEMPERATURE,
            base_unit: UNIT_DEGREES_C,
        }
    }

    fn watts(name: &str, entity: u8) -> SdrSensor {
        SdrSensor {
            name: name.into(),
            entity_id: entity,
            entity_instance: 1,
            sensor_type: 0x0b,
            base_unit: UNIT_WATTS,
        }
    }

    fn found_name(sensors: &[SdrSensor], map: &RoleMap, role: Role) -> Option<String> {
        map.sensor(role).map(|i| sensors[i].name.clone())
    }

    #[test]
    fn dell_layout_maps_by_entity() {
        // iDRAC: "Inlet Temp" on the system board (7.1), both CPUs named just "Temp" on
        // processor 3.1 / 3.2.
        let sensors = vec![
            temp("Inlet Temp", ENTITY_SYSTEM_BOARD, 1),
            temp("Exhaust Temp", ENTITY_SYSTEM_BOARD, 1),
            temp("Temp", ENTITY_PROCESSOR, 1),
            temp("Temp", ENTITY_PROCESSOR, 2),
            watts("Pwr Consumption", ENTITY_SYSTEM_BOARD),
        ];
        let map = assign_roles(&sensors, &BTreeMap::new());
        assert_eq!(
            found_name(&sensors, &map, Role::Inlet).as_deref(),
            Some("Inlet Temp")
        );
        assert_eq!(map.sensor(Role::Cpu(0)), Some(2));
        assert_eq!(map.sensor(Role::Cpu(1)), Some(3));
        assert_eq!(
            found_name(&sensors, &map, Role::Power).as_deref(),
            Some("Pwr Consumption")
        );
        assert!(matches!(
            map.roles[&Role::Cpu(0)],
            Assignment::Found {
                by: Evidence::Entity,
                ..
            }
        ));
    }

    #[test]
    fn lenovo_layout_maps_by_name_and_prefers_the_system_meter() {
        let sensors = vec![
            temp("Ambient Temp", ENTITY_SYSTEM_BOARD, 1),
            temp("CPU1 Temp", ENTITY_SYSTEM_BOARD, 1),
            temp("CPU2 Temp", ENTITY_SYSTEM_BOARD, 1),
            temp("Exhaust Temp", ENTITY_SYSTEM_BOARD, 1),
            watts("CPU Power", ENTITY_PROCESSOR),
            watts("Mem Power", ENTITY_SYSTEM_BOARD),
            watts("Sys Power", ENTITY_SYSTEM_BOARD),
        ];
        let map = assign_roles(&sensors, &BTreeMap::new());
        assert_eq!(
            found_name(&sensors, &map, Role::Inlet).as_deref(),
            Some("Ambient Temp")
        );
        assert_eq!(
            found_name(&sensors, &map, Role::Cpu(0)).as_deref(),
            Some("CPU1 Temp")
        );
        assert_eq!(
            found_name(&sensors, &map, Role::Cpu(1)).as_deref(),
            Some("CPU2 Temp")
        );
        assert_eq!(
            found_name(&sensors, &map, Role::Power).as_deref(),
            Some("Sys Power")
        );
    }

    #[test]
    fn inlet_entity_beats_ambient_entity_and_names() {
        let sensors = vec![
            temp("Ambient", ENTITY_AMBIENT, 1),
            temp("Front Sensor", ENTITY_AIR_INLET, 1),
        ];
        let map = assign_roles(&sensors, &BTreeMap::new());
        assert_eq!(map.sensor(Role::Inlet), Some(1));
    }

    #[test]
    fn zero_based_processor_instances_and_spaced_names() {
        let sensors = vec![temp("CPU 1 Temp", 0x42, 1), temp("P2 Temp", 0x42, 1)];
        let map = assign_roles(&sensors, &BTreeMap::new());
        assert_eq!(map.sensor(Role::Cpu(0)), Some(0));
        assert_eq!(map.sensor(Role::Cpu(1)), Some(1));
        let by_instance = vec![
            temp("T", ENTITY_PROCESSOR, 0),
            temp("T", ENTITY_PROCESSOR, 1),
        ];
        let map = assign_roles(&by_instance, &BTreeMap::new());
        assert_eq!(map.sensor(Role::Cpu(0)), Some(0));
        assert_eq!(map.sensor(Role::Cpu(1)), Some(1));
    }

    #[test]
    fn cpu_names_that_are_not_package_temperatures_are_ignored() {
        assert_eq!(cpu_number("cpu1 temp"), Some(1));
        assert_eq!(cpu_number("cpu 2"), Some(2));
        assert_eq!(cpu_number("proc 1 temp"), Some(1));
        assert_eq!(cpu_number("cpu1 vr temp"), None);
        assert_eq!(cpu_number("cpu1 dimm temp"), None);
        assert_eq!(cpu_number("pch temp"), None);
    }

    #[test]
    fn missing_and_ambiguous_roles_are_reported() {
        let sensors = vec![
            temp("Inlet Temp", ENTITY_AIR_INLET, 1),
            temp("Inlet Temp 2", ENTITY_AIR_INLET, 2),
            watts("PSU1 Input", ENTITY_POWER_UNIT),
            watts("PSU2 Input", ENTITY_POWER_UNIT),
        ];
        let map = assign_roles(&sensors, &BTreeMap::new());
        // An exact name beats a substring: "Inlet Temp" wins over "Inlet Temp 2".
        assert_eq!(map.sensor(Role::Inlet), Some(0));
        assert_eq!(
            map.roles[&Role::Power],
            Assignment::Ambiguous {
                candidates: vec!["PSU1 Input".into(), "PSU2 Input".into()]
            }
        );
        assert!(
            !map.roles.contains_key(&Role::Cpu(0)),
            "no CPU sensors, no CPU roles"
        );
        let none = assign_roles(&[], &BTreeMap::new());
        assert_eq!(none.roles[&Role::Inlet], Assignment::Missing);
        assert_eq!(none.roles[&Role::Power], Assignment::Missing);
    }

    #[test]
    fn configuration_overrides_and_names_absent_sensors() {
        let sensors = vec![
            watts("PSU1 Input", ENTITY_POWER_UNIT),
            watts("PSU2 Input", ENTITY_POWER_UNIT),
            temp("Board Temp", ENTITY_SYSTEM_BOARD, 1),
        ];
        let configured = BTreeMap::from([
            (Role::Power, "psu2 input".to_string()),
            (Role::Inlet, "Board Temp".to_string()),
            (Role::Cpu(0), "CPU0 Temp".to_string()),
        ]);
        let map = assign_roles(&sensors, &configured);
        assert_eq!(
            map.roles[&Role::Power],
            Assignment::Found {
                sensor: 1,
                by: Evidence::Config
            }
        );
        assert_eq!(map.sensor(Role::Inlet), Some(2));
        assert_eq!(
            map.roles[&Role::Cpu(0)],
            Assignment::ConfiguredAbsent {
                name: "CPU0 Temp".into()
            }
        );
    }

    #[test]
    fn role_spellings_round_trip() {
        for role in [Role::Inlet, Role::Power, Role::Cpu(0), Role::Cpu(3)] {
            assert_eq!(Role::parse(&role.to_string()), Some(role));
        }
        assert_eq!(Role::parse("cpu"), None);
        assert_eq!(Role::parse("fan1"), None);
    }
}
