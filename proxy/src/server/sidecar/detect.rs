//! Protocol detection on a captured connection, by peeking at its first
//! bytes (they stay in the socket for whoever serves it).
//!
//! As in linkerd2-proxy: the HTTP/2 connection preface means HTTP/2, an
//! HTTP/1 method and a space mean HTTP/1.x, anything else is opaque TCP.
//! A client that sends nothing within the timeout is taken for one whose
//! server speaks first (MySQL, SMTP, SSH), so opaque too.

use std::time::Duration;

use tokio::net::TcpStream;

use crate::http::h2::frame::PREFACE as H2_PREFACE;

/// What a captured connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Opaque,
}

/// Request methods that mark HTTP/1.x, each with the space after it.
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"CONNECT ",
    b"OPTIONS ",
    b"TRACE ",
    b"PATCH ",
];

/// Classifies the first bytes of a connection; `None` while they are a
/// prefix of something HTTP and more are needed to tell.
pub fn classify(first: &[u8]) -> Option<Protocol> {
    if first.is_empty() {
        return None;
    }
    if first.starts_with(H2_PREFACE) {
        return Some(Protocol::Http2);
    }
    let mut undecided = H2_PREFACE.starts_with(first);
    for method in METHODS {
        if first.starts_with(method) {
            return Some(Protocol::Http1);
        }
        undecided |= method.starts_with(first);
    }
    if undecided {
        None
    } else {
        Some(Protocol::Opaque)
    }
}

/// How long to wait between peeks while the first bytes are incomplete.
const PEEK_AGAIN: Duration = Duration::from_millis(1);

/// Peeks at `stream` until its protocol is known or `timeout` passes.
pub(crate) async fn detect(stream: &TcpStream, timeout: Duration) -> Protocol {
    let mut buf = [0u8; H2_PREFACE.len()];
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = 0;
    loop {
        match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            // Silence, or too little to tell, until the deadline.
            Err(_) => return Protocol::Opaque,
            Ok(Err(_)) | Ok(Ok(0)) => return Protocol::Opaque,
            Ok(Ok(n)) => {
                if let Some(p) = classify(&buf[..n]) {
                    return p;
                }
                // Peek returns the same bytes at once until more arrive.
                if n == seen {
                    tokio::time::sleep(PEEK_AGAIN).await;
                    if tokio::time::Instant::now() >= deadline {
                        return Protocol::Opaque;
                    }
                }
                seen = n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_is_told_from_its_first_bytes_and_the_rest_is_opaque() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"OPTIONS * HTTP/1.1"), Some(Protocol::Http1));
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Protocol::Opaque));
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), Some(Protocol::Opaque));
        assert_eq!(classify(b"GETX"), Some(Protocol::Opaque));
        // Too short to tell yet.
        assert_eq!(classify(b"PRI * HT"), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"P"), None);
        assert_eq!(classify(b""), None);
    }

    #[tokio::test]
    async fn a_silent_client_is_opaque_after_the_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert_eq!(
            detect(&server, Duration::from_millis(20)).await,
            Protocol::Opaque
        );
    }

    #[tokio::test]
    async fn a_request_split_over_two_writes_is_still_http() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        client.set_nodelay(true).unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(b"PRI * HTTP").await.unwrap();
        let detecting = tokio::spawn(async move { detect(&server, Duration::from_secs(10)).await });
        tokio::task::yield_now().await;
        client.write_all(&H2_PREFACE[10..]).await.unwrap();
        assert_eq!(detecting.await.unwrap(), Protocol::Http2);
    }
}
