//! The socket to a device: Unix or TCP, blocking, with timeouts, one request at a time.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use tessera_config::ServerAddress;
use tessera_wire::{
    decode_response, encode_request, read_frame, Reply, Request, RequestEnvelope, PROTOCOL_VERSION,
};

/// A failed exchange.
pub(crate) enum Failure {
    /// The connection broke or timed out.
    Io(String),
    /// The answer is not a valid response.
    Bad(String),
}

pub(crate) enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
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
                Ok(Stream::Unix(stream))
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
                            return Ok(Stream::Tcp(stream));
                        }
                        Err(e) => last = format!("{address}: {e}"),
                    }
                }
                Err(last)
            }
        }
    }

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

    /// Sends one request and reads its response.
    pub(crate) fn exchange(
        &mut self,
        id: u64,
        channel: Option<u64>,
        request: Request,
    ) -> Result<Result<Reply, u64>, Failure> {
        let frame = encode_request(&RequestEnvelope {
            version: PROTOCOL_VERSION,
            id,
            channel,
            request,
        });
        self.writer()
            .write_all(&frame)
            .map_err(|e| Failure::Io(e.to_string()))?;
        let body = read_frame(self.reader()).map_err(|e| match e {
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
}
