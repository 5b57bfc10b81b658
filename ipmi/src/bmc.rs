//! [`Bmc`]: a connected BMC and the operations the agent uses.

use std::time::Duration;

use crate::dcmi::{self, DcmiCapabilities, DcmiPowerReading};
use crate::error::{IpmiError, Result};
use crate::sdr::{self, SdrRepositoryInfo, SensorRecord};
use crate::sensor::{self, SensorReading};
use crate::session;
use crate::target::{Privilege, Target};
use crate::transport::{Command, Exchange, Link};

/// A session with one BMC. Blocking: every call waits at most the connect timeout per exchange
/// (a full SDR read is many exchanges), so run it on a thread of its own.
///
/// When an exchange fails at the transport level (timeout, refused, garbled answer) the session is
/// dropped, because a late answer could otherwise be taken for the next request's; the next call
/// reconnects (and raises the privilege again). Failed calls are not retried: the caller decides.
pub struct Bmc {
    target: Target,
    timeout: Duration,
    link: Option<Link>,
    privilege: Privilege,
}

impl std::fmt::Debug for Bmc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bmc")
            .field("target", &self.target.to_string())
            .field("timeout", &self.timeout)
            .field("connected", &self.link.is_some())
            .field("privilege", &self.privilege)
            .finish()
    }
}

impl Bmc {
    /// Opens a session and raises it to the highest privilege the user has (Administrator, then
    /// Operator, else User). `timeout` bounds each request/response exchange.
    pub fn connect(target: &Target, timeout: Duration) -> Result<Self> {
        let mut bmc = Self {
            target: target.clone(),
            timeout,
            link: None,
            privilege: Privilege::User,
        };
        bmc.reconnect()?;
        Ok(bmc)
    }

    /// Drops the current session (if any) and opens a new one.
    pub fn reconnect(&mut self) -> Result<()> {
        self.link = None;
        let link = Link::open(&self.target, self.timeout)?;
        self.link = Some(link);
        self.privilege = match self.target {
            // The system interface has no session and is not privilege-checked.
            Target::InBand { .. } => Privilege::Administrator,
            Target::Lan { .. } => match session::raise(self) {
                Ok(privilege) => privilege,
                Err(e) => {
                    self.link = None;
                    return Err(e);
                }
            },
        };
        log::debug!(
            "connected to {} at {} privilege",
            self.target,
            self.privilege
        );
        Ok(())
    }

    /// The session's privilege level after connecting.
    pub fn privilege(&self) -> Privilege {
        self.privilege
    }

    /// The BMC this session talks to.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Get SDR Repository Info: record count and last addition/erase timestamps, so a caller can
    /// re-read the SDR only when it changed.
    pub fn sdr_repository_info(&mut self) -> Result<SdrRepositoryInfo> {
        let data = self.exchange(sdr::GET_SDR_REPOSITORY_INFO, &[])?;
        sdr::decode_repository_info(&data)
    }

    /// Reads the whole SDR repository and returns its Full and Compact sensor records.
    pub fn read_sdr(&mut self) -> Result<Vec<SensorRecord>> {
        sdr::read_all(self)
    }

    /// Reads one sensor and converts the value to the record's unit.
    pub fn read_sensor(&mut self, record: &SensorRecord) -> Result<SensorReading> {
        sensor::read(self, record)
    }

    /// DCMI capabilities, or `None` when the BMC does not implement DCMI.
    pub fn dcmi_capabilities(&mut self) -> Result<Option<DcmiCapabilities>> {
        dcmi::capabilities(self)
    }

    /// DCMI system power statistics (needs Operator privilege on most BMCs).
    pub fn dcmi_power_reading(&mut self) -> Result<DcmiPowerReading> {
        dcmi::power_reading(self)
    }
}

impl Exchange for Bmc {
    fn exchange(&mut self, command: Command, data: &[u8]) -> Result<Vec<u8>> {
        if self.link.is_none() {
            self.reconnect()?;
        }
        let link = self.link.as_mut().ok_or_else(|| IpmiError::Session {
            what: command.name.to_owned(),
            detail: "session lost while raising its privilege".to_owned(),
        })?;
        let response = match link.send_recv(command, data, self.timeout) {
            Ok(response) => response,
            Err(e) => {
                self.link = None;
                return Err(e);
            }
        };
        match response.completion_code {
            0x00 => Ok(response.data),
            0xD4 => Err(IpmiError::InsufficientPrivilege {
                command: command.name,
                privilege: self.privilege,
            }),
            code => Err(IpmiError::Completion {
                command: command.name,
                code,
            }),
        }
    }
}
