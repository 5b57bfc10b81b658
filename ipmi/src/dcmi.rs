//! DCMI (Data Center Manageability Interface 1.5) power commands: Group Extension NetFn 0x2C with
//! group extension ID 0xDC as the first request and response byte.

use crate::error::{IpmiError, Result};
use crate::transport::{Command, Exchange};

pub(crate) const GET_CAPABILITIES: Command = Command::new("DCMI Get Capabilities Info", 0x2C, 0x01);
pub(crate) const GET_POWER_READING: Command = Command::new("DCMI Get Power Reading", 0x2C, 0x02);

const GROUP_EXTENSION: u8 = 0xDC;
/// Get DCMI Capabilities Info parameter 1: "Supported DCMI Capabilities".
const SUPPORTED_CAPABILITIES: u8 = 0x01;
/// Get Power Reading mode 1: system power statistics.
const SYSTEM_POWER_STATISTICS: u8 = 0x01;

/// What Get DCMI Capabilities Info (parameter 1) reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DcmiCapabilities {
    /// DCMI specification conformance, major.
    pub major_version: u8,
    /// DCMI specification conformance, minor (5 for DCMI 1.5).
    pub minor_version: u8,
    /// Parameter revision.
    pub parameter_revision: u8,
    /// The optional power management platform capability (power reading, limiting).
    pub power_management: bool,
}

/// DCMI Get Power Reading, system power statistics mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DcmiPowerReading {
    /// Current power in watts.
    pub current_watts: u16,
    /// Minimum over the statistics period, watts.
    pub min: u16,
    /// Maximum over the statistics period, watts.
    pub max: u16,
    /// Average over the statistics period, watts.
    pub average: u16,
    /// IPMI timestamp of the reading (seconds since 1970).
    pub timestamp: u32,
    /// Statistics reporting period in milliseconds.
    pub period: u32,
    /// Whether power measurement is active; when false the numbers are not meaningful.
    pub active: bool,
}

/// `None` when the BMC does not implement DCMI (0xC1 invalid command, 0xC2/0xCC from BMCs that
/// reject the group extension, 0xD5 not supported in present state).
pub(crate) fn capabilities(link: &mut impl Exchange) -> Result<Option<DcmiCapabilities>> {
    match link.exchange(GET_CAPABILITIES, &[GROUP_EXTENSION, SUPPORTED_CAPABILITIES]) {
        Ok(data) => decode_capabilities(&data).map(Some),
        Err(IpmiError::Completion {
            code: 0xC1 | 0xC2 | 0xCC | 0xD5,
            ..
        }) => Ok(None),
        Err(e) => Err(e),
    }
}

pub(crate) fn power_reading(link: &mut impl Exchange) -> Result<DcmiPowerReading> {
    let data = link.exchange(
        GET_POWER_READING,
        &[GROUP_EXTENSION, SYSTEM_POWER_STATISTICS, 0x00, 0x00],
    )?;
    decode_power_reading(&data)
}

fn check_group(command: Command, data: &[u8], len: usize) -> Result<()> {
    match data.first() {
        Some(&GROUP_EXTENSION) if data.len() >= len => Ok(()),
        _ => Err(IpmiError::malformed(
            command.name,
            format!("expected {len} bytes starting with group extension 0xDC, got {data:02X?}"),
        )),
    }
}

/// Response: 0xDC, conformance major, minor, parameter revision, then parameter 1's data
/// (byte 1 reserved, byte 2 bit 0 = power management).
fn decode_capabilities(data: &[u8]) -> Result<DcmiCapabilities> {
    check_group(GET_CAPABILITIES, data, 4)?;
    Ok(DcmiCapabilities {
        major_version: data[1],
        minor_version: data[2],
        parameter_revision: data[3],
        power_management: data.get(5).is_some_and(|b| b & 0x01 != 0),
    })
}

/// Response: 0xDC, current, min, max, average (2 bytes each, LE), timestamp (4), period (4),
/// reading state (bit 6 = power measurement active).
fn decode_power_reading(data: &[u8]) -> Result<DcmiPowerReading> {
    check_group(GET_POWER_READING, data, 18)?;
    let u16_at = |i: usize| u16::from_le_bytes([data[i], data[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
    Ok(DcmiPowerReading {
        current_watts: u16_at(1),
        min: u16_at(3),
        max: u16_at(5),
        average: u16_at(7),
        timestamp: u32_at(9),
        period: u32_at(13),
        active: data[17] & 0x40 != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::scripted::{step, ScriptedBmc};

    #[test]
    fn power_reading_round_trip() {
        let response = [
            0x00, 0xDC, 0x2C, 0x01, 0x90, 0x00, 0xF4, 0x01, 0x18, 0x01, 0x00, 0x5E, 0xD0, 0xB2,
            0xE8, 0x03, 0x00, 0x00, 0x40,
        ];
        let mut bmc =
            ScriptedBmc::new(vec![step(0x2C, 0x02, &[0xDC, 0x01, 0x00, 0x00], &response)]);
        let reading = power_reading(&mut bmc).expect("reading");
        bmc.assert_done();
        assert_eq!(
            reading,
            DcmiPowerReading {
                current_watts: 300,
                min: 144,
                max: 500,
                average: 280,
                timestamp: 0xB2D0_5E00,
                period: 1000,
                active: true,
            }
        );
    }

    #[test]
    fn power_reading_errors_name_the_command() {
        let mut bmc = ScriptedBmc::new(vec![step(0x2C, 0x02, &[0xDC, 0x01, 0x00, 0x00], &[0xC1])]);
        let err = power_reading(&mut bmc).expect_err("no DCMI");
        assert_eq!(
            err.to_string(),
            "DCMI Get Power Reading: completion code 0xC1 (invalid command)"
        );
        let mut bmc = ScriptedBmc::new(vec![step(
            0x2C,
            0x02,
            &[0xDC, 0x01, 0x00, 0x00],
            &[0x00, 0xDC, 0x2C, 0x01],
        )]);
        assert!(matches!(
            power_reading(&mut bmc),
            Err(IpmiError::Malformed { .. })
        ));
    }

    #[test]
    fn capabilities_decode_and_absence() {
        let mut bmc = ScriptedBmc::new(vec![step(
            0x2C,
            0x01,
            &[0xDC, 0x01],
            &[0x00, 0xDC, 0x01, 0x05, 0x02, 0x00, 0x01, 0x05, 0x00],
        )]);
        assert_eq!(
            capabilities(&mut bmc).expect("caps"),
            Some(DcmiCapabilities {
                major_version: 1,
                minor_version: 5,
                parameter_revision: 2,
                power_management: true,
            })
        );
        let mut bmc = ScriptedBmc::new(vec![step(0x2C, 0x01, &[0xDC, 0x01], &[0xC1])]);
        assert_eq!(capabilities(&mut bmc).expect("caps"), None);
        let mut bmc = ScriptedBmc::new(vec![step(0x2C, 0x01, &[0xDC, 0x01], &[0xFF])]);
        assert!(capabilities(&mut bmc).is_err());
    }
}
