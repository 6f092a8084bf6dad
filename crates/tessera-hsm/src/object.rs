//! Objects and the attribute rules of PKCS#11 (v3.0 §4): defaults, required and forbidden
//! attributes per class, which attributes are secret, and which may change and how.

use std::collections::BTreeMap;

use tessera_core::attribute::CKA_TESSERA_BACKUP;
use tessera_core::ck;
use tessera_core::{Attribute, Rv, Template};

/// `CK_UNAVAILABLE_INFORMATION` as a wire `CK_ULONG`.
pub const UNAVAILABLE: u64 = u64::MAX;

/// An object's attributes, by type. Values are in wire form.
#[derive(Clone, Default)]
pub struct Attributes(BTreeMap<u64, Vec<u8>>);

impl crate::crypto::Key for Attributes {
    fn get(&self, ty: ck::CK_ATTRIBUTE_TYPE) -> Option<&[u8]> {
        Attributes::get(self, ty)
    }
    fn flag(&self, ty: ck::CK_ATTRIBUTE_TYPE) -> bool {
        Attributes::flag(self, ty)
    }
    fn class(&self) -> u64 {
        Attributes::class(self)
    }
    fn key_type(&self) -> u64 {
        Attributes::key_type(self)
    }
    fn owned(&self) -> Box<dyn crate::crypto::Key> {
        Box::new(self.clone())
    }
}

impl Attributes {
    /// The value of an attribute.
    pub fn get(&self, ty: ck::CK_ATTRIBUTE_TYPE) -> Option<&[u8]> {
        self.0.get(&(ty as u64)).map(Vec::as_slice)
    }

    /// A boolean attribute, `false` when absent.
    pub fn flag(&self, ty: ck::CK_ATTRIBUTE_TYPE) -> bool {
        matches!(self.get(ty), Some([b]) if *b != 0)
    }

    /// A `CK_ULONG` attribute.
    pub fn ulong(&self, ty: ck::CK_ATTRIBUTE_TYPE) -> Option<u64> {
        let bytes: [u8; 8] = self.get(ty)?.try_into().ok()?;
        Some(u64::from_le_bytes(bytes))
    }

    /// Sets an attribute.
    pub fn set(&mut self, ty: u64, value: Vec<u8>) {
        self.0.insert(ty, value);
    }

    /// Sets a boolean.
    pub fn set_flag(&mut self, ty: ck::CK_ATTRIBUTE_TYPE, value: bool) {
        self.set(ty as u64, vec![u8::from(value)]);
    }

    /// Sets a `CK_ULONG`.
    pub fn set_ulong(&mut self, ty: ck::CK_ATTRIBUTE_TYPE, value: u64) {
        self.set(ty as u64, value.to_le_bytes().to_vec());
    }

    /// Sets a default when absent.
    pub(crate) fn default_flag(&mut self, ty: ck::CK_ATTRIBUTE_TYPE, value: bool) {
        self.0
            .entry(ty as u64)
            .or_insert_with(|| vec![u8::from(value)]);
    }

    fn default_bytes(&mut self, ty: ck::CK_ATTRIBUTE_TYPE) {
        self.0.entry(ty as u64).or_default();
    }

    /// The types of the attributes it has.
    pub fn types(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.keys().copied()
    }

    /// True if the type is present.
    pub fn has(&self, ty: ck::CK_ATTRIBUTE_TYPE) -> bool {
        self.0.contains_key(&(ty as u64))
    }

    /// The object class.
    pub fn class(&self) -> u64 {
        self.ulong(ck::CKA_CLASS).unwrap_or(UNAVAILABLE)
    }

    /// The key type (keys only).
    pub fn key_type(&self) -> u64 {
        self.ulong(ck::CKA_KEY_TYPE).unwrap_or(UNAVAILABLE)
    }

    /// True if some attribute held here is one stored sealed (in memory, a format-1 store's
    /// clear value).
    pub fn holds_sealed_at_rest(&self) -> bool {
        let class = self.class();
        self.0.keys().any(|ty| sealed_at_rest(class, *ty))
    }

    /// Splits into (public, secret) templates for storage.
    pub fn split(&self) -> (Template, Template) {
        let class = self.class();
        let (secret, public): (Vec<_>, Vec<_>) = self
            .0
            .iter()
            .map(|(ty, value)| Attribute {
                ty: *ty,
                value: value.clone(),
            })
            .partition(|a| sealed_at_rest(class, a.ty));
        (Template(public), Template(secret))
    }

    /// Takes out the attributes that are sealed at rest (their values moved, not copied),
    /// leaving the public ones: a session object's secrets, to seal.
    pub fn take_sealed(&mut self) -> Template {
        let class = self.class();
        let sealed: Vec<u64> = (self.0.keys().copied())
            .filter(|ty| sealed_at_rest(class, *ty))
            .collect();
        Template(
            sealed
                .into_iter()
                .filter_map(|ty| self.0.remove(&ty).map(|value| Attribute { ty, value }))
                .collect(),
        )
    }

    /// Joins stored public and secret templates.
    pub fn join(public: &Template, secret: &Template) -> Attributes {
        let mut attributes = Attributes::default();
        for a in public.iter().chain(secret.iter()) {
            attributes.set(a.ty, a.value.clone());
        }
        attributes
    }

    /// Approximate size in bytes (`C_GetObjectSize`).
    pub fn size(&self) -> u64 {
        self.0.values().map(|v| v.len() as u64 + 16).sum()
    }
}

impl Drop for Attributes {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        for value in self.0.values_mut() {
            value.zeroize();
        }
    }
}

pub use crate::crypto::RSA_PRIVATE_PARTS;

/// Attributes that hold key material: sealed at rest, never readable when the key is
/// sensitive or unextractable.
pub fn is_secret(class: u64, ty: u64) -> bool {
    let ty = ty as ck::CK_ATTRIBUTE_TYPE;
    match class as ck::CK_OBJECT_CLASS {
        ck::CKO_SECRET_KEY => ty == ck::CKA_VALUE,
        ck::CKO_PRIVATE_KEY => {
            ty == ck::CKA_VALUE || ty == ck::CKA_SEED || RSA_PRIVATE_PARTS[2..].contains(&ty)
        }
        _ => false,
    }
}

/// Attributes stored sealed (under the token master key for a private object, the device key
/// for a public one): key material ([`is_secret`]) and the values of data objects and
/// certificates. The others (class, label, id, public key, ...) are stored in the clear so that
/// objects can be found before login.
pub fn sealed_at_rest(class: u64, ty: u64) -> bool {
    is_secret(class, ty)
        || (ty as ck::CK_ATTRIBUTE_TYPE == ck::CKA_VALUE
            && matches!(
                class as ck::CK_OBJECT_CLASS,
                ck::CKO_DATA | ck::CKO_CERTIFICATE
            ))
}

const COMMON: &[ck::CK_ATTRIBUTE_TYPE] = &[
    ck::CKA_CLASS,
    ck::CKA_TOKEN,
    ck::CKA_PRIVATE,
    ck::CKA_MODIFIABLE,
    ck::CKA_COPYABLE,
    ck::CKA_DESTROYABLE,
    ck::CKA_LABEL,
    ck::CKA_UNIQUE_ID,
];
const KEY_COMMON: &[ck::CK_ATTRIBUTE_TYPE] = &[
    ck::CKA_KEY_TYPE,
    ck::CKA_ID,
    ck::CKA_START_DATE,
    ck::CKA_END_DATE,
    ck::CKA_DERIVE,
    ck::CKA_LOCAL,
    ck::CKA_KEY_GEN_MECHANISM,
    ck::CKA_ALLOWED_MECHANISMS,
    ck::CKA_DERIVE_TEMPLATE,
];
const SECRET_KEY: &[ck::CK_ATTRIBUTE_TYPE] = &[
    ck::CKA_SENSITIVE,
    ck::CKA_ENCRYPT,
    ck::CKA_DECRYPT,
    ck::CKA_SIGN,
    ck::CKA_VERIFY,
    ck::CKA_WRAP,
    ck::CKA_UNWRAP,
    ck::CKA_EXTRACTABLE,
    ck::CKA_ALWAYS_SENSITIVE,
    ck::CKA_NEVER_EXTRACTABLE,
    ck::CKA_CHECK_VALUE,
    ck::CKA_WRAP_WITH_TRUSTED,
    ck::CKA_TRUSTED,
    ck::CKA_VALUE,
    ck::CKA_VALUE_LEN,
    ck::CKA_WRAP_TEMPLATE,
    ck::CKA_UNWRAP_TEMPLATE,
    CKA_TESSERA_BACKUP as ck::CK_ATTRIBUTE_TYPE,
];
const PUBLIC_KEY: &[ck::CK_ATTRIBUTE_TYPE] = &[
    ck::CKA_SUBJECT,
    ck::CKA_ENCRYPT,
    ck::CKA_VERIFY,
    ck::CKA_VERIFY_RECOVER,
    ck::CKA_WRAP,
    ck::CKA_TRUSTED,
    ck::CKA_PUBLIC_KEY_INFO,
    ck::CKA_MODULUS,
    ck::CKA_MODULUS_BITS,
    ck::CKA_PUBLIC_EXPONENT,
    ck::CKA_EC_PARAMS,
    ck::CKA_EC_POINT,
    ck::CKA_WRAP_TEMPLATE,
    // PKCS#11 3.2: ML-KEM and ML-DSA public keys.
    ck::CKA_VALUE,
    ck::CKA_PARAMETER_SET,
    ck::CKA_ENCAPSULATE,
];
const PRIVATE_KEY: &[ck::CK_ATTRIBUTE_TYPE] = &[
    ck::CKA_SUBJECT,
    ck::CKA_SENSITIVE,
    ck::CKA_DECRYPT,
    ck::CKA_SIGN,
    ck::CKA_SIGN_RECOVER,
    ck::CKA_UNWRAP,
    ck::CKA_EXTRACTABLE,
    ck::CKA_ALWAYS_SENSITIVE,
    ck::CKA_NEVER_EXTRACTABLE,
    ck::CKA_WRAP_WITH_TRUSTED,
    ck::CKA_ALWAYS_AUTHENTICATE,
    ck::CKA_PUBLIC_KEY_INFO,
    ck::CKA_MODULUS,
    ck::CKA_PUBLIC_EXPONENT,
    ck::CKA_PRIVATE_EXPONENT,
    ck::CKA_PRIME_1,
    ck::CKA_PRIME_2,
    ck::CKA_EXPONENT_1,
    ck::CKA_EXPONENT_2,
    ck::CKA_COEFFICIENT,
    ck::CKA_EC_PARAMS,
    ck::CKA_VALUE,
    ck::CKA_UNWRAP_TEMPLATE,
    // PKCS#11 3.2: ML-KEM and ML-DSA private keys.
    ck::CKA_PARAMETER_SET,
    ck::CKA_SEED,
    ck::CKA_DECAPSULATE,
    CKA_TESSERA_BACKUP as ck::CK_ATTRIBUTE_TYPE,
];
const DATA: &[ck::CK_ATTRIBUTE_TYPE] = &[ck::CKA_APPLICATION, ck::CKA_OBJECT_ID, ck::CKA_VALUE];
const CERTIFICATE: &[ck::CK_ATTRIBUTE_TYPE] = &[
    ck::CKA_CERTIFICATE_TYPE,
    ck::CKA_TRUSTED,
    ck::CKA_CERTIFICATE_CATEGORY,
    ck::CKA_CHECK_VALUE,
    ck::CKA_START_DATE,
    ck::CKA_END_DATE,
    ck::CKA_PUBLIC_KEY_INFO,
    ck::CKA_SUBJECT,
    ck::CKA_ID,
    ck::CKA_ISSUER,
    ck::CKA_SERIAL_NUMBER,
    ck::CKA_VALUE,
    ck::CKA_URL,
    ck::CKA_HASH_OF_SUBJECT_PUBLIC_KEY,
    ck::CKA_HASH_OF_ISSUER_PUBLIC_KEY,
    ck::CKA_JAVA_MIDP_SECURITY_DOMAIN,
    ck::CKA_NAME_HASH_ALGORITHM,
];

/// Whether an attribute type belongs to objects of a class.
pub fn valid_for_class(class: u64, ty: u64) -> bool {
    let ty = ty as ck::CK_ATTRIBUTE_TYPE;
    if COMMON.contains(&ty) {
        return true;
    }
    match class as ck::CK_OBJECT_CLASS {
        ck::CKO_SECRET_KEY => KEY_COMMON.contains(&ty) || SECRET_KEY.contains(&ty),
        ck::CKO_PUBLIC_KEY => KEY_COMMON.contains(&ty) || PUBLIC_KEY.contains(&ty),
        ck::CKO_PRIVATE_KEY => KEY_COMMON.contains(&ty) || PRIVATE_KEY.contains(&ty),
        ck::CKO_DATA => DATA.contains(&ty),
        ck::CKO_CERTIFICATE => CERTIFICATE.contains(&ty),
        _ => false,
    }
}

/// Attributes an application may change with `C_SetAttributeValue` (subject to the one-way
/// rules of [`check_change`]).
const SETTABLE: &[ck::CK_ATTRIBUTE_TYPE] = &[
    ck::CKA_LABEL,
    ck::CKA_ID,
    ck::CKA_START_DATE,
    ck::CKA_END_DATE,
    ck::CKA_SUBJECT,
    ck::CKA_ENCRYPT,
    ck::CKA_DECRYPT,
    ck::CKA_SIGN,
    ck::CKA_VERIFY,
    ck::CKA_SIGN_RECOVER,
    ck::CKA_VERIFY_RECOVER,
    ck::CKA_WRAP,
    ck::CKA_UNWRAP,
    ck::CKA_DERIVE,
    ck::CKA_SENSITIVE,
    ck::CKA_EXTRACTABLE,
    ck::CKA_APPLICATION,
    ck::CKA_OBJECT_ID,
    ck::CKA_TRUSTED,
    ck::CKA_WRAP_WITH_TRUSTED,
    ck::CKA_ENCAPSULATE,
    ck::CKA_DECAPSULATE,
    CKA_TESSERA_BACKUP as ck::CK_ATTRIBUTE_TYPE,
];

/// Attributes that `C_CopyObject` may change in addition to the settable ones.
const COPY_SETTABLE: &[ck::CK_ATTRIBUTE_TYPE] = &[
    ck::CKA_TOKEN,
    ck::CKA_PRIVATE,
    ck::CKA_MODIFIABLE,
    ck::CKA_COPYABLE,
    ck::CKA_DESTROYABLE,
];

const BACKUP: ck::CK_ATTRIBUTE_TYPE = CKA_TESSERA_BACKUP as ck::CK_ATTRIBUTE_TYPE;

/// Checks one change of an existing object's attribute (`copy`: in `C_CopyObject`).
pub fn check_change(
    object: &Attributes,
    change: &Attribute,
    copy: bool,
    so: bool,
    flags: u64,
) -> Result<(), Rv> {
    let ty = change.ty as ck::CK_ATTRIBUTE_TYPE;
    if !valid_for_class(object.class(), change.ty) {
        return Err(Rv::AttributeTypeInvalid);
    }
    let data_value = object.class() == ck::CKO_DATA as u64 && ty == ck::CKA_VALUE;
    let allowed = SETTABLE.contains(&ty) || data_value || (copy && COPY_SETTABLE.contains(&ty));
    if !allowed {
        // Changing an attribute to the value it already has is not a change.
        if object.get(ty) == Some(change.value.as_slice()) {
            return Ok(());
        }
        return Err(Rv::AttributeReadOnly);
    }
    let new = change.as_bool();
    let bool_attr = tessera_core::attribute::kind(change.ty) == tessera_core::AttributeKind::Bool;
    if bool_attr && new.is_none() {
        return Err(Rv::AttributeValueInvalid);
    }
    let old = object.flag(ty);
    match ty {
        // One-way attributes (v3.0 §4.9/§4.10 footnote 11): sensitive only to TRUE,
        // extractable only to FALSE, copyable and modifiable only to FALSE.
        ck::CKA_SENSITIVE if old && new == Some(false) => Err(Rv::AttributeReadOnly),
        ck::CKA_EXTRACTABLE if !old && new == Some(true) => Err(Rv::AttributeReadOnly),
        // Once true, read-only ("Attribute cannot be changed once set to CK_TRUE").
        ck::CKA_WRAP_WITH_TRUSTED if old && new == Some(false) => Err(Rv::AttributeReadOnly),
        // Whether a key may go into a backup file: set true only when the key is made.
        BACKUP if !old && new == Some(true) => Err(Rv::AttributeReadOnly),
        ck::CKA_COPYABLE if !old && new == Some(true) => Err(Rv::AttributeReadOnly),
        // A copy may make a read-only object modifiable, except at Increased Security (`i`).
        ck::CKA_MODIFIABLE
            if !old
                && new == Some(true)
                && flags & tessera_core::flags::INCREASED_SECURITY != 0 =>
        {
            Err(Rv::AttributeReadOnly)
        }
        ck::CKA_TRUSTED if new == Some(true) && !so => Err(Rv::AttributeReadOnly),
        _ => Ok(()),
    }
}

/// The attributes that hold templates (PKCS#11 3.0 §4.8: wrap, unwrap, derive).
const TEMPLATES: [ck::CK_ATTRIBUTE_TYPE; 3] = [
    ck::CKA_WRAP_TEMPLATE,
    ck::CKA_UNWRAP_TEMPLATE,
    ck::CKA_DERIVE_TEMPLATE,
];

/// The template of a new key made with `key` (unwrapping or derivation): the application's,
/// plus what `key`'s `rule` attribute (`CKA_UNWRAP_TEMPLATE`, `CKA_DERIVE_TEMPLATE`) demands;
/// an application attribute that contradicts the rule is `CKR_TEMPLATE_INCONSISTENT`.
pub fn constrained(
    template: &Template,
    key: &Attributes,
    rule: ck::CK_ATTRIBUTE_TYPE,
) -> Result<Template, Rv> {
    let Some(value) = key.get(rule) else {
        return Ok(template.clone());
    };
    let mut out = template.clone();
    for demanded in Template::from_nested(value)
        .map_err(|_| Rv::DeviceError)?
        .iter()
    {
        match template.find(demanded.ty as ck::CK_ATTRIBUTE_TYPE) {
            Some(given) if given.value != demanded.value => return Err(Rv::TemplateInconsistent),
            Some(_) => {}
            None => out.0.push(demanded.clone()),
        }
    }
    Ok(out)
}

/// Whether `target` has every attribute of `wrapping`'s `CKA_WRAP_TEMPLATE` with the same value
/// (no template: any key).
pub fn matches_wrap_template(wrapping: &Attributes, target: &Attributes) -> Result<bool, Rv> {
    let Some(value) = wrapping.get(ck::CKA_WRAP_TEMPLATE) else {
        return Ok(true);
    };
    let template = Template::from_nested(value).map_err(|_| Rv::DeviceError)?;
    let matches = template
        .iter()
        .all(|a| target.get(a.ty as ck::CK_ATTRIBUTE_TYPE) == Some(a.value.as_slice()));
    Ok(matches)
}

/// Completes a new object's attributes with the defaults of its class and checks what the
/// class requires. `generated` is the mechanism for keys made inside the HSM.
pub fn complete(attributes: &mut Attributes, generated: Option<u64>, flags: u64) -> Result<(), Rv> {
    let class = attributes.class();
    // CKA_UNIQUE_ID is the token's to give (v3.0 §4.4.1).
    if attributes.has(ck::CKA_UNIQUE_ID) {
        return Err(Rv::AttributeReadOnly);
    }
    fresh_unique_id(attributes)?;
    for ty in TEMPLATES {
        if let Some(value) = attributes.get(ty) {
            Template::from_nested(value)?;
        }
    }
    attributes.default_flag(ck::CKA_TOKEN, false);
    let private_default = matches!(
        class as ck::CK_OBJECT_CLASS,
        ck::CKO_PRIVATE_KEY | ck::CKO_SECRET_KEY
    );
    attributes.default_flag(ck::CKA_PRIVATE, private_default);
    attributes.default_flag(ck::CKA_MODIFIABLE, true);
    attributes.default_flag(ck::CKA_COPYABLE, true);
    attributes.default_flag(ck::CKA_DESTROYABLE, true);
    attributes.default_bytes(ck::CKA_LABEL);
    match class as ck::CK_OBJECT_CLASS {
        ck::CKO_DATA => {
            attributes.default_bytes(ck::CKA_APPLICATION);
            attributes.default_bytes(ck::CKA_OBJECT_ID);
            attributes.default_bytes(ck::CKA_VALUE);
        }
        ck::CKO_CERTIFICATE => {
            require(attributes, &[ck::CKA_CERTIFICATE_TYPE])?;
            attributes.default_flag(ck::CKA_TRUSTED, false);
            if attributes.ulong(ck::CKA_CERTIFICATE_TYPE) == Some(ck::CKC_X_509 as u64) {
                require(attributes, &[ck::CKA_SUBJECT, ck::CKA_VALUE])?;
                attributes.default_bytes(ck::CKA_ID);
                attributes.default_bytes(ck::CKA_ISSUER);
                attributes.default_bytes(ck::CKA_SERIAL_NUMBER);
            }
        }
        ck::CKO_SECRET_KEY | ck::CKO_PUBLIC_KEY | ck::CKO_PRIVATE_KEY => {
            require(attributes, &[ck::CKA_KEY_TYPE])?;
            attributes.default_bytes(ck::CKA_ID);
            attributes.default_bytes(ck::CKA_START_DATE);
            attributes.default_bytes(ck::CKA_END_DATE);
            let montgomery = attributes.key_type() == ck::CKK_EC_MONTGOMERY as u64;
            attributes.default_flag(ck::CKA_DERIVE, montgomery);
            attributes.set_flag(ck::CKA_LOCAL, generated.is_some());
            attributes.set_ulong(ck::CKA_KEY_GEN_MECHANISM, generated.unwrap_or(UNAVAILABLE));
            attributes.default_bytes(ck::CKA_ALLOWED_MECHANISMS);
            complete_key(attributes, class, generated.is_some(), flags)?;
        }
        _ => return Err(Rv::AttributeValueInvalid),
    }
    Ok(())
}

/// The usage attributes of a secret key (`CKA_DERIVE` is common to all keys).
pub(crate) const SECRET_KEY_USAGE: [ck::CK_ATTRIBUTE_TYPE; 6] = [
    ck::CKA_ENCRYPT,
    ck::CKA_DECRYPT,
    ck::CKA_SIGN,
    ck::CKA_VERIFY,
    ck::CKA_WRAP,
    ck::CKA_UNWRAP,
];

fn complete_key(
    attributes: &mut Attributes,
    class: u64,
    generated: bool,
    flags: u64,
) -> Result<(), Rv> {
    let usage: &[ck::CK_ATTRIBUTE_TYPE] = match class as ck::CK_OBJECT_CLASS {
        ck::CKO_SECRET_KEY => &SECRET_KEY_USAGE,
        ck::CKO_PUBLIC_KEY => &[ck::CKA_ENCRYPT, ck::CKA_VERIFY, ck::CKA_WRAP],
        _ => &[ck::CKA_DECRYPT, ck::CKA_SIGN, ck::CKA_UNWRAP],
    };
    // EC and Edwards keys sign and verify; Montgomery keys only derive. Neither encrypts or
    // wraps, so those default to false.
    let key_type = attributes.key_type() as ck::CK_KEY_TYPE;
    // The PKCS#11 3.2 attributes belong to ML-KEM and ML-DSA keys only (a public key's
    // CKA_VALUE is theirs too).
    let post_quantum = matches!(key_type, ck::CKK_ML_KEM | ck::CKK_ML_DSA);
    let theirs = [
        ck::CKA_PARAMETER_SET,
        ck::CKA_SEED,
        ck::CKA_ENCAPSULATE,
        ck::CKA_DECAPSULATE,
    ];
    let public_value = class == ck::CKO_PUBLIC_KEY as u64 && attributes.has(ck::CKA_VALUE);
    if !post_quantum && (public_value || theirs.iter().any(|ty| attributes.has(*ty))) {
        return Err(Rv::AttributeTypeInvalid);
    }
    let signing_only = matches!(key_type, ck::CKK_EC | ck::CKK_EC_EDWARDS | ck::CKK_ML_DSA);
    // ML-KEM keys only encapsulate and decapsulate (PKCS#11 3.2).
    let derive_only = matches!(key_type, ck::CKK_EC_MONTGOMERY | ck::CKK_ML_KEM);
    if key_type == ck::CKK_ML_KEM {
        let usage = match class as ck::CK_OBJECT_CLASS {
            ck::CKO_PUBLIC_KEY => ck::CKA_ENCAPSULATE,
            _ => ck::CKA_DECAPSULATE,
        };
        attributes.default_flag(usage, true);
    }
    for ty in usage {
        let can = !derive_only && (!signing_only || matches!(*ty, ck::CKA_SIGN | ck::CKA_VERIFY));
        attributes.default_flag(*ty, can);
    }

    if class == ck::CKO_PUBLIC_KEY as u64 {
        attributes.default_flag(ck::CKA_VERIFY_RECOVER, false);
        attributes.default_flag(ck::CKA_TRUSTED, false);
        attributes.default_bytes(ck::CKA_SUBJECT);
    } else {
        // The standard fixes a secret key's default (PKCS#11 3.0 §4.10, common secret key
        // attributes: "CK_TRUE if object is sensitive (default CK_FALSE)") and leaves a private
        // key's to the token (§4.9, footnote 9: "Default value is token-specific"): a private
        // key made or held here is sensitive unless the application says otherwise. The `n`
        // flag below makes both always sensitive.
        attributes.default_flag(ck::CKA_SENSITIVE, class == ck::CKO_PRIVATE_KEY as u64);
        if flags & tessera_core::flags::NO_CLEAR_PINS != 0 {
            // No Clear PINs (`n`): secret and private keys are always sensitive, whatever the
            // template asks.
            attributes.set_flag(ck::CKA_SENSITIVE, true);
        }
        attributes.default_flag(ck::CKA_EXTRACTABLE, true);
        attributes.default_flag(ck::CKA_WRAP_WITH_TRUSTED, false);
        let sensitive = attributes.flag(ck::CKA_SENSITIVE);
        let extractable = attributes.flag(ck::CKA_EXTRACTABLE);
        // A key that may go into a backup file (CKA_TESSERA_BACKUP) can leave the device: its
        // value is in the clear to whoever opens the file.
        let backup = attributes.get(BACKUP).is_some_and(|v| v != [0]);
        attributes.set_flag(ck::CKA_ALWAYS_SENSITIVE, generated && sensitive && !backup);
        attributes.set_flag(
            ck::CKA_NEVER_EXTRACTABLE,
            generated && !extractable && !backup,
        );
        if class == ck::CKO_PRIVATE_KEY as u64 {
            attributes.default_flag(ck::CKA_SIGN_RECOVER, false);
            attributes.default_flag(ck::CKA_ALWAYS_AUTHENTICATE, false);
            attributes.default_bytes(ck::CKA_SUBJECT);
        } else {
            attributes.default_flag(ck::CKA_TRUSTED, false);
        }
    }
    Ok(())
}

/// Gives an object a new `CKA_UNIQUE_ID` (128 random bits as hex). A failed random generator
/// fails the call (`CKR_FUNCTION_FAILED`): an empty id would not be unique.
pub fn fresh_unique_id(attributes: &mut Attributes) -> Result<(), Rv> {
    unique_id_from(attributes, crate::crypto::random)
}

fn unique_id_from(
    attributes: &mut Attributes,
    random: impl FnOnce(usize) -> Result<Vec<u8>, Rv>,
) -> Result<(), Rv> {
    let bytes = random(16)?;
    attributes.set(ck::CKA_UNIQUE_ID as u64, hex::encode(bytes).into_bytes());
    Ok(())
}

/// Fails with `CKR_TEMPLATE_INCOMPLETE` unless every type is present.
pub fn require(attributes: &Attributes, types: &[ck::CK_ATTRIBUTE_TYPE]) -> Result<(), Rv> {
    if types.iter().all(|ty| attributes.has(*ty)) {
        Ok(())
    } else {
        Err(Rv::TemplateIncomplete)
    }
}

/// Builds attributes from an application template: unknown or repeated-inconsistent types and
/// badly shaped values are refused.
pub fn from_template(template: &Template, class: u64) -> Result<Attributes, Rv> {
    let mut attributes = Attributes::default();
    for attribute in template.iter() {
        if !valid_for_class(class, attribute.ty) {
            return Err(Rv::AttributeTypeInvalid);
        }
        let shape_ok = match tessera_core::attribute::kind(attribute.ty) {
            tessera_core::AttributeKind::Bool => attribute.as_bool().is_some(),
            tessera_core::AttributeKind::Ulong => attribute.as_ulong().is_some(),
            tessera_core::AttributeKind::Date => matches!(attribute.value.len(), 0 | 8),
            _ => true,
        };
        if !shape_ok {
            return Err(Rv::AttributeValueInvalid);
        }
        if let Some(previous) = attributes.get(attribute.ty as ck::CK_ATTRIBUTE_TYPE) {
            if previous != attribute.value.as_slice() {
                return Err(Rv::TemplateInconsistent);
            }
        }
        attributes.set(attribute.ty, attribute.value.clone());
    }
    if attributes.ulong(ck::CKA_CLASS).is_some_and(|c| c != class) {
        return Err(Rv::TemplateInconsistent);
    }
    attributes.set_ulong(ck::CKA_CLASS, class);
    Ok(attributes)
}

/// True if every attribute of the template is present with the same value.
/// A search template with each type once, sorted by type (`None`: it names a type twice with
/// different values, which nothing matches). Made before the device is locked: matching the
/// result against an object stops at the first type the object lacks, so the work under the
/// lock is bounded by the object's attributes, not by the length of the client's template.
pub fn normalise(template: &Template) -> Option<Template> {
    let mut sorted: Vec<&tessera_core::Attribute> = template.iter().collect();
    sorted.sort_by_key(|a| a.ty);
    let mut out: Vec<tessera_core::Attribute> = Vec::with_capacity(sorted.len().min(64));
    for attribute in sorted {
        if let Some(last) = out.last() {
            if last.ty == attribute.ty {
                if last.value != attribute.value {
                    return None;
                }
                continue;
            }
        }
        out.push(attribute.clone());
    }
    Some(Template(out))
}

pub fn matches(attributes: &Attributes, template: &Template, secret_readable: bool) -> bool {
    let class = attributes.class();
    template.iter().all(|wanted| {
        if is_secret(class, wanted.ty) && !secret_readable {
            return false;
        }
        attributes.get(wanted.ty as ck::CK_ATTRIBUTE_TYPE) == Some(wanted.value.as_slice())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret_key(extra: Vec<Attribute>) -> Attributes {
        let mut template = vec![
            Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
            Attribute::bytes(ck::CKA_VALUE, &[0u8; 16]),
        ];
        template.extend(extra);
        let mut attributes = from_template(&Template(template), ck::CKO_SECRET_KEY).unwrap();
        complete(&mut attributes, None, 0).unwrap();
        attributes
    }

    /// A random generator that fails leaves no (empty, hence shared) `CKA_UNIQUE_ID`: the
    /// call fails instead.
    #[test]
    fn a_failed_random_generator_fails_the_unique_id() {
        let mut attributes = Attributes::default();
        assert_eq!(
            unique_id_from(&mut attributes, |_| Err(Rv::FunctionFailed)),
            Err(Rv::FunctionFailed)
        );
        assert!(!attributes.has(ck::CKA_UNIQUE_ID));
        unique_id_from(&mut attributes, |len| Ok(vec![0xab; len])).unwrap();
        assert_eq!(
            attributes.get(ck::CKA_UNIQUE_ID),
            Some("ab".repeat(16).as_bytes())
        );
    }

    #[test]
    fn unique_ids_are_32_lower_case_hex_digits() {
        let mut attributes = secret_key(vec![]);
        fresh_unique_id(&mut attributes).unwrap();
        let id = attributes.get(ck::CKA_UNIQUE_ID as u64).unwrap().to_vec();
        assert_eq!(id.len(), 32);
        assert!(id
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c)));
    }

    /// PKCS#11 3.0 §4.10 (common secret key attributes): "CKA_SENSITIVE … CK_TRUE if object is
    /// sensitive (default CK_FALSE)"; §4.9 (private keys), footnote 9: "Default value is
    /// token-specific" — Tessera's is true. Under No Clear PINs (`n`) both are always sensitive.
    #[test]
    fn sensitive_defaults_follow_the_standard_and_the_n_flag() {
        let key = secret_key(vec![]);
        assert!(key.flag(ck::CKA_PRIVATE) && !key.flag(ck::CKA_SENSITIVE));
        let template = Template(vec![
            Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
            Attribute::bytes(ck::CKA_VALUE, &[0u8; 16]),
        ]);
        let mut forced = from_template(&template, ck::CKO_SECRET_KEY).unwrap();
        complete(&mut forced, None, tessera_core::flags::NO_CLEAR_PINS).unwrap();
        assert!(forced.flag(ck::CKA_SENSITIVE));
        let template = Template(vec![
            Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_EC),
            Attribute::bytes(ck::CKA_EC_PARAMS, &[6, 8, 42, 134, 72, 206, 61, 3, 1, 7]),
            Attribute::bytes(ck::CKA_VALUE, &[1u8; 32]),
        ]);
        let mut private = from_template(&template, ck::CKO_PRIVATE_KEY).unwrap();
        complete(&mut private, None, 0).unwrap();
        assert!(private.flag(ck::CKA_SENSITIVE));
    }

    #[test]
    fn defaults_and_one_way_rules() {
        let key = secret_key(vec![Attribute::bool(ck::CKA_SENSITIVE, true)]);
        assert!(key.flag(ck::CKA_PRIVATE) && key.flag(ck::CKA_SENSITIVE));
        assert!(!key.flag(ck::CKA_LOCAL) && !key.flag(ck::CKA_ALWAYS_SENSITIVE));
        assert_eq!(key.ulong(ck::CKA_KEY_GEN_MECHANISM), Some(UNAVAILABLE));
        let unsensitive = Attribute::bool(ck::CKA_SENSITIVE, false);
        assert_eq!(
            check_change(&key, &unsensitive, false, false, 0),
            Err(Rv::AttributeReadOnly)
        );
        let value = Attribute::bytes(ck::CKA_VALUE, &[1u8; 16]);
        assert_eq!(
            check_change(&key, &value, false, false, 0),
            Err(Rv::AttributeReadOnly)
        );
        let label = Attribute::bytes(ck::CKA_LABEL, b"x");
        assert_eq!(check_change(&key, &label, false, false, 0), Ok(()));
        let token = Attribute::bool(ck::CKA_TOKEN, true);
        assert_eq!(
            check_change(&key, &token, false, false, 0),
            Err(Rv::AttributeReadOnly)
        );
        assert_eq!(check_change(&key, &token, true, false, 0), Ok(()));
        let plain = secret_key(vec![Attribute::bool(ck::CKA_EXTRACTABLE, false)]);
        let extract = Attribute::bool(ck::CKA_EXTRACTABLE, true);
        assert_eq!(
            check_change(&plain, &extract, false, false, 0),
            Err(Rv::AttributeReadOnly)
        );
    }

    #[test]
    fn templates_are_checked() {
        let wrong_type = Template(vec![Attribute::bytes(ck::CKA_MODULUS, b"x")]);
        assert_eq!(
            from_template(&wrong_type, ck::CKO_SECRET_KEY).err(),
            Some(Rv::AttributeTypeInvalid)
        );
        let bad_bool = Template(vec![Attribute::bytes(ck::CKA_TOKEN, &[1, 1])]);
        assert_eq!(
            from_template(&bad_bool, ck::CKO_DATA).err(),
            Some(Rv::AttributeValueInvalid)
        );
        let conflict = Template(vec![
            Attribute::bool(ck::CKA_TOKEN, true),
            Attribute::bool(ck::CKA_TOKEN, false),
        ]);
        assert_eq!(
            from_template(&conflict, ck::CKO_DATA).err(),
            Some(Rv::TemplateInconsistent)
        );
        let mut no_key_type = from_template(&Template::default(), ck::CKO_SECRET_KEY).unwrap();
        assert_eq!(
            complete(&mut no_key_type, None, 0),
            Err(Rv::TemplateIncomplete)
        );
        let (public, secret) = secret_key(vec![]).split();
        assert!(secret.find(ck::CKA_VALUE).is_some());
        assert!(public.find(ck::CKA_VALUE).is_none());
    }
}
