//! Moving raw IPMI messages: the [`Exchange`] seam every command is written against, and [`Link`],
//! its implementation on top of `ipmi-rs` (`File` for `/dev/ipmiN`, `Rmcp` for RMCP+).
//!
//! Commands are encoded and decoded by this crate, not by `ipmi-rs`'s typed commands, because
//! `ipmi_rs::Ipmi::send_recv` rejects responses with non-standard NetFns (DCMI's 0x2C/0x2D) and its
//! SDR reader only does whole-record reads. We use only the connections' raw `send_recv`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use ipmi_rs::connection::{
    IpmiConnection, LogicalUnit, Message, Request, RequestTargetAddress, Response,
};
use ipmi_rs::rmcp::{
    ActivationError, RakpMessage2ErrorStatusCode, RakpMessage2ParseError,
    RakpMessage4ErrorStatusCode, RakpMessage4ParseError, Rmcp, RmcpIpmiError, RmcpIpmiReceiveError,
    RmcpIpmiSendError, V2_0ActivationError, V2_0WriteError,
};

use crate::error::{IpmiError, Result};
use crate::target::Target;

/// An IPMI command: its name for error messages, NetFn and command code, and the LUN it goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Command {
    pub name: &'static str,
    pub netfn: u8,
    pub cmd: u8,
    pub lun: u8,
}

impl Command {
    pub const fn new(name: &'static str, netfn: u8, cmd: u8) -> Self {
        Self {
            name,
            netfn,
            cmd,
            lun: 0,
        }
    }

    /// The same command addressed to another LUN of the BMC (sensors may live on LUN 1..3).
    pub const fn at_lun(self, lun: u8) -> Self {
        Self {
            lun: lun & 0b11,
            ..self
        }
    }
}

/// Sends one request and returns the response data after a zero completion code.
///
/// Non-zero completion codes come back as [`IpmiError::Completion`] (or
/// [`IpmiError::InsufficientPrivilege`] for 0xD4) naming the command, so command code can match on
/// the codes it has a strategy for (0xC5, 0xCA, 0xC1) and pass everything else up.
pub(crate) trait Exchange {
    fn exchange(&mut self, command: Command, data: &[u8]) -> Result<Vec<u8>>;
}

/// A raw response: completion code and the data after it.
pub(crate) struct RawResponse {
    pub completion_code: u8,
    pub data: Vec<u8>,
}

/// An open connection to a BMC. The RMCP+ state is large (keys, buffers), hence boxed.
pub(crate) enum Link {
    InBand(ipmi_rs::File),
    Lan(Box<Rmcp>),
}

impl Link {
    /// Opens the device or performs the RMCP+ handshake (presence ping, Get Channel Authentication
    /// Capabilities, Open Session, RAKP 1-4), waiting at most `timeout` for each answer.
    pub fn open(target: &Target, timeout: Duration) -> Result<Self> {
        match target {
            Target::InBand { device } => ipmi_rs::File::new(device, timeout)
                .map(Link::InBand)
                .map_err(|e| {
                    IpmiError::from_io(format!("opening {}", device.display()), e, timeout)
                }),
            Target::Lan {
                host,
                port,
                username,
                password,
            } => {
                let what = format!("RMCP+ session to {host}:{port}");
                let mut rmcp = Rmcp::new((host.as_str(), *port), timeout)
                    .map_err(|e| IpmiError::from_io(what.clone(), e, timeout))?;
                guard(&what, || {
                    rmcp.activate(
                        true,
                        Some(username.as_str()),
                        Some(password.expose().as_bytes()),
                    )
                })?
                .map_err(|e| activation_error(&what, username, e, timeout))?;
                Ok(Link::Lan(Box::new(rmcp)))
            }
        }
    }

    /// Sends one request and returns the raw response, checking that it answers this request.
    ///
    /// Any error here leaves the connection in an unknown state (a late answer may still arrive and
    /// would be taken for the next request's, since `ipmi-rs` does not check sequence numbers), so
    /// the caller must drop the link on error.
    pub fn send_recv(
        &mut self,
        command: Command,
        data: &[u8],
        timeout: Duration,
    ) -> Result<RawResponse> {
        let lun = LogicalUnit::from_low_bits(command.lun);
        let mut request = Request::new(
            Message::new_raw(command.netfn, command.cmd, data.to_vec()),
            RequestTargetAddress::Bmc(lun),
        );
        let response = match self {
            Link::InBand(file) => guard(command.name, || file.send_recv(&mut request))?
                .map_err(|e| IpmiError::from_io(command.name, e, timeout))?,
            Link::Lan(rmcp) => guard(command.name, || rmcp.send_recv(&mut request))?
                .map_err(|e| rmcp_error(command.name, e, timeout))?,
        };
        check_response(command, &response)?;
        Ok(RawResponse {
            completion_code: response.cc(),
            data: response.data().to_vec(),
        })
    }
}

/// A response must carry the request's NetFn + 1 and command code; anything else is a stray answer.
fn check_response(command: Command, response: &Response) -> Result<()> {
    let expected = command.netfn | 1;
    if response.netfn_raw() != expected || response.cmd() != command.cmd {
        return Err(IpmiError::malformed(
            command.name,
            format!(
                "answer is for NetFn {:#04X} cmd {:#04X}, expected NetFn {expected:#04X} cmd {:#04X}",
                response.netfn_raw(),
                response.cmd(),
                command.cmd
            ),
        ));
    }
    Ok(())
}

/// `ipmi-rs` 0.6 panics on some BMC behaviour instead of returning errors (`unwrap` on a failed UDP
/// send, on an undecodable RAKP 4). The agent must survive a misbehaving BMC, so calls into it are
/// contained here and a panic becomes an error (and, through the caller, a dropped session).
fn guard<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
        let detail = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        IpmiError::malformed(what, format!("ipmi-rs panicked: {detail}"))
    })
}

fn rmcp_error(what: &str, error: RmcpIpmiError, timeout: Duration) -> IpmiError {
    match error {
        RmcpIpmiError::Receive(e) => receive_error(what, e, timeout),
        RmcpIpmiError::Send(RmcpIpmiSendError::V2_0(V2_0WriteError::Io(e))) => {
            IpmiError::from_io(what, e, timeout)
        }
        RmcpIpmiError::Send(RmcpIpmiSendError::V1_5(ipmi_rs::rmcp::V1_5WriteError::Io(e))) => {
            IpmiError::from_io(what, e, timeout)
        }
        other => IpmiError::malformed(what, format!("{other:?}")),
    }
}

fn receive_error(what: &str, error: RmcpIpmiReceiveError, timeout: Duration) -> IpmiError {
    match error {
        RmcpIpmiReceiveError::Io(e) => IpmiError::from_io(what, e, timeout),
        other => IpmiError::malformed(what, format!("{other:?}")),
    }
}

/// Maps the handshake's failure to what an operator can act on. Credential problems surface in
/// three places: the BMC rejects the user name/role in RAKP 2 (status 0x0D "unauthorized name",
/// ipmi_sim: 0x12 "illegal parameter"); the console finds the BMC's RAKP 2 HMAC does not verify
/// (`ServerAuthenticationFailed`: wrong password); the BMC finds RAKP 3's does not (status 0x0F).
///
/// `ipmi-rs` 0.6 reads the RAKP 2 status from the reserved byte 2 instead of byte 1, so a BMC's
/// rejection of the user name is only seen as the HMAC failure that follows it: against ipmi_sim,
/// an unknown user and a wrong password both arrive as `ServerAuthenticationFailed`.
fn activation_error(
    what: &str,
    username: &str,
    error: ActivationError,
    timeout: Duration,
) -> IpmiError {
    let auth = |reason: String| IpmiError::Authentication { reason };
    let session = |detail: String| IpmiError::Session {
        what: what.to_owned(),
        detail,
    };
    match error {
        ActivationError::BindSocket(e) => IpmiError::from_io(what, e, timeout),
        ActivationError::PingSend(e) | ActivationError::PongReceive(e) => {
            IpmiError::from_io(format!("{what}: RMCP presence ping"), e, timeout)
        }
        ActivationError::GetChannelAuthenticationCapabilities(ipmi_rs::IpmiError::Connection(
            e,
        )) => rmcp_error(
            &format!("{what}: Get Channel Authentication Capabilities"),
            e,
            timeout,
        ),
        ActivationError::V2_0(e) => match e {
            V2_0ActivationError::Io(e) => IpmiError::from_io(what, e, timeout),
            V2_0ActivationError::OpenSessionResponseReceive(e) => {
                receive_error(&format!("{what}: Open Session"), e, timeout)
            }
            V2_0ActivationError::RakpMessage2Receive(e) => {
                receive_error(&format!("{what}: RAKP 2"), e, timeout)
            }
            V2_0ActivationError::RakpMessage4Receive(e) => {
                receive_error(&format!("{what}: RAKP 4"), e, timeout)
            }
            V2_0ActivationError::RakpMessage2Parse(RakpMessage2ParseError::ErrorStatusCode(
                code,
            )) => auth(format!(
                "BMC rejected user {username:?} in RAKP 2: {}",
                rakp2_status(code)
            )),
            V2_0ActivationError::RakpMessage2Parse(
                RakpMessage2ParseError::UnknownErrorStatusCode(code),
            ) => auth(format!(
                "BMC rejected user {username:?} in RAKP 2: status {code:#04X}"
            )),
            V2_0ActivationError::ServerAuthenticationFailed => auth(format!(
                "wrong password for user {username:?}, or the BMC does not know the user with the \
                 administrator role (the BMC's RAKP 2 key exchange code does not verify)"
            )),
            V2_0ActivationError::RakpMessage4Parse(RakpMessage4ParseError::ErrorStatusCode(
                RakpMessage4ErrorStatusCode::InvalidIntegrityCheckValue,
            )) => auth(format!(
                "wrong password for user {username:?} (BMC: RAKP 3 integrity check value invalid)"
            )),
            V2_0ActivationError::RakpMessage4InvalidIntegrityCheckValue => auth(format!(
                "RAKP 4 integrity check value does not verify for user {username:?} (wrong password or a different BMC answering)"
            )),
            other => session(format!("{other:?}")),
        },
        other => session(format!("{other:?}")),
    }
}

fn rakp2_status(code: RakpMessage2ErrorStatusCode) -> String {
    let (value, meaning) = match code {
        RakpMessage2ErrorStatusCode::Common(common) => {
            (u8::from(common), "see IPMI 2.0 table 13-15")
        }
        RakpMessage2ErrorStatusCode::InactiveSessionId => (0x08, "inactive session ID"),
        RakpMessage2ErrorStatusCode::InvalidRole => (0x09, "invalid role"),
        RakpMessage2ErrorStatusCode::UnauthorizedRoleOrPrivilegeLevelRequested => {
            (0x0A, "unauthorized role or privilege level requested")
        }
        RakpMessage2ErrorStatusCode::InsufficientResourcesToCreateSessionAtRequestedRole => (
            0x0B,
            "insufficient resources to create a session at the requested role",
        ),
        RakpMessage2ErrorStatusCode::InvalidNameLength => (0x0C, "invalid name length"),
        RakpMessage2ErrorStatusCode::UnauthorizedName => (0x0D, "unauthorized name"),
    };
    let meaning = if value == 0x12 {
        "illegal parameter (unknown user, or the user's privilege is not administrator)"
    } else {
        meaning
    };
    format!("status {value:#04X} ({meaning})")
}

#[cfg(test)]
pub(crate) mod scripted {
    //! A fake BMC that replays recorded exchanges, so command code is tested on real bytes.

    use super::*;
    use crate::error::completion_code_meaning;

    /// One expected request and the raw response bytes (completion code first) to answer it with.
    pub struct Step {
        pub netfn: u8,
        pub cmd: u8,
        pub request: Vec<u8>,
        pub response: Vec<u8>,
    }

    pub fn step(netfn: u8, cmd: u8, request: &[u8], response: &[u8]) -> Step {
        Step {
            netfn,
            cmd,
            request: request.to_vec(),
            response: response.to_vec(),
        }
    }

    /// Answers requests from a script, asserting each request matches the recording.
    pub struct ScriptedBmc {
        steps: std::collections::VecDeque<Step>,
    }

    impl ScriptedBmc {
        pub fn new(steps: Vec<Step>) -> Self {
            Self {
                steps: steps.into(),
            }
        }

        pub fn assert_done(&self) {
            assert!(
                self.steps.is_empty(),
                "{} scripted exchanges not used",
                self.steps.len()
            );
        }
    }

    impl Exchange for ScriptedBmc {
        fn exchange(&mut self, command: Command, data: &[u8]) -> Result<Vec<u8>> {
            let step = self
                .steps
                .pop_front()
                .unwrap_or_else(|| panic!("unexpected request {}: {data:02X?}", command.name));
            assert_eq!(
                (command.netfn, command.cmd, data),
                (step.netfn, step.cmd, step.request.as_slice()),
                "request for {}",
                command.name
            );
            match step.response.split_first() {
                Some((0, rest)) => Ok(rest.to_vec()),
                Some((&code, _)) => {
                    assert_ne!(completion_code_meaning(code), "");
                    Err(IpmiError::Completion {
                        command: command.name,
                        code,
                    })
                }
                None => panic!("empty scripted response"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stray_answers_are_rejected() {
        let command = Command::new("Get Sensor Reading", 0x04, 0x2D);
        let good =
            Response::new(Message::new_raw(0x05, 0x2D, vec![0, 1, 0xC0]), 0).expect("non-empty");
        assert!(check_response(command, &good).is_ok());
        let stray = Response::new(Message::new_raw(0x0B, 0x23, vec![0, 1]), 0).expect("non-empty");
        let err = check_response(command, &stray).expect_err("stray");
        assert!(
            err.to_string().contains("expected NetFn 0x05 cmd 0x2D"),
            "{err}"
        );
        // DCMI's group-extension NetFn is accepted (ipmi-rs's typed send_recv rejects it).
        let dcmi = Command::new("DCMI Get Power Reading", 0x2C, 0x02);
        let answer =
            Response::new(Message::new_raw(0x2D, 0x02, vec![0, 0xDC]), 0).expect("non-empty");
        assert!(check_response(dcmi, &answer).is_ok());
    }

    #[test]
    fn panics_become_errors() {
        let err = guard("RAKP 4", || -> u8 { panic!("boom") }).expect_err("panic");
        assert!(err.to_string().contains("ipmi-rs panicked: boom"), "{err}");
    }

    #[test]
    fn wrong_password_is_an_authentication_error() {
        let err = activation_error(
            "RMCP+ session to bmc:623",
            "admin",
            ActivationError::V2_0(V2_0ActivationError::ServerAuthenticationFailed),
            Duration::from_secs(1),
        );
        assert!(matches!(err, IpmiError::Authentication { .. }), "{err}");
        let err = activation_error(
            "RMCP+ session to bmc:623",
            "nobody",
            ActivationError::V2_0(V2_0ActivationError::RakpMessage2Parse(
                RakpMessage2ParseError::ErrorStatusCode(
                    RakpMessage2ErrorStatusCode::UnauthorizedName,
                ),
            )),
            Duration::from_secs(1),
        );
        assert_eq!(
            err.to_string(),
            "authentication failed: BMC rejected user \"nobody\" in RAKP 2: status 0x0D (unauthorized name)"
        );
    }
}
