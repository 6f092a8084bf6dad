//! The device key passphrase, asked on the terminal at start (`--device-key-passphrase-file -`
//! with standard input a terminal): a prompt on standard error, the terminal's echo off while
//! the passphrase is typed, read byte by byte without a buffer that would keep a copy.

use std::io::Write;

use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions, Termios};
use tessera_core::SecretBytes;
use zeroize::Zeroize;

/// The longest passphrase read (a longer line is refused rather than cut).
const MAX_LEN: usize = 1024;

/// Restores the terminal's modes when dropped, whatever happened meanwhile.
struct EchoOff {
    saved: Termios,
}

impl EchoOff {
    fn new() -> std::io::Result<EchoOff> {
        let saved = tcgetattr(std::io::stdin())?;
        let mut quiet = saved.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        quiet.local_modes.insert(LocalModes::ECHONL);
        tcsetattr(std::io::stdin(), OptionalActions::Flush, &quiet)?;
        Ok(EchoOff { saved })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, &self.saved);
    }
}

/// Asks for the passphrase on the terminal. The line's end is not part of it.
pub fn ask_passphrase() -> Result<SecretBytes, String> {
    // Echo off before the prompt shows: whatever is typed once the prompt is up is not echoed.
    let echo = EchoOff::new().map_err(|e| format!("cannot turn the terminal's echo off: {e}"))?;
    let mut stderr = std::io::stderr();
    let _ = write!(stderr, "Tessera device key passphrase: ");
    let _ = stderr.flush();
    let mut passphrase = SecretBytes::with_capacity(64);
    let mut byte = [0u8; 1];
    loop {
        match rustix::io::read(std::io::stdin(), &mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if passphrase.len() >= MAX_LEN => {
                byte.zeroize();
                return Err(format!("the passphrase is longer than {MAX_LEN} bytes"));
            }
            Ok(_) => passphrase.extend_from_slice(&byte),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(format!("cannot read the passphrase: {e}")),
        }
    }
    byte.zeroize();
    drop(echo);
    if passphrase.expose().last() == Some(&b'\r') {
        passphrase.pop();
    }
    Ok(passphrase)
}
