//! Raising an RMCP+ session's privilege level (Set Session Privilege Level, App 0x3B).
//!
//! Every RMCP+ session starts at User privilege, whatever role was negotiated in RAKP, and DCMI power
//! commands need Operator or Administrator. `ipmi-rs` never sends 0x3B, so we do it right after the
//! handshake, trying the highest level first.

use crate::error::{IpmiError, Result};
use crate::target::Privilege;
use crate::transport::{Command, Exchange};

pub(crate) const SET_SESSION_PRIVILEGE: Command =
    Command::new("Set Session Privilege Level", 0x06, 0x3B);

/// Requests Administrator, then Operator; stays at User if the BMC refuses both.
///
/// Refusals are completion codes 0x80 (level not available for this user), 0x81 (exceeds the
/// channel or user limit), 0xD4 (insufficient privilege) and 0xC1 (command not implemented).
pub(crate) fn raise(link: &mut impl Exchange) -> Result<Privilege> {
    for wanted in [Privilege::Administrator, Privilege::Operator] {
        match link.exchange(SET_SESSION_PRIVILEGE, &[wanted.code()]) {
            Ok(data) => return decode_response(&data),
            Err(IpmiError::Completion {
                code: 0x80 | 0x81 | 0xC1 | 0xD4,
                ..
            })
            | Err(IpmiError::InsufficientPrivilege { .. }) => {
                log::debug!("BMC refused session privilege {wanted}; trying the next lower level")
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Privilege::User)
}

/// The response's single data byte is the new privilege level (low nibble).
fn decode_response(data: &[u8]) -> Result<Privilege> {
    data.first()
        .and_then(|&b| Privilege::from_code(b))
        .ok_or_else(|| {
            IpmiError::malformed(
                SET_SESSION_PRIVILEGE.name,
                format!("expected a privilege level, got {data:02X?}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::scripted::{step, ScriptedBmc};

    #[test]
    fn raises_to_administrator_when_allowed() {
        let mut bmc = ScriptedBmc::new(vec![step(0x06, 0x3B, &[0x04], &[0x00, 0x04])]);
        assert_eq!(raise(&mut bmc).expect("raise"), Privilege::Administrator);
        bmc.assert_done();
    }

    #[test]
    fn falls_back_to_operator_then_user() {
        let mut bmc = ScriptedBmc::new(vec![
            step(0x06, 0x3B, &[0x04], &[0x81]),
            step(0x06, 0x3B, &[0x03], &[0x00, 0x03]),
        ]);
        assert_eq!(raise(&mut bmc).expect("raise"), Privilege::Operator);
        bmc.assert_done();

        let mut bmc = ScriptedBmc::new(vec![
            step(0x06, 0x3B, &[0x04], &[0x80]),
            step(0x06, 0x3B, &[0x03], &[0x81]),
        ]);
        assert_eq!(raise(&mut bmc).expect("raise"), Privilege::User);
        bmc.assert_done();
    }

    #[test]
    fn other_failures_are_errors() {
        let mut bmc = ScriptedBmc::new(vec![step(0x06, 0x3B, &[0x04], &[0xFF])]);
        let err = raise(&mut bmc).expect_err("unspecified error");
        assert_eq!(err.completion_code(), Some(0xFF));

        let mut bmc = ScriptedBmc::new(vec![step(0x06, 0x3B, &[0x04], &[0x00])]);
        let err = raise(&mut bmc).expect_err("empty");
        assert!(matches!(err, IpmiError::Malformed { .. }), "{err}");
    }
}
