//! Where the BMC is and how to log in: [`Target`], [`Secret`], [`Privilege`].

use std::fmt;
use std::path::PathBuf;

/// A BMC to talk to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The local BMC through the kernel's IPMI driver (`/dev/ipmi0`): no session, no credentials.
    InBand {
        /// The character device, usually `/dev/ipmi0`.
        device: PathBuf,
    },
    /// A BMC on the network, over RMCP+ (IPMI 2.0 LAN, cipher suite 3).
    Lan {
        /// Host name or address of the BMC.
        host: String,
        /// UDP port, 623 on real BMCs.
        port: u16,
        /// IPMI user name (at most 16 ASCII characters).
        username: String,
        /// The user's password.
        password: Secret,
    },
}

impl fmt::Display for Target {
    /// A log-safe description: never includes the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InBand { device } => write!(f, "in-band {}", device.display()),
            Self::Lan {
                host,
                port,
                username,
                ..
            } => write!(f, "{username}@{host}:{port} (RMCP+)"),
        }
    }
}

/// A credential that must never reach a log: `Debug` prints `***`, and there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it (the RAKP key exchange).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

/// An IPMI session privilege level (IPMI 2.0 §6.8), ordered from least to most privileged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Privilege {
    /// Callback: can barely do anything.
    Callback,
    /// User: read-only access (SDR, sensor readings). Where every RMCP+ session starts.
    User,
    /// Operator: can use DCMI power commands on most BMCs.
    Operator,
    /// Administrator: everything.
    Administrator,
}

impl Privilege {
    /// The level's code in Set Session Privilege Level and RAKP messages.
    pub fn code(self) -> u8 {
        match self {
            Self::Callback => 1,
            Self::User => 2,
            Self::Operator => 3,
            Self::Administrator => 4,
        }
    }

    /// The level for a code, ignoring the upper nibble (where RAKP keeps flags).
    pub fn from_code(code: u8) -> Option<Self> {
        match code & 0x0F {
            1 => Some(Self::Callback),
            2 => Some(Self::User),
            3 => Some(Self::Operator),
            4 => Some(Self::Administrator),
            _ => None,
        }
    }
}

impl fmt::Display for Privilege {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Callback => "callback",
            Self::User => "user",
            Self::Operator => "operator",
            Self::Administrator => "administrator",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let target = Target::Lan {
            host: "bmc".into(),
            port: 623,
            username: "root".into(),
            password: Secret::new("calvin"),
        };
        assert!(!format!("{target:?}").contains("calvin"));
        assert!(format!("{target:?}").contains("***"));
        assert_eq!(target.to_string(), "root@bmc:623 (RMCP+)");
    }

    #[test]
    fn privilege_codes_round_trip() {
        for p in [
            Privilege::Callback,
            Privilege::User,
            Privilege::Operator,
            Privilege::Administrator,
        ] {
            assert_eq!(Privilege::from_code(p.code()), Some(p));
        }
        assert_eq!(Privilege::from_code(0x14), Some(Privilege::Administrator));
        assert_eq!(Privilege::from_code(0), None);
        assert!(Privilege::Administrator > Privilege::Operator);
    }
}
