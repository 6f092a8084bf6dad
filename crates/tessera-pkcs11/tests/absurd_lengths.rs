//! An application's garbage never takes it down (PKCS#11 3.0 §5.1: "a Cryptoki function
//! returns CKR_CRYPTOKI_NOT_INITIALIZED if it is called before C_Initialize"; the library must
//! also never abort its host). Every entry point is called, through the 3.0 function list as
//! an application would, with every length absurd (2^47: about 140 TB) and every pointer to a
//! 64-byte buffer: before `C_Initialize` each answers `CKR_CRYPTOKI_NOT_INITIALIZED` without
//! reading an argument; after it, on a real session of a (fake) device, each is refused with
//! an error code. It runs in a child process, which must exit normally: an allocation that
//! fails aborts a process, which no `catch_unwind` sees.

mod fake;

use std::process::Command;

use cryptoki_sys::*;

/// Set in the child process that makes the calls.
const CHILD: &str = "TESSERA_ABSURD_LENGTHS_CHILD";
/// The absurd length.
const HUGE: CK_ULONG = 1 << 47;

#[test]
fn absurd_lengths_end_their_own_calls_not_the_application() {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "the_calls_with_absurd_lengths", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the application did not survive ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("before C_Initialize: "), "{stdout}");
    assert!(stdout.contains("after C_Initialize: "), "{stdout}");
}

/// The child's part of [`absurd_lengths_end_their_own_calls_not_the_application`]: does
/// nothing unless started by it.
#[test]
fn the_calls_with_absurd_lengths() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    // SAFETY: the function list is the library's static table; every call passes pointers to
    // live buffers of at least 64 bytes (the lengths are what is absurd).
    unsafe {
        let mut interface: *mut CK_INTERFACE = std::ptr::null_mut();
        let rv = tessera_pkcs11::ffi::tables::C_GetInterface(
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut interface,
            0,
        );
        assert_eq!(rv, CKR_OK);
        let list = &*((*interface).pFunctionList as *const CK_FUNCTION_LIST_3_0);

        let before = calls(list, 1);
        let wrong: Vec<_> = before
            .iter()
            .filter(|(_, rv)| *rv != CKR_CRYPTOKI_NOT_INITIALIZED)
            .collect();
        assert!(wrong.is_empty(), "before C_Initialize: {wrong:x?}");
        println!(
            "before C_Initialize: {} calls, each CKR_CRYPTOKI_NOT_INITIALIZED",
            before.len()
        );

        let device = fake::FakeDevice::start("absurd");
        device.configure();
        assert_eq!(list.C_Initialize.unwrap()(std::ptr::null_mut()), CKR_OK);
        let mut session = 0;
        let flags = CKF_SERIAL_SESSION | CKF_RW_SESSION;
        let rv = list.C_OpenSession.unwrap()(0, flags, std::ptr::null_mut(), None, &mut session);
        assert_eq!(rv, CKR_OK);
        let after = calls(list, session);
        // The calls without an input length may well succeed (the buffers' claimed sizes are
        // only room for output, and what they write fits in them), and so may the message
        // inits, which do not read their mechanism's parameter (§5.8.5: it comes with each
        // message): the message calls after them then meet their absurd lengths with an
        // operation active.
        let no_input = [
            "C_GetInfo",
            "C_GetSlotList",
            "C_GetMechanismList",
            "C_GetSessionInfo",
            "C_MessageEncryptInit",
            "C_MessageDecryptInit",
        ];
        let accepted: Vec<_> = after
            .iter()
            .filter(|(name, rv)| *rv == CKR_OK && !no_input.contains(name))
            .collect();
        assert!(
            accepted.is_empty(),
            "after C_Initialize, accepted: {accepted:?}"
        );
        println!(
            "after C_Initialize: {} calls, each refused: {after:x?}",
            after.len()
        );
        list.C_Finalize.unwrap()(std::ptr::null_mut());
    }
}

/// Every entry point that takes an argument but `C_Initialize`, `C_Finalize` and the function
/// list getters, with absurd lengths; the name and return value of each.
///
/// # Safety
///
/// `list` is the library's function list.
unsafe fn calls(
    list: &CK_FUNCTION_LIST_3_0,
    session: CK_SESSION_HANDLE,
) -> Vec<(&'static str, CK_RV)> {
    let mut buffer = [0u8; 64];
    let b = buffer.as_mut_ptr();
    let mut out_len: CK_ULONG = HUGE;
    let mut handle: CK_OBJECT_HANDLE = 0;
    let mut handle2: CK_OBJECT_HANDLE = 0;
    let mut attribute = CK_ATTRIBUTE {
        type_: CKA_VALUE,
        pValue: b as *mut _,
        ulValueLen: HUGE,
    };
    let a: *mut CK_ATTRIBUTE = &mut attribute;
    let mut mechanism = CK_MECHANISM {
        mechanism: CKM_AES_CBC,
        pParameter: b as *mut _,
        ulParameterLen: HUGE,
    };
    let m: *mut CK_MECHANISM = &mut mechanism;
    let mut gcm = CK_GCM_PARAMS {
        pIv: b,
        ulIvLen: HUGE,
        ulIvBits: 0,
        pAAD: b,
        ulAADLen: HUGE,
        ulTagBits: 128,
    };
    let mut gcm_mechanism = CK_MECHANISM {
        mechanism: CKM_AES_GCM,
        pParameter: (&mut gcm as *mut CK_GCM_PARAMS).cast(),
        ulParameterLen: std::mem::size_of::<CK_GCM_PARAMS>() as CK_ULONG,
    };
    let g: *mut CK_MECHANISM = &mut gcm_mechanism;
    let mut info = [0u8; 1024];
    let i = info.as_mut_ptr();
    let l: *mut CK_ULONG = &mut out_len;
    let h: *mut CK_OBJECT_HANDLE = &mut handle;
    let h2: *mut CK_OBJECT_HANDLE = &mut handle2;
    let s = session;
    macro_rules! call {
        ($f:ident($($arg:expr),*)) => {
            // SAFETY: every pointer is to a live buffer of 64 bytes or more, or a live value
            // of its type; what the lengths claim is for the library to refuse.
            (stringify!($f), unsafe { list.$f.unwrap()($($arg),*) })
        };
    }
    vec![
        call!(C_GetInfo(i.cast())),
        call!(C_GetSlotList(0, i.cast(), l)),
        call!(C_GetSlotInfo(HUGE, i.cast())),
        call!(C_GetTokenInfo(HUGE, i.cast())),
        call!(C_GetMechanismList(0, i.cast(), l)),
        call!(C_GetMechanismInfo(0, HUGE, i.cast())),
        call!(C_InitToken(0, b, HUGE, b)),
        call!(C_InitPIN(s, b, HUGE)),
        call!(C_SetPIN(s, b, HUGE, b, HUGE)),
        call!(C_GetSessionInfo(s, i.cast())),
        call!(C_GetOperationState(s, b, l)),
        call!(C_SetOperationState(s, b, HUGE, 0, 0)),
        call!(C_Login(s, CKU_USER, b, HUGE)),
        call!(C_LoginUser(s, CKU_USER, b, HUGE, b, HUGE)),
        call!(C_CreateObject(s, a, HUGE, h)),
        call!(C_CreateObject(s, a, 1, h)),
        call!(C_CopyObject(s, 1, a, HUGE, h)),
        call!(C_GetObjectSize(s, 1, l)),
        call!(C_GetAttributeValue(s, 1, a, HUGE)),
        call!(C_SetAttributeValue(s, 1, a, HUGE)),
        call!(C_SetAttributeValue(s, 1, a, 1)),
        call!(C_FindObjectsInit(s, a, HUGE)),
        call!(C_FindObjectsInit(s, a, 1)),
        call!(C_EncryptInit(s, m, 1)),
        call!(C_EncryptInit(s, g, 1)),
        call!(C_Encrypt(s, b, HUGE, b, l)),
        call!(C_EncryptUpdate(s, b, HUGE, b, l)),
        call!(C_DecryptInit(s, m, 1)),
        call!(C_Decrypt(s, b, HUGE, b, l)),
        call!(C_DecryptUpdate(s, b, HUGE, b, l)),
        call!(C_DigestInit(s, m)),
        call!(C_Digest(s, b, HUGE, b, l)),
        call!(C_DigestUpdate(s, b, HUGE)),
        call!(C_SignInit(s, m, 1)),
        call!(C_Sign(s, b, HUGE, b, l)),
        call!(C_SignUpdate(s, b, HUGE)),
        call!(C_SignRecoverInit(s, m, 1)),
        call!(C_SignRecover(s, b, HUGE, b, l)),
        call!(C_VerifyInit(s, m, 1)),
        call!(C_Verify(s, b, HUGE, b, HUGE)),
        call!(C_VerifyUpdate(s, b, HUGE)),
        call!(C_VerifyFinal(s, b, HUGE)),
        call!(C_VerifyRecoverInit(s, m, 1)),
        call!(C_VerifyRecover(s, b, HUGE, b, l)),
        call!(C_DigestEncryptUpdate(s, b, HUGE, b, l)),
        call!(C_DecryptDigestUpdate(s, b, HUGE, b, l)),
        call!(C_SignEncryptUpdate(s, b, HUGE, b, l)),
        call!(C_DecryptVerifyUpdate(s, b, HUGE, b, l)),
        call!(C_GenerateKey(s, m, a, HUGE, h)),
        call!(C_GenerateKeyPair(s, m, a, HUGE, a, HUGE, h, h2)),
        call!(C_WrapKey(s, m, 1, 2, b, l)),
        call!(C_UnwrapKey(s, m, 1, b, HUGE, a, HUGE, h)),
        call!(C_DeriveKey(s, m, 1, a, HUGE, h)),
        call!(C_SeedRandom(s, b, HUGE)),
        call!(C_GenerateRandom(s, b, HUGE)),
        call!(C_MessageEncryptInit(s, g, 1)),
        call!(C_EncryptMessage(s, b.cast(), HUGE, b, HUGE, b, HUGE, b, l)),
        call!(C_MessageDecryptInit(s, g, 1)),
        call!(C_DecryptMessage(s, b.cast(), HUGE, b, HUGE, b, HUGE, b, l)),
        call!(C_MessageSignInit(s, m, 1)),
        call!(C_SignMessage(s, b.cast(), HUGE, b, HUGE, b, l)),
        call!(C_MessageVerifyInit(s, m, 1)),
        call!(C_VerifyMessage(s, b.cast(), HUGE, b, HUGE, b, HUGE)),
        call!(C_EncryptMessageBegin(s, b.cast(), HUGE, b, HUGE)),
        call!(C_EncryptMessageNext(s, b.cast(), HUGE, b, HUGE, b, l, 0)),
        call!(C_DecryptMessageBegin(s, b.cast(), HUGE, b, HUGE)),
        call!(C_DecryptMessageNext(s, b.cast(), HUGE, b, HUGE, b, l, 0)),
        call!(C_SignMessageBegin(s, b.cast(), HUGE)),
        call!(C_SignMessageNext(s, b.cast(), HUGE, b, HUGE, b, l)),
        call!(C_VerifyMessageBegin(s, b.cast(), HUGE)),
        call!(C_VerifyMessageNext(s, b.cast(), HUGE, b, HUGE, b, HUGE)),
    ]
}
