//! The one error type of this crate.
//!
//! The agent decides what to do from the variant (retry later, alert the operator about credentials,
//! give up on DCMI), and a human reads the message in a log line, so every message names the command
//! or the step that failed. Nothing here ever holds the password.

use std::time::Duration;

/// Everything that can go wrong talking to a BMC.
#[derive(Debug, thiserror::Error)]
pub enum IpmiError {
    /// The BMC did not answer within the configured timeout (it is down, or packets are lost).
    #[error("{what}: no answer from the BMC within {timeout:?}")]
    Timeout {
        /// The step or command that went unanswered.
        what: String,
        /// The per-exchange timeout that expired.
        timeout: Duration,
    },
    /// The BMC cannot be reached at all (connection refused, no route, no such device).
    #[error("{what}: BMC unreachable: {source}")]
    Unreachable {
        /// The step that failed.
        what: String,
        /// What the operating system reported.
        source: std::io::Error,
    },
    /// The BMC refused the credentials: unknown user name, wrong password, or a role the user does
    /// not have.
    #[error("authentication failed: {reason}")]
    Authentication {
        /// Why, as far as the RMCP+ handshake tells (never contains the password).
        reason: String,
    },
    /// The session's privilege level is too low for the command (completion code 0xD4).
    #[error("{command}: insufficient privilege (session at {privilege}; the user needs operator or administrator rights)")]
    InsufficientPrivilege {
        /// The refused command.
        command: &'static str,
        /// The privilege level the session had.
        privilege: crate::Privilege,
    },
    /// The BMC answered with a non-zero completion code.
    #[error("{command}: completion code {code:#04X} ({})", completion_code_meaning(*code))]
    Completion {
        /// The command that failed.
        command: &'static str,
        /// The IPMI completion code.
        code: u8,
    },
    /// The BMC answered something this client cannot make sense of.
    #[error("{what}: malformed response: {detail}")]
    Malformed {
        /// The command or record being decoded.
        what: String,
        /// What exactly was wrong.
        detail: String,
    },
    /// The session could not be established for a reason other than credentials (no common cipher
    /// suite, IPMI not offered on the port, ...).
    #[error("{what}: session setup failed: {detail}")]
    Session {
        /// The handshake step.
        what: String,
        /// What the BMC or the library reported.
        detail: String,
    },
    /// The sensor uses a reading conversion this client does not implement.
    #[error("sensor {sensor:?}: unsupported reading conversion: {detail}")]
    UnsupportedSensor {
        /// The sensor's ID string.
        sensor: String,
        /// Why it cannot be converted or read.
        detail: String,
    },
    /// A local I/O error that is not about reachability (opening /dev/ipmiN, binding a socket).
    #[error("{what}: {source}")]
    Io {
        /// The step that failed.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl IpmiError {
    /// Whether the error means the BMC is (currently) not answering; the agent backs off and the
    /// next call re-establishes the session.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::Unreachable { .. })
    }

    /// The completion code, when the BMC answered with one.
    pub fn completion_code(&self) -> Option<u8> {
        match self {
            Self::Completion { code, .. } => Some(*code),
            Self::InsufficientPrivilege { .. } => Some(0xD4),
            _ => None,
        }
    }

    pub(crate) fn malformed(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Malformed {
            what: what.into(),
            detail: detail.into(),
        }
    }

    /// Classifies an I/O error from the socket or device: timeouts and refusals are about the BMC,
    /// the rest is local.
    pub(crate) fn from_io(
        what: impl Into<String>,
        source: std::io::Error,
        timeout: Duration,
    ) -> Self {
        use std::io::ErrorKind;
        let what = what.into();
        match source.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => Self::Timeout { what, timeout },
            ErrorKind::ConnectionRefused
            | ErrorKind::ConnectionReset
            | ErrorKind::HostUnreachable
            | ErrorKind::NetworkUnreachable
            | ErrorKind::NotFound
            | ErrorKind::AddrNotAvailable => Self::Unreachable { what, source },
            _ => Self::Io { what, source },
        }
    }
}

/// The generic meaning of an IPMI completion code (IPMI 2.0 table 5-2). Codes 0x80..=0xBE are
/// command-specific; callers that know the command explain those themselves.
pub fn completion_code_meaning(code: u8) -> &'static str {
    match code {
        0x00 => "success",
        0x80..=0xBE => "command-specific error",
        0xC0 => "node busy",
        0xC1 => "invalid command",
        0xC2 => "command invalid for given LUN",
        0xC3 => "timeout while processing command",
        0xC4 => "out of space",
        0xC5 => "reservation cancelled or invalid reservation ID",
        0xC6 => "request data truncated",
        0xC7 => "request data length invalid",
        0xC8 => "request data field length limit exceeded",
        0xC9 => "parameter out of range",
        0xCA => "cannot return number of requested data bytes",
        0xCB => "requested sensor, data, or record not present",
        0xCC => "invalid data field in request",
        0xCD => "command illegal for specified sensor or record type",
        0xCE => "command response could not be provided",
        0xCF => "cannot execute duplicated request",
        0xD0 => "SDR repository in update mode",
        0xD1 => "device in firmware update mode",
        0xD2 => "BMC initialization in progress",
        0xD3 => "destination unavailable",
        0xD4 => "insufficient privilege level",
        0xD5 => "not supported in present state",
        0xD6 => "sub-function disabled or unavailable",
        0xFF => "unspecified error",
        _ => "reserved completion code",
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = IpmiError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_message_names_command_and_meaning() {
        let err = IpmiError::Completion {
            command: "DCMI Get Power Reading",
            code: 0xC1,
        };
        assert_eq!(
            err.to_string(),
            "DCMI Get Power Reading: completion code 0xC1 (invalid command)"
        );
    }

    #[test]
    fn io_errors_are_classified() {
        let t = Duration::from_millis(500);
        let timeout = IpmiError::from_io("x", std::io::ErrorKind::WouldBlock.into(), t);
        assert!(matches!(timeout, IpmiError::Timeout { .. }));
        assert!(timeout.is_unreachable());
        let refused = IpmiError::from_io("x", std::io::ErrorKind::ConnectionRefused.into(), t);
        assert!(matches!(refused, IpmiError::Unreachable { .. }));
        let other = IpmiError::from_io("x", std::io::ErrorKind::PermissionDenied.into(), t);
        assert!(matches!(other, IpmiError::Io { .. }));
    }
}
