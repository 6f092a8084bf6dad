//! The mechanism table: what `C_GetMechanismList` and `C_GetMechanismInfo` report.

use tessera_core::ck;
use tessera_core::info::MechanismInfo;

const EC_FLAGS: ck::CK_FLAGS = ck::CKF_EC_F_P | ck::CKF_EC_NAMEDCURVE | ck::CKF_EC_UNCOMPRESS;
const SIGN_VERIFY: ck::CK_FLAGS = ck::CKF_SIGN | ck::CKF_VERIFY;
const CIPHER: ck::CK_FLAGS = ck::CKF_ENCRYPT | ck::CKF_DECRYPT;
const WRAP: ck::CK_FLAGS = ck::CKF_WRAP | ck::CKF_UNWRAP;

/// (mechanism, min key size, max key size, flags). Key sizes are bytes for AES, bits for RSA
/// and EC, as PKCS#11 specifies per mechanism.
const TABLE: &[(ck::CK_MECHANISM_TYPE, u64, u64, ck::CK_FLAGS)] = &[
    (ck::CKM_SHA_1, 0, 0, ck::CKF_DIGEST),
    (ck::CKM_SHA224, 0, 0, ck::CKF_DIGEST),
    (ck::CKM_SHA256, 0, 0, ck::CKF_DIGEST),
    (ck::CKM_SHA384, 0, 0, ck::CKF_DIGEST),
    (ck::CKM_SHA512, 0, 0, ck::CKF_DIGEST),
    (ck::CKM_SHA3_256, 0, 0, ck::CKF_DIGEST),
    (ck::CKM_SHA3_384, 0, 0, ck::CKF_DIGEST),
    (ck::CKM_SHA3_512, 0, 0, ck::CKF_DIGEST),
    (ck::CKM_GENERIC_SECRET_KEY_GEN, 1, 512, ck::CKF_GENERATE),
    (ck::CKM_SHA_1_KEY_GEN, 1, 512, ck::CKF_GENERATE),
    (ck::CKM_SHA224_KEY_GEN, 1, 512, ck::CKF_GENERATE),
    (ck::CKM_SHA256_KEY_GEN, 1, 512, ck::CKF_GENERATE),
    (ck::CKM_SHA384_KEY_GEN, 1, 512, ck::CKF_GENERATE),
    (ck::CKM_SHA512_KEY_GEN, 1, 512, ck::CKF_GENERATE),
    (ck::CKM_SHA_1_HMAC, 1, 512, SIGN_VERIFY),
    (ck::CKM_SHA224_HMAC, 1, 512, SIGN_VERIFY),
    (ck::CKM_SHA256_HMAC, 1, 512, SIGN_VERIFY),
    (ck::CKM_SHA384_HMAC, 1, 512, SIGN_VERIFY),
    (ck::CKM_SHA512_HMAC, 1, 512, SIGN_VERIFY),
    (ck::CKM_SHA_1_HMAC_GENERAL, 1, 512, SIGN_VERIFY),
    (ck::CKM_SHA224_HMAC_GENERAL, 1, 512, SIGN_VERIFY),
    (ck::CKM_SHA256_HMAC_GENERAL, 1, 512, SIGN_VERIFY),
    (ck::CKM_SHA384_HMAC_GENERAL, 1, 512, SIGN_VERIFY),
    (ck::CKM_SHA512_HMAC_GENERAL, 1, 512, SIGN_VERIFY),
    (ck::CKM_AES_ECB, 16, 32, CIPHER),
    (ck::CKM_AES_CBC, 16, 32, CIPHER),
    (ck::CKM_AES_CTR, 16, 32, CIPHER),
    (ck::CKM_AES_CMAC, 16, 32, SIGN_VERIFY),
    (ck::CKM_AES_CMAC_GENERAL, 16, 32, SIGN_VERIFY),
    (ck::CKM_AES_KEY_WRAP, 16, 32, WRAP),
    (ck::CKM_AES_KEY_WRAP_PAD, 16, 32, WRAP),
    (ck::CKM_AES_KEY_WRAP_KWP, 16, 32, WRAP),
    (ck::CKM_RSA_PKCS_OAEP, 2048, 4096, CIPHER | WRAP),
    (
        ck::CKM_EC_EDWARDS_KEY_PAIR_GEN,
        255,
        255,
        ck::CKF_GENERATE_KEY_PAIR,
    ),
    (ck::CKM_EDDSA, 255, 255, SIGN_VERIFY),
    (
        ck::CKM_EC_MONTGOMERY_KEY_PAIR_GEN,
        255,
        255,
        ck::CKF_GENERATE_KEY_PAIR,
    ),
    (ck::CKM_ECDH1_DERIVE, 255, 521, ck::CKF_DERIVE | EC_FLAGS),
    (
        ck::CKM_ECDH1_COFACTOR_DERIVE,
        256,
        521,
        ck::CKF_DERIVE | EC_FLAGS,
    ),
    (ck::CKM_HKDF_DERIVE, 1, 512, ck::CKF_DERIVE),
    (ck::CKM_AES_ECB_ENCRYPT_DATA, 16, 32, ck::CKF_DERIVE),
    (ck::CKM_AES_CBC_ENCRYPT_DATA, 16, 32, ck::CKF_DERIVE),
    (ck::CKM_HKDF_DATA, 1, 512, ck::CKF_DERIVE),
    (ck::CKM_CONCATENATE_BASE_AND_KEY, 1, 512, ck::CKF_DERIVE),
    (ck::CKM_CONCATENATE_BASE_AND_DATA, 1, 512, ck::CKF_DERIVE),
    (ck::CKM_CONCATENATE_DATA_AND_BASE, 1, 512, ck::CKF_DERIVE),
    (ck::CKM_XOR_BASE_AND_DATA, 1, 512, ck::CKF_DERIVE),
    (ck::CKM_EXTRACT_KEY_FROM_KEY, 1, 512, ck::CKF_DERIVE),
    (ck::CKM_SP800_108_COUNTER_KDF, 1, 512, ck::CKF_DERIVE),
    (ck::CKM_SP800_108_FEEDBACK_KDF, 1, 512, ck::CKF_DERIVE),
    (
        ck::CKM_SP800_108_DOUBLE_PIPELINE_KDF,
        1,
        512,
        ck::CKF_DERIVE,
    ),
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
    (ck::CKM_ECDSA_SHA1, 256, 521, SIGN_VERIFY | EC_FLAGS),
    (ck::CKM_ECDSA_SHA224, 256, 521, SIGN_VERIFY | EC_FLAGS),
    (ck::CKM_ECDSA_SHA256, 256, 521, SIGN_VERIFY | EC_FLAGS),
    (ck::CKM_ECDSA_SHA384, 256, 521, SIGN_VERIFY | EC_FLAGS),
    (ck::CKM_ECDSA_SHA512, 256, 521, SIGN_VERIFY | EC_FLAGS),
    (
        ck::CKM_RSA_PKCS_KEY_PAIR_GEN,
        1024,
        4096,
        ck::CKF_GENERATE_KEY_PAIR,
    ),
    (ck::CKM_RSA_PKCS, 1024, 4096, SIGN_VERIFY | CIPHER | WRAP),
    // PKCS#11 3.2, post-quantum (FIPS 203, 204): key sizes are the parameter sets offered
    // (CKP_ML_KEM_512 … _1024, CKP_ML_DSA_44 … _87).
    (ck::CKM_ML_KEM_KEY_PAIR_GEN, 1, 3, ck::CKF_GENERATE_KEY_PAIR),
    (
        ck::CKM_ML_KEM,
        1,
        3,
        ck::CKF_ENCAPSULATE | ck::CKF_DECAPSULATE,
    ),
    (ck::CKM_ML_DSA_KEY_PAIR_GEN, 1, 3, ck::CKF_GENERATE_KEY_PAIR),
    (ck::CKM_ML_DSA, 1, 3, SIGN_VERIFY),
    (ck::CKM_HASH_ML_DSA, 1, 3, SIGN_VERIFY),
    (ck::CKM_HASH_ML_DSA_SHA224, 1, 3, SIGN_VERIFY),
    (ck::CKM_HASH_ML_DSA_SHA256, 1, 3, SIGN_VERIFY),
    (ck::CKM_HASH_ML_DSA_SHA384, 1, 3, SIGN_VERIFY),
    (ck::CKM_HASH_ML_DSA_SHA512, 1, 3, SIGN_VERIFY),
    (ck::CKM_HASH_ML_DSA_SHA3_224, 1, 3, SIGN_VERIFY),
    (ck::CKM_HASH_ML_DSA_SHA3_256, 1, 3, SIGN_VERIFY),
    (ck::CKM_HASH_ML_DSA_SHA3_384, 1, 3, SIGN_VERIFY),
    (ck::CKM_HASH_ML_DSA_SHA3_512, 1, 3, SIGN_VERIFY),
    // The legacy mechanisms (crypto/legacy.rs), none of them under the `a` flag.
    (ck::CKM_MD5, 0, 0, ck::CKF_DIGEST),
    (ck::CKM_MD5_HMAC, 1, 512, SIGN_VERIFY),
    (ck::CKM_DES2_KEY_GEN, 16, 16, ck::CKF_GENERATE),
    (ck::CKM_DES3_KEY_GEN, 24, 24, ck::CKF_GENERATE),
    (ck::CKM_DES3_ECB, 16, 24, CIPHER),
    (ck::CKM_DES3_CBC, 16, 24, CIPHER),
    (ck::CKM_DES3_CBC_PAD, 16, 24, CIPHER),
    (ck::CKM_DES3_CMAC, 16, 24, SIGN_VERIFY),
    (ck::CKM_RSA_X_509, 1024, 4096, SIGN_VERIFY | CIPHER),
    (ck::CKM_SHA256_RSA_PKCS, 2048, 4096, SIGN_VERIFY),
    (ck::CKM_SHA384_RSA_PKCS, 2048, 4096, SIGN_VERIFY),
    (ck::CKM_SHA512_RSA_PKCS, 2048, 4096, SIGN_VERIFY),
    (ck::CKM_RSA_PKCS_PSS, 2048, 4096, SIGN_VERIFY),
    (ck::CKM_SHA256_RSA_PKCS_PSS, 2048, 4096, SIGN_VERIFY),
    (ck::CKM_SHA384_RSA_PKCS_PSS, 2048, 4096, SIGN_VERIFY),
    (ck::CKM_SHA512_RSA_PKCS_PSS, 2048, 4096, SIGN_VERIFY),
];

/// Mechanisms that are not approved: hidden and refused under the `a` flag (FIPS Algorithms
/// Only). SHA-1 is kept for legacy digests and legacy ECDSA verification; MD5, triple DES and
/// raw RSA for payments and older PKI.
const NOT_APPROVED: &[ck::CK_MECHANISM_TYPE] = &[
    ck::CKM_SHA_1,
    ck::CKM_ECDSA_SHA1,
    ck::CKM_MD5,
    ck::CKM_MD5_HMAC,
    ck::CKM_DES2_KEY_GEN,
    ck::CKM_DES3_KEY_GEN,
    ck::CKM_DES3_ECB,
    ck::CKM_DES3_CBC,
    ck::CKM_DES3_CBC_PAD,
    ck::CKM_DES3_CMAC,
    ck::CKM_RSA_X_509,
];

/// Whether a mechanism's parameter may be used under the device flags: under the `a` flag,
/// AES-GCM takes 96-bit IVs only (the length SP 800-38D recommends) and EdDSA is plain
/// Ed25519 (the other GCM IV lengths and Ed25519ctx/ph go through the legacy module).
pub fn parameter_allowed(mechanism: &tessera_core::Mechanism, flags: u64) -> bool {
    use tessera_core::MechanismParameter;
    let fips = flags & tessera_core::flags::FIPS_ALGORITHMS != 0;
    match &mechanism.parameter {
        MechanismParameter::Gcm { iv, .. } if fips => iv.len() == 12,
        // Ed25519ctx and Ed25519ph come from the legacy module.
        MechanismParameter::Eddsa { prehash, context } if fips => !prehash && context.is_empty(),
        _ => true,
    }
}

/// Whether a mechanism may be used under the device flags.
pub fn allowed(mechanism: u64, flags: u64) -> bool {
    // Increased Security Level: no key is derived by extracting another's bits.
    if mechanism == ck::CKM_EXTRACT_KEY_FROM_KEY as u64
        && flags & tessera_core::flags::INCREASED_SECURITY != 0
    {
        return false;
    }
    flags & tessera_core::flags::FIPS_ALGORITHMS == 0
        || !NOT_APPROVED.iter().any(|m| *m as u64 == mechanism)
}

/// Whether a mechanism works with RSA keys, whose private-key operations take a millisecond or
/// more (the table's rows with modulus sizes up to 4096 bits: RSA is the only such family).
pub fn uses_rsa(mechanism: u64) -> bool {
    TABLE
        .iter()
        .any(|(m, _, max, _)| *m as u64 == mechanism && *max >= 4096)
}

/// Every mechanism offered under the device flags.
pub fn list(flags: u64) -> Vec<u64> {
    TABLE
        .iter()
        .map(|(m, ..)| *m as u64)
        .filter(|m| allowed(*m, flags))
        .collect()
}

/// The info of a mechanism, if offered under the device flags. Raw RSA PKCS#1 v1.5
/// decryption (a padding oracle) is offered only with the `w` flag.
pub fn info(mechanism: u64, flags: u64) -> Option<MechanismInfo> {
    if !allowed(mechanism, flags) {
        return None;
    }
    let weak = flags & tessera_core::flags::WEAK_MECHANISMS != 0;
    let fips = flags & tessera_core::flags::FIPS_ALGORITHMS != 0;
    TABLE
        .iter()
        .find(|(m, ..)| *m as u64 == mechanism)
        .map(|(m, min, max, flags)| {
            let mut flags = *flags | ck::CKF_HW;
            if *m == ck::CKM_RSA_PKCS && !weak {
                flags &= !(ck::CKF_DECRYPT | ck::CKF_UNWRAP);
            }
            // RSA below 2048 bits is not approved.
            let min = match *max >= 4096 && fips {
                true => (*min).max(2048),
                false => *min,
            };
            MechanismInfo {
                min_key_size: min,
                max_key_size: *max,
                flags: flags as u64,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_mechanisms_are_told_apart() {
        for m in [
            ck::CKM_RSA_PKCS,
            ck::CKM_RSA_PKCS_OAEP,
            ck::CKM_SHA256_RSA_PKCS_PSS,
            ck::CKM_RSA_PKCS_KEY_PAIR_GEN,
        ] {
            assert!(uses_rsa(m as u64), "{m:#x}");
        }
        for m in [
            ck::CKM_ECDSA_SHA256,
            ck::CKM_AES_GCM,
            ck::CKM_SHA256_HMAC,
            ck::CKM_EDDSA,
        ] {
            assert!(!uses_rsa(m as u64), "{m:#x}");
        }
    }
}
