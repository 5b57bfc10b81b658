//! IPMI client for the wattwise node agent: reads the BMC's sensor data records, sensor values and
//! DCMI power, in-band through `/dev/ipmiN` or over the network with RMCP+.
//!
//! Built on the `ipmi-rs` crate's transports, with what real BMCs need and `ipmi-rs` 0.6 lacks:
//! partial SDR reads under a reservation, DCMI (group extension NetFn 0x2C), raising the session
//! privilege, and errors an operator can act on.
//!
//! ```no_run
//! use std::time::Duration;
//! use wattwise_ipmi::{Bmc, Secret, Target};
//!
//! let target = Target::Lan {
//!     host: "10.0.0.5".into(),
//!     port: 623,
//!     username: "admin".into(),
//!     password: Secret::new("…"),
//! };
//! let mut bmc = Bmc::connect(&target, Duration::from_secs(2))?;
//! for record in bmc.read_sdr()? {
//!     println!("{}: {:?}", record.name, bmc.read_sensor(&record)?);
//! }
//! println!("{} W", bmc.dcmi_power_reading()?.current_watts);
//! # Ok::<(), wattwise_ipmi::IpmiError>(())
//! ```

mod bmc;
mod dcmi;
mod error;
mod sdr;
mod sensor;
mod session;
mod target;
mod transport;

pub use bmc::Bmc;
pub use dcmi::{DcmiCapabilities, DcmiPowerReading};
pub use error::{completion_code_meaning, IpmiError, Result};
pub use sdr::{SdrRepositoryInfo, SensorRecord};
pub use sensor::{AnalogFormat, Linearization, LinearizationFn, SensorReading, Unit, UnitModifier};
pub use target::{Privilege, Secret, Target};
