//! The calls: one `Request` variant per Cryptoki call that reaches the HSM, and the `Reply`
//! shapes they answer with.
//!
//! Handles are the device's own: slot numbers of this device, session handles it issued,
//! object handles it issued. The PKCS#11 module maps its global slot and session numbers onto
//! them. Secret inputs (PINs, key values inside templates) are `SecretBytes` or zeroizing
//! attributes, so they are wiped once decoded and used.

use serde::{Deserialize, Serialize};
use tessera_core::info::{DeviceInfo, MechanismInfo, SessionInfo, SlotInfo, TokenInfo};
use tessera_core::{Mechanism, SecretBytes, Template};

/// One Cryptoki call.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Device facts (serial, model, versions, slot count). Never needs a session.
    DeviceInfo,
    /// `C_GetSlotInfo`.
    SlotInfo {
        /// Slot.
        slot: u64,
    },
    /// `C_GetTokenInfo`.
    TokenInfo {
        /// Slot.
        slot: u64,
    },
    /// `C_GetMechanismList`.
    MechanismList {
        /// Slot.
        slot: u64,
    },
    /// `C_GetMechanismInfo`.
    MechanismInfo {
        /// Slot.
        slot: u64,
        /// Mechanism type.
        mechanism: u64,
    },
    /// `C_InitToken`.
    InitToken {
        /// Slot.
        slot: u64,
        /// The new SO PIN.
        so_pin: SecretBytes,
        /// 32-byte blank-padded label.
        #[serde(with = "tessera_core::bytes")]
        label: Vec<u8>,
    },
    /// `C_OpenSession`.
    OpenSession {
        /// Slot.
        slot: u64,
        /// `CKF_SERIAL_SESSION` and optionally `CKF_RW_SESSION`.
        flags: u64,
    },
    /// `C_CloseSession`.
    CloseSession {
        /// Session.
        session: u64,
    },
    /// `C_CloseAllSessions` (this connection's sessions on the slot).
    CloseAllSessions {
        /// Slot.
        slot: u64,
    },
    /// `C_GetSessionInfo`.
    SessionInfo {
        /// Session.
        session: u64,
    },
    /// `C_Login`.
    Login {
        /// Session.
        session: u64,
        /// `CKU_SO`, `CKU_USER` or `CKU_CONTEXT_SPECIFIC`.
        user_type: u64,
        /// PIN.
        pin: SecretBytes,
    },
    /// `C_Logout`.
    Logout {
        /// Session.
        session: u64,
    },
    /// `C_InitPIN`.
    InitPin {
        /// Session (SO logged in).
        session: u64,
        /// The new user PIN.
        pin: SecretBytes,
    },
    /// `C_SetPIN`.
    SetPin {
        /// Session.
        session: u64,
        /// Current PIN.
        old_pin: SecretBytes,
        /// New PIN.
        new_pin: SecretBytes,
    },
    /// `C_CreateObject`.
    CreateObject {
        /// Session.
        session: u64,
        /// Template.
        template: Template,
    },
    /// `C_CopyObject`.
    CopyObject {
        /// Session.
        session: u64,
        /// Source object.
        object: u64,
        /// Attributes to change in the copy.
        template: Template,
    },
    /// `C_DestroyObject`.
    DestroyObject {
        /// Session.
        session: u64,
        /// Object.
        object: u64,
    },
    /// `C_GetObjectSize`.
    ObjectSize {
        /// Session.
        session: u64,
        /// Object.
        object: u64,
    },
    /// `C_GetAttributeValue`: the answer per type lets the module apply the buffer rules.
    GetAttributes {
        /// Session.
        session: u64,
        /// Object.
        object: u64,
        /// The types asked for, in order.
        types: Vec<u64>,
    },
    /// `C_SetAttributeValue`.
    SetAttributes {
        /// Session.
        session: u64,
        /// Object.
        object: u64,
        /// New values.
        template: Template,
    },
    /// `C_FindObjectsInit`.
    FindObjectsInit {
        /// Session.
        session: u64,
        /// Match template.
        template: Template,
    },
    /// `C_FindObjects`.
    FindObjects {
        /// Session.
        session: u64,
        /// Maximum handles to return.
        max: u64,
    },
    /// `C_FindObjectsFinal`.
    FindObjectsFinal {
        /// Session.
        session: u64,
    },
    /// `C_EncryptInit`, `C_DecryptInit`, `C_DigestInit`, `C_SignInit`, `C_VerifyInit`.
    OperationInit {
        /// Session.
        session: u64,
        /// Which operation.
        operation: Operation,
        /// Mechanism.
        mechanism: Mechanism,
        /// Key (ignored for digests).
        key: u64,
    },
    /// A single-part call (`C_Encrypt`, `C_Decrypt`, `C_Digest`, `C_Sign`, `C_Verify`): the
    /// operation ends whatever the outcome.
    OperationSingle {
        /// Session.
        session: u64,
        /// Which operation.
        operation: Operation,
        /// Input data.
        #[serde(with = "tessera_core::bytes")]
        data: Vec<u8>,
        /// The signature, for `C_Verify`.
        #[serde(with = "tessera_core::bytes")]
        signature: Vec<u8>,
    },
    /// A multi-part update (`C_EncryptUpdate`, `C_DigestUpdate`, ...).
    OperationUpdate {
        /// Session.
        session: u64,
        /// Which operation.
        operation: Operation,
        /// Input data.
        #[serde(with = "tessera_core::bytes")]
        data: Vec<u8>,
    },
    /// A multi-part final (`C_EncryptFinal`, `C_SignFinal`, `C_VerifyFinal`, ...).
    OperationFinal {
        /// Session.
        session: u64,
        /// Which operation.
        operation: Operation,
        /// The signature, for `C_VerifyFinal`.
        #[serde(with = "tessera_core::bytes")]
        signature: Vec<u8>,
    },
    /// `C_GenerateKey`.
    GenerateKey {
        /// Session.
        session: u64,
        /// Mechanism.
        mechanism: Mechanism,
        /// Template.
        template: Template,
    },
    /// `C_GenerateKeyPair`.
    GenerateKeyPair {
        /// Session.
        session: u64,
        /// Mechanism.
        mechanism: Mechanism,
        /// Public key template.
        public_template: Template,
        /// Private key template.
        private_template: Template,
    },
    /// `C_WrapKey`.
    WrapKey {
        /// Session.
        session: u64,
        /// Mechanism.
        mechanism: Mechanism,
        /// The wrapping key.
        wrapping_key: u64,
        /// The key to wrap.
        key: u64,
    },
    /// `C_UnwrapKey`.
    UnwrapKey {
        /// Session.
        session: u64,
        /// Mechanism.
        mechanism: Mechanism,
        /// The unwrapping key.
        unwrapping_key: u64,
        /// The wrapped key.
        #[serde(with = "tessera_core::bytes")]
        wrapped: Vec<u8>,
        /// Template of the new key.
        template: Template,
    },
    /// `C_DeriveKey`.
    DeriveKey {
        /// Session.
        session: u64,
        /// Mechanism.
        mechanism: Mechanism,
        /// The base key.
        base_key: u64,
        /// Template of the new key.
        template: Template,
    },
    /// `C_DigestKey`: the value of a secret key goes into the active digest.
    DigestKey {
        /// Session.
        session: u64,
        /// The key.
        key: u64,
    },
    /// `C_SessionCancel`: ends the operations named by `flags` (`CKF_ENCRYPT`, ...).
    SessionCancel {
        /// Session.
        session: u64,
        /// Which operations.
        flags: u64,
    },
    /// `C_GenerateRandom`.
    GenerateRandom {
        /// Session.
        session: u64,
        /// Bytes wanted.
        len: u64,
    },
    /// `C_SeedRandom`.
    SeedRandom {
        /// Session.
        session: u64,
        /// Seed.
        seed: SecretBytes,
    },
    /// The device status (`ctconf -a`); no login needed.
    DeviceStatus,
    /// The device's identity certificates (public; no login needed).
    Identity,
    /// Secure messaging: open a channel.
    Handshake(tessera_channel::ClientHello),
    /// Secure messaging: confirm the channel keys.
    HandshakeFinish(tessera_channel::ClientFinished),
    /// Secure messaging: a protected request (its payload is a `Request`).
    Protected(tessera_channel::Record),
    /// Secure messaging, inside a channel: move to the next generation of keys.
    Rekey,
    /// First-time set-up of the Admin token: ASO PIN and Administrator PIN. Refused once done.
    AdminSetup {
        /// The Admin token SO (ASO) PIN.
        aso_pin: SecretBytes,
        /// The Administrator (Admin token user) PIN.
        admin_pin: SecretBytes,
    },
    /// A change by the Administrator, through a session on the Admin slot in which the
    /// Administrator is logged in.
    Admin {
        /// Session on the Admin slot.
        session: u64,
        /// The change.
        command: crate::AdminCommand,
    },
    /// `C_*Init` and the single-part call (`C_Encrypt`, `C_Sign`, `C_Verify`, ...) in one round
    /// trip: the library holds the init until the call. An init that fails ends it there.
    OperationOnce {
        /// Session.
        session: u64,
        /// Which operation.
        operation: Operation,
        /// Mechanism.
        mechanism: Mechanism,
        /// Key handle (ignored for digests).
        key: u64,
        /// Input data.
        #[serde(with = "tessera_core::bytes")]
        data: Vec<u8>,
        /// The signature, for `C_Verify`.
        #[serde(with = "tessera_core::bytes")]
        signature: Vec<u8>,
    },
    /// `C_FindObjectsInit` and the first `C_FindObjects` in one round trip; answered with
    /// [`Reply::Found`]. A search whose results all fit is closed on the device at once.
    FindObjectsFirst {
        /// Session.
        session: u64,
        /// Attributes to match.
        template: Template,
        /// Most handles to return.
        max: u64,
    },
}

/// The cryptographic operation a session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operation {
    /// Encryption.
    Encrypt,
    /// Decryption.
    Decrypt,
    /// Digesting.
    Digest,
    /// Signing.
    Sign,
    /// Verification.
    Verify,
}

/// One attribute in a `C_GetAttributeValue` answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum AttributeAnswer {
    /// The value (wire form).
    Value(#[serde(with = "tessera_core::bytes")] Vec<u8>),
    /// The attribute is sensitive or unextractable (`CKR_ATTRIBUTE_SENSITIVE`).
    Sensitive,
    /// The object has no such attribute (`CKR_ATTRIBUTE_TYPE_INVALID`).
    Invalid,
}

/// A successful answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// Nothing to return.
    Done,
    /// A handle (session or object).
    Handle(u64),
    /// Two handles (public and private key).
    HandlePair(u64, u64),
    /// Object handles.
    Handles(Vec<u64>),
    /// Output bytes (ciphertext, signature, digest, random).
    Bytes(#[serde(with = "tessera_core::bytes")] Vec<u8>),
    /// Secret output bytes (plaintext of a decryption).
    Secret(SecretBytes),
    /// A number (object size).
    Number(u64),
    /// A verification that failed is an error code; this says it passed.
    Verified,
    /// Device facts.
    Device(DeviceInfo),
    /// Slot info.
    Slot(SlotInfo),
    /// Token info.
    Token(TokenInfo),
    /// Session info.
    Session(SessionInfo),
    /// Mechanism list.
    Mechanisms(Vec<u64>),
    /// Mechanism info.
    Mechanism(MechanismInfo),
    /// Attribute values, in the order asked.
    Attributes(Vec<AttributeAnswer>),
    /// Device status.
    Status(crate::DeviceStatus),
    /// The event log and what its chain check found (`None`: intact).
    /// The log, the problem its check found (if any), and what was checked.
    Events(Vec<crate::Event>, Option<String>, Vec<String>),
    /// A device identity.
    Identity(crate::Identity),
    /// Certificates (DER).
    Certificates(Vec<Vec<u8>>),
    /// Secure messaging: the device's handshake answer.
    ServerHello(tessera_channel::ServerHello),
    /// Secure messaging: a protected reply (its payload is a `Result<Reply, u64>`).
    Protected(tessera_channel::Record),
    /// The device's secure-messaging channels.
    Channels(Vec<crate::ChannelSummary>),
    /// The first objects of a search, and whether that was all (the search is then closed).
    Found {
        /// Object handles.
        handles: Vec<u64>,
        /// No more objects: the device closed the search.
        exhausted: bool,
    },
    /// Secure messaging, sealed only: the device ended this channel and did not run the call;
    /// the `CK_RV` says why (`CKR_SESSION_CLOSED`, `CKR_BAD_REQ_SIGNATURE`,
    /// `CKR_BAD_PROTECTION`). It is the channel's last record: the library believes an end of
    /// its channel only from the channel itself.
    ChannelEnded(u64),
}

/// Room the envelope, and a channel's record around it, may add to a request's own encoding
/// (generous: a few dozen bytes in fact).
pub const ENVELOPE_ROOM: usize = 1024;

impl Request {
    /// Whether this request is too large for one frame ([`crate::MAX_FRAME_LEN`]) and with what
    /// code the library refuses it without sending it (a frame over the limit would cost the
    /// connection, and with it every session of the application):
    /// `CKR_ATTRIBUTE_VALUE_INVALID` when its templates are what is too large,
    /// `CKR_DATA_LEN_RANGE` otherwise.
    pub fn oversized(&self) -> Option<tessera_core::Rv> {
        let size = postcard::experimental::serialized_size(self).unwrap_or(usize::MAX);
        if size.saturating_add(ENVELOPE_ROOM) <= crate::MAX_FRAME_LEN {
            return None;
        }
        let templates: usize = self
            .templates()
            .iter()
            .flat_map(|t| t.iter())
            .map(|a| a.value.len() + 16)
            .sum();
        Some(if templates * 2 >= size {
            tessera_core::Rv::AttributeValueInvalid
        } else {
            tessera_core::Rv::DataLenRange
        })
    }

    /// The templates this request carries.
    fn templates(&self) -> Vec<&Template> {
        use Request as R;
        match self {
            R::CreateObject { template, .. }
            | R::CopyObject { template, .. }
            | R::SetAttributes { template, .. }
            | R::FindObjectsInit { template, .. }
            | R::GenerateKey { template, .. }
            | R::UnwrapKey { template, .. }
            | R::DeriveKey { template, .. }
            | R::FindObjectsFirst { template, .. } => vec![template],
            R::GenerateKeyPair {
                public_template,
                private_template,
                ..
            } => vec![public_template, private_template],
            _ => Vec::new(),
        }
    }

    /// Calls that work in the clear even when the device requires secure messaging: they let
    /// applications discover devices and set up channels.
    pub fn is_public(&self) -> bool {
        matches!(
            self,
            Request::DeviceInfo
                | Request::SlotInfo { .. }
                | Request::TokenInfo { .. }
                | Request::MechanismList { .. }
                | Request::MechanismInfo { .. }
                | Request::DeviceStatus
                | Request::Identity
                | Request::Handshake(_)
                | Request::HandshakeFinish(_)
                | Request::Protected(_)
        )
    }

    /// Hands the request's bulk buffers (input data, a record's body) to the pool of
    /// `tessera_core::bytes` once the request is encoded or sealed.
    pub fn recycle(self) {
        match self {
            Request::OperationSingle { data, .. }
            | Request::OperationUpdate { data, .. }
            | Request::OperationOnce { data, .. } => tessera_core::bytes::give(data),
            Request::Protected(record) => tessera_core::bytes::give(record.body),
            _ => {}
        }
    }

    /// Calls that carry PINs or secret values (flag `n`, docs/reference.md).
    pub fn carries_secret(&self) -> bool {
        matches!(
            self,
            Request::Login { .. }
                | Request::InitPin { .. }
                | Request::SetPin { .. }
                | Request::InitToken { .. }
                | Request::CreateObject { .. }
                | Request::GenerateKey { .. }
                | Request::UnwrapKey { .. }
                | Request::SeedRandom { .. }
                | Request::AdminSetup { .. }
                | Request::Admin { .. }
        )
    }
}

impl Reply {
    /// Replies that may carry secret values (plaintexts, readable key values).
    pub fn carries_secret(&self) -> bool {
        matches!(self, Reply::Secret(_) | Reply::Attributes(_))
    }
}
