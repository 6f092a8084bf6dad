//! The mechanism table: what `C_GetMechanismList` and `C_GetMechanismInfo` report.

use tessera_core::ck;
use tessera_core::info::MechanismInfo;

const EC_FLAGS: ck::CK_FLAGS = ck::CKF_EC_F_P | ck::CKF_EC_NAMEDCURVE | ck::CKF_EC_UNCOMPRESS;
const SIGN_VERIFY: ck::CK_FLAGS = ck::CKF_SIGN | ck::CKF_VERIFY;
const CIPHER: ck::CK_FLAGS = ck::CKF_ENCRYPT | ck::CKF_DECRYPT;

/// (mechanism, min key size, max key size, flags). Key sizes are bytes for AES, bits for RSA
/// and EC, as PKCS#11 specifies per mechanism.
const TABLE: &[(ck::CK_MECHANISM_TYPE, u64, u64, ck::CK_FLAGS)] = &[
    (ck::CKM_SHA256, 0, 0, ck::CKF_DIGEST),
    (ck::CKM_SHA384, 0, 0, ck::CKF_DIGEST),
    (ck::CKM_SHA512, 0, 0, ck::CKF_DIGEST),
    (ck::CKM_AES_KEY_GEN, 16, 32, ck::CKF_GENERATE),
    (ck::CKM_AES_CBC_PAD, 16, 32, CIPHER),
    (ck::CKM_AES_GCM, 16, 32, CIPHER),
    (
        ck::CKM_EC_KEY_PAIR_GEN,
        256,
        521,
        ck::CKF_GENERATE_KEY_PAIR | EC_FLAGS,
    ),
    (ck::CKM_ECDSA, 256, 521, SIGN_VERIFY | EC_FLAGS),
    (ck::CKM_ECDSA_SHA256, 256, 521, SIGN_VERIFY | EC_FLAGS),
    (ck::CKM_ECDSA_SHA384, 256, 521, SIGN_VERIFY | EC_FLAGS),
    (ck::CKM_ECDSA_SHA512, 256, 521, SIGN_VERIFY | EC_FLAGS),
    (
        ck::CKM_RSA_PKCS_KEY_PAIR_GEN,
        2048,
        4096,
        ck::CKF_GENERATE_KEY_PAIR,
    ),
    (ck::CKM_RSA_PKCS, 2048, 4096, SIGN_VERIFY),
    (ck::CKM_SHA256_RSA_PKCS, 2048, 4096, SIGN_VERIFY),
    (ck::CKM_SHA384_RSA_PKCS, 2048, 4096, SIGN_VERIFY),
    (ck::CKM_SHA512_RSA_PKCS, 2048, 4096, SIGN_VERIFY),
    (ck::CKM_RSA_PKCS_PSS, 2048, 4096, SIGN_VERIFY),
    (ck::CKM_SHA256_RSA_PKCS_PSS, 2048, 4096, SIGN_VERIFY),
    (ck::CKM_SHA384_RSA_PKCS_PSS, 2048, 4096, SIGN_VERIFY),
    (ck::CKM_SHA512_RSA_PKCS_PSS, 2048, 4096, SIGN_VERIFY),
];

/// Every supported mechanism.
pub fn list() -> Vec<u64> {
    TABLE.iter().map(|(m, ..)| *m as u64).collect()
}

/// The info of a mechanism, if supported.
pub fn info(mechanism: u64) -> Option<MechanismInfo> {
    TABLE
        .iter()
        .find(|(m, ..)| *m as u64 == mechanism)
        .map(|(_, min, max, flags)| MechanismInfo {
            min_key_size: *min,
            max_key_size: *max,
            flags: *flags as u64 | ck::CKF_HW as u64,
        })
}
