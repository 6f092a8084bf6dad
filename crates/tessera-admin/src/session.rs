//! Reaching a device of the server list, and the Administrator's session on its Admin slot.

use std::time::Duration;

use tessera_client::{ClientError, Device};
use tessera_config::{Config, CONNECT_TIMEOUT, REPLY_TIMEOUT};
use tessera_core::{ck, Rv, SecretBytes};
use tessera_wire::{AdminCommand, Call, DeviceStatus, KeepCommand, Reply};

use crate::Failure;

/// A device chosen by its number in the server list.
pub struct Target {
    /// Its number.
    pub number: usize,
    /// The client.
    pub device: Device,
}

impl Target {
    /// Device `number` of the configured server list.
    pub fn open(number: usize) -> Result<Target, Failure> {
        let config = Config::load().map_err(|e| Failure::new(e.to_string()))?;
        let servers = config.servers().map_err(|e| Failure::new(e.to_string()))?;
        let address = servers.get(number).cloned().ok_or_else(|| {
            let list: Vec<String> = servers
                .iter()
                .enumerate()
                .map(|(i, s)| format!("{i}: {s}"))
                .collect();
            Failure::usage(format!(
                "device {number} is not in the server list ({})",
                list.join(", ")
            ))
        })?;
        let connect = config
            .seconds(CONNECT_TIMEOUT)
            .map_err(|e| Failure::new(e.to_string()))?;
        let reply = config
            .seconds(REPLY_TIMEOUT)
            .map_err(|e| Failure::new(e.to_string()))?;
        let secure = tessera_client::SecureSettings::from_config(config)
            .map_err(|e| Failure::new(e.to_string()))?
            .for_tool();
        let device = Device::new(address, connect, reply.max(Duration::from_secs(1)))
            .with_position(number)
            .with_security(std::sync::Arc::new(secure));
        Ok(Target { number, device })
    }

    /// Sends a request outside any session.
    pub fn call(&self, request: Call) -> Result<Reply, Failure> {
        self.device
            .call(None, request)
            .map(|(reply, _)| reply)
            .map_err(|e| self.explain(e))
    }

    /// The device status.
    pub fn status(&self) -> Result<DeviceStatus, Failure> {
        match self.call(Call::DeviceStatus)? {
            Reply::Status(status) => Ok(status),
            other => Err(Failure::new(format!(
                "device {} answered {other:?} to a status request",
                self.number
            ))),
        }
    }

    /// Checks that this client can make a secure channel to the device (it has an identity,
    /// and this client's trust store vouches for it), by making one: what a change that will
    /// make the device require channels checks first, so that the operator is not locked out
    /// by the order of the steps. The channel stays for the calls that follow.
    pub fn check_channel(&self) -> Result<(), Failure> {
        self.device.open_channel().map_err(|e| self.explain(e))
    }

    /// One line for a failed call.
    pub fn explain(&self, error: ClientError) -> Failure {
        let device = format!("device {} ({})", self.number, self.device.address());
        // A refused channel: the library said why, and what fixes it.
        if let Some(refusal) = self.device.take_refusal() {
            return Failure::new(refusal);
        }
        match error {
            ClientError::Unreachable { reason, .. } => {
                Failure::new(format!("{device} is unreachable: {reason}"))
            }
            ClientError::ConnectionLost { reason, .. } => {
                Failure::new(format!("{device}: connection lost: {reason}"))
            }
            ClientError::BadReply { reason, .. } => {
                Failure::new(format!("{device} sent a bad reply: {reason}"))
            }
            ClientError::StaleSession => {
                Failure::new(format!("{device}: the connection was lost; try again"))
            }
            ClientError::Returned(code) => Failure::new(format!("{device}: {}", describe(code))),
        }
    }
}

/// Sets up the Admin token when the device never was (asking for the ASO and Administrator
/// PINs, or reading them from files), and returns the device status.
pub fn ensure_admin_ready(
    target: &Target,
    aso_file: Option<&std::path::Path>,
    admin_file: Option<&std::path::Path>,
) -> Result<DeviceStatus, Failure> {
    let status = target.status()?;
    if status.admin_ready {
        return Ok(status);
    }
    eprintln!(
        "Device {} (serial {}) has not been set up.",
        target.number, status.info.serial
    );
    let aso = crate::pin::read_new(aso_file, "ASO PIN")?;
    let admin = crate::pin::read_new(admin_file, "Administrator PIN")?;
    crate::progress::run(
        &format!("device {}: setting up the Admin token", target.number),
        || {
            target.call(Call::AdminSetup {
                aso_pin: aso,
                admin_pin: admin,
            })
        },
    )?;
    println!("Admin token set up: ASO and Administrator PINs are set.");
    target.status()
}

/// The Administrator PIN: `--pin-file`, else `--admin-pin-file`, else asked.
pub fn admin_pin(
    pin_file: Option<&std::path::Path>,
    admin_file: Option<&std::path::Path>,
) -> Result<SecretBytes, Failure> {
    match (pin_file, admin_file) {
        (None, Some(path)) => crate::pin::from_file(path, "Administrator PIN"),
        (file, _) => crate::pin::read(file, "Administrator PIN"),
    }
}

/// What a return code means to an operator.
pub fn describe(code: u64) -> String {
    match Rv::from_code(code) {
        Some(Rv::PinIncorrect) => "wrong PIN; nothing was changed".into(),
        Some(Rv::PinLocked) => "the PIN is locked after too many wrong PINs".into(),
        Some(Rv::PinLenRange) => "a PIN must be 4 to 255 characters".into(),
        Some(Rv::ModeLocked) => {
            "the security flags are locked (Mode Locked is set); only a tamper clears it".into()
        }
        Some(Rv::IdentityRequired) => "flags u, n, N, U and F need an identity key and certificate on the device; create one with `ctident gen-selfsigned all` first".into(),
        Some(Rv::AdminNotSetUp) => "the Admin token is not set up; run ctconf without options first".into(),
        Some(Rv::AdminAlreadySetUp) => "the Admin token is already set up".into(),
        Some(Rv::SessionExists) => "the slot has open sessions; close them first".into(),
        Some(Rv::UserNotLoggedIn) => "the Administrator is not logged in".into(),
        Some(Rv::OwnerKeyRequired) => "the device has no owner key (POK); make one with `ctident gen-selfsigned poc` or `all`".into(),
        Some(Rv::CertificateMismatch) => "the certificate does not match this device's identity key or serial number; nothing was imported".into(),
        Some(Rv::IdentityExists) => "the device already has that key; add --replace to replace it".into(),
        // A channel refusal is explained by the library (`Target::explain`); this is the
        // device's refusal of a certificate given to it (`ctident import`, `peer add`).
        Some(Rv::CertNotValidated) => "the certificate does not verify with the chain given".into(),
        Some(Rv::NoSessionKeys) => "the device has no identity (key and certificate), so it cannot make a secure channel; run `ctident gen-selfsigned all` first".into(),
        Some(Rv::ProtocolVersion) => "the device speaks another version of secure messaging than these tools; run the same Tessera release on both (`tesserad --version`)".into(),
        Some(Rv::DataInvalid) => "the request or certificate is malformed, or its signature does not verify".into(),
        Some(rv) => rv.to_string(),
        None => format!("error 0x{code:08X}"),
    }
}

/// A session on the Admin slot in which the Administrator is logged in.
pub struct AdminSession<'a> {
    target: &'a Target,
    session: u64,
    generation: u64,
}

impl<'a> AdminSession<'a> {
    /// Opens a R/W session on the Admin slot and logs in with the Administrator PIN.
    pub fn login(
        target: &'a Target,
        status: &DeviceStatus,
        pin: &SecretBytes,
    ) -> Result<Self, Failure> {
        if !status.admin_ready {
            return Err(Failure::new(describe(Rv::AdminNotSetUp.code())));
        }
        let admin_slot = status.info.slot_count - 1;
        let (session, generation) = open_and_login(
            target,
            admin_slot,
            ck::CKU_USER as u64,
            pin,
            "Administrator PIN",
        )?;
        Ok(AdminSession {
            target,
            session,
            generation,
        })
    }

    /// Runs an Administrator command, showing `what` while it runs if it takes long (see
    /// [`crate::progress`]).
    pub fn run_showing(&self, what: &str, command: AdminCommand) -> Result<Reply, Failure> {
        crate::progress::run(&format!("device {}: {what}", self.target.number), || {
            self.run(command)
        })
    }

    /// Runs an Administrator command.
    pub fn run(&self, command: AdminCommand) -> Result<Reply, Failure> {
        self.target
            .device
            .call(
                Some(self.generation),
                Call::Admin {
                    session: self.session,
                    command,
                },
            )
            .map(|(reply, _)| reply)
            .map_err(|e| self.target.explain(e))
    }
}

/// Opens a R/W session on `slot` and logs in as `user_type` with `pin` (named `what` in
/// messages); returns the session and the connection generation it belongs to.
fn open_and_login(
    target: &Target,
    slot: u64,
    user_type: u64,
    pin: &SecretBytes,
    what: &str,
) -> Result<(u64, u64), Failure> {
    let flags = (ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION) as u64;
    let (reply, generation) = target
        .device
        .call(None, Call::OpenSession { slot, flags })
        .map_err(|e| target.explain(e))?;
    let Reply::Handle(session) = reply else {
        return Err(Failure::new(
            "the device answered an open-session request wrongly",
        ));
    };
    let login = Call::Login {
        session,
        user_type,
        pin: pin.duplicate(),
    };
    let checked = crate::progress::run(
        &format!("device {}: checking the {what}", target.number),
        || target.device.call(Some(generation), login),
    );
    match checked {
        Ok(_) => Ok((session, generation)),
        Err(ClientError::Returned(code)) if code == Rv::PinIncorrect.code() => Err(Failure::new(format!(
            "device {}: wrong {what}; nothing was changed (wrong PINs count toward the lock-out)",
            target.number
        ))),
        Err(ClientError::Returned(code)) if code == Rv::PinLocked.code() => Err(Failure::new(format!(
            "device {}: the {what} is locked after too many wrong PINs",
            target.number
        ))),
        Err(ClientError::Returned(code)) if code == Rv::UserPinNotInitialized.code() || code == Rv::TokenNotRecognized.code() => Err(Failure::new(format!(
            "device {}: the token in slot {slot} is not initialised; initialise it with `ctconf -a{} -n{slot}` first",
            target.number, target.number
        ))),
        Err(e) => Err(target.explain(e)),
    }
}

/// A session on a token in which its Security Officer or its user is logged in (`ctkmu`).
pub struct TokenSession<'a> {
    target: &'a Target,
    session: u64,
    generation: u64,
}

impl<'a> TokenSession<'a> {
    /// Opens a R/W session on `slot` and logs in as its SO (`so`) or its user.
    pub fn login(
        target: &'a Target,
        slot: u64,
        so: bool,
        pin: &SecretBytes,
    ) -> Result<Self, Failure> {
        let (user_type, who) = match so {
            true => (ck::CKU_SO, "SO PIN"),
            false => (ck::CKU_USER, "user PIN"),
        };
        let (session, generation) = open_and_login(
            target,
            slot,
            user_type as u64,
            pin,
            &format!("{who} of the token in slot {slot}"),
        )?;
        Ok(TokenSession {
            target,
            session,
            generation,
        })
    }

    /// Runs a keeping command, showing `what` while it runs if it takes long; the device's
    /// return code is left to the caller, who knows what it means there.
    pub fn keep(&self, what: &str, command: KeepCommand) -> Result<Reply, ClientError> {
        crate::progress::run(&format!("device {}: {what}", self.target.number), || {
            self.target
                .device
                .call(
                    Some(self.generation),
                    Call::Keep {
                        session: self.session,
                        command,
                    },
                )
                .map(|(reply, _)| reply)
        })
    }

    /// The device this session is on.
    pub fn target(&self) -> &Target {
        self.target
    }
}
