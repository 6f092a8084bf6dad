//! A blocking client of one Tessera device.
//!
//! The PKCS#11 module runs inside the host application, so this crate uses plain blocking
//! sockets (no async runtime), connects on demand, bounds every connect and reply with a
//! timeout, and counts connections in *generations*: sessions live on one connection, so when a
//! connection is lost, every session opened on it is gone and the next call reconnects.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::Duration;

use tessera_config::ServerAddress;
use tessera_core::Rv;
use tessera_wire::{
    decode_response, encode_request, read_frame, Reply, Request, RequestEnvelope, PROTOCOL_VERSION,
};

/// Why a call did not produce a reply.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The device did not accept a connection.
    #[error("device {address} is unreachable: {reason}")]
    Unreachable {
        /// The server address.
        address: String,
        /// Why.
        reason: String,
    },
    /// The connection failed or timed out during the call.
    #[error("device {address}: connection lost: {reason}")]
    ConnectionLost {
        /// The server address.
        address: String,
        /// Why.
        reason: String,
    },
    /// The device answered something that is not a valid response to this request.
    #[error("device {address} sent a bad reply: {reason}")]
    BadReply {
        /// The server address.
        address: String,
        /// What was wrong.
        reason: String,
    },
    /// The session belongs to an earlier connection that was lost.
    #[error("the session was opened on a connection that has since been lost")]
    StaleSession,
    /// The device executed the call and returned this `CK_RV`.
    #[error("device returned 0x{0:08X}")]
    Returned(u64),
}

impl ClientError {
    /// The `CK_RV` an application should see.
    pub fn rv(&self) -> u64 {
        match self {
            ClientError::Unreachable { .. } => Rv::DeviceRemoved.code(),
            ClientError::ConnectionLost { .. } => Rv::DeviceError.code(),
            ClientError::BadReply { .. } => Rv::DeviceError.code(),
            ClientError::StaleSession => Rv::SessionHandleInvalid.code(),
            ClientError::Returned(code) => *code,
        }
    }
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn reader(&mut self) -> &mut dyn Read {
        match self {
            Stream::Unix(s) => s,
            Stream::Tcp(s) => s,
        }
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Stream::Unix(s) => s,
            Stream::Tcp(s) => s,
        }
    }
}

struct Connection {
    stream: Stream,
    generation: u64,
}

struct State {
    connection: Option<Connection>,
    generations: u64,
    next_id: u64,
}

/// One device of the server list.
pub struct Device {
    address: ServerAddress,
    connect_timeout: Duration,
    reply_timeout: Duration,
    state: Mutex<State>,
}

impl Device {
    /// A device at `address`; nothing is dialled until the first call.
    pub fn new(
        address: ServerAddress,
        connect_timeout: Duration,
        reply_timeout: Duration,
    ) -> Device {
        Device {
            address,
            connect_timeout,
            reply_timeout,
            state: Mutex::new(State {
                connection: None,
                generations: 0,
                next_id: 1,
            }),
        }
    }

    /// The server address.
    pub fn address(&self) -> &ServerAddress {
        &self.address
    }

    fn connect(&self) -> Result<Stream, ClientError> {
        let unreachable = |reason: String| ClientError::Unreachable {
            address: self.address.to_string(),
            reason,
        };
        let stream = match &self.address {
            ServerAddress::Unix(path) => {
                let stream = UnixStream::connect(path).map_err(|e| unreachable(e.to_string()))?;
                stream.set_read_timeout(Some(self.reply_timeout)).ok();
                stream.set_write_timeout(Some(self.reply_timeout)).ok();
                Stream::Unix(stream)
            }
            ServerAddress::Tcp { host, port } => {
                let addresses = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(|e| unreachable(format!("cannot resolve {host}: {e}")))?;
                let mut last = format!("{host} resolved to no address");
                let mut connected = None;
                for address in addresses {
                    match TcpStream::connect_timeout(&address, self.connect_timeout) {
                        Ok(stream) => {
                            connected = Some(stream);
                            break;
                        }
                        Err(e) => last = format!("{address}: {e}"),
                    }
                }
                let stream = connected.ok_or_else(|| unreachable(last))?;
                stream.set_nodelay(true).ok();
                stream.set_read_timeout(Some(self.reply_timeout)).ok();
                stream.set_write_timeout(Some(self.reply_timeout)).ok();
                Stream::Tcp(stream)
            }
        };
        Ok(stream)
    }

    /// Sends `request` and waits for its reply.
    ///
    /// With `session_generation` set, the call is refused with [`ClientError::StaleSession`]
    /// unless the current connection is the one of that generation (the session's own). The
    /// reply comes with the generation of the connection that carried it.
    pub fn call(
        &self,
        session_generation: Option<u64>,
        request: Request,
    ) -> Result<(Reply, u64), ClientError> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.connection.is_none() {
            if session_generation.is_some() {
                return Err(ClientError::StaleSession);
            }
            let stream = self.connect()?;
            state.generations += 1;
            let generation = state.generations;
            state.connection = Some(Connection { stream, generation });
        }
        let id = state.next_id;
        state.next_id = state.next_id.wrapping_add(1);
        let connection = match state.connection.as_mut() {
            Some(connection) => connection,
            None => return Err(ClientError::StaleSession),
        };
        let generation = connection.generation;
        if session_generation.is_some_and(|g| g != generation) {
            return Err(ClientError::StaleSession);
        }
        let frame = encode_request(&RequestEnvelope {
            version: PROTOCOL_VERSION,
            id,
            channel: None,
            request,
        });
        let outcome = exchange(&mut connection.stream, &frame, id);
        match outcome {
            Ok(Ok(reply)) => Ok((reply, generation)),
            Ok(Err(code)) => Err(ClientError::Returned(code)),
            Err(failure) => {
                // The connection is unusable: forget it (and with it, its sessions).
                state.connection = None;
                Err(match failure {
                    Failure::Io(reason) => ClientError::ConnectionLost {
                        address: self.address.to_string(),
                        reason,
                    },
                    Failure::Bad(reason) => ClientError::BadReply {
                        address: self.address.to_string(),
                        reason,
                    },
                })
            }
        }
    }

    /// Closes the connection (all its sessions end on the device).
    pub fn disconnect(&self) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.connection = None;
    }
}

enum Failure {
    Io(String),
    Bad(String),
}

fn exchange(stream: &mut Stream, frame: &[u8], id: u64) -> Result<Result<Reply, u64>, Failure> {
    stream
        .writer()
        .write_all(frame)
        .map_err(|e| Failure::Io(e.to_string()))?;
    let body = read_frame(stream.reader()).map_err(|e| match e {
        tessera_wire::FrameError::Io(e) => Failure::Io(e.to_string()),
        other => Failure::Bad(other.to_string()),
    })?;
    let envelope = decode_response(&body).map_err(|e| Failure::Bad(e.to_string()))?;
    if envelope.id != id {
        return Err(Failure::Bad(format!(
            "reply to request {} arrived for request {id}",
            envelope.id
        )));
    }
    Ok(envelope.result)
}
