//! `C_GenerateRandom` and `C_SeedRandom`: the operating system's generator (through aws-lc),
//! with the seeds applications give mixed in.
//!
//! The system generator cannot be seeded from outside, so a seed goes into a 32-byte mixing
//! state of the device (`state = HMAC-SHA-256(state, seed)`). Once seeded, every output is the
//! system generator's bytes XORed with an HMAC-SHA-256 stream keyed by the state, which then
//! moves on: output is never weaker than the system generator's, and a seed with entropy
//! strengthens it.

use std::sync::Mutex;

use aws_lc_rs::hmac;
use tessera_core::{Rv, SecretBytes};

/// The mixing state; `None` until an application seeds the device.
#[derive(Default)]
pub(crate) struct Mixer {
    state: Mutex<Option<SecretBytes>>,
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> hmac::Tag {
    let mut context = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, key));
    for part in parts {
        context.update(part);
    }
    context.sign()
}

impl Mixer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<SecretBytes>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mixes a seed into the state.
    pub(crate) fn seed(&self, seed: &[u8]) {
        let mut state = self.lock();
        let old = state
            .take()
            .unwrap_or_else(|| SecretBytes::new(vec![0; 32]));
        *state = Some(SecretBytes::from_slice(
            hmac(old.expose(), &[seed]).as_ref(),
        ));
    }

    /// `len` random bytes.
    pub(crate) fn generate(&self, len: usize) -> Result<Vec<u8>, Rv> {
        let mut out = crate::crypto::random(len)?;
        let mut state = self.lock();
        if let Some(key) = state.as_mut() {
            mix(key, &mut out);
        }
        Ok(out)
    }
}

/// XORs `out` with the stream of `key` and moves `key` on.
fn mix(key: &mut SecretBytes, out: &mut [u8]) {
    for (block, chunk) in out.chunks_mut(32).enumerate() {
        let stream = hmac(key.expose(), &[b"output", &(block as u64).to_be_bytes()]);
        for (byte, mask) in chunk.iter_mut().zip(stream.as_ref()) {
            *byte ^= mask;
        }
    }
    *key = SecretBytes::from_slice(hmac(key.expose(), &[b"next"]).as_ref());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeding_changes_the_output_and_the_state_moves_on() {
        let mut key = SecretBytes::new(vec![7; 32]);
        let mut first = vec![0u8; 40];
        mix(&mut key, &mut first);
        assert_ne!(first, vec![0u8; 40], "a seeded state masks the output");
        let mut second = vec![0u8; 40];
        mix(&mut key, &mut second);
        assert_ne!(first, second, "the state moves on after each output");
        // The same state gives the same stream: the mask is a function of the seed only.
        let mut again = vec![0u8; 40];
        mix(&mut SecretBytes::new(vec![7; 32]), &mut again);
        assert_eq!(first, again);
    }

    #[test]
    fn an_unseeded_mixer_passes_the_system_bytes_and_a_seeded_one_still_varies() {
        let mixer = Mixer::default();
        assert_eq!(mixer.generate(0).unwrap(), Vec::<u8>::new());
        mixer.seed(&[0; 32]);
        let a = mixer.generate(32).unwrap();
        let b = mixer.generate(32).unwrap();
        assert_ne!(a, b);
        assert!(mixer.lock().is_some());
    }
}
