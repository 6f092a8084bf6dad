//! Output that the device produced and the application has not taken yet, kept per session for
//! the two-call convention (PKCS#11 3.0 §5.2): a length query or a too-small buffer costs no
//! second round trip, and the second call gets the very bytes the first one measured (a wrapped
//! key or a signature may differ from one run to the next).

use cryptoki_sys as ck;
use tessera_core::{Mechanism, SecretBytes};
use tessera_wire::Operation;

use crate::buffer::{fit, Fit};

/// The calls of an operation that produce output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `C_Encrypt`, `C_Decrypt`, `C_Digest`, `C_Sign`.
    Single,
    /// `C_EncryptUpdate`, `C_DecryptUpdate`, and the dual-function updates, whose output is
    /// their cipher's.
    Update,
    /// `C_EncryptFinal`, `C_DecryptFinal`, `C_DigestFinal`, `C_SignFinal`.
    Final,
}

/// The call an output belongs to. A kept output is handed to the next call that equals it.
#[derive(Debug, PartialEq, Eq)]
pub enum Producer {
    /// A call of the session's operation: the operation's state says which input it is for.
    Operation(Operation, Stage),
    /// `C_WrapKey`, which has no state: its arguments say which output it is.
    WrapKey {
        /// Mechanism.
        mechanism: Mechanism,
        /// The wrapping key.
        wrapping_key: u64,
        /// The key to wrap.
        key: u64,
    },
    /// `C_SignMessage` of this message.
    SignMessage(SecretBytes),
}

/// The `C_SessionCancel` flag of an operation (`CKF_ENCRYPT`, ...).
pub fn operation_flag(operation: Operation) -> u64 {
    (match operation {
        Operation::Encrypt => ck::CKF_ENCRYPT,
        Operation::Decrypt => ck::CKF_DECRYPT,
        Operation::Digest => ck::CKF_DIGEST,
        Operation::Sign => ck::CKF_SIGN,
        Operation::Verify => ck::CKF_VERIFY,
    }) as u64
}

/// The `C_SessionCancel` flag of a message-based operation (`CKF_MESSAGE_ENCRYPT`, ...);
/// digests have none.
pub fn message_flag(operation: Operation) -> u64 {
    (match operation {
        Operation::Encrypt => ck::CKF_MESSAGE_ENCRYPT,
        Operation::Decrypt => ck::CKF_MESSAGE_DECRYPT,
        Operation::Sign => ck::CKF_MESSAGE_SIGN,
        Operation::Verify => ck::CKF_MESSAGE_VERIFY,
        Operation::Digest => 0,
    }) as u64
}

/// Every message-based flag of `C_SessionCancel`.
pub const MESSAGE_FLAGS: u64 = (ck::CKF_MESSAGE_ENCRYPT
    | ck::CKF_MESSAGE_DECRYPT
    | ck::CKF_MESSAGE_SIGN
    | ck::CKF_MESSAGE_VERIFY) as u64;

impl Producer {
    /// Calls that share one place: a new output of one replaces the kept output of the other.
    fn same_place(&self, other: &Producer) -> bool {
        match (self, other) {
            (Producer::Operation(a, x), Producer::Operation(b, y)) => a == b && x == y,
            (Producer::WrapKey { .. }, Producer::WrapKey { .. }) => true,
            (Producer::SignMessage(_), Producer::SignMessage(_)) => true,
            _ => false,
        }
    }

    /// The operation whose state the output belongs to.
    pub fn operation(&self) -> Option<Operation> {
        match self {
            Producer::Operation(operation, _) => Some(*operation),
            Producer::WrapKey { .. } | Producer::SignMessage(_) => None,
        }
    }

    /// Whether `C_SessionCancel` with these flags ends what the output belongs to.
    pub fn cancelled_by(&self, flags: u64) -> bool {
        let flag = match self {
            Producer::Operation(operation, _) => operation_flag(*operation),
            Producer::WrapKey { .. } => ck::CKF_WRAP as u64,
            Producer::SignMessage(_) => ck::CKF_MESSAGE_SIGN as u64,
        };
        flags & flag != 0
    }
}

/// The kept outputs of one session; wiped on drop.
#[derive(Debug, Default)]
pub struct Pending(Vec<(Producer, SecretBytes)>);

impl Pending {
    /// The kept output of `call`, if any: handed over (and forgotten) when it fits `capacity`,
    /// copied (and still kept) when the application only asks for its length again or its
    /// buffer is still too small.
    pub fn take(&mut self, call: &Producer, capacity: Option<usize>) -> Option<SecretBytes> {
        let index = self.0.iter().position(|(kept, _)| kept == call)?;
        let output = &self.0[index].1;
        Some(if fit(output.len(), capacity) == Fit::Fits {
            self.0.swap_remove(index).1
        } else {
            output.duplicate()
        })
    }

    /// Keeps `output` of `call` when it does not fit `capacity`; either way forgets the older
    /// output of the same place, which the application has given up.
    pub fn keep(&mut self, call: Producer, output: &SecretBytes, capacity: Option<usize>) {
        self.0.retain(|(kept, _)| !kept.same_place(&call));
        if fit(output.len(), capacity) != Fit::Fits {
            self.0.push((call, output.duplicate()));
        }
    }

    /// Whether an output of `call`'s kind is kept (a single-part call's output the
    /// application asked the length of: its operation still waits for that call).
    pub fn holds(&self, call: &Producer) -> bool {
        self.0.iter().any(|(kept, _)| kept.same_place(call))
    }

    /// Forgets the outputs of the calls for which `forget` says so.
    pub fn forget(&mut self, mut forget: impl FnMut(&Producer) -> bool) {
        self.0.retain(|(call, _)| !forget(call));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(value: &[u8]) -> SecretBytes {
        SecretBytes::from_slice(value)
    }

    #[test]
    fn outputs_wait_until_they_fit() {
        let mut pending = Pending::default();
        let call = Producer::Operation(Operation::Encrypt, Stage::Single);
        assert_eq!(pending.take(&call, None), None);
        pending.keep(
            Producer::Operation(Operation::Encrypt, Stage::Single),
            &bytes(b"abc"),
            None,
        );
        // Asked again for the length, then with too small a buffer: still kept.
        assert_eq!(pending.take(&call, None), Some(bytes(b"abc")));
        assert_eq!(pending.take(&call, Some(2)), Some(bytes(b"abc")));
        let other = Producer::Operation(Operation::Encrypt, Stage::Final);
        assert_eq!(pending.take(&other, Some(64)), None);
        assert_eq!(pending.take(&call, Some(3)), Some(bytes(b"abc")));
        assert_eq!(pending.take(&call, Some(3)), None, "delivered once");
        // An output that fits is not kept.
        pending.keep(
            Producer::Operation(Operation::Sign, Stage::Final),
            &bytes(b"sig"),
            Some(3),
        );
        let sign = Producer::Operation(Operation::Sign, Stage::Final);
        assert_eq!(pending.take(&sign, None), None);
    }

    #[test]
    fn stateless_calls_match_on_their_arguments() {
        let wrap = |key| Producer::WrapKey {
            mechanism: Mechanism::plain(ck::CKM_AES_KEY_WRAP_PAD as u64),
            wrapping_key: 1,
            key,
        };
        let mut pending = Pending::default();
        pending.keep(wrap(2), &bytes(b"wrapped 2"), None);
        assert_eq!(pending.take(&wrap(3), None), None);
        // A new output of the same place replaces the one the application gave up.
        pending.keep(wrap(3), &bytes(b"wrapped 3"), Some(1));
        assert_eq!(pending.take(&wrap(2), Some(64)), None);
        assert_eq!(pending.take(&wrap(3), Some(64)), Some(bytes(b"wrapped 3")));

        let message = |data: &[u8]| Producer::SignMessage(bytes(data));
        pending.keep(message(b"one"), &bytes(b"signature"), None);
        assert_eq!(pending.take(&message(b"two"), Some(64)), None);
        assert_eq!(
            pending.take(&message(b"one"), Some(64)),
            Some(bytes(b"signature"))
        );
    }

    #[test]
    fn cancel_and_init_forget_outputs() {
        let mut pending = Pending::default();
        pending.keep(
            Producer::Operation(Operation::Encrypt, Stage::Update),
            &bytes(b"c"),
            None,
        );
        pending.keep(
            Producer::Operation(Operation::Digest, Stage::Final),
            &bytes(b"d"),
            None,
        );
        pending.keep(Producer::SignMessage(bytes(b"m")), &bytes(b"s"), None);
        pending.forget(|call| call.cancelled_by(ck::CKF_ENCRYPT as u64));
        let encrypt = Producer::Operation(Operation::Encrypt, Stage::Update);
        assert_eq!(pending.take(&encrypt, None), None);
        let digest = Producer::Operation(Operation::Digest, Stage::Final);
        assert_eq!(pending.take(&digest, None), Some(bytes(b"d")));
        pending.forget(|call| call.operation() == Some(Operation::Digest));
        assert_eq!(pending.take(&digest, None), None);
        let message = Producer::SignMessage(bytes(b"m"));
        assert!(!message.cancelled_by(ck::CKF_SIGN as u64));
        assert!(message.cancelled_by(MESSAGE_FLAGS));
        assert_eq!(message_flag(Operation::Digest), 0);
        assert_eq!(operation_flag(Operation::Verify), ck::CKF_VERIFY as u64);
    }
}
