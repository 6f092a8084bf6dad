//! Token state shared by the devices of a cluster (see `tessera-cluster`): the trait the engine
//! writes through when its tokens live in a replicated store rather than in this device's own
//! file, and the changes the replicated store tells the engine of.
//!
//! Every write returns only once it is committed (for etcd: by a quorum). Writes of a token
//! record compare what they replace: a record changed meanwhile by another device is refused
//! with [`StoreError::Stale`], carrying the newer record, and the engine decides again on it
//! (a PIN guess counted on one device counts on all).

use crate::{StoreError, StoredObject, TokenRecord};

/// A change made by another device (or told again for one of ours), in commit order.
#[derive(Debug, Clone)]
pub enum Change {
    /// A token record was written.
    Token(u64, TokenRecord),
    /// An object was created or replaced.
    Object {
        /// Its token.
        token: u64,
        /// Its id (the PKCS#11 handle).
        id: u64,
        /// What is stored.
        object: StoredObject,
    },
    /// The security flags of the cluster were set.
    Flags(u64),
    /// An object was destroyed.
    ObjectGone {
        /// Its token.
        token: u64,
        /// Its id.
        id: u64,
    },
}

/// Where changes are told, each with the revision it was committed at and the version of its
/// value (one more at each write of that record; 0 for a deletion): the engine applies each
/// one that [`Shared::accept`] accepts, under the lock of its token.
pub type Listener = Box<dyn Fn(Vec<(Change, i64, u64)>) + Send + Sync>;

/// A node of the cluster, as it last reported itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// The node's device serial.
    pub serial: String,
    /// Since when it serves (its last start; seconds since the Unix epoch, its clock).
    pub since: u64,
    /// When it last reported (seconds since the Unix epoch, its clock).
    pub last_seen: u64,
    /// The newest change it had applied then (etcd revision).
    pub applied: i64,
    /// The epoch of the cluster key it held then.
    pub epoch: u32,
}

/// The token state at one point in the shared history.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// The token records, by token id.
    pub tokens: Vec<(u64, TokenRecord)>,
    /// The objects: token id, object id, object.
    pub objects: Vec<(u64, u64, StoredObject)>,
    /// The security flags of the cluster (`None`: never set since the founding, which set them
    /// to the founder's).
    pub flags: Option<u64>,
}

/// A store of token records and token objects that several devices share.
pub trait Shared: Send + Sync {
    /// Everything, consistent at one revision; changes after it go to the listener.
    fn snapshot(&self) -> Result<Snapshot, StoreError>;
    /// Sets the function told of every later change (once).
    fn listen(&self, listener: Listener);
    /// Whether a change told at `revision` is newer than what this device holds of its record
    /// (and if so, records it as held). Called under the lock of the change's token, as every
    /// write of that token is made, so that a change told late never undoes a newer state,
    /// and a write never compares a revision newer than what the device decided on.
    ///
    /// A value whose version is older than the one this device holds was put back in the
    /// store (a copy of an older value, by whoever can write there): refused, and logged.
    fn accept(&self, change: &Change, revision: i64, version: u64) -> bool;
    /// Writes a token record if the stored one is the one this device last saw.
    fn put_token(&self, token: u64, record: &TokenRecord) -> Result<(), StoreError>;
    /// Sets the cluster's security flags if they are still those this device last saw; else
    /// [`StoreError::StaleFlags`] with the newer ones.
    fn put_flags(&self, flags: u64) -> Result<(), StoreError>;
    /// Writes a token record and deletes all of its objects, in one commit.
    fn reset_token(&self, token: u64, record: &TokenRecord) -> Result<(), StoreError>;
    /// Allocates an object id, unique in the cluster, and stores what `build` makes for it;
    /// with `request` (a request's id and the object's place among the objects it makes),
    /// records in the same commit that the request made it ([`Shared::recall`]).
    fn insert_object(
        &self,
        token: u64,
        request: Option<([u8; 16], u32)>,
        build: &mut dyn FnMut(u64) -> Result<StoredObject, StoreError>,
    ) -> Result<u64, StoreError>;
    /// The objects request `request` made, by their place (empty: it made none yet).
    fn recall(&self, request: &[u8; 16]) -> Result<Vec<(u32, u64)>, StoreError>;
    /// Replaces an object that exists (`CKR_OBJECT_HANDLE_INVALID` for one destroyed
    /// meanwhile: [`StoreError::Gone`]).
    fn replace_object(&self, token: u64, id: u64, object: &StoredObject) -> Result<(), StoreError>;
    /// Destroys an object ([`StoreError::Gone`] if another device destroyed it first).
    fn remove_object(&self, token: u64, id: u64) -> Result<(), StoreError>;
    /// Returns once every change committed before the call has been told to the listener
    /// (read-your-writes across devices: called before a call reads token state that another
    /// device may have changed).
    fn catch_up(&self) -> Result<(), StoreError>;
    /// The members, as each last reported itself.
    fn members(&self) -> Result<Vec<Member>, StoreError>;
    /// Removes member `serial`: a new cluster key (epoch) that the other members get and it
    /// does not, everything in etcd sealed again under it, the old one retired; the device is
    /// never admitted again. Returns the new key's epoch and key, for this device to keep.
    fn remove_member(&self, serial: &str) -> Result<(u32, crate::MasterKey), StoreError>;
}
