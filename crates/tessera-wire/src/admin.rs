//! Device administration calls (`ctconf`): status, first-time set-up, and the changes that
//! need the Administrator (a session on the Admin slot, logged in with the Administrator PIN).

use serde::{Deserialize, Serialize};
use tessera_core::info::DeviceInfo;
use tessera_core::SecretBytes;

/// A change to the device; every one needs the Administrator.
#[derive(Debug, Serialize, Deserialize)]
pub enum AdminCommand {
    /// Replace the security flags.
    SetFlags(u64),
    /// Initialise the token in a user slot (label and SO PIN), erasing what it held.
    InitToken {
        /// Slot.
        slot: u64,
        /// Label (up to 32 bytes).
        label: Vec<u8>,
        /// New SO PIN.
        so_pin: SecretBytes,
    },
    /// Add user slots.
    AddSlots(u64),
    /// Delete a user slot and its token.
    DeleteSlot(u64),
    /// Read the event log.
    Events,
    /// Empty the event log (one entry records the purge).
    PurgeEvents,
    /// Set the device clock (seconds since the Unix epoch).
    SetClock(u64),
    /// Set the transport mode (0, 1, 2).
    SetTransportMode(u8),
    /// Software tamper: erase tokens, PINs and flags.
    Tamper,
    /// Generate identity keys and certificates.
    GenerateIdentity {
        /// What to generate.
        target: IdentityTarget,
        /// `P-256`, `P-384` or `P-521`.
        curve: String,
        /// Replace what exists (the operator confirmed).
        replace: bool,
    },
    /// Make a new PIK (or reuse a pending one) and return its certificate signing request; the
    /// PIK stays pending until a signed PIC is imported.
    PikRequest {
        /// Curve of a new PIK.
        curve: String,
        /// Replace a working identity.
        replace: bool,
    },
    /// Sign another device's identity request with this device's POK; returns the PIC.
    SignRequest(Vec<u8>),
    /// Import the PIC signed for this device's pending PIK, with its issuer chain.
    ImportPic {
        /// The PIC (DER).
        pic: Vec<u8>,
        /// The issuer chain (DER), usually the POC.
        chain: Vec<Vec<u8>>,
    },
    /// Trust another device's PIC or POC (HSM-to-HSM trust).
    AddPeer(Vec<u8>),
    /// Stop trusting the peer certificate whose fingerprint starts with this hex prefix.
    RemovePeer(String),
    /// The trusted peers.
    Peers,
    /// The secure-messaging channels.
    Channels,
    /// Terminate one channel, or all of them.
    TerminateChannels(Option<u64>),
    /// Remove a member from the cluster this device is a node of, by its serial: the cluster
    /// key is rotated without it, and it is never admitted again.
    RemoveMember(String),
}

/// One secure-messaging channel, as the Administrator sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelSummary {
    /// Channel id.
    pub id: u64,
    /// The peer: a network address, or `pid=PID(PROGRAM)` for a local-socket application.
    pub peer: String,
    /// Seconds since it opened.
    pub age: u64,
    /// Messages carried.
    pub messages: u64,
    /// Key generation (rollovers).
    pub generation: u32,
    /// Effective policy letters (SMPR style).
    pub policy: String,
}

/// What `GenerateIdentity` makes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum IdentityTarget {
    /// A self-signed POC and a PIC signed by it.
    All,
    /// A self-signed PIC only.
    Pic,
    /// An owner key and self-signed POC only (pending until it signs a PIK).
    Poc,
}

/// The state of an identity or owner key.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum KeyState {
    /// No key.
    Absent,
    /// A key whose certificate is not complete: a PIK waiting for its signed PIC, or a POC
    /// that has not signed any PIK yet.
    Pending,
    /// In use.
    Ready,
}

/// A device's identity: public parts only (the keys never leave the device).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    /// The device serial number.
    pub serial: String,
    /// The identity key's state.
    pub pik: KeyState,
    /// Its curve.
    pub pik_curve: Option<String>,
    /// The identity certificate (DER).
    pub pic: Option<Vec<u8>>,
    /// The PIC's issuer chain (DER), empty for a self-signed PIC.
    pub chain: Vec<Vec<u8>>,
    /// The owner key's state.
    pub pok: KeyState,
    /// Its curve.
    pub pok_curve: Option<String>,
    /// The owner certificate (DER).
    pub poc: Option<Vec<u8>>,
}

/// One user slot in the status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SlotStatus {
    /// Slot number.
    pub slot: u64,
    /// Token label (empty if not initialised).
    pub label: String,
    /// The token has an SO PIN.
    pub initialized: bool,
    /// The token has a user PIN.
    pub user_pin: bool,
    /// Open sessions.
    pub sessions: u64,
    /// Token objects.
    pub objects: u64,
}

/// What `ctconf -a` shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceStatus {
    /// Fixed facts.
    pub info: DeviceInfo,
    /// Device clock, seconds since the Unix epoch.
    pub clock: u64,
    /// Security flags.
    pub flags: u64,
    /// Transport mode (0 none, 1 single shot, 2 continuous).
    pub transport_mode: u8,
    /// Sessions open on the device.
    pub sessions: u64,
    /// The Admin token has been set up (ASO and Administrator PINs).
    pub admin_ready: bool,
    /// The device has an identity key and certificate.
    pub identity: bool,
    /// The SHA-256 fingerprint of the PIC.
    pub identity_fingerprint: Option<String>,
    /// Entries in the event log.
    pub events: u64,
    /// User slots.
    pub slots: Vec<SlotStatus>,
    /// Requests the device has served since it started (every round trip that reached it).
    pub requests: u64,
    /// The cluster this device is a node of, if any.
    pub cluster: Option<Box<ClusterStatus>>,
}

/// A cluster and its members, as one node sees them (`ctconf -a<n>`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The cluster's name.
    pub name: String,
    /// Why the members could not be read (etcd unavailable), if they could not.
    pub unavailable: Option<String>,
    /// The members.
    pub members: Vec<MemberStatus>,
}

/// One member of a cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberStatus {
    /// Its device serial.
    pub serial: String,
    /// Since when it serves (its last start; seconds since the Unix epoch).
    pub since: u64,
    /// When it last reported (seconds since the Unix epoch, its clock).
    pub last_seen: u64,
    /// The newest change it had applied then.
    pub applied: i64,
    /// The epoch of the cluster key it held then.
    pub epoch: u32,
}

/// One event log entry as shown.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    /// Sequence number.
    pub sequence: u64,
    /// Seconds since the Unix epoch.
    pub time: u64,
    /// Who acted.
    pub role: String,
    /// What happened.
    pub kind: String,
    /// Details.
    pub detail: String,
}

/// What a token's Security Officer asks of [`crate::Call::Keep`]: the token's keys kept safe
/// over time (`ctkmu`): a backup to a file, its restore, and replication to a peer device.
#[derive(Debug, Serialize, Deserialize)]
pub enum KeepCommand {
    /// Write every object of the token that may be backed up into one sealed file, under a
    /// fresh backup key that `lock` protects; answered with [`crate::Reply::Backup`].
    Backup {
        /// What protects the backup key.
        lock: BackupLock,
    },
    /// Restore a backup file into this token, all or nothing; answered with the number of
    /// objects restored.
    Restore {
        /// The file, as `Backup` wrote it.
        #[serde(with = "tessera_core::bytes")]
        file: Vec<u8>,
        /// What opens its backup key.
        unlock: BackupUnlock,
    },
    /// On the device that receives a replica: a replication request, signed by this device's
    /// identity key, holding a fresh key-agreement key kept for the answer (`Bytes`).
    ReplicaRequest,
    /// On the device that sends: the token's objects sealed for the device that made
    /// `request`, if this device trusts it as a peer (`Bytes`: the replica).
    Replicate {
        /// The receiving device's request.
        #[serde(with = "tessera_core::bytes")]
        request: Vec<u8>,
    },
    /// On the device that receives: take the replica into this token, all or nothing, if its
    /// sender is a trusted peer and it answers this device's pending request (`Number`).
    AcceptReplica {
        /// The replica.
        #[serde(with = "tessera_core::bytes")]
        replica: Vec<u8>,
    },
}

/// What protects a backup's key.
#[derive(Debug, Serialize, Deserialize)]
pub enum BackupLock {
    /// One custodian's passphrase (PBKDF2-HMAC-SHA256, see docs/backup.md).
    Passphrase(SecretBytes),
    /// Split into `count` shares, any `threshold` of which restore it.
    Shares {
        /// Shares needed (2 or more).
        threshold: u8,
        /// Shares made (at least `threshold`, at most 16).
        count: u8,
    },
}

/// What opens a backup's key.
#[derive(Debug, Serialize, Deserialize)]
pub enum BackupUnlock {
    /// The custodian's passphrase.
    Passphrase(SecretBytes),
    /// Shares as printed ([`crate::share`]), one per custodian.
    Shares(Vec<SecretBytes>),
}

/// A backup written.
#[derive(Debug, Serialize, Deserialize)]
pub struct BackupWritten {
    /// The file.
    #[serde(with = "tessera_core::bytes")]
    pub file: Vec<u8>,
    /// The shares, printable ([`crate::share`]); empty for a passphrase.
    pub shares: Vec<SecretBytes>,
    /// Objects in the file.
    pub objects: u64,
    /// The objects left out because their attributes forbid a backup: label, class and why.
    pub refused: Vec<String>,
}
