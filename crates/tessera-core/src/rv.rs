//! Cryptoki return values.
//!
//! `Rv` is the closed set of codes that Tessera itself produces, each with its explicit `CKR_*`
//! value. On the wire a return value travels as its raw `u64`, so a code that a newer peer
//! sends still reaches the application unchanged.

use cryptoki_sys as ck;

/// `CKR_VENDOR_DEFINED`, the base of the vendor return codes (docs/reference.md, "Vendor
/// return codes").
pub const VENDOR_DEFINED: u64 = ck::CKR_VENDOR_DEFINED as u64;

macro_rules! return_values {
    ($( $(#[$doc:meta])* $name:ident = $value:expr => $text:literal, )*) => {
        /// A Cryptoki return value produced by Tessera.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u64)]
        pub enum Rv {
            $( $(#[$doc])* $name = $value as u64, )*
        }

        impl Rv {
            /// Every value, in the order of the table.
            pub const ALL: &'static [Rv] = &[ $( Rv::$name, )* ];

            /// The numeric `CK_RV`.
            pub const fn code(self) -> u64 {
                self as u64
            }

            /// The `Rv` for a numeric code, if Tessera knows it.
            pub fn from_code(code: u64) -> Option<Rv> {
                $( if code == $value as u64 { return Some(Rv::$name); } )*
                None
            }

            /// The `CKR_*` name of this value.
            pub fn name(self) -> &'static str {
                match self { $( Rv::$name => $text, )* }
            }
        }
    };
}

return_values! {
    /// Success.
    Ok = ck::CKR_OK => "CKR_OK",
    /// A callback asked to cancel.
    Cancel = ck::CKR_CANCEL => "CKR_CANCEL",
    /// The library could not allocate memory.
    HostMemory = ck::CKR_HOST_MEMORY => "CKR_HOST_MEMORY",
    /// The slot id does not exist.
    SlotIdInvalid = ck::CKR_SLOT_ID_INVALID => "CKR_SLOT_ID_INVALID",
    /// An unrecoverable error (a bug of ours).
    GeneralError = ck::CKR_GENERAL_ERROR => "CKR_GENERAL_ERROR",
    /// The function failed.
    FunctionFailed = ck::CKR_FUNCTION_FAILED => "CKR_FUNCTION_FAILED",
    /// Bad arguments (null pointers, bad flags).
    ArgumentsBad = ck::CKR_ARGUMENTS_BAD => "CKR_ARGUMENTS_BAD",
    /// Locking cannot be provided as asked.
    CantLock = ck::CKR_CANT_LOCK => "CKR_CANT_LOCK",
    /// The attribute may not be set or changed.
    AttributeReadOnly = ck::CKR_ATTRIBUTE_READ_ONLY => "CKR_ATTRIBUTE_READ_ONLY",
    /// The attribute is sensitive and cannot be revealed.
    AttributeSensitive = ck::CKR_ATTRIBUTE_SENSITIVE => "CKR_ATTRIBUTE_SENSITIVE",
    /// The attribute type is not valid for this object.
    AttributeTypeInvalid = ck::CKR_ATTRIBUTE_TYPE_INVALID => "CKR_ATTRIBUTE_TYPE_INVALID",
    /// The attribute value is not valid.
    AttributeValueInvalid = ck::CKR_ATTRIBUTE_VALUE_INVALID => "CKR_ATTRIBUTE_VALUE_INVALID",
    /// The action is prohibited.
    ActionProhibited = ck::CKR_ACTION_PROHIBITED => "CKR_ACTION_PROHIBITED",
    /// The input data is invalid.
    DataInvalid = ck::CKR_DATA_INVALID => "CKR_DATA_INVALID",
    /// The input data has a bad length.
    DataLenRange = ck::CKR_DATA_LEN_RANGE => "CKR_DATA_LEN_RANGE",
    /// The device failed or cannot be reached.
    DeviceError = ck::CKR_DEVICE_ERROR => "CKR_DEVICE_ERROR",
    /// The device ran out of memory.
    DeviceMemory = ck::CKR_DEVICE_MEMORY => "CKR_DEVICE_MEMORY",
    /// The device was removed (connection lost).
    DeviceRemoved = ck::CKR_DEVICE_REMOVED => "CKR_DEVICE_REMOVED",
    /// The ciphertext is invalid.
    EncryptedDataInvalid = ck::CKR_ENCRYPTED_DATA_INVALID => "CKR_ENCRYPTED_DATA_INVALID",
    /// The ciphertext has a bad length.
    EncryptedDataLenRange = ck::CKR_ENCRYPTED_DATA_LEN_RANGE => "CKR_ENCRYPTED_DATA_LEN_RANGE",
    /// The function is not supported.
    FunctionNotSupported = ck::CKR_FUNCTION_NOT_SUPPORTED => "CKR_FUNCTION_NOT_SUPPORTED",
    /// The key handle is invalid.
    KeyHandleInvalid = ck::CKR_KEY_HANDLE_INVALID => "CKR_KEY_HANDLE_INVALID",
    /// The key size is outside the supported range.
    KeySizeRange = ck::CKR_KEY_SIZE_RANGE => "CKR_KEY_SIZE_RANGE",
    /// The key type does not fit the mechanism.
    KeyTypeInconsistent = ck::CKR_KEY_TYPE_INCONSISTENT => "CKR_KEY_TYPE_INCONSISTENT",
    /// The key's attributes do not allow this use.
    KeyFunctionNotPermitted = ck::CKR_KEY_FUNCTION_NOT_PERMITTED => "CKR_KEY_FUNCTION_NOT_PERMITTED",
    /// The mechanism is not supported.
    MechanismInvalid = ck::CKR_MECHANISM_INVALID => "CKR_MECHANISM_INVALID",
    /// The mechanism parameter is invalid.
    MechanismParamInvalid = ck::CKR_MECHANISM_PARAM_INVALID => "CKR_MECHANISM_PARAM_INVALID",
    /// The object handle is invalid.
    ObjectHandleInvalid = ck::CKR_OBJECT_HANDLE_INVALID => "CKR_OBJECT_HANDLE_INVALID",
    /// An operation of this kind is already active.
    OperationActive = ck::CKR_OPERATION_ACTIVE => "CKR_OPERATION_ACTIVE",
    /// No operation of this kind is active.
    OperationNotInitialized = ck::CKR_OPERATION_NOT_INITIALIZED => "CKR_OPERATION_NOT_INITIALIZED",
    /// Wrong PIN.
    PinIncorrect = ck::CKR_PIN_INCORRECT => "CKR_PIN_INCORRECT",
    /// The PIN has invalid characters.
    PinInvalid = ck::CKR_PIN_INVALID => "CKR_PIN_INVALID",
    /// The PIN is too short or too long.
    PinLenRange = ck::CKR_PIN_LEN_RANGE => "CKR_PIN_LEN_RANGE",
    /// The PIN is locked after too many failures.
    PinLocked = ck::CKR_PIN_LOCKED => "CKR_PIN_LOCKED",
    /// The session is closed.
    SessionClosed = ck::CKR_SESSION_CLOSED => "CKR_SESSION_CLOSED",
    /// Too many sessions.
    SessionCount = ck::CKR_SESSION_COUNT => "CKR_SESSION_COUNT",
    /// The session handle is invalid.
    SessionHandleInvalid = ck::CKR_SESSION_HANDLE_INVALID => "CKR_SESSION_HANDLE_INVALID",
    /// `CKF_SERIAL_SESSION` was not set.
    SessionParallelNotSupported = ck::CKR_SESSION_PARALLEL_NOT_SUPPORTED => "CKR_SESSION_PARALLEL_NOT_SUPPORTED",
    /// The session is read-only.
    SessionReadOnly = ck::CKR_SESSION_READ_ONLY => "CKR_SESSION_READ_ONLY",
    /// A session exists (e.g. during `C_InitToken`).
    SessionExists = ck::CKR_SESSION_EXISTS => "CKR_SESSION_EXISTS",
    /// A read-only session exists, so SO cannot log in.
    SessionReadOnlyExists = ck::CKR_SESSION_READ_ONLY_EXISTS => "CKR_SESSION_READ_ONLY_EXISTS",
    /// SO is logged in, so no read-only session can open.
    SessionReadWriteSoExists = ck::CKR_SESSION_READ_WRITE_SO_EXISTS => "CKR_SESSION_READ_WRITE_SO_EXISTS",
    /// The signature is invalid.
    SignatureInvalid = ck::CKR_SIGNATURE_INVALID => "CKR_SIGNATURE_INVALID",
    /// The signature has a bad length.
    SignatureLenRange = ck::CKR_SIGNATURE_LEN_RANGE => "CKR_SIGNATURE_LEN_RANGE",
    /// The template lacks a required attribute.
    TemplateIncomplete = ck::CKR_TEMPLATE_INCOMPLETE => "CKR_TEMPLATE_INCOMPLETE",
    /// The template has conflicting attributes.
    TemplateInconsistent = ck::CKR_TEMPLATE_INCONSISTENT => "CKR_TEMPLATE_INCONSISTENT",
    /// No token in the slot.
    TokenNotPresent = ck::CKR_TOKEN_NOT_PRESENT => "CKR_TOKEN_NOT_PRESENT",
    /// The token is not recognised.
    TokenNotRecognized = ck::CKR_TOKEN_NOT_RECOGNIZED => "CKR_TOKEN_NOT_RECOGNIZED",
    /// The token is write-protected.
    TokenWriteProtected = ck::CKR_TOKEN_WRITE_PROTECTED => "CKR_TOKEN_WRITE_PROTECTED",
    /// The user is already logged in.
    UserAlreadyLoggedIn = ck::CKR_USER_ALREADY_LOGGED_IN => "CKR_USER_ALREADY_LOGGED_IN",
    /// Not logged in.
    UserNotLoggedIn = ck::CKR_USER_NOT_LOGGED_IN => "CKR_USER_NOT_LOGGED_IN",
    /// The user PIN was never set.
    UserPinNotInitialized = ck::CKR_USER_PIN_NOT_INITIALIZED => "CKR_USER_PIN_NOT_INITIALIZED",
    /// Unknown user type.
    UserTypeInvalid = ck::CKR_USER_TYPE_INVALID => "CKR_USER_TYPE_INVALID",
    /// Another user type is logged in.
    UserAnotherAlreadyLoggedIn = ck::CKR_USER_ANOTHER_ALREADY_LOGGED_IN => "CKR_USER_ANOTHER_ALREADY_LOGGED_IN",
    /// The output buffer is too small.
    BufferTooSmall = ck::CKR_BUFFER_TOO_SMALL => "CKR_BUFFER_TOO_SMALL",
    /// `C_Initialize` was not called.
    CryptokiNotInitialized = ck::CKR_CRYPTOKI_NOT_INITIALIZED => "CKR_CRYPTOKI_NOT_INITIALIZED",
    /// `C_Initialize` was already called.
    CryptokiAlreadyInitialized = ck::CKR_CRYPTOKI_ALREADY_INITIALIZED => "CKR_CRYPTOKI_ALREADY_INITIALIZED",
    /// The random generator cannot be seeded.
    RandomSeedNotSupported = ck::CKR_RANDOM_SEED_NOT_SUPPORTED => "CKR_RANDOM_SEED_NOT_SUPPORTED",
    /// The operation cannot be done in this state.
    StateUnsaveable = ck::CKR_STATE_UNSAVEABLE => "CKR_STATE_UNSAVEABLE",
    /// The curve is not supported.
    CurveNotSupported = ck::CKR_CURVE_NOT_SUPPORTED => "CKR_CURVE_NOT_SUPPORTED",
    /// The operation is not supported in parallel (`C_GetFunctionStatus`).
    FunctionNotParallel = ck::CKR_FUNCTION_NOT_PARALLEL => "CKR_FUNCTION_NOT_PARALLEL",
    /// The domain parameters are invalid or not allowed.
    DomainParamsInvalid = ck::CKR_DOMAIN_PARAMS_INVALID => "CKR_DOMAIN_PARAMS_INVALID",
    /// The key cannot be digested (`C_DigestKey`).
    KeyIndigestible = ck::CKR_KEY_INDIGESTIBLE => "CKR_KEY_INDIGESTIBLE",
    /// The key cannot be wrapped.
    KeyNotWrappable = ck::CKR_KEY_NOT_WRAPPABLE => "CKR_KEY_NOT_WRAPPABLE",
    /// The wrapping key handle is invalid.
    WrappingKeyHandleInvalid = ck::CKR_WRAPPING_KEY_HANDLE_INVALID => "CKR_WRAPPING_KEY_HANDLE_INVALID",
    /// The wrapping key has the wrong size.
    WrappingKeySizeRange = ck::CKR_WRAPPING_KEY_SIZE_RANGE => "CKR_WRAPPING_KEY_SIZE_RANGE",
    /// The wrapping key has the wrong type.
    WrappingKeyTypeInconsistent = ck::CKR_WRAPPING_KEY_TYPE_INCONSISTENT => "CKR_WRAPPING_KEY_TYPE_INCONSISTENT",
    /// The unwrapping key handle is invalid.
    UnwrappingKeyHandleInvalid = ck::CKR_UNWRAPPING_KEY_HANDLE_INVALID => "CKR_UNWRAPPING_KEY_HANDLE_INVALID",
    /// The unwrapping key has the wrong size.
    UnwrappingKeySizeRange = ck::CKR_UNWRAPPING_KEY_SIZE_RANGE => "CKR_UNWRAPPING_KEY_SIZE_RANGE",
    /// The unwrapping key has the wrong type.
    UnwrappingKeyTypeInconsistent = ck::CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT => "CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT",
    /// The wrapped key is invalid.
    WrappedKeyInvalid = ck::CKR_WRAPPED_KEY_INVALID => "CKR_WRAPPED_KEY_INVALID",
    /// The wrapped key has a bad length.
    WrappedKeyLenRange = ck::CKR_WRAPPED_KEY_LEN_RANGE => "CKR_WRAPPED_KEY_LEN_RANGE",
    /// The key cannot be wrapped (unextractable).
    KeyUnextractable = ck::CKR_KEY_UNEXTRACTABLE => "CKR_KEY_UNEXTRACTABLE",
    /// Channel key establishment failed.
    CannotDeriveKeys = VENDOR_DEFINED + 0x381 => "CKR_CANNOT_DERIVE_KEYS",
    /// A request failed verification.
    BadRequestSignature = VENDOR_DEFINED + 0x382 => "CKR_BAD_REQ_SIGNATURE",
    /// A reply failed verification.
    BadReplySignature = VENDOR_DEFINED + 0x383 => "CKR_BAD_REPLY_SIGNATURE",
    /// General channel failure.
    SmsError = VENDOR_DEFINED + 0x384 => "CKR_SMS_ERROR",
    /// A message lacks the protection that policy requires.
    BadProtection = VENDOR_DEFINED + 0x385 => "CKR_BAD_PROTECTION",
    /// No channel keys could be established.
    NoSessionKeys = VENDOR_DEFINED + 0x387 => "CKR_NO_SESSION_KEYS",
    /// Malformed reply.
    BadReply = VENDOR_DEFINED + 0x388 => "CKR_BAD_REPLY",
    /// Key rollover failed.
    KeyRollover = VENDOR_DEFINED + 0x389 => "CKR_KEY_ROLLOVER",
    /// Access denied by device policy.
    AccessDenied = VENDOR_DEFINED + 0x102 => "CKR_ACCESS_DENIED",
    /// A certificate chain does not end in a trusted certificate.
    CertNotValidated = VENDOR_DEFINED + 0x107 => "CKR_CERT_NOT_VALIDATED",
    /// Tessera: the flags are locked (Mode Locked) until a tamper.
    ModeLocked = VENDOR_DEFINED + 0x1001 => "CKR_TESSERA_MODE_LOCKED",
    /// Tessera: the change needs an identity key and certificate on the device.
    IdentityRequired = VENDOR_DEFINED + 0x1002 => "CKR_TESSERA_IDENTITY_REQUIRED",
    /// Tessera: the Admin token is already set up.
    AdminAlreadySetUp = VENDOR_DEFINED + 0x1003 => "CKR_TESSERA_ADMIN_ALREADY_SET_UP",
    /// Tessera: the Admin token has not been set up yet.
    AdminNotSetUp = VENDOR_DEFINED + 0x1004 => "CKR_TESSERA_ADMIN_NOT_SET_UP",
    /// Tessera: the device has no owner key (POK) to sign with.
    OwnerKeyRequired = VENDOR_DEFINED + 0x1005 => "CKR_TESSERA_OWNER_KEY_REQUIRED",
    /// Tessera: the certificate does not match this device's identity key or serial number.
    CertificateMismatch = VENDOR_DEFINED + 0x1006 => "CKR_TESSERA_CERTIFICATE_MISMATCH",
    /// Tessera: the key or certificate exists; replacing it must be asked for.
    IdentityExists = VENDOR_DEFINED + 0x1007 => "CKR_TESSERA_IDENTITY_EXISTS",
    /// Tessera: the device holds as many secure-messaging channels as it may.
    ChannelLimit = VENDOR_DEFINED + 0x1008 => "CKR_TESSERA_CHANNEL_LIMIT",
    /// Tessera: too many failed or abandoned handshakes from this network address lately; its
    /// handshakes are refused for a while.
    HandshakeRateLimited = VENDOR_DEFINED + 0x1009 => "CKR_TESSERA_HANDSHAKE_RATE_LIMITED",
    /// Tessera: the library and the device speak different versions of secure messaging (one
    /// of them is from another release).
    ProtocolVersion = VENDOR_DEFINED + 0x100A => "CKR_TESSERA_PROTOCOL_VERSION",
}

impl std::fmt::Display for Rv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (0x{:08X})", self.name(), self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_vendor_values_match_the_reference() {
        assert_eq!(Rv::from_code(0), Some(Rv::Ok));
        assert_eq!(Rv::BadReply.code(), 0x8000_0388);
        assert_eq!(Rv::AccessDenied.code(), 0x8000_0102);
        assert_eq!(Rv::from_code(0x8000_0383), Some(Rv::BadReplySignature));
        assert_eq!(Rv::from_code(0x1234_5678), None);
        assert_eq!(
            Rv::PinIncorrect.to_string(),
            "CKR_PIN_INCORRECT (0x000000A0)"
        );
    }
}
