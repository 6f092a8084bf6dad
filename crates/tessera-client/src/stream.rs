//! The socket to a device: Unix or TCP, blocking, with timeouts.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::Duration;

use tessera_config::ServerAddress;
use tessera_wire::{
    decode_response, encode_request, read_frame, Reply, Request, RequestEnvelope, ResponseEnvelope,
    PROTOCOL_VERSION,
};

/// A failed exchange.
pub(crate) enum Failure {
    /// The connection broke or timed out.
    Io(String),
    /// The answer is not a valid response.
    Bad(String),
}

/// A connection, with its reading and writing ends apart: one thread writes a request while
/// another reads replies (requests are pipelined; see the crate documentation).
pub(crate) struct Stream {
    read: Mutex<Box<dyn Read + Send>>,
    write: Mutex<Box<dyn Write + Send>>,
}

fn locked<T: ?Sized>(mutex: &Mutex<Box<T>>) -> std::sync::MutexGuard<'_, Box<T>> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Stream {
    pub(crate) fn connect(
        address: &ServerAddress,
        connect: Duration,
        reply: Duration,
    ) -> Result<Stream, String> {
        match address {
            ServerAddress::Unix(path) => {
                let stream = UnixStream::connect(path).map_err(|e| e.to_string())?;
                stream.set_read_timeout(Some(reply)).ok();
                stream.set_write_timeout(Some(reply)).ok();
                let reading = stream.try_clone().map_err(|e| e.to_string())?;
                Ok(Stream::new(Box::new(reading), Box::new(stream)))
            }
            ServerAddress::Tcp { host, port } => {
                let addresses = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(|e| format!("cannot resolve {host}: {e}"))?;
                let mut last = format!("{host} resolved to no address");
                for address in addresses {
                    match TcpStream::connect_timeout(&address, connect) {
                        Ok(stream) => {
                            stream.set_nodelay(true).ok();
                            stream.set_read_timeout(Some(reply)).ok();
                            stream.set_write_timeout(Some(reply)).ok();
                            let reading = stream.try_clone().map_err(|e| e.to_string())?;
                            return Ok(Stream::new(Box::new(reading), Box::new(stream)));
                        }
                        Err(e) => last = format!("{address}: {e}"),
                    }
                }
                Err(last)
            }
        }
    }

    fn new(read: Box<dyn Read + Send>, write: Box<dyn Write + Send>) -> Stream {
        Stream {
            read: Mutex::new(read),
            write: Mutex::new(write),
        }
    }

    /// Sends one request.
    pub(crate) fn send(
        &self,
        id: u64,
        channel: Option<u64>,
        request: Request,
    ) -> Result<(), Failure> {
        let frame = encode_request(&RequestEnvelope {
            version: PROTOCOL_VERSION,
            id,
            channel,
            request,
        });
        locked(&self.write)
            .write_all(&frame)
            .map_err(|e| Failure::Io(e.to_string()))
    }

    /// Reads the next response, whichever request it answers.
    pub(crate) fn receive(&self) -> Result<ResponseEnvelope, Failure> {
        let body = read_frame(&mut **locked(&self.read)).map_err(|e| match e {
            tessera_wire::FrameError::Io(e) => Failure::Io(e.to_string()),
            other => Failure::Bad(other.to_string()),
        })?;
        decode_response(&body).map_err(|e| Failure::Bad(e.to_string()))
    }

    /// Sends one request and reads its response (with nothing else in flight).
    pub(crate) fn exchange(
        &self,
        id: u64,
        channel: Option<u64>,
        request: Request,
    ) -> Result<Result<Reply, u64>, Failure> {
        self.send(id, channel, request)?;
        let envelope = self.receive()?;
        if envelope.id != id {
            return Err(Failure::Bad(format!(
                "reply to request {} arrived for request {id}",
                envelope.id
            )));
        }
        Ok(envelope.result)
    }
}
