//! The calls: one `Call` variant per Cryptoki call that reaches the HSM, and the `Reply`
//! shapes they answer with.
//!
//! Handles are the device's own: slot numbers of this device, session handles it issued,
//! object handles it issued. The PKCS#11 module maps its global slot and session numbers onto
//! them. Secret inputs (PINs, key values inside templates) are `SecretBytes` or zeroizing
//! attributes, so they are wiped once decoded and used.

use serde::{Deserialize, Serialize};
use tessera_core::bytes::Held;
use tessera_core::info::{DeviceInfo, MechanismInfo, SessionInfo, SlotInfo, TokenInfo};
use tessera_core::{Mechanism, SecretBytes, Template};

/// What a request frame carries: a call in the clear, or a message of the secure-messaging
/// transport. The engine only ever sees a [`Call`]; the transport's messages are the daemon's.
#[derive(Debug, Serialize, Deserialize)]
pub enum Message {
    /// A call in the clear.
    Call(Call),
    /// Secure messaging: open a channel.
    Handshake(tessera_channel::ClientHello),
    /// Secure messaging: confirm the channel keys.
    HandshakeFinish(tessera_channel::ClientFinished),
    /// Secure messaging: a sealed record, whose message is an [`Inner`] (a call, or the
    /// channel's request for new keys). Sent as the channel lays it out, never in postcard (so
    /// a message in the clear cannot be one).
    #[serde(skip)]
    Protected(tessera_channel::Record),
}

/// What a channel's record carries to the device: a call, or the channel's own request to move
/// to its next generation of keys.
#[derive(Debug, Serialize, Deserialize)]
pub enum Inner {
    /// A call, protected.
    Call(Call),
    /// Move to the next generation of keys.
    Rekey,
}

/// One Cryptoki or administration call: what the engine answers.
#[derive(Debug, Serialize, Deserialize)]
pub enum Call {
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
    /// `C_EncapsulateKey` (PKCS#11 3.2): a ciphertext for the public key and a new secret key
    /// holding the shared secret. With `room` too small for the ciphertext (`None`: a length
    /// query) nothing is made and the reply is the ciphertext's length.
    EncapsulateKey {
        /// Session.
        session: u64,
        /// Mechanism (`CKM_ML_KEM`).
        mechanism: Mechanism,
        /// The public key.
        public_key: u64,
        /// Template of the new key.
        template: Template,
        /// Room the application has for the ciphertext.
        room: Option<u64>,
    },
    /// `C_DecapsulateKey` (PKCS#11 3.2): the secret key of a ciphertext, with the private key.
    DecapsulateKey {
        /// Session.
        session: u64,
        /// Mechanism (`CKM_ML_KEM`).
        mechanism: Mechanism,
        /// The private key.
        private_key: u64,
        /// Template of the new key.
        template: Template,
        /// The ciphertext.
        #[serde(with = "tessera_core::bytes")]
        ciphertext: Vec<u8>,
    },
    /// A call that makes objects (`C_CreateObject`, `C_GenerateKey`, ...), with an id that
    /// the library's High Availability sends again with it when it sends it again: a node of a
    /// cluster answers a request it has already carried out (on any node) with the objects it
    /// made then, rather than making them again.
    Once {
        /// The request's id (random, the library's).
        request: [u8; 16],
        /// The call.
        call: Box<Call>,
    },
    /// Backup, restore and replication of the session's token, by its Security Officer
    /// (logged in in this session).
    Keep {
        /// Session on the token, in which its SO is logged in.
        session: u64,
        /// What to do.
        command: crate::KeepCommand,
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
    /// The device's secure-messaging channels.
    Channels(Vec<crate::ChannelSummary>),
    /// The first objects of a search, and whether that was all (the search is then closed).
    Found {
        /// Object handles.
        handles: Vec<u64>,
        /// No more objects: the device closed the search.
        exhausted: bool,
    },
    /// `C_EncapsulateKey`'s ciphertext and the handle of the new key.
    Encapsulated {
        /// The ciphertext.
        #[serde(with = "tessera_core::bytes")]
        ciphertext: Vec<u8>,
        /// The new secret key.
        handle: u64,
    },
    /// A backup written (the file and, for a split key, its shares).
    Backup(Box<crate::BackupWritten>),
}

/// Room the envelope, and a channel's record around it, may add to a request's own encoding
/// (generous: a few dozen bytes in fact).
pub const ENVELOPE_ROOM: usize = 1024;

impl Call {
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

    /// The session this call is on, to change (the library's High Availability moves a
    /// session to another device, and sends its calls again there).
    pub fn session_mut(&mut self) -> Option<&mut u64> {
        use Call as C;
        match self {
            C::Once { call, .. } => call.session_mut(),
            C::CloseSession { session, .. }
            | C::SessionInfo { session, .. }
            | C::Login { session, .. }
            | C::Logout { session, .. }
            | C::InitPin { session, .. }
            | C::SetPin { session, .. }
            | C::CreateObject { session, .. }
            | C::CopyObject { session, .. }
            | C::DestroyObject { session, .. }
            | C::ObjectSize { session, .. }
            | C::GetAttributes { session, .. }
            | C::SetAttributes { session, .. }
            | C::FindObjectsInit { session, .. }
            | C::FindObjects { session, .. }
            | C::FindObjectsFinal { session, .. }
            | C::OperationInit { session, .. }
            | C::OperationSingle { session, .. }
            | C::OperationUpdate { session, .. }
            | C::OperationFinal { session, .. }
            | C::GenerateKey { session, .. }
            | C::GenerateKeyPair { session, .. }
            | C::WrapKey { session, .. }
            | C::UnwrapKey { session, .. }
            | C::DeriveKey { session, .. }
            | C::DigestKey { session, .. }
            | C::SessionCancel { session, .. }
            | C::GenerateRandom { session, .. }
            | C::SeedRandom { session, .. }
            | C::Admin { session, .. }
            | C::OperationOnce { session, .. }
            | C::FindObjectsFirst { session, .. }
            | C::EncapsulateKey { session, .. }
            | C::DecapsulateKey { session, .. } => Some(session),
            _ => None,
        }
    }

    /// The templates this request carries.
    fn templates(&self) -> Vec<&Template> {
        use Call as R;
        match self {
            R::Once { call, .. } => call.templates(),
            R::CreateObject { template, .. }
            | R::CopyObject { template, .. }
            | R::SetAttributes { template, .. }
            | R::FindObjectsInit { template, .. }
            | R::GenerateKey { template, .. }
            | R::UnwrapKey { template, .. }
            | R::DeriveKey { template, .. }
            | R::EncapsulateKey { template, .. }
            | R::DecapsulateKey { template, .. }
            | R::FindObjectsFirst { template, .. } => vec![template],
            R::GenerateKeyPair {
                public_template,
                private_template,
                ..
            } => vec![public_template, private_template],
            _ => Vec::new(),
        }
    }

    /// What every layer needs to know about this call: its row in the table below, the one
    /// place that classifies calls.
    pub fn traits(&self) -> Traits {
        use Call as C;
        use Keys::{Brings, Ends, Uses};
        use Work::{ByInput, Heavy, Light};
        const PUBLIC: bool = true;
        const SECRET: bool = true;
        const NO: bool = false;
        let none = Keys::None;
        use Shape as S;
        const DONE: &[Shape] = &[S::Done];
        const HANDLE: &[Shape] = &[S::Handle];
        // An operation's output: data, a secret (a decryption), or a verification's outcome.
        const OUTPUT: &[Shape] = &[S::Bytes, S::Secret, S::Verified];
        const ADMIN: &[Shape] = &[
            S::Done,
            S::Number,
            S::Bytes,
            S::Events,
            S::Channels,
            S::Certificates,
        ];
        use Family::{Admin, Crypto, Find, Info, Keys as KeyCalls, Login, Object, Random, Session};
        /// A row: (public, secret, keys, work, reply shapes).
        type Row = (bool, bool, Keys, Work, &'static [Shape]);
        let (name, family, (public, secret, keys, work, reply)): (&str, Family, Row) = match self {
            C::Once { call, .. } => return call.traits(),
            // call => (name, family, (public, secret, keys, work, reply shapes))
            C::DeviceInfo => ("DeviceInfo", Info, (PUBLIC, NO, none, Light, &[S::Device])),
            C::SlotInfo { .. } => ("SlotInfo", Info, (PUBLIC, NO, none, Light, &[S::Slot])),
            C::TokenInfo { .. } => ("TokenInfo", Info, (PUBLIC, NO, none, Light, &[S::Token])),
            C::MechanismList { .. } => (
                "MechanismList",
                Info,
                (PUBLIC, NO, none, Light, &[S::Mechanisms]),
            ),
            C::MechanismInfo { .. } => (
                "MechanismInfo",
                Info,
                (PUBLIC, NO, none, Light, &[S::Mechanism]),
            ),
            C::DeviceStatus => (
                "DeviceStatus",
                Info,
                (PUBLIC, NO, none, Heavy, &[S::Status]),
            ),
            C::Identity => ("Identity", Info, (PUBLIC, NO, none, Heavy, &[S::Identity])),
            C::InitToken { .. } => ("InitToken", Login, (NO, SECRET, Brings, Heavy, DONE)),
            C::OpenSession { .. } => ("OpenSession", Session, (NO, NO, none, Light, HANDLE)),
            C::CloseSession { .. } => ("CloseSession", Session, (NO, NO, Ends, Light, DONE)),
            C::CloseAllSessions { .. } => {
                ("CloseAllSessions", Session, (NO, NO, Ends, Heavy, DONE))
            }
            C::SessionInfo { .. } => ("SessionInfo", Info, (NO, NO, none, Light, &[S::Session])),
            C::Login { .. } => ("Login", Login, (NO, SECRET, Brings, Heavy, DONE)),
            C::Logout { .. } => ("Logout", Login, (NO, NO, Ends, Heavy, DONE)),
            C::InitPin { .. } => ("InitPin", Login, (NO, SECRET, Brings, Heavy, DONE)),
            C::SetPin { .. } => ("SetPin", Login, (NO, SECRET, Brings, Heavy, DONE)),
            C::CreateObject { .. } => (
                "CreateObject",
                Object,
                (NO, SECRET, Brings, ByInput, HANDLE),
            ),
            C::CopyObject { .. } => ("CopyObject", Object, (NO, NO, Uses, Heavy, HANDLE)),
            C::DestroyObject { .. } => ("DestroyObject", Object, (NO, NO, Ends, ByInput, DONE)),
            C::ObjectSize { .. } => ("ObjectSize", Object, (NO, NO, none, Light, &[S::Number])),
            C::GetAttributes { .. } => (
                "GetAttributes",
                Object,
                (NO, NO, Uses, ByInput, &[S::Attributes]),
            ),
            C::SetAttributes { .. } => ("SetAttributes", Object, (NO, NO, none, Heavy, DONE)),
            C::FindObjectsInit { .. } => ("FindObjectsInit", Find, (NO, NO, none, ByInput, DONE)),
            C::FindObjects { .. } => ("FindObjects", Find, (NO, NO, none, Light, &[S::Handles])),
            C::FindObjectsFinal { .. } => ("FindObjectsFinal", Find, (NO, NO, none, Light, DONE)),
            C::FindObjectsFirst { .. } => (
                "FindObjectsFirst",
                Find,
                (NO, NO, none, ByInput, &[S::Found]),
            ),
            C::OperationInit { .. } => ("OperationInit", Crypto, (NO, NO, Uses, ByInput, DONE)),
            C::OperationSingle { .. } => {
                ("OperationSingle", Crypto, (NO, NO, Uses, ByInput, OUTPUT))
            }
            C::OperationUpdate { .. } => (
                "OperationUpdate",
                Crypto,
                (NO, NO, Uses, ByInput, &[S::Bytes, S::Secret, S::Done]),
            ),
            C::OperationFinal { .. } => ("OperationFinal", Crypto, (NO, NO, Uses, ByInput, OUTPUT)),
            C::OperationOnce { .. } => ("OperationOnce", Crypto, (NO, NO, Uses, ByInput, OUTPUT)),
            C::GenerateKey { .. } => ("GenerateKey", KeyCalls, (NO, SECRET, Uses, ByInput, HANDLE)),
            C::GenerateKeyPair { .. } => (
                "GenerateKeyPair",
                KeyCalls,
                (NO, NO, Uses, Heavy, &[S::HandlePair]),
            ),
            C::WrapKey { .. } => ("WrapKey", KeyCalls, (NO, NO, Uses, Heavy, &[S::Bytes])),
            C::UnwrapKey { .. } => ("UnwrapKey", KeyCalls, (NO, SECRET, Brings, Heavy, HANDLE)),
            C::DeriveKey { .. } => (
                "DeriveKey",
                KeyCalls,
                (NO, NO, Uses, Heavy, &[S::Handle, S::Handles]),
            ),
            C::DigestKey { .. } => (
                "DigestKey",
                Crypto,
                (NO, NO, Uses, Heavy, &[S::Bytes, S::Done]),
            ),
            C::SessionCancel { .. } => ("SessionCancel", Session, (NO, NO, none, Heavy, DONE)),
            C::GenerateRandom { .. } => (
                "GenerateRandom",
                Random,
                (NO, NO, none, ByInput, &[S::Bytes]),
            ),
            C::SeedRandom { .. } => ("SeedRandom", Random, (NO, SECRET, Uses, Heavy, DONE)),
            C::AdminSetup { .. } => ("AdminSetup", Admin, (NO, SECRET, Brings, Heavy, DONE)),
            C::Admin { .. } => ("Admin", Admin, (NO, SECRET, Brings, Heavy, ADMIN)),
            C::EncapsulateKey { .. } => (
                "EncapsulateKey",
                KeyCalls,
                (NO, NO, Uses, Heavy, &[S::Number, S::Encapsulated]),
            ),
            C::DecapsulateKey { .. } => ("DecapsulateKey", KeyCalls, (NO, NO, Uses, Heavy, HANDLE)),
            C::Keep { .. } => (
                "Keep",
                Admin,
                (NO, SECRET, Brings, Heavy, &[S::Backup, S::Bytes, S::Number]),
            ),
        };
        Traits {
            name,
            family,
            public,
            secret,
            keys,
            work,
            reply,
        }
    }

    /// Calls that work in the clear even when the device requires secure messaging: they let
    /// applications discover devices and set up channels ([`Traits::public`]).
    pub fn is_public(&self) -> bool {
        self.traits().public
    }

    /// Calls that carry PINs or secret values ([`Traits::secret`]).
    pub fn carries_secret(&self) -> bool {
        self.traits().secret
    }

    /// The call's bulk input (the data of an operation), where it has one.
    pub fn bulk_mut(&mut self) -> Option<&mut Vec<u8>> {
        match self {
            Call::OperationSingle { data, .. }
            | Call::OperationUpdate { data, .. }
            | Call::OperationOnce { data, .. } => Some(data),
            _ => None,
        }
    }

    /// Hands the call's bulk buffers (input data) to the pool of `tessera_core::bytes` once
    /// the call is encoded or sealed.
    pub fn recycle(self) {
        match self {
            Call::OperationSingle { data, .. }
            | Call::OperationUpdate { data, .. }
            | Call::OperationOnce { data, .. } => tessera_core::bytes::give(data, Held::Data),
            _ => {}
        }
    }
}

/// A call's row in [`Call::traits`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Traits {
    /// The call's name, as the daemon's metrics label it (`Login`, `OperationSingle`).
    pub name: &'static str,
    /// The kind of work it is, for latency by family.
    pub family: Family,
    /// Served in the clear even where the device requires secure messaging: discovery, and
    /// what an application needs to set up a channel.
    pub public: bool,
    /// Carries a PIN or a secret value in its arguments (flag `n`, docs/reference.md).
    pub secret: bool,
    /// What it leaves of keys and PINs on the stack of the thread that runs it.
    pub keys: Keys,
    /// How much work it is, for where the daemon runs it.
    pub work: Work,
    /// The shapes of reply it answers with: any other is the device's fault, refused by the
    /// library as one bad reply.
    pub reply: &'static [Shape],
}

/// The families of calls, for the daemon's latency histograms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Device, slot, token, mechanism and session facts.
    Info,
    /// Opening and closing sessions.
    Session,
    /// Logins, logouts, PINs and token initialisation: the PIN checks.
    Login,
    /// Creating, copying, destroying and reading objects.
    Object,
    /// Searches.
    Find,
    /// Encryption, decryption, digests, signatures and verifications.
    Crypto,
    /// Generating, wrapping, unwrapping, deriving and encapsulating keys.
    Keys,
    /// Random numbers.
    Random,
    /// Device administration.
    Admin,
}

impl Family {
    /// Every family, in a fixed order ([`Family::index`]).
    pub const ALL: [Family; 9] = [
        Family::Info,
        Family::Session,
        Family::Login,
        Family::Object,
        Family::Find,
        Family::Crypto,
        Family::Keys,
        Family::Random,
        Family::Admin,
    ];

    /// The family's name as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Info => "info",
            Family::Session => "session",
            Family::Login => "login",
            Family::Object => "object",
            Family::Find => "find",
            Family::Crypto => "crypto",
            Family::Keys => "keys",
            Family::Random => "random",
            Family::Admin => "admin",
        }
    }

    /// Its position in [`Family::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// What a call does with keys and PINs, for when the daemon scrubs the stack that ran it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keys {
    /// Brings a PIN or a key value: the stack is scrubbed as soon as it is answered.
    Brings,
    /// Uses or makes keys (key schedules, generated values): the stack is marked.
    Uses,
    /// Ends a use of keys or PINs (logout, destroy, session close): a marked stack is scrubbed.
    Ends,
    /// Nothing of the kind.
    None,
}

/// How much work a call is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// Touches memory only, a bounded amount: answered at once on the I/O thread.
    Light,
    /// Light or not depending on its input (sizes, a session or a token object): the daemon
    /// looks at the input.
    ByInput,
    /// PIN checks, disk writes, public-key operations, or unbounded work: off the I/O thread.
    Heavy,
}

impl From<Call> for Message {
    fn from(call: Call) -> Message {
        Message::Call(call)
    }
}

impl From<Call> for Inner {
    fn from(call: Call) -> Inner {
        Inner::Call(call)
    }
}

impl Inner {
    /// Whether the record's message carries a PIN or a secret value.
    pub fn carries_secret(&self) -> bool {
        match self {
            Inner::Call(call) => call.carries_secret(),
            Inner::Rekey => false,
        }
    }

    /// Hands a call's bulk buffers back to the pool once it is sealed.
    pub fn recycle(self) {
        if let Inner::Call(call) = self {
            call.recycle();
        }
    }
}

impl Message {
    /// Whether the message works in the clear where the device requires secure messaging:
    /// every transport message (they set channels up), and the public calls.
    pub fn is_public(&self) -> bool {
        match self {
            Message::Call(call) => call.is_public(),
            Message::Handshake(_) | Message::HandshakeFinish(_) | Message::Protected(_) => true,
        }
    }

    /// Whether the message carries a PIN or a secret value ([`Traits::secret`]): transport
    /// messages carry public keys, signatures and sealed records only.
    pub fn carries_secret(&self) -> bool {
        match self {
            Message::Call(call) => call.carries_secret(),
            Message::Handshake(_) | Message::HandshakeFinish(_) | Message::Protected(_) => false,
        }
    }

    /// Hands the message's bulk buffers (a call's input data, a record's body) back to the
    /// pool of `tessera_core::bytes` once it is encoded.
    pub fn recycle(self) {
        match self {
            Message::Call(call) => call.recycle(),
            Message::Protected(record) => tessera_core::bytes::give(record.body, Held::Data),
            Message::Handshake(_) | Message::HandshakeFinish(_) => {}
        }
    }
}

/// What kind of [`Reply`] a reply is, without its contents (which may be secret).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Shape {
    Done,
    Handle,
    HandlePair,
    Handles,
    Bytes,
    Secret,
    Number,
    Verified,
    Device,
    Slot,
    Token,
    Session,
    Mechanisms,
    Mechanism,
    Attributes,
    Status,
    Events,
    Identity,
    Certificates,
    Channels,
    Found,
    Encapsulated,
    Backup,
}

impl Reply {
    /// The reply's shape, for checks and logs.
    pub fn shape(&self) -> Shape {
        match self {
            Reply::Done => Shape::Done,
            Reply::Handle(_) => Shape::Handle,
            Reply::HandlePair(..) => Shape::HandlePair,
            Reply::Handles(_) => Shape::Handles,
            Reply::Bytes(_) => Shape::Bytes,
            Reply::Secret(_) => Shape::Secret,
            Reply::Number(_) => Shape::Number,
            Reply::Verified => Shape::Verified,
            Reply::Device(_) => Shape::Device,
            Reply::Slot(_) => Shape::Slot,
            Reply::Token(_) => Shape::Token,
            Reply::Session(_) => Shape::Session,
            Reply::Mechanisms(_) => Shape::Mechanisms,
            Reply::Mechanism(_) => Shape::Mechanism,
            Reply::Attributes(_) => Shape::Attributes,
            Reply::Status(_) => Shape::Status,
            Reply::Events(..) => Shape::Events,
            Reply::Identity(_) => Shape::Identity,
            Reply::Certificates(_) => Shape::Certificates,
            Reply::Channels(_) => Shape::Channels,
            Reply::Found { .. } => Shape::Found,
            Reply::Encapsulated { .. } => Shape::Encapsulated,
            Reply::Backup(_) => Shape::Backup,
        }
    }

    /// Replies that may carry secret values (plaintexts, readable key values).
    pub fn carries_secret(&self) -> bool {
        matches!(
            self,
            Reply::Secret(_) | Reply::Attributes(_) | Reply::Backup(_)
        )
    }
}
