//! Security flags of a device: letters, bits and names, in one table (docs/reference.md,
//! "Security flags", which a test holds to it).

/// One security flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag {
    /// The `ctconf -f` letter.
    pub letter: char,
    /// The bit of the product we model.
    pub bit: u64,
    /// The name shown in `Security Mode`.
    pub name: &'static str,
}

/// Entrust Ready.
pub const ENTRUST_READY: u64 = 0x1;
/// No Clear PINs.
pub const NO_CLEAR_PINS: u64 = 0x2;
/// Auth Protection.
pub const AUTH_PROTECTION: u64 = 0x4;
/// No Public Crypto.
pub const NO_PUBLIC_CRYPTO: u64 = 0x8;
/// Tamper Before Upgrade.
pub const TAMPER_BEFORE_UPGRADE: u64 = 0x10;
/// Increased Security Level.
pub const INCREASED_SECURITY: u64 = 0x20;
/// FIPS Algorithms Only.
pub const FIPS_ALGORITHMS: u64 = 0x40;
/// Full Secure Message Encryption.
pub const FULL_SM_ENCRYPTION: u64 = 0x80;
/// Full Secure Message Signing.
pub const FULL_SM_SIGNING: u64 = 0x100;
/// Pure PKCS#11.
pub const PURE_PKCS11: u64 = 0x200;
/// DES Even Parity Allowed.
pub const DES_EVEN_PARITY: u64 = 0x400;
/// User-specified ECC domain parameters.
pub const USER_ECC_PARAMETERS: u64 = 0x800;
/// Weak PKCS#11 mechanisms.
pub const WEAK_MECHANISMS: u64 = 0x10000;
/// PCI audit logs.
pub const PCI_AUDIT: u64 = 0x20000;
/// Post-Quantum Channel: channels must be hybrid (X25519 and ML-KEM-768).
pub const HYBRID_CHANNEL: u64 = 0x40000;
/// Mode Locked.
pub const MODE_LOCKED: u64 = 0x1000_0000;

/// Every flag, in the order `Security Mode` lists them.
pub const FLAGS: &[Flag] = &[
    Flag {
        letter: 'e',
        bit: ENTRUST_READY,
        name: "Entrust Ready",
    },
    Flag {
        letter: 'n',
        bit: NO_CLEAR_PINS,
        name: "No Clear PINs",
    },
    Flag {
        letter: 'u',
        bit: AUTH_PROTECTION,
        name: "Auth Protection",
    },
    Flag {
        letter: 'c',
        bit: NO_PUBLIC_CRYPTO,
        name: "No Public Crypto",
    },
    Flag {
        letter: 't',
        bit: TAMPER_BEFORE_UPGRADE,
        name: "Tamper Before Upgrade",
    },
    Flag {
        letter: 'i',
        bit: INCREASED_SECURITY,
        name: "Increased Security Level",
    },
    Flag {
        letter: 'a',
        bit: FIPS_ALGORITHMS,
        name: "FIPS Algorithms Only",
    },
    Flag {
        letter: 'N',
        bit: FULL_SM_ENCRYPTION,
        name: "Full Secure Message Encryption",
    },
    Flag {
        letter: 'U',
        bit: FULL_SM_SIGNING,
        name: "Full Secure Message Signing",
    },
    Flag {
        letter: 'p',
        bit: PURE_PKCS11,
        name: "Pure PKCS#11",
    },
    Flag {
        letter: 'd',
        bit: DES_EVEN_PARITY,
        name: "DES Even Parity Allowed",
    },
    Flag {
        letter: 'E',
        bit: USER_ECC_PARAMETERS,
        name: "User-specified ECC domain parameters",
    },
    Flag {
        letter: 'w',
        bit: WEAK_MECHANISMS,
        name: "Weak PKCS#11 mechanisms",
    },
    Flag {
        letter: 'b',
        bit: PCI_AUDIT,
        name: "PCI audit logs",
    },
    Flag {
        letter: 'q',
        bit: HYBRID_CHANNEL,
        name: "Post-Quantum Channel",
    },
    Flag {
        letter: 'l',
        bit: MODE_LOCKED,
        name: "Mode Locked",
    },
];

/// `F`, FIPS Mode: `a c l n t u` together.
pub const FIPS_MODE: u64 = FIPS_ALGORITHMS
    | NO_PUBLIC_CRYPTO
    | MODE_LOCKED
    | NO_CLEAR_PINS
    | TAMPER_BEFORE_UPGRADE
    | AUTH_PROTECTION;

/// Flags that need an identity key and certificate on the device (`u n N U q`, and so `F`):
/// each makes the device require a channel, which it cannot make without one.
pub const NEED_IDENTITY: u64 =
    AUTH_PROTECTION | NO_CLEAR_PINS | FULL_SM_ENCRYPTION | FULL_SM_SIGNING | HYBRID_CHANNEL;

/// Every valid letter, for messages.
pub fn valid_letters() -> String {
    let mut letters: String = FLAGS.iter().map(|f| f.letter).collect();
    letters.push('F');
    letters
}

/// Parses `ctconf -f` letters into bits; `0` alone means no flags. The error names the
/// first unknown letter.
pub fn parse(letters: &str) -> Result<u64, char> {
    if letters == "0" {
        return Ok(0);
    }
    let mut bits = 0;
    for letter in letters.chars() {
        if letter == 'F' {
            bits |= FIPS_MODE;
            continue;
        }
        bits |= FLAGS.iter().find(|f| f.letter == letter).ok_or(letter)?.bit;
    }
    Ok(bits)
}

/// The names of the set flags, or `Default (No flags set)`.
pub fn describe(bits: u64) -> String {
    let names: Vec<&str> = FLAGS
        .iter()
        .filter(|f| bits & f.bit != 0)
        .map(|f| f.name)
        .collect();
    if names.is_empty() {
        "Default (No flags set)".into()
    } else {
        names.join(", ")
    }
}

/// The letters of the set flags.
pub fn letters(bits: u64) -> String {
    FLAGS
        .iter()
        .filter(|f| bits & f.bit != 0)
        .map(|f| f.letter)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_bits_and_names() {
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(parse("F"), Ok(0x1000_005E));
        assert_eq!(parse("cw"), Ok(0x10008));
        assert_eq!(parse("cz"), Err('z'));
        assert_eq!(describe(0), "Default (No flags set)");
        assert_eq!(
            describe(NO_PUBLIC_CRYPTO | MODE_LOCKED),
            "No Public Crypto, Mode Locked"
        );
        assert_eq!(letters(FIPS_MODE), "nuctal");
        assert_eq!(valid_letters().len(), 17);
        assert_eq!(parse("q"), Ok(HYBRID_CHANNEL));
    }
}
