//! The client end of secure messaging: when a channel is needed, the handshake with the trust
//! store and the dialled serial, protected calls, rollover before the key limits, and the log
//! line that names the reason of every refusal.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tessera_channel::{Channel, ExpectServerHello, HandshakeError, Policy, StepError};
use tessera_config::{Config, ConfigError};
use tessera_core::bytes::Held;
use tessera_core::Rv;
use tessera_wire::{Call, Inner, Message, Reply, Response};

use crate::known::{ChannelUse, KnownDevice, KnownDevices, Level as KnownLevel};
use crate::stream::{Answer, Frame, SealedReply};
use crate::{ClientError, Device, State};

/// Item: where the library writes its one-line reports (`stderr`, or a file path).
pub const LOG_ITEM: &str = "ET_PTKC_GENERAL_LOG";
/// Item: messages one generation of channel keys protects before the library renews them.
pub const MAX_MESSAGES_ITEM: &str = "ET_PTKC_SMS_MAX_MESSAGES";
/// Item: payload bytes one generation of channel keys protects before renewal.
pub const MAX_BYTES_ITEM: &str = "ET_PTKC_SMS_MAX_BYTES";
/// Item: seconds one generation of channel keys lives before renewal.
pub const MAX_SECONDS_ITEM: &str = "ET_PTKC_SMS_MAX_SECONDS";
/// Item: seconds a channel may stay unused before the library closes it (0: never).
pub const IDLE_SECONDS_ITEM: &str = "ET_PTKC_SMS_IDLE_SECONDS";

/// Where reports go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard error.
    Stderr,
    /// Appended to a file.
    File(PathBuf),
    /// Nowhere: an administration tool, which shows the reason of a failure itself (see
    /// [`SecureSettings::for_tool`]).
    Quiet,
}

/// Secure-messaging settings of the client, from its configuration.
#[derive(Debug)]
pub struct SecureSettings {
    config: Config,
    log: LogTarget,
    max_messages: u64,
    max_bytes: u64,
    max_age: Duration,
    idle: Option<Duration>,
    /// The last chain the trust store accepted (see [`SecureSettings::check_chain`]).
    verified: std::sync::Mutex<Option<Verified>>,
    /// What earlier channels taught of the device at each entry.
    known: KnownDevices,
    /// Some SMPR item asks for a channel: until a handshake has authenticated which device an
    /// entry is, the library cannot tell whether that SMPR is the entry's.
    channel_anywhere: bool,
    /// The server-list entries, and the serial each one's device gave (see
    /// [`SecureSettings::saw_serial`]).
    entries: Vec<String>,
    serials: std::sync::Mutex<Serials>,
    /// Handshakes offer no ML-KEM, as a library of the classical protocol's do
    /// ([`SecureSettings::classical`]).
    classical: bool,
}

/// The serials the devices of the server list gave, until each has given one.
#[derive(Debug, Default)]
struct Serials {
    by_entry: std::collections::HashMap<String, String>,
    /// The SMPR items were checked against them (once).
    checked: bool,
}

/// A chain found trusted: for which serial, against which anchors, when.
#[derive(Debug)]
struct Verified {
    serial: String,
    chain: Vec<Vec<u8>>,
    anchors: Vec<Vec<u8>>,
    at: i64,
}

/// How long a verified chain is taken as verified (it is checked again after, which also
/// catches a certificate that expired meanwhile).
const VERIFIED_SECONDS: i64 = 60;

fn number(config: &Config, item: &str, default: u64) -> Result<u64, ConfigError> {
    match config.item(item) {
        None => Ok(default),
        Some((value, level)) => value
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| ConfigError::Invalid {
                item: item.into(),
                level,
                reason: format!("{value:?} is not a positive number"),
            }),
    }
}

/// Why the library refused the chain a device presented in a handshake.
enum ChainRefusal {
    /// This client's records (known devices, SMPR) do not allow this device here: the reason,
    /// worded with its fix.
    Records(String),
    /// The trust store does not vouch for the chain.
    Distrusted(tessera_identity::Refusal),
}

impl SecureSettings {
    /// Reads the settings, checking every `ET_PTKC_<serial>_SMPR` item; the error names the
    /// item and the letter at fault.
    pub fn from_config(config: Config) -> Result<SecureSettings, ConfigError> {
        let mut channel_anywhere = false;
        for name in config.names() {
            if name.starts_with("ET_PTKC_") && name.ends_with("_SMPR") {
                let Some((value, level)) = config.item(&name) else {
                    continue;
                };
                let policy = Policy::from_smpr(&value).map_err(|e| ConfigError::Invalid {
                    item: name.clone(),
                    level,
                    reason: e.to_string(),
                })?;
                channel_anywhere |= policy.requires_channel();
            }
        }
        let log = match config.item(LOG_ITEM).map(|(v, _)| v) {
            None => LogTarget::Stderr,
            Some(v) if v.trim().is_empty() || v.trim() == "stderr" => LogTarget::Stderr,
            Some(v) => LogTarget::File(PathBuf::from(v.trim())),
        };
        Ok(SecureSettings {
            max_messages: number(&config, MAX_MESSAGES_ITEM, 1 << 24)?,
            max_bytes: number(&config, MAX_BYTES_ITEM, 1 << 34)?,
            max_age: Duration::from_secs(number(&config, MAX_SECONDS_ITEM, 3600)?),
            idle: match config.item(IDLE_SECONDS_ITEM) {
                Some((value, _)) if value.trim() == "0" => None,
                Some(_) => Some(Duration::from_secs(number(&config, IDLE_SECONDS_ITEM, 0)?)),
                None => None,
            },
            log,
            known: KnownDevices::from_config(&config),
            channel_anywhere,
            entries: config
                .servers()
                .map(|servers| servers.iter().map(|s| s.entry()).collect())
                .unwrap_or_default(),
            serials: std::sync::Mutex::new(Serials::default()),
            config,
            verified: std::sync::Mutex::new(None),
            classical: false,
        })
    }

    /// These settings with handshakes that offer no ML-KEM: the classical X25519 channel, as a
    /// library of the classical protocol makes it. Not a configuration item: the hybrid channel
    /// is what every application gets; this is for measuring the difference and for testing
    /// what a device does with an older library.
    pub fn classical(mut self) -> SecureSettings {
        self.classical = true;
        self
    }

    /// Whether `chain` is trusted for `serial` given `anchors` (the trust store as read for
    /// this handshake). The same chain against the same anchors within a minute is not verified
    /// again: new connections to a device spare a signature verification and the parsing.
    /// Any change of the trust store or of the chain verifies afresh.
    pub(crate) fn check_chain(
        &self,
        chain: &[Vec<u8>],
        anchors: &[Vec<u8>],
        serial: &str,
        now: i64,
    ) -> Result<(), tessera_identity::Refusal> {
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = verified.as_ref() {
            let fresh = now >= v.at && now - v.at < VERIFIED_SECONDS;
            if fresh && v.serial == serial && v.chain == chain && v.anchors == anchors {
                return Ok(());
            }
        }
        tessera_identity::verify_chain(chain, anchors, serial, now)?;
        *verified = Some(Verified {
            serial: serial.into(),
            chain: chain.to_vec(),
            anchors: anchors.to_vec(),
            at: now,
        });
        Ok(())
    }

    /// Settings for an administration tool: the reports the library would write to standard
    /// error are left out (the tool prints the reason of its failure in its one line, from
    /// [`crate::Device::take_refusal`] or the error); a log file still gets them.
    pub fn for_tool(mut self) -> SecureSettings {
        if self.log == LogTarget::Stderr {
            self.log = LogTarget::Quiet;
        }
        self
    }

    /// The client's policy for the device with `serial` (SMPR).
    pub fn smpr(&self, serial: &str) -> Policy {
        self.config
            .item(&format!("ET_PTKC_{serial}_SMPR"))
            .and_then(|(value, _)| Policy::from_smpr(&value).ok())
            // Unset: no requirement. A bad value cannot reach here: `from_config` refused it.
            .unwrap_or_default()
    }

    /// Writes the configuration's mistakes to the log, one line each: item names that no part
    /// of Tessera reads (`ET_PTKC_<serial>_SMRP`), that are no item name (`ET_PTKC_SMPR`), or
    /// that belong to a mode Tessera does not have. The library does it when it is initialised.
    pub fn report_configuration(&self) {
        for problem in self.config.problems() {
            self.log(&problem.to_string());
        }
    }

    /// Records the serial that the device at `entry` gave (in the clear: this only checks the
    /// configuration, it decides nothing). Once every entry of the server list has given one,
    /// an SMPR item whose serial none of them has is written to the log, once: it protects no
    /// device, and the device it was meant for runs without it.
    pub fn saw_serial(&self, entry: &str, serial: &str) {
        let unmatched = {
            let mut serials = self.serials.lock().unwrap_or_else(|e| e.into_inner());
            if serials.checked {
                return;
            }
            serials
                .by_entry
                .insert(entry.to_string(), serial.to_string());
            let all: Option<Vec<String>> = self
                .entries
                .iter()
                .map(|e| serials.by_entry.get(e).cloned())
                .collect();
            let Some(all) = all else {
                return;
            };
            serials.checked = true;
            self.config.unmatched_smpr(&all)
        };
        for problem in unmatched {
            self.log(&problem.to_string());
        }
    }

    /// The configuration these settings were read from.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// Writes one report line.
    pub fn log(&self, line: &str) {
        // Serials and certificate names come from the peer: no control character of theirs
        // may forge or hide a line of the log.
        let line: String = line
            .chars()
            .flat_map(|c| {
                let escaped: Vec<char> = if c.is_control() {
                    c.escape_default().collect()
                } else {
                    vec![c]
                };
                escaped
            })
            .collect();
        let line = format!("tessera-pkcs11: {line}\n");
        match &self.log {
            LogTarget::Stderr => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
            LogTarget::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path);
                if let Ok(mut file) = file {
                    let _ = file.write_all(line.as_bytes());
                }
            }
            LogTarget::Quiet => {}
        }
    }
}

/// A threshold a little below the limit, so that channels do not all renew at once.
fn jitter(limit: u64) -> u64 {
    use aws_lc_rs::rand::SecureRandom;
    let mut byte = [0u8; 8];
    let _ = aws_lc_rs::rand::SystemRandom::new().fill(&mut byte);
    let spread = limit / 10;
    (limit - u64::from_le_bytes(byte) % (spread + 1)).max(1)
}

pub(crate) struct ChannelState {
    channel: Channel,
    since: Instant,
    last_used: Instant,
    rekey_messages: u64,
    rekey_bytes: u64,
    /// The device ended the channel, in a record of the channel (see [`Opened::Ended`]).
    ended: bool,
    /// The handshake's key confirmation, sent and not answered yet ([`Device::confirm`]).
    confirming: Option<Confirming>,
}

/// A handshake's key confirmation on its way: it goes out with the channel's first request, in
/// the same write, and its answer is read before that request's, sparing a round trip per
/// channel (as a TLS 1.3 client sends data behind its Finished). The request is safe to send
/// first: it is sealed under keys that only the device whose signature and chain were just
/// checked can derive. What the handshake learnt (the serial proven, the device's own
/// requirement, the known-devices record) takes effect only once the device confirms.
pub(crate) struct Confirming {
    /// The confirmation's request id.
    id: u64,
    /// The serial that the chain proved.
    serial: String,
    /// The device's policy, in the signed transcript, requires a channel.
    requires_channel: bool,
    /// The entry to record in the user's known devices, when it changes.
    record: Option<KnownDevice>,
}

impl ChannelState {
    fn new(channel: Channel, settings: &SecureSettings) -> ChannelState {
        ChannelState {
            channel,
            since: Instant::now(),
            last_used: Instant::now(),
            rekey_messages: jitter(settings.max_messages),
            rekey_bytes: jitter(settings.max_bytes),
            ended: false,
            confirming: None,
        }
    }

    fn due(&self, settings: &SecureSettings) -> bool {
        let (messages, bytes) = self.channel.usage();
        // The rekey request and its reply count too.
        messages + 2 >= self.rekey_messages
            || bytes >= self.rekey_bytes
            || self.since.elapsed() >= settings.max_age
    }

    pub(crate) fn close(&mut self) {
        self.channel.close();
    }

    /// Whether the channel must be looked after before the next call (closed when idle too
    /// long, renewed before its limits, its key confirmation read), which needs the connection
    /// to itself.
    pub(crate) fn needs_care(&self, settings: &SecureSettings) -> bool {
        self.confirming.is_some() || self.idle(settings) || self.due(settings)
    }

    /// Unused for longer than `ET_PTKC_SMS_IDLE_SECONDS` allows.
    fn idle(&self, settings: &SecureSettings) -> bool {
        settings
            .idle
            .is_some_and(|limit| self.last_used.elapsed() >= limit)
    }

    /// Protects request `id`: its frame, the request sealed straight into it; a call's bulk
    /// input is moved out of `request` and sealed where it lies, written behind the frame's
    /// start.
    pub(crate) fn seal(&mut self, id: u64, request: &mut Inner) -> Result<Frame, ClientError> {
        let secret = request.carries_secret();
        let protection = self.channel.policy().request_protection(secret);
        // Encrypted in the frame when the policy says so: no plaintext copy is left behind.
        let (frame, rest) = tessera_wire::seal_message(&mut self.channel, id, request, protection)
            .map_err(|_| ClientError::StaleSession)?;
        self.last_used = Instant::now();
        let held = Held::secret_if(secret && protection == tessera_channel::Protection::Signed);
        Ok(Frame::sealed(frame, rest, held))
    }

    /// Opens the device's answer to a protected request: only a record of this channel that
    /// opens is an answer (rule 1 of docs/secure-messaging.md, "Threats"). `Err` says what the
    /// call gets; the channel is dead then, and the connection must go too unless the device
    /// ended the channel itself, in its last record ([`Opened::Ended`] is not an error).
    pub(crate) fn open_reply(
        &mut self,
        id: u64,
        answer: Answer,
        device: &Device,
        serial: &str,
    ) -> Result<Opened, ClientError> {
        if self.ended {
            // The device ended this channel in an authenticated record: nothing that arrives
            // for it later (in the clear, necessarily) is believed; the call is simply gone.
            answer.discard();
            return Err(ClientError::StaleSession);
        }
        let sealed = match answer.into_sealed() {
            Ok(sealed) => sealed,
            Err(what) => {
                self.channel.close();
                device.report(
                    serial,
                    &format!("a protected call was answered with {what}, outside the channel: refused as forged, channel closed"),
                );
                return Err(ClientError::Returned(Rv::BadReplySignature.code()));
            }
        };
        // The opened message: a buffer and where the message lies in it.
        let opened = match sealed {
            SealedReply::Framed(sealed, mut frame) => {
                let Some((body, mac)) = sealed.parts(&mut frame) else {
                    self.channel.close();
                    return Err(ClientError::Returned(Rv::BadReply.code()));
                };
                let opened = self.channel.open_in_place(sealed.header, body, mac);
                opened.map(|(len, protection)| {
                    (
                        frame,
                        sealed.body.start..sealed.body.start + len,
                        protection,
                    )
                })
            }
            SealedReply::Decoded(record) => {
                let tessera_channel::Record {
                    header,
                    mut body,
                    mac,
                } = record;
                let opened = self.channel.open_in_place(header, &mut body, &mac);
                opened.map(|(len, protection)| (body, 0..len, protection))
            }
        };
        let (buffer, plain, protection) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                self.channel.close();
                device.report(serial, &format!("reply refused, channel closed: {e}"));
                return Err(ClientError::Returned(Rv::BadReplySignature.code()));
            }
        };
        // A bulk output that starts its buffer becomes the reply's bytes as it is; what the
        // buffer holds of a message with a secret (or of one that did not decode) is wiped.
        let (decoded, spent) =
            tessera_wire::open_message::<tessera_wire::Bound<tessera_wire::Outcome>>(buffer, plain);
        if let Some(spent) = spent {
            tessera_core::bytes::give(spent, Held::Data);
        }
        let secret = matches!(
            &decoded,
            Ok(bound) if tessera_wire::Bulky::carries_secret(bound)
        );
        let Ok(bound) = decoded else {
            self.channel.close();
            device.report(serial, "a reply record did not decode; channel closed");
            return Err(ClientError::Returned(Rv::BadReply.code()));
        };
        if bound.id != id {
            // The record is this channel's, but another call's: a relay swapped envelope ids.
            self.channel.close();
            device.report(
                serial,
                &format!(
                    "the reply sealed for request {} arrived as the reply to request {id}: refused as forged, channel closed",
                    bound.id
                ),
            );
            return Err(ClientError::Returned(Rv::BadReplySignature.code()));
        }
        let required = self.channel.policy().reply_protection(secret);
        if let Err(e) = self.channel.require(protection, required) {
            self.channel.close();
            device.report(serial, &format!("reply refused: {e}"));
            return Err(ClientError::Returned(Rv::BadProtection.code()));
        }
        let code = match bound.message {
            tessera_wire::Outcome::Answer(result) => return Ok(Opened::Answer(result)),
            tessera_wire::Outcome::Ended(code) => code,
        };
        if code == 0 {
            self.channel.close();
            device.report(
                serial,
                "the device ended the channel with code 0; channel closed",
            );
            return Err(ClientError::Returned(Rv::BadReply.code()));
        }
        self.ended = true;
        self.channel.close();
        let reason =
            Rv::from_code(code).map_or(format!("0x{code:08X}"), |rv| rv.name().to_string());
        device.report(
            serial,
            &format!("the device ended the secure channel: {reason}"),
        );
        Ok(Opened::Ended(code))
    }
}

/// An opened reply record.
pub(crate) enum Opened {
    /// The call's outcome.
    Answer(Result<Reply, u64>),
    /// The device ended the channel without running the call, for this reason (`CK_RV`).
    Ended(u64),
}

impl Device {
    fn settings(&self) -> Result<&SecureSettings, ClientError> {
        self.secure
            .as_deref()
            .ok_or(ClientError::Returned(Rv::SmsError.code()))
    }

    /// The serial number the device claims in the clear: a hint that names the device in a
    /// handshake (which then proves it) or checks a provisioned record, and never decides
    /// protection by itself.
    fn claimed_serial(&self, state: &mut State) -> Result<String, ClientError> {
        if let Some(serial) = &state.serial {
            return Ok(serial.clone());
        }
        match self.exchange_call(state, Call::DeviceInfo)? {
            Reply::Device(info) => {
                state.serial = Some(info.serial.clone());
                state.claimed_required = info.channel_required;
                Ok(info.serial)
            }
            _ => Err(ClientError::BadReply {
                address: self.address.to_string(),
                reason: "no device info".into(),
            }),
        }
    }

    /// How an operator accepts a legitimate change of the device recorded at this entry.
    fn accept_hint(&self, settings: &SecureSettings, level: KnownLevel) -> String {
        let system = if level == KnownLevel::System {
            " --system"
        } else {
            ""
        };
        format!(
            "if the change is legitimate, run `ctident known-devices forget {}{system}` ({}){}",
            self.address.entry(),
            settings.known.shown(level),
            " and trust the new identity (`ctident trust add`) if it is not trusted yet"
        )
    }

    /// What the known-devices files say of this entry; an unreadable file refuses the call.
    fn known(
        &self,
        settings: &SecureSettings,
    ) -> Result<Option<(KnownDevice, KnownLevel)>, ClientError> {
        settings.known.lookup(&self.address.entry()).map_err(|e| {
            self.refuse("unknown", &format!("known devices: {e}"));
            ClientError::Returned(Rv::GeneralError.code())
        })
    }

    /// Whether the next session call must go through a channel. Nothing here trusts the
    /// device's clear answers to lower protection: a recorded entry always uses a channel to
    /// the recorded device; with an SMPR anywhere, an unrecorded entry is authenticated before
    /// any session call (a relay could rename the device to dodge its SMPR); only a client
    /// that requires nothing of anyone talks to an unrecorded entry in the clear.
    pub(crate) fn wants_channel(&self, state: &mut State) -> Result<bool, ClientError> {
        let Some(settings) = self.secure.as_deref() else {
            return Ok(false);
        };
        if state.requires_channel || state.channel.is_some() {
            return Ok(true);
        }
        if state.clear_ok {
            return Ok(false);
        }
        let found = self.known(settings)?;
        state.known_read = Some(found.clone());
        let clear = match found {
            Some((record, level)) if record.allows_clear() => {
                let claimed = self.claimed_serial(state)?;
                if claimed != record.serial {
                    let message = format!(
                        "entry {} is recorded as {}, but the device there now says serial {claimed}; {}",
                        self.address.entry(),
                        record.describe(),
                        self.accept_hint(settings, level)
                    );
                    self.refuse(&claimed, &message);
                    return Err(ClientError::Returned(Rv::DeviceError.code()));
                }
                !settings.smpr(&record.serial).requires_channel() && !state.claimed_required
            }
            Some(_) => false,
            None if settings.channel_anywhere => false,
            // Nothing of this client asks for a channel: the device's own word that its flags
            // require one is heard (it may only make this client stricter). Without it, the
            // first session call would go in the clear only to be refused, and a legitimate
            // client would leave a `policy-refusal` in the device's event log.
            None => {
                self.claimed_serial(state)?;
                !state.claimed_required
            }
        };
        state.clear_ok = clear;
        Ok(!clear)
    }

    pub(crate) fn kill(&self, state: &mut State, drop_connection: bool) {
        if let Some(channel) = state.channel_mut() {
            channel.close();
        }
        state.channel = None;
        if drop_connection {
            self.drop_stream(state);
        }
    }

    /// Forgets the connection; when the device closed it with its notice that its flags now
    /// require a channel, every later session call goes through one.
    pub(crate) fn drop_stream(&self, state: &mut State) {
        if let Some(stream) = state.stream.take() {
            if stream.noticed() {
                self.report(
                    state.serial.as_deref().unwrap_or("unknown"),
                    "the device closed the clear connection: its flags now require a secure channel; PINs and key values go through one from now on",
                );
                state.requires_channel = true;
                state.clear_ok = false;
            }
        }
    }

    /// Opens a channel on the current connection, to the device recorded for this entry or,
    /// for an entry never authenticated, to the device whose serial the clear phase named; the
    /// chain proves the serial either way. The first channel to an entry records it.
    pub(crate) fn handshake(&self, state: &mut State) -> Result<(), ClientError> {
        let settings = self.settings()?;
        let found = match state.known_read.take() {
            Some(found) => found,
            None => self.known(settings)?,
        };
        let known = found.as_ref().map(|(record, _)| record);
        let serial = match known {
            Some(record) if !record.allows_clear() => record.serial.clone(),
            _ => self.claimed_serial(state)?,
        };
        let entry = self.address.entry();
        let recorded = |now: &str| {
            found.as_ref().map_or(String::new(), |(record, level)| {
                format!(
                    "; entry {entry} is recorded as {}, {now}. A recorded entry is only talked to through a channel to that device; {}",
                    record.describe(),
                    self.accept_hint(settings, *level)
                )
            })
        };
        let hybrid = !settings.classical;
        let (expect, hello) =
            ExpectServerHello::start_with(&serial, settings.smpr(&serial), hybrid)
                .map_err(|_| ClientError::Returned(Rv::CannotDeriveKeys.code()))?;
        // The trust store is read while the device answers (it signs meanwhile): the same
        // files, read as fresh, the wait spent on them instead of after it.
        let read_anchors = || tessera_identity::trust::anchors(&settings.config);
        let (anchors, answer) =
            match self.exchange_meanwhile(state, Message::Handshake(hello), read_anchors) {
                Ok((anchors, Response::ServerHello(answer))) => (anchors, answer),
                Ok(_) => {
                    self.report(
                        &serial,
                        &format!(
                            "the device answered the handshake with something else{}",
                            recorded("and the device there offers no secure channel now")
                        ),
                    );
                    return Err(ClientError::Returned(Rv::BadReply.code()));
                }
                Err(ClientError::Returned(code)) => {
                    let reason = self.hello_refused(code);
                    self.refuse(
                        &serial,
                        &format!(
                            "the device refused a secure channel: {reason}{}",
                            recorded("and the device there offers no secure channel now")
                        ),
                    );
                    return Err(ClientError::Returned(code));
                }
                Err(e) => return Err(e),
            };
        let anchors = anchors.unwrap_or_else(|e| {
            self.report(&serial, &format!("cannot read the trust store: {e}"));
            Vec::new()
        });
        let now = tessera_core::time::now() as i64;
        let identity = answer
            .chain
            .first()
            .map(|pic| crate::known::identity_of(pic));
        let verify_chain = |chain: &[Vec<u8>]| {
            if known.is_none()
                && settings.channel_anywhere
                && !settings.smpr(&serial).requires_channel()
            {
                // The clear phase named a device this client has no policy for, while it has
                // policies for others: a relay may have sent this entry's connection to another
                // device it also trusts (which would then get this entry's PINs).
                return Err(ChainRefusal::Records(format!(
                    "entry {entry} is not recorded, and the device there is serial {serial}, which no SMPR of this client names while others are named: it may not be the device this entry was meant for. If it is, record it: `ctident known-devices add {entry} --serial {serial} --identity sha256:{}`, or set ET_PTKC_{serial}_SMPR",
                    identity.as_deref().unwrap_or("none")
                )));
            }
            if let Some(record) = known.filter(|r| !r.allows_clear()) {
                if record.identity != identity {
                    let shown = chain
                        .first()
                        .and_then(|pic| tessera_identity::inspect::CertificateInfo::parse(pic).ok())
                        .and_then(|info| info.serial_number)
                        .unwrap_or_else(|| "unknown".into());
                    let seen = format!(
                        "the device there now presents serial {shown}, identity sha256:{}",
                        identity.as_deref().unwrap_or("none")
                    );
                    return Err(ChainRefusal::Records(format!(
                        "another device or identity{}",
                        recorded(&seen)
                    )));
                }
            }
            settings
                .check_chain(chain, &anchors, &serial, now)
                .map_err(ChainRefusal::Distrusted)
        };
        let verified = expect.handle(
            &answer,
            verify_chain,
            tessera_identity::verify::verify_with_certificate,
        );
        let (channel, finished) = match verified {
            Ok(done) => done,
            Err(StepError::Caller(refusal)) => {
                let line = match refusal {
                    ChainRefusal::Distrusted(refusal) => {
                        self.untrusted(settings, &answer.chain, &refusal)
                    }
                    ChainRefusal::Records(reason) => {
                        format!("secure channel refused (CKR_CERT_NOT_VALIDATED): {reason}")
                    }
                };
                self.refuse(&serial, &line);
                return Err(ClientError::Returned(Rv::CertNotValidated.code()));
            }
            Err(StepError::Handshake(HandshakeError::NoCertificate)) => {
                self.refuse(
                    &serial,
                    "secure channel refused (CKR_CERT_NOT_VALIDATED): the device presented no certificate",
                );
                return Err(ClientError::Returned(Rv::CertNotValidated.code()));
            }
            Err(StepError::Handshake(e)) => {
                self.refuse(&serial, &format!("secure channel refused: {e}"));
                self.kill(state, true);
                return Err(ClientError::Returned(Rv::CannotDeriveKeys.code()));
            }
        };
        // The key confirmation goes out with the channel's first request ([`Confirming`]).
        let id = state.next_id();
        let Some(stream) = state.stream.as_ref() else {
            return Err(ClientError::StaleSession);
        };
        stream.queue(crate::stream::Stream::clear_frame(
            id,
            Message::HandshakeFinish(finished),
        ));
        let requires_channel = answer.policy.requires_channel();
        let channel_use = match requires_channel {
            true => ChannelUse::Required,
            false => ChannelUse::Used,
        };
        let stale = known.is_none_or(|record| {
            record.allows_clear()
                || (record.channel == ChannelUse::Used && channel_use == ChannelUse::Required)
        });
        let record = identity.filter(|_| stale).map(|identity| KnownDevice {
            entry,
            serial: serial.clone(),
            identity: Some(identity),
            channel: channel_use,
        });
        let mut current = ChannelState::new(channel, settings);
        current.confirming = Some(Confirming {
            id,
            serial,
            requires_channel,
            record,
        });
        state.channel = Some(std::sync::Mutex::new(current));
        state.generations += 1;
        state.generation = state.generations;
        Ok(())
    }

    /// Reads the device's answer to the handshake's key confirmation, if it is still due
    /// (sending it first with whatever is queued behind it); then what the handshake learnt
    /// takes effect. A refusal ends the channel and its connection.
    pub(crate) fn confirm(&self, state: &mut State) -> Result<(), ClientError> {
        let Some(confirming) = state.channel_mut().and_then(|c| c.confirming.take()) else {
            return Ok(());
        };
        let Some(stream) = state.stream.as_ref() else {
            self.kill(state, true);
            return Err(ClientError::StaleSession);
        };
        let answer = match stream
            .flush()
            .and_then(|()| stream.receive_for(confirming.id))
        {
            Ok(answer) => answer.into_clear(),
            Err(failure) => {
                self.kill(state, true);
                return Err(self.failure(failure));
            }
        };
        let serial = confirming.serial;
        match answer {
            Ok(Response::Reply(Reply::Done)) => {}
            Ok(_) => {
                self.kill(state, true);
                return Err(ClientError::Returned(Rv::BadReply.code()));
            }
            Err(code) => {
                self.report(&serial, "the device refused the key confirmation (the handshake was altered in transit)");
                self.kill(state, true);
                return Err(ClientError::Returned(code));
            }
        }
        // The serial is proven now (the chain names it), and so is the device's own
        // requirement (its policy is in the signed transcript).
        if confirming.requires_channel {
            state.requires_channel = true;
        }
        if let (Some(record), Ok(settings)) = (confirming.record, self.settings()) {
            if let Err(e) = settings.known.record(crate::known::Level::User, &record) {
                self.report(&serial, &format!("cannot record the known device: {e}"));
            }
        }
        state.serial = Some(serial);
        state.serial_proven = true;
        Ok(())
    }

    /// Sends one call through the channel and opens the answer (nothing else in flight).
    fn protected_exchange(
        &self,
        state: &mut State,
        request: &mut Inner,
    ) -> Result<Result<Reply, u64>, ClientError> {
        let id = state.next_id();
        let Some(current) = state.channel_mut() else {
            return Err(ClientError::StaleSession);
        };
        let confirming = current.confirming.is_some();
        let frame = match (current.seal(id, request), state.stream.is_some()) {
            (Ok(frame), true) => frame,
            (sealed, _) => {
                // A key confirmation left queued would go out with another call: the new
                // channel goes, with its connection.
                if confirming {
                    self.kill(state, true);
                }
                return Err(sealed.err().unwrap_or(ClientError::StaleSession));
            }
        };
        let Some(stream) = state.stream.as_ref() else {
            return Err(ClientError::StaleSession);
        };
        let answer = if confirming {
            // Written with the key confirmation, whose answer comes first.
            stream.queue(frame);
            self.confirm(state)?;
            let Some(stream) = state.stream.as_ref() else {
                return Err(ClientError::StaleSession);
            };
            stream.receive_for(id)
        } else {
            stream.exchange(id, frame)
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(failure) => {
                self.kill(state, true);
                return Err(self.failure_in_channel(true, failure));
            }
        };
        // For the log lines only.
        let serial = state.serial.clone().unwrap_or_default();
        let Some(current) = state.channel_mut() else {
            return Err(ClientError::StaleSession);
        };
        match current.open_reply(id, answer, self, &serial) {
            Ok(Opened::Answer(result)) => Ok(result),
            // The device ended the channel (the connection stays): the call gets the reason.
            Ok(Opened::Ended(code)) => {
                self.kill(state, false);
                Err(ClientError::Returned(code))
            }
            Err(error) => {
                self.kill(state, true);
                Err(error)
            }
        }
    }

    /// A call that needs a channel: made on demand, renewed before its key limits.
    pub(crate) fn call_protected(
        &self,
        state: &mut State,
        session_generation: Option<u64>,
        request: Call,
    ) -> Result<(Reply, u64), ClientError> {
        let settings = self.settings()?;
        // An idle channel is closed (with its connection, so the device forgets it too); its
        // sessions are gone and the next C_OpenSession makes a new one.
        if state.channel_mut().is_some_and(|c| c.idle(settings)) {
            self.kill(state, true);
        }
        self.connected(state)?;
        if state.channel.is_none() {
            if session_generation.is_some() {
                return Err(ClientError::StaleSession);
            }
            self.handshake(state)?;
        }
        if session_generation.is_some_and(|g| g != state.generation) {
            return Err(ClientError::StaleSession);
        }
        if state.channel_mut().is_some_and(|c| c.due(settings)) {
            match self.protected_exchange(state, &mut Inner::Rekey) {
                Ok(Ok(Reply::Done)) => {
                    if let Some(current) = state.channel_mut() {
                        let renewed = current.channel.rekey();
                        current.since = Instant::now();
                        current.rekey_messages = jitter(settings.max_messages);
                        current.rekey_bytes = jitter(settings.max_bytes);
                        renewed.map_err(|_| ClientError::Returned(Rv::KeyRollover.code()))?;
                    }
                }
                _ => {
                    // For the log line only.
                    let serial = state.serial.clone().unwrap_or_default();
                    self.report(&serial, "key rollover failed; the channel is closed");
                    self.kill(state, true);
                    return Err(ClientError::Returned(Rv::KeyRollover.code()));
                }
            }
        }
        if let Some(current) = state.channel_mut() {
            current.last_used = Instant::now();
        }
        match self.protected_exchange(state, &mut Inner::Call(request))? {
            Ok(reply) => Ok((reply, state.generation)),
            Err(code) => Err(ClientError::Returned(code)),
        }
    }
}
