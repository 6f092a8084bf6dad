//! What the library tells the operator: one line in its log (`ET_PTKC_GENERAL_LOG`) for every
//! failure to reach or use a device of the server list, naming the device (its position in
//! the list, the `-a` of the tools, its address and serial), the reason and what fixes it; the
//! same line for the tools, through [`Device::take_refusal`].

use tessera_core::Rv;

use crate::{Device, SecureSettings};

impl Device {
    /// Says in the library's log why the device cannot be reached or used (once while the
    /// reason stays the same: an application that polls the slot list does not fill the log).
    pub(crate) fn unreachable(&self, why: &str) {
        let mut last = self
            .unreachable
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.as_deref() == Some(why) {
            return;
        }
        *last = Some(why.to_string());
        drop(last);
        self.log(&format!("{}: {why}", self.named(None)));
    }

    /// The device as messages name it: its position in the server list when known (the `-a`
    /// of the tools), its address, and its serial when known.
    pub(crate) fn named(&self, serial: Option<&str>) -> String {
        // A serial not known yet is left out rather than shown as a placeholder.
        let serial = serial
            .filter(|s| !matches!(*s, "" | "?" | "unknown"))
            .map(|s| format!(", serial {s}"))
            .unwrap_or_default();
        match self.position {
            Some(n) => format!("device {n} ({}{serial})", self.address),
            None if serial.is_empty() => format!("device {}", self.address),
            None => format!("device {} ({})", self.address, &serial[2..]),
        }
    }

    /// The `-a` option that names this device in a tool's command, with its leading space
    /// (`ctident -a1 ...`; nothing for device 0, the tools' default).
    pub(crate) fn tool_option(&self) -> String {
        match self.position {
            Some(0) => String::new(),
            Some(n) => format!(" -a{n}"),
            None => " -aN".into(),
        }
    }

    /// Writes one line to the library's log (`ET_PTKC_GENERAL_LOG`).
    pub(crate) fn log(&self, line: &str) {
        if let Some(settings) = self.secure.as_deref() {
            settings.log(line);
        }
    }

    /// A connection was made: a device that could not be reached is said to be back.
    pub(crate) fn reachable(&self) {
        let was = self
            .unreachable
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if was.is_some() {
            self.log(&format!("{}: reachable again", self.named(None)));
        }
    }

    /// One line about the device with `serial` in the library's log.
    pub(crate) fn report(&self, serial: &str, what: &str) {
        self.log(&format!("{}: {what}", self.named(Some(serial))));
    }

    /// Reports why a channel was refused, and keeps the line for [`Device::take_refusal`].
    pub(crate) fn refuse(&self, serial: &str, what: &str) {
        self.report(serial, what);
        *self
            .refusal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Some(format!("{}: {what}", self.named(Some(serial))));
    }

    /// Why the device's chain is not trusted, where this client looked, and the command that
    /// fixes it (the same words in the library's log and in every tool).
    pub(crate) fn untrusted(
        &self,
        settings: &SecureSettings,
        chain: &[Vec<u8>],
        refusal: &tessera_identity::Refusal,
    ) -> String {
        use tessera_identity::trust::{Level, TrustStore};
        use tessera_identity::Refusal;
        let a = self.tool_option();
        let stores = format!(
            "trust stores searched: {} (user, ET_PTKC_TRUSTSTORE_USER), {} (system, ET_PTKC_TRUSTSTORE_SYSTEM)",
            TrustStore::open(settings.config(), Level::User).dir.display(),
            TrustStore::open(settings.config(), Level::System).dir.display()
        );
        let fingerprint = |index: usize| {
            chain
                .get(index)
                .map(|der| tessera_identity::inspect::fingerprint(der))
        };
        let renew = format!(
            "give the device a new identity (`ctident{a} gen-selfsigned all --replace`), then trust it here (`ctident{a} trust add --from-device`)"
        );
        let fix = match refusal {
            Refusal::Expired { .. } | Refusal::NotYetValid { .. } => {
                format!("if this host's clock is right, {renew}")
            }
            Refusal::WrongSerial { .. } | Refusal::WrongKeyUsage { .. } => {
                format!("the certificate is not one for this device: {renew}")
            }
            _ => {
                let owner = fingerprint(1).map_or(String::new(), |f| {
                    format!(", or its owner certificate, SHA-256 {f}, with `ctident{a} trust add --from-device --owner`")
                });
                format!(
                    "compare the device's certificate fingerprint SHA-256 {} with the one `ctident{a} show` prints on the device's own host (out of band), then trust it: `ctident{a} trust add --from-device`{owner}",
                    fingerprint(0).unwrap_or_else(|| "(none presented)".into())
                )
            }
        };
        format!(
            "secure channel refused (CKR_CERT_NOT_VALIDATED), the device's certificate: {refusal}; {stores}; {fix}"
        )
    }

    /// Why the device refused a handshake (`code`), and what to do.
    pub(crate) fn hello_refused(&self, code: u64) -> String {
        let a = self.tool_option();
        match Rv::from_code(code) {
            Some(Rv::NoSessionKeys) => format!(
                "CKR_NO_SESSION_KEYS: the device has no identity (key and certificate), so it cannot make one; run `ctident{a} gen-selfsigned all`, then trust it here with `ctident{a} trust add --from-device` (a device of a release before secure messaging {} answers a newer library this way too: its log says \"handshake refused: the peer speaks secure messaging version\")",
                tessera_channel::PROTOCOL_VERSION
            ),
            Some(Rv::ChannelLimit) => "CKR_TESSERA_CHANNEL_LIMIT: the device holds as many channels as it may (tesserad --max-channels); try again when others have closed, or raise the limit".into(),
            Some(Rv::HandshakeRateLimited) => "CKR_TESSERA_HANDSHAKE_RATE_LIMITED: too many failed handshakes from this address; wait, and fix what made them fail".into(),
            Some(Rv::ProtocolVersion) => format!(
                "CKR_TESSERA_PROTOCOL_VERSION: the device speaks another version of secure messaging than this library ({}); run the same Tessera release on both (`tesserad --version` on the device's host)",
                tessera_channel::PROTOCOL_VERSION
            ),
            Some(rv) => rv.name().to_string(),
            None => format!("0x{code:08X}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tessera_config::ServerAddress;

    fn device(position: Option<usize>) -> Device {
        let address = ServerAddress::parse("127.0.0.1:1").unwrap();
        let device = Device::new(address, Duration::from_secs(1), Duration::from_secs(1));
        match position {
            Some(n) => device.with_position(n),
            None => device,
        }
    }

    #[test]
    fn a_device_is_named_by_its_position_address_and_serial_and_commands_by_its_option() {
        let second = device(Some(1));
        assert_eq!(
            second.named(Some("42")),
            "device 1 (tcp:127.0.0.1:1, serial 42)"
        );
        assert_eq!(second.named(Some("?")), "device 1 (tcp:127.0.0.1:1)");
        assert_eq!(second.tool_option(), " -a1");
        assert_eq!(device(Some(0)).tool_option(), "");
        let unnumbered = device(None);
        assert_eq!(
            unnumbered.named(Some("42")),
            "device tcp:127.0.0.1:1 (serial 42)"
        );
        assert_eq!(unnumbered.named(None), "device tcp:127.0.0.1:1");
        assert_eq!(unnumbered.tool_option(), " -aN");
    }

    #[test]
    fn the_hello_refusal_says_what_to_run() {
        let line = device(Some(2)).hello_refused(Rv::NoSessionKeys.code());
        assert!(
            line.contains("no identity") && line.contains("`ctident -a2 gen-selfsigned all`"),
            "{line}"
        );
        assert!(device(Some(0))
            .hello_refused(Rv::ChannelLimit.code())
            .contains("--max-channels"));
        let line = device(Some(0)).hello_refused(Rv::ProtocolVersion.code());
        assert!(
            line.contains("another version of secure messaging")
                && line.contains(&format!("({})", tessera_channel::PROTOCOL_VERSION))
                && line.contains("same Tessera release"),
            "{line}"
        );
    }
}
