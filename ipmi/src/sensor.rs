//! Sensor values: units, the raw-to-engineering-units conversion of Full Sensor Records, and Get
//! Sensor Reading (Sensor/Event NetFn 0x04, cmd 0x2D).

use std::fmt;

use crate::error::{IpmiError, Result};
use crate::sdr::SensorRecord;
use crate::transport::{Command, Exchange};

pub(crate) const GET_SENSOR_READING: Command = Command::new("Get Sensor Reading", 0x04, 0x2D);

/// How the 8-bit raw reading encodes a number (Sensor Units 1, bits 7:6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnalogFormat {
    /// 0..=255.
    Unsigned,
    /// 1's complement: negative values are bitwise inverted (so there is a -0).
    OnesComplement,
    /// 2's complement: -128..=127.
    TwosComplement,
}

impl AnalogFormat {
    /// Decodes Sensor Units 1; `None` is 0b11, "no analog reading".
    pub(crate) fn from_units_1(units_1: u8) -> Option<Self> {
        match units_1 >> 6 {
            0b00 => Some(Self::Unsigned),
            0b01 => Some(Self::OnesComplement),
            0b10 => Some(Self::TwosComplement),
            _ => None,
        }
    }

    /// The raw byte as the signed or unsigned integer x of the conversion formula.
    pub fn decode(self, raw: u8) -> i32 {
        match self {
            Self::Unsigned => i32::from(raw),
            Self::TwosComplement => i32::from(raw as i8),
            Self::OnesComplement if raw & 0x80 != 0 => -i32::from(!raw & 0x7F),
            Self::OnesComplement => i32::from(raw),
        }
    }
}

/// The function L of the conversion formula (Linearization byte, IPMI 2.0 table 43-1 byte 24).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearizationFn {
    /// y = x (the common case).
    Linear,
    /// Natural logarithm.
    Ln,
    /// Base-10 logarithm.
    Log10,
    /// Base-2 logarithm.
    Log2,
    /// e^x.
    Exp,
    /// 10^x.
    Exp10,
    /// 2^x.
    Exp2,
    /// 1/x.
    Reciprocal,
    /// x².
    Square,
    /// x³.
    Cube,
    /// √x.
    Sqrt,
    /// ∛x.
    CubeRoot,
    /// 0x70..=0x7F: a non-linear sensor whose factors change with the reading (they would have to
    /// be fetched per reading with Get Sensor Reading Factors), or a reserved code. Not converted.
    NonLinear(u8),
}

impl LinearizationFn {
    pub(crate) fn from_code(code: u8) -> Self {
        match code & 0x7F {
            0x00 => Self::Linear,
            0x01 => Self::Ln,
            0x02 => Self::Log10,
            0x03 => Self::Log2,
            0x04 => Self::Exp,
            0x05 => Self::Exp10,
            0x06 => Self::Exp2,
            0x07 => Self::Reciprocal,
            0x08 => Self::Square,
            0x09 => Self::Cube,
            0x0A => Self::Sqrt,
            0x0B => Self::CubeRoot,
            other => Self::NonLinear(other),
        }
    }

    fn apply(self, y: f64) -> Option<f64> {
        Some(match self {
            Self::Linear => y,
            Self::Ln => y.ln(),
            Self::Log10 => y.log10(),
            Self::Log2 => y.log2(),
            Self::Exp => y.exp(),
            Self::Exp10 => 10f64.powf(y),
            Self::Exp2 => y.exp2(),
            Self::Reciprocal => 1.0 / y,
            Self::Square => y * y,
            Self::Cube => y * y * y,
            Self::Sqrt => y.sqrt(),
            Self::CubeRoot => y.cbrt(),
            Self::NonLinear(_) => return None,
        })
    }
}

/// The conversion of a Full Sensor Record: y = L[(M·x + B·10^K1)·10^K2].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Linearization {
    /// How the raw byte encodes x.
    pub format: AnalogFormat,
    /// L.
    pub function: LinearizationFn,
    /// M, 10-bit signed.
    pub m: i16,
    /// B, 10-bit signed.
    pub b: i16,
    /// K1, the B exponent, 4-bit signed.
    pub k1: i8,
    /// K2, the result exponent, 4-bit signed.
    pub k2: i8,
}

impl Linearization {
    /// The reading in the sensor's unit; `None` for [`LinearizationFn::NonLinear`] sensors.
    pub fn convert(&self, raw: u8) -> Option<f64> {
        let x = f64::from(self.format.decode(raw));
        let y = (f64::from(self.m) * x + f64::from(self.b) * 10f64.powi(self.k1.into()))
            * 10f64.powi(self.k2.into());
        self.function.apply(y)
    }

    /// The step between two adjacent raw values, |M|·10^K2 (for linear sensors).
    pub fn resolution(&self) -> f64 {
        f64::from(self.m.unsigned_abs()) * 10f64.powi(self.k2.into())
    }
}

/// How a base unit combines with the modifier unit (Sensor Units 1, bits 2:1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitModifier {
    /// Just the base unit.
    None,
    /// base / modifier (e.g. "Watts per hour" style units).
    Divide,
    /// base · modifier.
    Multiply,
}

/// A sensor's unit: IPMI 2.0 table 43-15 codes plus how they combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unit {
    /// Base unit code (6 = Watts, 1 = degrees C, ...).
    pub base: u8,
    /// Modifier unit code, meaningful unless `modifier` is [`UnitModifier::None`].
    pub modifier_unit: u8,
    /// How `modifier_unit` applies.
    pub modifier: UnitModifier,
    /// The value is a percentage of the unit.
    pub percentage: bool,
}

impl Unit {
    pub(crate) fn parse(units_1: u8, base: u8, modifier_unit: u8) -> Self {
        let modifier = match (units_1 >> 1) & 0b11 {
            0b01 => UnitModifier::Divide,
            0b10 => UnitModifier::Multiply,
            _ => UnitModifier::None,
        };
        Self {
            base,
            modifier_unit,
            modifier,
            percentage: units_1 & 1 != 0,
        }
    }

    /// The base unit's name as ipmitool prints it, e.g. "Watts".
    pub fn base_name(&self) -> &'static str {
        unit_name(self.base)
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.percentage {
            f.write_str("% ")?;
        }
        f.write_str(self.base_name())?;
        match self.modifier {
            UnitModifier::None => Ok(()),
            UnitModifier::Divide => write!(f, " per {}", unit_name(self.modifier_unit)),
            UnitModifier::Multiply => write!(f, " * {}", unit_name(self.modifier_unit)),
        }
    }
}

/// IPMI 2.0 table 43-15.
fn unit_name(code: u8) -> &'static str {
    const NAMES: [&str; 93] = [
        "unspecified",
        "degrees C",
        "degrees F",
        "degrees K",
        "Volts",
        "Amps",
        "Watts",
        "Joules",
        "Coulombs",
        "VA",
        "Nits",
        "lumen",
        "lux",
        "Candela",
        "kPa",
        "PSI",
        "Newton",
        "CFM",
        "RPM",
        "Hz",
        "microsecond",
        "millisecond",
        "second",
        "minute",
        "hour",
        "day",
        "week",
        "mil",
        "inches",
        "feet",
        "cu in",
        "cu feet",
        "mm",
        "cm",
        "m",
        "cu cm",
        "cu m",
        "liters",
        "fluid ounce",
        "radians",
        "steradians",
        "revolutions",
        "cycles",
        "gravities",
        "ounce",
        "pound",
        "ft-lb",
        "oz-in",
        "gauss",
        "gilberts",
        "henry",
        "millihenry",
        "farad",
        "microfarad",
        "ohms",
        "siemens",
        "mole",
        "becquerel",
        "PPM",
        "reserved",
        "Decibels",
        "DbA",
        "DbC",
        "gray",
        "sievert",
        "color temp deg K",
        "bit",
        "kilobit",
        "megabit",
        "gigabit",
        "byte",
        "kilobyte",
        "megabyte",
        "gigabyte",
        "word",
        "dword",
        "qword",
        "line",
        "hit",
        "miss",
        "retry",
        "reset",
        "overrun / overflow",
        "underrun",
        "collision",
        "packets",
        "messages",
        "characters",
        "error",
        "correctable error",
        "uncorrectable error",
        "fatal error",
        "grams",
    ];
    NAMES
        .get(usize::from(code))
        .copied()
        .unwrap_or("unknown unit")
}

/// One sensor reading.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SensorReading {
    /// An analog reading converted with the record's linearization.
    Value {
        /// In the record's unit.
        value: f64,
        /// The raw byte, for debugging conversions.
        raw: u8,
    },
    /// A sensor without a conversion (Compact records, discrete sensors): the raw byte and the
    /// state bits (Get Sensor Reading bytes 3-4, offsets 0-14).
    Discrete {
        /// The reading byte (often meaningless for discrete sensors).
        raw: u8,
        /// Asserted states, bit n = offset n.
        states: u16,
    },
    /// The BMC has no reading: "reading unavailable" is set or scanning is disabled.
    Unavailable,
}

/// Reads one sensor. Only sensors owned by the BMC itself are addressable (`ipmi-rs`'s LAN
/// transport cannot bridge to satellite controllers).
pub(crate) fn read(link: &mut impl Exchange, record: &SensorRecord) -> Result<SensorReading> {
    if record.owner != crate::sdr::BMC_ADDRESS {
        return Err(IpmiError::UnsupportedSensor {
            sensor: record.name.clone(),
            detail: format!(
                "owned by controller {:#04X}; only BMC-owned ({:#04X}) sensors can be read",
                record.owner,
                crate::sdr::BMC_ADDRESS
            ),
        });
    }
    if let Some(Linearization {
        function: LinearizationFn::NonLinear(code),
        ..
    }) = record.conversion
    {
        return Err(IpmiError::UnsupportedSensor {
            sensor: record.name.clone(),
            detail: format!("non-linear sensor (linearization {code:#04X})"),
        });
    }
    let data = link.exchange(GET_SENSOR_READING.at_lun(record.lun), &[record.number])?;
    decode_reading(&data, record.conversion.as_ref(), &record.name)
}

/// Get Sensor Reading response: reading byte; flags (bit 6 scanning enabled, bit 5 reading
/// unavailable); then optionally two bytes of states.
pub(crate) fn decode_reading(
    data: &[u8],
    linearization: Option<&Linearization>,
    sensor: &str,
) -> Result<SensorReading> {
    let (&raw, &flags) = match data {
        [raw, flags, ..] => (raw, flags),
        _ => {
            return Err(IpmiError::malformed(
                format!("{} of {sensor:?}", GET_SENSOR_READING.name),
                format!("expected at least 2 bytes, got {data:02X?}"),
            ))
        }
    };
    let scanning = flags & 0x40 != 0;
    let unavailable = flags & 0x20 != 0;
    if unavailable || !scanning {
        return Ok(SensorReading::Unavailable);
    }
    Ok(match linearization {
        Some(l) => SensorReading::Value {
            value: l.convert(raw).ok_or_else(|| IpmiError::UnsupportedSensor {
                sensor: sensor.to_owned(),
                detail: "non-linear sensor".to_owned(),
            })?,
            raw,
        },
        None => {
            let low = data.get(2).copied().unwrap_or(0);
            let high = data.get(3).copied().unwrap_or(0) & 0x7F;
            SensorReading::Discrete {
                raw,
                states: u16::from_le_bytes([low, high]),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lin(format: AnalogFormat, m: i16, b: i16, k1: i8, k2: i8) -> Linearization {
        Linearization {
            format,
            function: LinearizationFn::Linear,
            m,
            b,
            k1,
            k2,
        }
    }

    #[test]
    fn analog_formats() {
        assert_eq!(AnalogFormat::Unsigned.decode(0xFA), 250);
        assert_eq!(AnalogFormat::TwosComplement.decode(0xFA), -6);
        assert_eq!(AnalogFormat::TwosComplement.decode(0x7F), 127);
        assert_eq!(AnalogFormat::OnesComplement.decode(0xFA), -5);
        assert_eq!(AnalogFormat::OnesComplement.decode(0xFF), 0);
        assert_eq!(AnalogFormat::OnesComplement.decode(0x05), 5);
    }

    #[test]
    fn conversion_formula() {
        // ipmitool shows -23 degrees C for raw 0xFA with M=5, B=-20, K1=1, K2=-1, 2's complement.
        let l = lin(AnalogFormat::TwosComplement, 5, -20, 1, -1);
        assert_eq!(l.convert(0xFA), Some(-23.0));
        assert!((l.resolution() - 0.5).abs() < 1e-9);
        // A PSU input power sensor: M=5 W/count.
        let watts = lin(AnalogFormat::Unsigned, 5, 0, 0, 0);
        assert_eq!(watts.convert(50), Some(250.0));
        // Voltage: M=1, K2=-2 → 0.01 V resolution.
        let volts = lin(AnalogFormat::Unsigned, 1, 0, 0, -2);
        assert!((volts.convert(120).expect("linear") - 1.2).abs() < 1e-9);
        let sqrt = Linearization {
            function: LinearizationFn::Sqrt,
            ..lin(AnalogFormat::Unsigned, 1, 0, 0, 0)
        };
        assert_eq!(sqrt.convert(16), Some(4.0));
        let nonlinear = Linearization {
            function: LinearizationFn::from_code(0x70),
            ..lin(AnalogFormat::Unsigned, 1, 0, 0, 0)
        };
        assert_eq!(nonlinear.convert(16), None);
    }

    #[test]
    fn reading_flags() {
        let l = lin(AnalogFormat::Unsigned, 1, 0, 0, 0);
        assert_eq!(
            decode_reading(&[45, 0xC0, 0x00], Some(&l), "t").expect("reading"),
            SensorReading::Value {
                value: 45.0,
                raw: 45
            }
        );
        // Reading unavailable.
        assert_eq!(
            decode_reading(&[0, 0x60], Some(&l), "t").expect("reading"),
            SensorReading::Unavailable
        );
        // Scanning disabled.
        assert_eq!(
            decode_reading(&[45, 0x80], Some(&l), "t").expect("reading"),
            SensorReading::Unavailable
        );
        // Discrete: state bits from bytes 3-4 (bit 7 of byte 4 is reserved).
        assert_eq!(
            decode_reading(&[0, 0xC0, 0x01, 0x80], None, "t").expect("reading"),
            SensorReading::Discrete {
                raw: 0,
                states: 0x0001
            }
        );
        assert!(decode_reading(&[1], None, "t").is_err());
    }

    #[test]
    fn units_print_like_ipmitool() {
        assert_eq!(Unit::parse(0x00, 6, 0).to_string(), "Watts");
        assert_eq!(Unit::parse(0x00, 1, 0).to_string(), "degrees C");
        assert_eq!(Unit::parse(0x02, 7, 24).to_string(), "Joules per hour");
        assert_eq!(Unit::parse(0x01, 4, 0).to_string(), "% Volts");
        assert_eq!(Unit::parse(0x00, 200, 0).base_name(), "unknown unit");
    }
}
