//! Where a connection that `skiff iptables`' rules redirected to skiff was
//! going before (`SO_ORIGINAL_DST`, or `IP6T_SO_ORIGINAL_DST` on IPv6):
//! the sidecar's capture listeners route by it.

use std::net::SocketAddr;

/// Where a redirected connection was going before the `REDIRECT` rule sent
/// it to skiff (`SO_ORIGINAL_DST`, or `IP6T_SO_ORIGINAL_DST` on IPv6).
/// An error means the connection was not redirected.
pub fn original_destination(stream: &tokio::net::TcpStream) -> std::io::Result<SocketAddr> {
    let socket = socket2::SockRef::from(stream);
    // An IPv4 connection on a dual-stack socket has a v4-mapped address and
    // was redirected by iptables, not ip6tables.
    let v4 = match stream.local_addr()? {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
    };
    let original = if v4 {
        socket.original_dst_v4()?
    } else {
        socket.original_dst_v6()?
    };
    original.as_socket().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "original destination is not an IP address",
        )
    })
}
