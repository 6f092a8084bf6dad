//! A token's objects with an index on the attributes applications search by (`CKA_LABEL`,
//! `CKA_ID`, `CKA_UNIQUE_ID`), so that `C_FindObjectsInit` with one of them does not scan every
//! object (a token may hold 100 000).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use std::sync::Arc;

use tessera_core::{ck, Template};

use crate::locked::Ledger;
use crate::Object;

const INDEXED: [ck::CK_ATTRIBUTE_TYPE; 3] = [ck::CKA_LABEL, ck::CKA_ID, ck::CKA_UNIQUE_ID];

/// The attributes of `template` that the index knows (what [`ObjectSet::candidates`] looks
/// at), taken out before the device is locked.
pub(crate) fn index_keys(template: &Template) -> Template {
    Template(
        template
            .iter()
            .filter(|a| INDEXED.contains(&(a.ty as ck::CK_ATTRIBUTE_TYPE)))
            .cloned()
            .collect(),
    )
}

/// Objects by handle, with the index kept in step by every change, and the device's count of
/// session-object bytes (its [`Ledger`], shared by every token's set).
pub(crate) struct ObjectSet {
    ledger: Arc<Ledger>,
    objects: BTreeMap<u64, Object>,
    index: HashMap<(ck::CK_ATTRIBUTE_TYPE, Vec<u8>), BTreeSet<u64>>,
    /// Public token objects (the device object aside).
    public: u64,
}

/// What an object counts against: its owner's session-object bytes, or the public objects.
fn charge(handle: u64, object: &Object) -> Option<Result<(u64, u64), ()>> {
    match object.owner {
        Some((client, _)) => Some(Ok((client, object.held_bytes()))),
        None if handle != crate::DEVICE_OBJECT && !object.attributes.flag(ck::CKA_PRIVATE) => {
            Some(Err(()))
        }
        None => None,
    }
}

impl ObjectSet {
    /// An empty set whose session objects count in `ledger`.
    pub(crate) fn counted_in(ledger: &Arc<Ledger>) -> ObjectSet {
        ObjectSet {
            ledger: ledger.clone(),
            objects: BTreeMap::new(),
            index: HashMap::new(),
            public: 0,
        }
    }

    /// Public token objects held here.
    pub(crate) fn public_count(&self) -> u64 {
        self.public
    }

    fn count(&mut self, handle: u64, object: &Object, add: bool) {
        match charge(handle, object) {
            Some(Ok((client, bytes))) => {
                self.ledger.count(client, bytes, add);
            }
            Some(Err(())) if add => self.public += 1,
            Some(Err(())) => self.public = self.public.saturating_sub(1),
            None => {}
        }
    }

    fn unindex(&mut self, handle: u64, object: &Object) {
        self.count(handle, object, false);
        for ty in INDEXED {
            if let Some(value) = object.attributes.get(ty) {
                let key = (ty, value.to_vec());
                if let Some(set) = self.index.get_mut(&key) {
                    set.remove(&handle);
                    if set.is_empty() {
                        self.index.remove(&key);
                    }
                }
            }
        }
    }

    pub(crate) fn insert(&mut self, handle: u64, object: Object) {
        if let Some(old) = self.objects.remove(&handle) {
            self.unindex(handle, &old);
        }
        self.count(handle, &object, true);
        for ty in INDEXED {
            if let Some(value) = object.attributes.get(ty) {
                self.index
                    .entry((ty, value.to_vec()))
                    .or_default()
                    .insert(handle);
            }
        }
        self.objects.insert(handle, object);
    }

    pub(crate) fn remove(&mut self, handle: &u64) -> Option<Object> {
        let object = self.objects.remove(handle)?;
        self.unindex(*handle, &object);
        Some(object)
    }

    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&u64, &Object) -> bool) {
        let gone: Vec<u64> = self
            .objects
            .iter()
            .filter(|(h, o)| !keep(h, o))
            .map(|(h, _)| *h)
            .collect();
        for handle in gone {
            self.remove(&handle);
        }
    }

    pub(crate) fn clear(&mut self) {
        self.uncount_session_bytes();
        self.objects.clear();
        self.index.clear();
        self.public = 0;
    }

    /// Takes this set's session objects out of the device's count (a rare, whole-token
    /// event: a reset, a tamper, a deleted slot).
    fn uncount_session_bytes(&mut self) {
        for (handle, object) in &self.objects {
            if let Some(Ok((client, bytes))) = charge(*handle, object) {
                self.ledger.count(client, bytes, false);
            }
        }
    }

    pub(crate) fn get(&self, handle: &u64) -> Option<&Object> {
        self.objects.get(handle)
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &u64> {
        self.objects.keys()
    }

    /// The objects that may match `template`: through the index when the template names an
    /// indexed attribute, else all of them. Callers still check the whole template.
    pub(crate) fn candidates<'a>(
        &'a self,
        template: &Template,
    ) -> Box<dyn Iterator<Item = (&'a u64, &'a Object)> + 'a> {
        let narrowest = INDEXED
            .iter()
            .filter_map(|ty| {
                template
                    .bytes(*ty)
                    .map(|value| self.index.get(&(*ty, value.to_vec())))
            })
            .min_by_key(|set| set.map_or(0, BTreeSet::len));
        match narrowest {
            Some(None) => Box::new(std::iter::empty()),
            Some(Some(set)) => Box::new(set.iter().filter_map(|h| self.objects.get_key_value(h))),
            None => Box::new(self.objects.iter()),
        }
    }
}

impl Drop for ObjectSet {
    /// A token that goes (its slot deleted, or blanked by a tamper) takes its session objects
    /// out of the device's count.
    fn drop(&mut self) {
        self.uncount_session_bytes();
    }
}
