//! Reading a TLS ClientHello from a connection's first bytes, to learn
//! whether it is TLS at all and which name (SNI) it asks for, before
//! anything is decided about the connection: a sidecar's inbound listener
//! terminates only mesh TLS and passes an app's own TLS through untouched.
//! The bytes are peeked, not taken, so whoever serves the connection reads
//! them again.

/// The TLS record type of a handshake message (RFC 8446 §5.1).
pub const HANDSHAKE_RECORD: u8 = 0x16;
/// Room for a ClientHello: rustls sends about 250 bytes, browsers with
/// post-quantum key shares about 1,800; one record is at most 16 KiB.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024 + 5;

/// What a connection's first bytes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// Not enough yet to tell (more may come, up to [`MAX_CLIENT_HELLO`]).
    Incomplete,
    /// Not TLS: the first byte is not a handshake record.
    NotTls,
    /// A TLS ClientHello, with its SNI; `None` also for a handshake that
    /// is malformed, which whoever serves the connection will refuse.
    Tls(Option<String>),
}

/// Reads `first`, the bytes a connection opened with so far.
pub fn read(first: &[u8]) -> Hello {
    match first.first() {
        None => return Hello::Incomplete,
        Some(&b) if b != HANDSHAKE_RECORD => return Hello::NotTls,
        Some(_) => {}
    }
    let mut acceptor = rustls::server::Acceptor::default();
    let mut bytes = first;
    if acceptor.read_tls(&mut bytes).is_err() {
        return Hello::Tls(None);
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => Hello::Tls(accepted.client_hello().server_name().map(str::to_owned)),
        Ok(None) if first.len() < MAX_CLIENT_HELLO => Hello::Incomplete,
        Ok(None) | Err(_) => Hello::Tls(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_partial_and_malformed_openings_are_told_apart() {
        assert_eq!(read(b""), Hello::Incomplete);
        assert_eq!(read(b"GET / HTTP/1.1\r\n"), Hello::NotTls);
        assert_eq!(read(&[HANDSHAKE_RECORD, 3, 1]), Hello::Incomplete);
        // A handshake record that holds no ClientHello.
        assert_eq!(
            read(&[HANDSHAKE_RECORD, 3, 3, 0, 4, 2, 0, 0, 0]),
            Hello::Tls(None)
        );
    }
}
