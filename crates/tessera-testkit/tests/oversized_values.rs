//! An oversized value ends only its own call (issue 17, point 8): through the built `.so`, a
//! 17 MiB or 100 MB attribute value, or 17 MiB of data, is refused by the library before it
//! is sent (a frame over the protocol's 16 MiB closed the connection, and with it every other
//! session of the application: CKR_SESSION_HANDLE_INVALID). Over both transports.

mod common;

use common::{aes_key, fixture, rv};
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use tessera_testkit::TRANSPORTS;

#[test]
fn an_oversized_value_fails_its_own_call_and_the_other_sessions_go_on() {
    for transport in TRANSPORTS {
        let f = fixture(transport);
        let first = f.user_session();
        let second = f.pkcs11.open_rw_session(f.slot).unwrap();
        let key = aes_key(&first).unwrap();
        for len in [17 << 20, 100_000_000] {
            let template = [
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(false),
                Attribute::Value(vec![0x42; len]),
            ];
            assert_eq!(
                rv(second.create_object(&template)),
                RvError::AttributeValueInvalid,
                "{transport:?}: a {len}-byte attribute"
            );
            // The search template is a template too.
            if len > 17 << 20 {
                continue;
            }
            assert_eq!(
                rv(second.find_objects(&[Attribute::Label(vec![b'x'; len])])),
                RvError::AttributeValueInvalid,
                "{transport:?}"
            );
        }
        // Data over the frame limit in one call.
        assert_eq!(
            rv(first.digest(&Mechanism::Sha256, &vec![0u8; 17 << 20])),
            RvError::DataLenRange,
            "{transport:?}"
        );
        // Both sessions, and the key, are still there.
        first.get_session_info().unwrap();
        second.get_session_info().unwrap();
        let sealed = first
            .encrypt(&Mechanism::AesCbcPad([7; 16]), key, b"still here")
            .unwrap();
        assert_eq!(sealed.len(), 16, "{transport:?}");
        second
            .create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(false),
                Attribute::Value(vec![1; 1 << 20]),
            ])
            .unwrap();
    }
}
