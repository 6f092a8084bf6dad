//! Attributes and templates.
//!
//! On the wire an attribute is its type and its value bytes. Values of `CK_ULONG` kind travel as
//! 8-byte little-endian integers and `CK_BBOOL` values as one byte, whatever the host; the
//! PKCS#11 module converts at its C boundary (see [`AttributeKind`]).

use cryptoki_sys as ck;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// How an attribute's value is laid out in C.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributeKind {
    /// `CK_BBOOL`: one byte.
    Bool,
    /// `CK_ULONG` (and the types defined as it: class, key type, mechanism type, ...).
    Ulong,
    /// A byte string (labels, ids, big integers, DER).
    Bytes,
    /// `CK_DATE`: eight ASCII digits.
    Date,
    /// An array of `CK_ATTRIBUTE` (wrap, unwrap and derive templates).
    AttributeArray,
    /// An array of `CK_MECHANISM_TYPE`.
    MechanismArray,
}

/// `CKA_TESSERA_BACKUP` (`CK_BBOOL`, secret and private keys): whether the key may go into a
/// backup file (`ctkmu backup`). True: it may, even if it is not extractable; false: it never
/// does, even if it is; absent: it follows `CKA_EXTRACTABLE`. Set true only when the key is
/// made; it may change from true to false.
pub const CKA_TESSERA_BACKUP: u64 = ck::CKA_VENDOR_DEFINED as u64 + 0x5453_0010;

/// The C layout of an attribute type. Unknown types are treated as byte strings.
pub fn kind(ty: u64) -> AttributeKind {
    if ty == CKA_TESSERA_BACKUP {
        return AttributeKind::Bool;
    }
    const BOOLS: &[ck::CK_ATTRIBUTE_TYPE] = &[
        ck::CKA_TOKEN,
        ck::CKA_PRIVATE,
        ck::CKA_TRUSTED,
        ck::CKA_SENSITIVE,
        ck::CKA_ENCRYPT,
        ck::CKA_DECRYPT,
        ck::CKA_WRAP,
        ck::CKA_UNWRAP,
        ck::CKA_SIGN,
        ck::CKA_SIGN_RECOVER,
        ck::CKA_VERIFY,
        ck::CKA_VERIFY_RECOVER,
        ck::CKA_DERIVE,
        ck::CKA_EXTRACTABLE,
        ck::CKA_LOCAL,
        ck::CKA_NEVER_EXTRACTABLE,
        ck::CKA_ALWAYS_SENSITIVE,
        ck::CKA_MODIFIABLE,
        ck::CKA_COPYABLE,
        ck::CKA_DESTROYABLE,
        ck::CKA_ALWAYS_AUTHENTICATE,
        ck::CKA_WRAP_WITH_TRUSTED,
        ck::CKA_ENCAPSULATE,
        ck::CKA_DECAPSULATE,
    ];
    const ULONGS: &[ck::CK_ATTRIBUTE_TYPE] = &[
        ck::CKA_CLASS,
        ck::CKA_KEY_TYPE,
        ck::CKA_CERTIFICATE_TYPE,
        ck::CKA_CERTIFICATE_CATEGORY,
        ck::CKA_MODULUS_BITS,
        ck::CKA_VALUE_LEN,
        ck::CKA_KEY_GEN_MECHANISM,
        ck::CKA_PRIME_BITS,
        ck::CKA_SUBPRIME_BITS,
        ck::CKA_NAME_HASH_ALGORITHM,
        ck::CKA_JAVA_MIDP_SECURITY_DOMAIN,
        ck::CKA_PROFILE_ID,
        ck::CKA_PARAMETER_SET,
    ];
    let ty = ty as ck::CK_ATTRIBUTE_TYPE;
    if BOOLS.contains(&ty) {
        AttributeKind::Bool
    } else if ULONGS.contains(&ty) {
        AttributeKind::Ulong
    } else if ty == ck::CKA_START_DATE || ty == ck::CKA_END_DATE {
        AttributeKind::Date
    } else if ty == ck::CKA_WRAP_TEMPLATE
        || ty == ck::CKA_UNWRAP_TEMPLATE
        || ty == ck::CKA_DERIVE_TEMPLATE
    {
        AttributeKind::AttributeArray
    } else if ty == ck::CKA_ALLOWED_MECHANISMS {
        AttributeKind::MechanismArray
    } else {
        AttributeKind::Bytes
    }
}

/// One attribute: type and value bytes. The value is wiped on drop because it may be key
/// material (a `CKA_VALUE` in a `C_CreateObject` template).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct Attribute {
    /// The `CKA_*` type.
    pub ty: u64,
    /// The value in wire form.
    #[serde(with = "crate::bytes")]
    pub value: Vec<u8>,
}

impl std::fmt::Debug for Attribute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Values may be secret: show the type and length only.
        write!(f, "Attribute(0x{:X}, {} bytes)", self.ty, self.value.len())
    }
}

impl Attribute {
    /// An attribute with raw bytes.
    pub fn bytes(ty: ck::CK_ATTRIBUTE_TYPE, value: &[u8]) -> Self {
        Self {
            ty: ty as u64,
            value: value.to_vec(),
        }
    }

    /// A `CK_BBOOL` attribute.
    pub fn bool(ty: ck::CK_ATTRIBUTE_TYPE, value: bool) -> Self {
        Self {
            ty: ty as u64,
            value: vec![u8::from(value)],
        }
    }

    /// A `CK_ULONG` attribute.
    pub fn ulong(ty: ck::CK_ATTRIBUTE_TYPE, value: u64) -> Self {
        Self {
            ty: ty as u64,
            value: value.to_le_bytes().to_vec(),
        }
    }

    /// The value as a `CK_BBOOL`, if it has that shape.
    pub fn as_bool(&self) -> Option<bool> {
        match self.value.as_slice() {
            [b] => Some(*b != 0),
            _ => None,
        }
    }

    /// The value as a `CK_ULONG`, if it has that shape.
    pub fn as_ulong(&self) -> Option<u64> {
        let bytes: [u8; 8] = self.value.as_slice().try_into().ok()?;
        Some(u64::from_le_bytes(bytes))
    }
}

/// An ordered list of attributes, as passed to `C_CreateObject` or `C_FindObjectsInit`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template(pub Vec<Attribute>);

impl Template {
    /// The attribute of a type, if present (the last one wins when repeated).
    pub fn find(&self, ty: ck::CK_ATTRIBUTE_TYPE) -> Option<&Attribute> {
        self.0.iter().rev().find(|a| a.ty == ty as u64)
    }

    /// A boolean attribute's value; `Err` when present with a bad shape.
    pub fn bool(&self, ty: ck::CK_ATTRIBUTE_TYPE) -> Result<Option<bool>, crate::Rv> {
        self.find(ty)
            .map(|a| a.as_bool().ok_or(crate::Rv::AttributeValueInvalid))
            .transpose()
    }

    /// A `CK_ULONG` attribute's value; `Err` when present with a bad shape.
    pub fn ulong(&self, ty: ck::CK_ATTRIBUTE_TYPE) -> Result<Option<u64>, crate::Rv> {
        self.find(ty)
            .map(|a| a.as_ulong().ok_or(crate::Rv::AttributeValueInvalid))
            .transpose()
    }

    /// A byte-string attribute's value.
    pub fn bytes(&self, ty: ck::CK_ATTRIBUTE_TYPE) -> Option<&[u8]> {
        self.find(ty).map(|a| a.value.as_slice())
    }

    /// Adds or replaces an attribute.
    pub fn set(&mut self, attribute: Attribute) {
        self.0.retain(|a| a.ty != attribute.ty);
        self.0.push(attribute);
    }

    /// Iterates the attributes.
    pub fn iter(&self) -> impl Iterator<Item = &Attribute> {
        self.0.iter()
    }

    /// The wire value of an attribute-array attribute (`CKA_WRAP_TEMPLATE`,
    /// `CKA_UNWRAP_TEMPLATE`, `CKA_DERIVE_TEMPLATE`): for each attribute, its type and its
    /// value's length (8 bytes little-endian each), then the value in wire form.
    pub fn to_nested(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for a in &self.0 {
            out.extend_from_slice(&a.ty.to_le_bytes());
            out.extend_from_slice(&(a.value.len() as u64).to_le_bytes());
            out.extend_from_slice(&a.value);
        }
        out
    }

    /// Reads [`Template::to_nested`]'s form; nested arrays inside are refused
    /// (`CKR_ATTRIBUTE_VALUE_INVALID`), as is anything malformed.
    pub fn from_nested(mut bytes: &[u8]) -> Result<Template, crate::Rv> {
        let invalid = crate::Rv::AttributeValueInvalid;
        let mut attributes = Vec::new();
        let word = |bytes: &mut &[u8]| -> Result<u64, crate::Rv> {
            let (head, rest) = bytes.split_first_chunk::<8>().ok_or(invalid)?;
            *bytes = rest;
            Ok(u64::from_le_bytes(*head))
        };
        while !bytes.is_empty() {
            let ty = word(&mut bytes)?;
            let len = usize::try_from(word(&mut bytes)?).map_err(|_| invalid)?;
            if len > bytes.len() || kind(ty) == AttributeKind::AttributeArray {
                return Err(invalid);
            }
            let (value, rest) = bytes.split_at(len);
            attributes.push(Attribute::bytes(ty as ck::CK_ATTRIBUTE_TYPE, value));
            bytes = rest;
        }
        Ok(Template(attributes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_accessors_reject_bad_shapes() {
        let template = Template(vec![
            Attribute::bool(ck::CKA_TOKEN, true),
            Attribute::ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
            Attribute::bytes(ck::CKA_PRIVATE, &[1, 2]),
        ]);
        assert_eq!(template.bool(ck::CKA_TOKEN), Ok(Some(true)));
        assert_eq!(template.ulong(ck::CKA_CLASS), Ok(Some(ck::CKO_SECRET_KEY)));
        assert_eq!(
            template.bool(ck::CKA_PRIVATE),
            Err(crate::Rv::AttributeValueInvalid)
        );
        assert_eq!(template.bool(ck::CKA_SENSITIVE), Ok(None));
        assert_eq!(kind(ck::CKA_VALUE_LEN), AttributeKind::Ulong);
        assert_eq!(kind(ck::CKA_LABEL), AttributeKind::Bytes);
    }

    #[test]
    fn nested_templates_round_trip_and_refuse_bad_shapes() {
        let template = Template(vec![
            Attribute::bool(ck::CKA_EXTRACTABLE, true),
            Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
            Attribute::bytes(ck::CKA_LABEL, b""),
        ]);
        let bytes = template.to_nested();
        assert_eq!(Template::from_nested(&bytes), Ok(template));
        assert_eq!(Template::from_nested(&[]), Ok(Template::default()));
        let bad = crate::Rv::AttributeValueInvalid;
        assert_eq!(Template::from_nested(&bytes[..bytes.len() - 1]), Err(bad));
        assert_eq!(Template::from_nested(&bytes[..5]), Err(bad));
        let nested = Template(vec![Attribute::bytes(ck::CKA_WRAP_TEMPLATE, &[])]);
        assert_eq!(Template::from_nested(&nested.to_nested()), Err(bad));
    }
}
