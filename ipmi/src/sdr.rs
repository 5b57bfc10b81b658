//! The Sensor Data Record repository: its info (to notice changes cheaply), reading records in
//! parts, and decoding Full (0x01) and Compact (0x02) sensor records (IPMI 2.0 §33, §43).
//!
//! Real BMCs limit how much of a record one Get SDR may return (ipmi_sim: about 32 bytes, then
//! completion code 0xCA), so records are read header first and then in chunks, under a
//! reservation that the BMC cancels (0xC5) whenever the repository changes; then we start over.

use crate::error::{IpmiError, Result};
use crate::sensor::{AnalogFormat, Linearization, LinearizationFn, Unit};
use crate::transport::{Command, Exchange};

pub(crate) const GET_SDR_REPOSITORY_INFO: Command =
    Command::new("Get SDR Repository Info", 0x0A, 0x20);
pub(crate) const RESERVE_SDR_REPOSITORY: Command =
    Command::new("Reserve SDR Repository", 0x0A, 0x22);
pub(crate) const GET_SDR: Command = Command::new("Get SDR", 0x0A, 0x23);

/// The BMC's own slave address: sensors with this owner are read directly.
pub(crate) const BMC_ADDRESS: u8 = 0x20;

const FIRST_RECORD: u16 = 0x0000;
const LAST_RECORD: u16 = 0xFFFF;
const HEADER_LEN: u8 = 5;
/// Body chunk size to start with: 16 bytes is what every BMC in the field answers.
const MAX_CHUNK: u8 = 16;
/// Reservations lost in a row before giving up (the repository keeps changing under us).
const MAX_RESERVATION_RETRIES: u32 = 5;
/// Records visited before declaring the next-record chain broken (a loop on a confused BMC).
const MAX_RECORDS: usize = 4096;

const COMPLETION_RESERVATION_CANCELLED: u8 = 0xC5;
const COMPLETION_CANNOT_RETURN_BYTES: u8 = 0xCA;

/// Get SDR Repository Info: enough to tell whether the SDR changed since the last read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SdrRepositoryInfo {
    /// SDR version (0x51 for IPMI 1.5/2.0).
    pub version: u8,
    /// Number of records in the repository.
    pub record_count: u16,
    /// Free space in bytes (0xFFFF = unspecified).
    pub free_space: u16,
    /// Most recent addition timestamp (seconds since 1970, or since BMC init below 0x20000000).
    pub most_recent_addition: u32,
    /// Most recent erase timestamp.
    pub most_recent_erase: u32,
}

pub(crate) fn decode_repository_info(data: &[u8]) -> Result<SdrRepositoryInfo> {
    if data.len() < 13 {
        return Err(IpmiError::malformed(
            GET_SDR_REPOSITORY_INFO.name,
            format!("expected 14 bytes, got {data:02X?}"),
        ));
    }
    let u16_at = |i: usize| u16::from_le_bytes([data[i], data[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
    Ok(SdrRepositoryInfo {
        version: data[0],
        record_count: u16_at(1),
        free_space: u16_at(3),
        most_recent_addition: u32_at(5),
        most_recent_erase: u32_at(9),
    })
}

/// A sensor described by a Full or Compact Sensor Record.
#[derive(Clone, Debug, PartialEq)]
pub struct SensorRecord {
    /// Record ID in the repository (may change when the SDR is rewritten).
    pub record_id: u16,
    /// Owner: IPMB slave address (0x20 = the BMC) or software ID.
    pub owner: u8,
    /// Owner LUN the sensor is read through.
    pub lun: u8,
    /// Sensor number, the key for Get Sensor Reading.
    pub number: u8,
    /// Entity ID (IPMI 2.0 table 43-13: 0x03 processor, 0x07 system board, 0x0A power supply...).
    pub entity_id: u8,
    /// Entity instance.
    pub entity_instance: u8,
    /// Sensor type (table 42-3: 0x01 temperature, 0x08 power supply, 0x0B other units...).
    pub sensor_type: u8,
    /// Event/reading type code (0x01 threshold, 0x6F sensor-specific, ...).
    pub reading_type: u8,
    /// The unit readings are in.
    pub unit: Unit,
    /// Raw-to-unit conversion; only Full records with an analog reading have one.
    pub conversion: Option<Linearization>,
    /// The ID string, e.g. "PSU1 Input Power".
    pub name: String,
}

/// Reads every sensor record. Other record types are skipped (they still advance the chain).
pub(crate) fn read_all(link: &mut impl Exchange) -> Result<Vec<SensorRecord>> {
    let mut reader = PartialReader::new(link)?;
    let mut sensors = Vec::new();
    let mut record_id = FIRST_RECORD;
    for _ in 0..MAX_RECORDS {
        let (raw, next) = reader.read_record(record_id)?;
        if let Some(sensor) = parse_record(&raw)? {
            sensors.push(sensor);
        }
        if next == LAST_RECORD {
            return Ok(sensors);
        }
        if next == record_id {
            return Err(IpmiError::malformed(
                GET_SDR.name,
                format!("record {record_id:#06X} names itself as the next record"),
            ));
        }
        record_id = next;
    }
    Err(IpmiError::malformed(
        GET_SDR.name,
        format!("more than {MAX_RECORDS} records; the next-record chain loops"),
    ))
}

/// Reads records in parts under a reservation, re-reserving when the BMC cancels it.
struct PartialReader<'a, L> {
    link: &'a mut L,
    reservation: u16,
    chunk: u8,
}

impl<'a, L: Exchange> PartialReader<'a, L> {
    fn new(link: &'a mut L) -> Result<Self> {
        let reservation = reserve(link)?;
        Ok(Self {
            link,
            reservation,
            chunk: MAX_CHUNK,
        })
    }

    /// The whole record (header + body) and the next record's ID.
    fn read_record(&mut self, record_id: u16) -> Result<(Vec<u8>, u16)> {
        let mut retries = 0;
        loop {
            match self.try_read_record(record_id) {
                Err(IpmiError::Completion {
                    code: COMPLETION_RESERVATION_CANCELLED,
                    ..
                }) if retries < MAX_RESERVATION_RETRIES => {
                    retries += 1;
                    log::debug!(
                        "SDR reservation cancelled reading record {record_id:#06X}; re-reserving"
                    );
                    self.reservation = reserve(self.link)?;
                }
                other => return other,
            }
        }
    }

    fn try_read_record(&mut self, record_id: u16) -> Result<(Vec<u8>, u16)> {
        let (mut record, next) = self.read_part(record_id, 0, HEADER_LEN)?;
        if record.len() < usize::from(HEADER_LEN) {
            return Err(IpmiError::malformed(
                format!("SDR record {record_id:#06X}"),
                format!("header is {} bytes", record.len()),
            ));
        }
        let total = usize::from(HEADER_LEN) + usize::from(record[4]);
        while record.len() < total {
            // `record.len()` < total ≤ 5 + 255 fits the one-byte offset except at exactly 255.
            let offset = u8::try_from(record.len()).map_err(|_| {
                IpmiError::malformed(
                    format!("SDR record {record_id:#06X}"),
                    "record longer than 255 bytes",
                )
            })?;
            let want = self
                .chunk
                .min(u8::try_from(total - record.len()).unwrap_or(u8::MAX));
            match self.read_part(record_id, offset, want) {
                Ok((part, _)) if part.is_empty() => {
                    return Err(IpmiError::malformed(
                        format!("SDR record {record_id:#06X}"),
                        format!("empty answer at offset {offset}"),
                    ))
                }
                Ok((part, _)) => {
                    let take = part.len().min(total - record.len());
                    record.extend_from_slice(&part[..take]);
                }
                Err(IpmiError::Completion {
                    code: COMPLETION_CANNOT_RETURN_BYTES,
                    ..
                }) if self.chunk > 1 => {
                    self.chunk /= 2;
                    log::debug!(
                        "BMC cannot return that many SDR bytes; chunk size now {}",
                        self.chunk
                    );
                }
                Err(e) => return Err(e),
            }
        }
        Ok((record, next))
    }

    fn read_part(&mut self, record_id: u16, offset: u8, len: u8) -> Result<(Vec<u8>, u16)> {
        let request = get_sdr_request(self.reservation, record_id, offset, len);
        let data = self.link.exchange(GET_SDR, &request)?;
        match data.split_at_checked(2) {
            Some((next, part)) => Ok((part.to_vec(), u16::from_le_bytes([next[0], next[1]]))),
            None => Err(IpmiError::malformed(
                GET_SDR.name,
                format!("record {record_id:#06X}: answer {data:02X?} lacks the next record ID"),
            )),
        }
    }
}

fn reserve(link: &mut impl Exchange) -> Result<u16> {
    let data = link.exchange(RESERVE_SDR_REPOSITORY, &[])?;
    match data.as_slice() {
        [lo, hi, ..] => Ok(u16::from_le_bytes([*lo, *hi])),
        _ => Err(IpmiError::malformed(
            RESERVE_SDR_REPOSITORY.name,
            format!("expected a 2-byte reservation ID, got {data:02X?}"),
        )),
    }
}

/// Get SDR request: reservation ID, record ID (both little-endian), offset, bytes to read.
pub(crate) fn get_sdr_request(reservation: u16, record_id: u16, offset: u8, len: u8) -> [u8; 6] {
    let [r0, r1] = reservation.to_le_bytes();
    let [i0, i1] = record_id.to_le_bytes();
    [r0, r1, i0, i1, offset, len]
}

const TYPE_FULL: u8 = 0x01;
const TYPE_COMPACT: u8 = 0x02;

/// Decodes a whole record; `None` for record types that do not describe a readable sensor.
pub(crate) fn parse_record(raw: &[u8]) -> Result<Option<SensorRecord>> {
    let (header, body) = raw
        .split_at_checked(usize::from(HEADER_LEN))
        .ok_or_else(|| {
            IpmiError::malformed(
                "SDR record",
                format!("{} bytes is shorter than a header", raw.len()),
            )
        })?;
    let record_id = u16::from_le_bytes([header[0], header[1]]);
    let what = || format!("SDR record {record_id:#06X}");
    // Offsets below are the spec's byte numbers (table 43-1/43-2) minus 6: body[0] is byte 6.
    let (min_len, id_at) = match header[3] {
        TYPE_FULL => (43, 42),
        TYPE_COMPACT => (27, 26),
        _ => return Ok(None),
    };
    if body.len() < min_len {
        return Err(IpmiError::malformed(
            what(),
            format!(
                "type {:#04X} body is {} bytes, need {min_len}",
                header[3],
                body.len()
            ),
        ));
    }
    let units_1 = body[15];
    let conversion = if header[3] == TYPE_FULL {
        AnalogFormat::from_units_1(units_1).map(|format| Linearization {
            format,
            function: LinearizationFn::from_code(body[18]),
            m: ten_bit(body[19], body[20]),
            b: ten_bit(body[21], body[22]),
            k1: four_bit(body[24]),
            k2: four_bit(body[24] >> 4),
        })
    } else {
        None
    };
    Ok(Some(SensorRecord {
        record_id,
        owner: body[0],
        lun: body[1] & 0b11,
        number: body[2],
        entity_id: body[3],
        entity_instance: body[4],
        sensor_type: body[7],
        reading_type: body[8],
        unit: Unit::parse(units_1, body[16], body[17]),
        conversion,
        name: decode_id_string(body[id_at], &body[id_at + 1..]),
    }))
}

/// M and B: 8 low bits plus 2 high bits in bits 7:6 of the next byte, 10-bit two's complement.
fn ten_bit(low: u8, high: u8) -> i16 {
    let value = (i16::from(high >> 6) << 8) | i16::from(low);
    if value & 0x200 != 0 {
        value - 0x400
    } else {
        value
    }
}

/// K1 and K2: 4-bit two's complement in the low nibble.
fn four_bit(nibble: u8) -> i8 {
    let value = (nibble & 0x0F) as i8;
    if value & 0x08 != 0 {
        value - 0x10
    } else {
        value
    }
}

/// ID String Type/Length byte (§43.15): bits 7:6 type, bits 4:0 length in bytes.
fn decode_id_string(type_length: u8, bytes: &[u8]) -> String {
    let len = usize::from(type_length & 0x1F).min(bytes.len());
    let bytes = &bytes[..len];
    match type_length >> 6 {
        // BCD plus: 4-bit digits and a few punctuation characters.
        0b01 => bytes
            .iter()
            .flat_map(|b| [b & 0x0F, b >> 4])
            .map(|d| char::from(b"0123456789 -.:,_"[usize::from(d)]))
            .collect(),
        // 6-bit packed ASCII: four characters in three bytes, little-endian, 0x20-offset.
        0b10 => {
            let bits = bytes
                .iter()
                .enumerate()
                .fold(0u128, |acc, (i, &b)| acc | (u128::from(b) << (8 * i)));
            (0..bytes.len() * 8 / 6)
                .map(|i| char::from((((bits >> (6 * i)) & 0x3F) as u8) + 0x20))
                .collect()
        }
        // 8-bit ASCII + Latin-1 (and Unicode, which nobody uses, read the same way).
        _ => bytes
            .iter()
            .take_while(|&&b| b != 0)
            .map(|&b| char::from(b))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sensor::UnitModifier;
    use crate::transport::scripted::{step, ScriptedBmc};

    /// ipmi_sim's answer for "CPU Temp": Full record, entity 3.1, degrees C, M=1.
    const CPU_TEMP: [u8; 56] = [
        0x01, 0x00, 0x51, 0x01, 0x33, 0x20, 0x00, 0x01, 0x03, 0x01, 0x7f, 0x68, 0x01, 0x01, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0xc8, 0x43, 0x50, 0x55, 0x20, 0x54, 0x65, 0x6d, 0x70,
    ];

    /// A vendor-style inlet sensor: 2's complement, M=5, B=-20, K1=1, K2=-1.
    const INLET: [u8; 63] = [
        0x03, 0x00, 0x51, 0x01, 0x3a, 0x20, 0x00, 0x03, 0x07, 0x01, 0x7f, 0x68, 0x01, 0x01, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x01, 0x00, 0x00, 0x05, 0x00, 0xec, 0xc0, 0x00, 0xf1,
        0x00, 0x00, 0x00, 0x00, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0xcf, 0x49, 0x6e, 0x6c, 0x65, 0x74, 0x20, 0x54, 0x65, 0x6d, 0x70, 0x20, 0x58,
        0x74, 0x72, 0x61,
    ];

    /// A Compact record: power supply status, sensor-specific, no unit.
    const PS_STATUS: [u8; 41] = [
        0x04, 0x00, 0x51, 0x02, 0x24, 0x20, 0x01, 0x04, 0x0a, 0x02, 0x7f, 0x40, 0x08, 0x6f, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0xc0, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0xc9, 0x50, 0x53, 0x20, 0x53, 0x74, 0x61, 0x74, 0x75, 0x73,
    ];

    #[test]
    fn parses_full_record() {
        let record = parse_record(&CPU_TEMP).expect("parse").expect("sensor");
        assert_eq!(record.record_id, 1);
        assert_eq!((record.owner, record.lun, record.number), (0x20, 0, 1));
        assert_eq!((record.entity_id, record.entity_instance), (0x03, 1));
        assert_eq!((record.sensor_type, record.reading_type), (0x01, 0x01));
        assert_eq!(record.unit.base, 1);
        assert_eq!(record.unit.modifier, UnitModifier::None);
        assert_eq!(record.name, "CPU Temp");
        let conversion = record.conversion.expect("analog");
        assert_eq!(
            (conversion.m, conversion.b, conversion.k1, conversion.k2),
            (1, 0, 0, 0)
        );
        assert_eq!(conversion.format, AnalogFormat::Unsigned);
    }

    #[test]
    fn parses_negative_factors_and_twos_complement() {
        let record = parse_record(&INLET).expect("parse").expect("sensor");
        let c = record.conversion.expect("analog");
        assert_eq!(c.format, AnalogFormat::TwosComplement);
        assert_eq!((c.m, c.b, c.k1, c.k2), (5, -20, 1, -1));
        assert_eq!(c.function, LinearizationFn::Linear);
        // ipmitool reads raw 0xFA from this sensor as -23 degrees C.
        assert_eq!(c.convert(0xFA), Some(-23.0));
        assert_eq!(record.name, "Inlet Temp Xtra");
    }

    #[test]
    fn parses_compact_record() {
        let record = parse_record(&PS_STATUS).expect("parse").expect("sensor");
        assert_eq!((record.number, record.lun), (4, 1));
        assert_eq!((record.entity_id, record.entity_instance), (0x0A, 2));
        assert_eq!((record.sensor_type, record.reading_type), (0x08, 0x6F));
        assert_eq!(record.conversion, None);
        assert_eq!(record.name, "PS Status");
    }

    #[test]
    fn skips_other_record_types_and_rejects_short_ones() {
        // An MC Device Locator (type 0x12).
        let mc_locator = [0x05, 0x00, 0x51, 0x12, 0x02, 0x20, 0x00];
        assert_eq!(parse_record(&mc_locator).expect("parse"), None);
        assert!(parse_record(&CPU_TEMP[..30]).is_err());
        assert!(parse_record(&[0x01, 0x00]).is_err());
    }

    #[test]
    fn field_decoders() {
        assert_eq!(ten_bit(0xEC, 0xC0), -20);
        assert_eq!(ten_bit(0xFF, 0x40), 511);
        assert_eq!(ten_bit(0x00, 0x80), -512);
        assert_eq!(four_bit(0xF), -1);
        assert_eq!(four_bit(0x7), 7);
        assert_eq!(four_bit(0x8), -8);
        assert_eq!(decode_id_string(0xC4, b"PSU1 and more"), "PSU1");
        // BCD plus "12.5".
        assert_eq!(decode_id_string(0x42, &[0x21, 0x5C]), "12.5");
        // 6-bit packed "ABCD" = 0x21 0x22 0x23 0x24.
        let packed: u32 = 0x21 | (0x22 << 6) | (0x23 << 12) | (0x24 << 18);
        let b = packed.to_le_bytes();
        assert_eq!(decode_id_string(0x83, &b[..3]), "ABCD");
    }

    #[test]
    fn repository_info_decodes() {
        let data = [
            0x51, 0x04, 0x00, 0xff, 0xff, 0x10, 0x32, 0x54, 0x66, 0x00, 0x00, 0x00, 0x00, 0x02,
        ];
        let info = decode_repository_info(&data).expect("info");
        assert_eq!(info.version, 0x51);
        assert_eq!(info.record_count, 4);
        assert_eq!(info.free_space, 0xFFFF);
        assert_eq!(info.most_recent_addition, 0x6654_3210);
        assert_eq!(info.most_recent_erase, 0);
        assert!(decode_repository_info(&data[..10]).is_err());
    }

    fn ok(next: u16, part: &[u8]) -> Vec<u8> {
        let mut v = vec![0x00];
        v.extend_from_slice(&next.to_le_bytes());
        v.extend_from_slice(part);
        v
    }

    /// Reads CPU Temp (id 1, next 3) and the Inlet record (id 3, last) in parts: the BMC cancels the
    /// reservation once (0xC5) and refuses 16-byte chunks (0xCA), as real BMCs do.
    #[test]
    fn assembles_records_from_parts_with_retries() {
        let mut steps = vec![
            step(0x0A, 0x22, &[], &[0x00, 0x01, 0x00]),
            step(
                0x0A,
                0x23,
                &get_sdr_request(1, 0, 0, 5),
                &ok(3, &CPU_TEMP[..5]),
            ),
            // Repository changed: reservation 1 is gone.
            step(0x0A, 0x23, &get_sdr_request(1, 0, 5, 16), &[0xC5]),
            step(0x0A, 0x22, &[], &[0x00, 0x02, 0x00]),
            step(
                0x0A,
                0x23,
                &get_sdr_request(2, 0, 0, 5),
                &ok(3, &CPU_TEMP[..5]),
            ),
        ];
        for offset in (5..CPU_TEMP.len()).step_by(16) {
            let end = (offset + 16).min(CPU_TEMP.len());
            let len = u8::try_from(end - offset).expect("small");
            let offset_u8 = u8::try_from(offset).expect("small");
            steps.push(step(
                0x0A,
                0x23,
                &get_sdr_request(2, 0, offset_u8, len),
                &ok(3, &CPU_TEMP[offset..end]),
            ));
        }
        steps.push(step(
            0x0A,
            0x23,
            &get_sdr_request(2, 3, 0, 5),
            &ok(0xFFFF, &INLET[..5]),
        ));
        // This BMC suddenly refuses 16 bytes: shrink to 8 and stay there.
        steps.push(step(0x0A, 0x23, &get_sdr_request(2, 3, 5, 16), &[0xCA]));
        for offset in (5..INLET.len()).step_by(8) {
            let end = (offset + 8).min(INLET.len());
            let len = u8::try_from(end - offset).expect("small");
            let offset_u8 = u8::try_from(offset).expect("small");
            steps.push(step(
                0x0A,
                0x23,
                &get_sdr_request(2, 3, offset_u8, len),
                &ok(0xFFFF, &INLET[offset..end]),
            ));
        }
        let mut bmc = ScriptedBmc::new(steps);
        let records = read_all(&mut bmc).expect("read");
        bmc.assert_done();
        let names: Vec<_> = records.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["CPU Temp", "Inlet Temp Xtra"]);
        assert_eq!(
            records[0],
            parse_record(&CPU_TEMP).expect("parse").expect("sensor")
        );
    }

    #[test]
    fn gives_up_when_reservations_keep_getting_cancelled() {
        let mut steps = vec![step(0x0A, 0x22, &[], &[0x00, 0x01, 0x00])];
        for _ in 0..=MAX_RESERVATION_RETRIES {
            steps.push(step(0x0A, 0x23, &get_sdr_request(1, 0, 0, 5), &[0xC5]));
            steps.push(step(0x0A, 0x22, &[], &[0x00, 0x01, 0x00]));
        }
        steps.pop();
        let mut bmc = ScriptedBmc::new(steps);
        let err = read_all(&mut bmc).expect_err("keeps failing");
        assert_eq!(err.completion_code(), Some(0xC5));
        bmc.assert_done();
    }

    #[test]
    fn get_sdr_request_layout() {
        assert_eq!(
            get_sdr_request(0x1234, 0xABCD, 5, 16),
            [0x34, 0x12, 0xCD, 0xAB, 0x05, 0x10]
        );
    }
}
