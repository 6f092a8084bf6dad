//! An impostor for the local-socket attack tests (tests/local_impostor.rs): listens on a Unix
//! socket and appends every byte it receives to a file, as another user would to catch a PIN.
//!
//! `socket-recorder SOCKET RECORD`: binds SOCKET (replacing nothing), creates RECORD empty,
//! prints `listening` on standard output once it accepts connections, and closes each
//! connection once it has received something (the client then fails fast instead of waiting for
//! a reply). Ends when its standard input closes, so that it does not outlive the test.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, record] = args.as_slice() else {
        eprintln!("usage: socket-recorder SOCKET RECORD");
        std::process::exit(2);
    };
    let listener = UnixListener::bind(socket).unwrap_or_else(|e| {
        eprintln!("socket-recorder: cannot listen on {socket}: {e}");
        std::process::exit(1);
    });
    let mut file = std::fs::File::create(record).unwrap_or_else(|e| {
        eprintln!("socket-recorder: cannot create {record}: {e}");
        std::process::exit(1);
    });
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    println!("listening");
    let _ = std::io::stdout().flush();
    for connection in listener.incoming() {
        let Ok(mut connection) = connection else {
            continue;
        };
        let _ = connection.set_read_timeout(Some(Duration::from_secs(5)));
        let mut buffer = [0u8; 4096];
        if let Ok(n) = connection.read(&mut buffer) {
            let _ = file.write_all(&buffer[..n]);
            let _ = file.flush();
        }
    }
}
