//! A relay between a client and a daemon that records every byte and lets a test alter,
//! drop, replay or move frames (the man in the middle of the secure-messaging tests).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{Daemon, Transport};

/// Which way a frame went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Client to device.
    ToDevice,
    /// Device to client.
    ToClient,
}

/// What a hook sees.
pub struct Frame {
    /// Which client connection (0, 1, ... in accept order).
    pub connection: usize,
    /// Which request of that connection (0, 1, ...).
    pub index: usize,
    /// The frame body (without the length prefix).
    pub body: Vec<u8>,
}

/// Decides what goes to the device for one client request: the bodies to send (each gets a
/// response; the last response goes back to the client). Empty drops the request.
pub type RequestHook = dyn Fn(&Frame, &Recorder) -> Vec<Vec<u8>> + Send + Sync;
/// Decides what goes back to the client; for a request the request hook dropped it sees an
/// empty body, and may forge an answer (an empty one sends nothing).
pub type ReplyHook = dyn Fn(&Frame, &Recorder) -> Vec<u8> + Send + Sync;

/// Everything that crossed the relay, in order.
#[derive(Default, Clone)]
pub struct Recorder(Arc<Mutex<Vec<Recorded>>>);

/// One recorded frame: connection, direction, body.
type Recorded = (usize, Way, Vec<u8>);

impl Recorder {
    fn push(&self, connection: usize, way: Way, body: &[u8]) {
        self.0
            .lock()
            .unwrap()
            .push((connection, way, body.to_vec()));
    }

    /// Every frame body that went `way` on `connection`.
    pub fn frames(&self, connection: usize, way: Way) -> Vec<Vec<u8>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(c, w, _)| *c == connection && *w == way)
            .map(|(_, _, b)| b.clone())
            .collect()
    }

    /// True if `needle` appears in any recorded byte, either way.
    pub fn contains(&self, needle: &[u8]) -> bool {
        self.0
            .lock()
            .unwrap()
            .iter()
            .any(|(_, _, body)| body.windows(needle.len()).any(|w| w == needle))
    }
}

/// A running relay on a loopback TCP port.
pub struct Relay {
    /// Where clients connect (`127.0.0.1:PORT`).
    pub address: String,
    /// What crossed it.
    pub recorder: Recorder,
}

fn read_frame(stream: &mut impl Read) -> Option<Vec<u8>> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    stream.read_exact(&mut body).ok()?;
    Some(body)
}

fn write_frame(stream: &mut impl Write, body: &[u8]) -> bool {
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    stream.write_all(&frame).is_ok()
}

/// A duplex connection to the device.
trait Duplex: Read + Write + Send {}
impl Duplex for UnixStream {}
impl Duplex for TcpStream {}

impl Relay {
    /// Starts a relay in front of `daemon` (reached over `transport`).
    pub fn start(
        daemon: &Daemon,
        transport: Transport,
        request: Arc<RequestHook>,
        reply: Arc<ReplyHook>,
    ) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let recorder = Recorder::default();
        let upstream = daemon.server_list(transport);
        let rec = recorder.clone();
        std::thread::spawn(move || {
            for (connection, client) in listener.incoming().enumerate() {
                let Ok(mut client) = client else { return };
                let upstream = upstream.clone();
                let (request, reply, rec) = (request.clone(), reply.clone(), rec.clone());
                std::thread::spawn(move || {
                    let mut device: Box<dyn Duplex> = if upstream.starts_with('/') {
                        Box::new(UnixStream::connect(&upstream).unwrap())
                    } else {
                        Box::new(TcpStream::connect(&upstream).unwrap())
                    };
                    let _ = client.set_read_timeout(Some(Duration::from_secs(30)));
                    for index in 0.. {
                        let Some(body) = read_frame(&mut client) else {
                            return;
                        };
                        rec.push(connection, Way::ToDevice, &body);
                        let frame = Frame {
                            connection,
                            index,
                            body,
                        };
                        let mut last = None;
                        for out in request(&frame, &rec) {
                            if !write_frame(&mut device, &out) {
                                return;
                            }
                            last = read_frame(&mut device);
                            if last.is_none() {
                                return;
                            }
                        }
                        let Some(answer) = last else {
                            // The request was dropped: the reply hook may answer it itself
                            // (it sees an empty body; an empty answer sends nothing).
                            let forged = reply(
                                &Frame {
                                    connection,
                                    index,
                                    body: Vec::new(),
                                },
                                &rec,
                            );
                            if !forged.is_empty() {
                                rec.push(connection, Way::ToClient, &forged);
                                if !write_frame(&mut client, &forged) {
                                    return;
                                }
                            }
                            continue;
                        };
                        rec.push(connection, Way::ToClient, &answer);
                        let answer = reply(
                            &Frame {
                                connection,
                                index,
                                body: answer,
                            },
                            &rec,
                        );
                        if !write_frame(&mut client, &answer) {
                            return;
                        }
                    }
                });
            }
        });
        Relay { address, recorder }
    }

    /// A relay that changes nothing.
    pub fn transparent(daemon: &Daemon, transport: Transport) -> Relay {
        Relay::start(
            daemon,
            transport,
            Arc::new(|frame, _| vec![frame.body.clone()]),
            Arc::new(|frame, _| frame.body.clone()),
        )
    }
}
