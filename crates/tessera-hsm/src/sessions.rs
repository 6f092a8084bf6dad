//! Sessions and their operations: the sessions open on the device, which client opened each on
//! which token, and the rules that concern them alone (handles, how many a connection holds).
//! Tokens and the device decide the rest (who is logged in, the limits' events).

use std::collections::HashMap;

use tessera_core::Rv;

use crate::crypto;

/// One open session.
pub(crate) struct Session {
    pub(crate) client: u64,
    pub(crate) token_id: u64,
    pub(crate) read_write: bool,
    pub(crate) find: Option<Vec<u64>>,
    pub(crate) operations: HashMap<tessera_wire::Operation, crypto::ActiveOperation>,
    /// Operations on a `CKA_ALWAYS_AUTHENTICATE` key that wait for a context-specific login,
    /// the most recently initialised last (a context-specific login is for that one).
    pub(crate) authenticate: Vec<tessera_wire::Operation>,
    /// Operations that have had an update: they are multi-part now, and only their updates
    /// and final call may go on (PKCS#11 3.0 §5.8: C_Encrypt "cannot be used to terminate a
    /// multi-part operation").
    pub(crate) multi_part: Vec<tessera_wire::Operation>,
}

impl Session {
    /// A new session of `client` on `token_id`, with nothing under way.
    pub(crate) fn new(client: u64, token_id: u64, read_write: bool) -> Session {
        Session {
            client,
            token_id,
            read_write,
            find: None,
            operations: Default::default(),
            authenticate: Vec::new(),
            multi_part: Vec::new(),
        }
    }
}

/// The sessions open on the device.
#[derive(Default)]
pub(crate) struct Sessions {
    open: HashMap<u64, Session>,
    /// The handle given last.
    last: u64,
    /// How many sessions each client holds (clients with none are absent).
    per_client: HashMap<u64, u64>,
}

impl Sessions {
    /// Session `handle`, if `client` opened it.
    pub(crate) fn get(&self, client: u64, handle: u64) -> Result<&Session, Rv> {
        (self.open.get(&handle))
            .filter(|s| s.client == client)
            .ok_or(Rv::SessionHandleInvalid)
    }

    /// As [`Sessions::get`], to change it.
    pub(crate) fn get_mut(&mut self, client: u64, handle: u64) -> Result<&mut Session, Rv> {
        (self.open.get_mut(&handle))
            .filter(|s| s.client == client)
            .ok_or(Rv::SessionHandleInvalid)
    }

    /// Sessions open on the device.
    pub(crate) fn len(&self) -> usize {
        self.open.len()
    }

    /// Sessions `client` holds.
    pub(crate) fn held_by(&self, client: u64) -> u64 {
        self.per_client.get(&client).copied().unwrap_or(0)
    }

    /// Every open session with its handle.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &Session)> {
        self.open.iter().map(|(handle, session)| (*handle, session))
    }

    /// The sessions open on `token_id`.
    pub(crate) fn on_token(&self, token_id: u64) -> impl Iterator<Item = &Session> {
        self.open.values().filter(move |s| s.token_id == token_id)
    }

    /// `client`'s sessions on `token_id`, to change them.
    pub(crate) fn of_client_on(
        &mut self,
        client: u64,
        token_id: u64,
    ) -> impl Iterator<Item = &mut Session> {
        (self.open.values_mut()).filter(move |s| s.client == client && s.token_id == token_id)
    }

    /// The handles of the sessions `keep` chooses.
    pub(crate) fn handles(&self, keep: impl Fn(&Session) -> bool) -> Vec<u64> {
        self.iter()
            .filter(|(_, session)| keep(session))
            .map(|(handle, _)| handle)
            .collect()
    }

    /// Adds a session and returns its handle: the next one free, below 2^32 so that the library
    /// can put its device number above it.
    pub(crate) fn open(&mut self, session: Session) -> u64 {
        let mut handle = self.last;
        loop {
            handle = if handle >= u64::from(u32::MAX) {
                1
            } else {
                handle + 1
            };
            if !self.open.contains_key(&handle) {
                break;
            }
        }
        self.last = handle;
        *self.per_client.entry(session.client).or_default() += 1;
        self.open.insert(handle, session);
        handle
    }

    /// The token session `handle` is open on, whoever's it is.
    pub(crate) fn token_of(&self, handle: u64) -> Option<u64> {
        self.open.get(&handle).map(|session| session.token_id)
    }

    /// Removes session `handle` and returns it.
    pub(crate) fn remove(&mut self, handle: u64) -> Option<Session> {
        let session = self.open.remove(&handle)?;
        if let Some(count) = self.per_client.get_mut(&session.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_client.remove(&session.client);
            }
        }
        Some(session)
    }

    /// Ends every session (a reset of the device).
    pub(crate) fn clear(&mut self) {
        self.open.clear();
        self.per_client.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_wrap_below_2_32_skip_open_ones_and_count_per_client() {
        let mut sessions = Sessions {
            last: u64::from(u32::MAX) - 1,
            ..Default::default()
        };
        let a = sessions.open(Session::new(7, 1, true));
        assert_eq!(a, u64::from(u32::MAX));
        let b = sessions.open(Session::new(7, 1, false));
        assert_eq!(b, 1, "wrapped below 2^32");
        sessions.last = 0;
        let c = sessions.open(Session::new(8, 2, false));
        assert_eq!(c, 2, "handle 1 is open: skipped");
        assert_eq!((sessions.held_by(7), sessions.held_by(8)), (2, 1));
        assert!(sessions.get(8, a).is_err(), "another client's session");
        assert!(sessions.remove(a).is_some() && sessions.remove(b).is_some());
        assert_eq!(sessions.held_by(7), 0);
        assert_eq!(sessions.len(), 1);
        sessions.clear();
        assert_eq!((sessions.len(), sessions.held_by(8)), (0, 0));
    }

    /// The sessions are an aggregate with a lock of their own: a running operation is taken
    /// out of its session and put back while another call holds the device's state (a token
    /// write, a PIN check's bookkeeping), instead of waiting for it.
    #[test]
    fn a_running_operation_goes_on_while_the_state_is_held() {
        use std::sync::Arc;
        use std::time::{Duration, Instant};
        use tessera_core::{Mechanism, MechanismParameter, SecretBytes};
        use tessera_wire::{Call, Operation, Reply};

        let dir = tempfile::tempdir().unwrap();
        let options = crate::HsmOptions {
            user_slots: 1,
            kdf_iterations: 1000,
            ..Default::default()
        };
        let hsm = Arc::new(crate::Hsm::open(dir.path(), &options).unwrap());
        let client = hsm.connect();
        let so_pin = SecretBytes::from_slice(b"so-pin");
        let init = Call::InitToken {
            slot: 0,
            so_pin,
            label: b"t".to_vec(),
        };
        hsm.handle(client, true, init).unwrap();
        let flags =
            (tessera_core::ck::CKF_SERIAL_SESSION | tessera_core::ck::CKF_RW_SESSION) as u64;
        let Ok(Reply::Handle(session)) =
            hsm.handle(client, true, Call::OpenSession { slot: 0, flags })
        else {
            panic!("no session")
        };
        let digest = Mechanism {
            ty: tessera_core::ck::CKM_SHA256 as u64,
            parameter: MechanismParameter::None,
        };
        let init = Call::OperationInit {
            session,
            operation: Operation::Digest,
            mechanism: digest,
            key: 0,
        };
        hsm.handle(client, true, init).unwrap();

        // The session's token held, as a slow call on it would hold it.
        let tokens = hsm.tokens_of_session(client, session).unwrap();
        let held = tokens.lock(&hsm);
        let worker = {
            let hsm = hsm.clone();
            std::thread::spawn(move || {
                let update = Call::OperationUpdate {
                    session,
                    operation: Operation::Digest,
                    data: b"abc".to_vec(),
                };
                hsm.handle(client, true, update)?;
                let last = Call::OperationFinal {
                    session,
                    operation: Operation::Digest,
                    signature: Vec::new(),
                };
                hsm.handle(client, true, last)
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !worker.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let finished = worker.is_finished();
        drop(held);
        assert!(finished, "the operation waited for its token's lock");
        let Ok(Reply::Bytes(hash)) = worker.join().unwrap() else {
            panic!("no digest")
        };
        let expected = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"abc");
        assert_eq!(hash, expected.as_ref());
    }
}
