//! A raw wire client for the hostile-peer suites: connections from chosen loopback addresses,
//! frames written and read by hand (no library in the way).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tessera_testkit::Daemon;
use tessera_wire::{
    encode_request, Call, Message, Reply, RequestEnvelope, Response, ResponseEnvelope,
    PROTOCOL_VERSION,
};

/// A TCP connection to the daemon from loopback address `from`.
pub fn connect_from(daemon: &Daemon, from: &str) -> TcpStream {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    let remote: SocketAddr = daemon.tcp_address().parse().unwrap();
    socket.connect(&remote.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// A call or message in the clear, as a whole frame (length prefix included), with id 1.
pub fn frame(message: impl Into<Message>) -> Vec<u8> {
    encode_request(&RequestEnvelope {
        version: PROTOCOL_VERSION,
        id: 1,
        channel: None,
        message: message.into(),
    })
}

/// Writes one call or message.
pub fn send<S: Write>(stream: &mut S, request: impl Into<Message>) {
    stream.write_all(&frame(request)).unwrap();
}

/// Reads one response.
pub fn receive<S: Read>(stream: &mut S) -> Result<Response, u64> {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).expect("a reply");
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    stream.read_exact(&mut body).unwrap();
    let envelope: ResponseEnvelope = tessera_wire::decode_response(&body).unwrap();
    envelope.result
}

/// One call and its reply (a transport message in answer fails the test).
pub fn call<S: Read + Write>(stream: &mut S, request: Call) -> Result<Reply, u64> {
    send(stream, request);
    receive(stream).map(|response| match response {
        Response::Reply(reply) => reply,
        other => panic!("a call was answered with {other:?}"),
    })
}
