//! `lb_pick`: the caller-allocated result of a pick, with fixed, NUL-terminated buffers.
//!
//! Fixed buffers mean nothing to free and no lifetime to document: a pick can live on the caller's
//! stack. Addresses are formatted by hand into them, without allocating.

use std::ffi::c_char;
use std::fmt;
use std::net::SocketAddr;

use lb_core::Endpoint;

use crate::ptr::copy_to_buf;

/// Size of `lb_pick.addr`: `ip:port`, IPv6 as `[ip]:port`, NUL-terminated.
pub const LB_ADDR_LEN: usize = 64;
/// Size of `lb_pick.ip`.
pub const LB_IP_LEN: usize = 48;
/// Size of `lb_pick.zone` and `lb_pick.region` (Kubernetes label values are at most 63 bytes).
pub const LB_LABEL_LEN: usize = 64;
/// Size of `lb_pick.node` (a Kubernetes node name is at most 253 bytes).
pub const LB_NODE_LEN: usize = 256;

/// The endpoint a pick chose. Caller-allocated (on the stack is fine); every string field is
/// NUL-terminated UTF-8, empty when unknown. Nothing in it needs freeing.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy)]
pub struct lb_pick {
    /// Pass to `lb_balancer_report` exactly once. Never zero.
    pub token: u64,
    /// The endpoint's port.
    pub port: u16,
    /// `ip:port` (IPv6 as `[ip]:port`).
    pub addr: [c_char; LB_ADDR_LEN],
    /// The IP address alone, as `inet_pton` accepts it.
    pub ip: [c_char; LB_IP_LEN],
    /// `topology.kubernetes.io/region`.
    pub region: [c_char; LB_LABEL_LEN],
    /// `topology.kubernetes.io/zone`.
    pub zone: [c_char; LB_LABEL_LEN],
    /// `kubernetes.io/hostname` (cut at a UTF-8 boundary if longer than 255 bytes).
    pub node: [c_char; LB_NODE_LEN],
}

impl fmt::Debug for lb_pick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("lb_pick")
            .field("token", &self.token)
            .field("port", &self.port)
            .finish()
    }
}

impl lb_pick {
    /// Fills every field in place (the struct is ~500 bytes: building it elsewhere and copying it
    /// out cost more than the pick itself). The caller zeroes it first.
    pub(crate) fn fill(&mut self, token: u64, endpoint: &Endpoint) {
        self.token = token;
        self.port = endpoint.addr().port();
        write_addr(endpoint.addr(), &mut self.ip, &mut self.addr);
        let loc = endpoint.locality();
        copy_to_buf(&mut self.region, loc.region.as_deref().unwrap_or(""));
        copy_to_buf(&mut self.zone, loc.zone.as_deref().unwrap_or(""));
        copy_to_buf(&mut self.node, loc.node.as_deref().unwrap_or(""));
    }
}

/// Writes `ip` and `ip:port` (IPv6 as `[ip]:port`) as NUL-terminated strings. IPv4, the common
/// case, is formatted by hand: `fmt` machinery costs as much as the rest of a pick.
fn write_addr(
    addr: SocketAddr,
    ip_out: &mut [c_char; LB_IP_LEN],
    addr_out: &mut [c_char; LB_ADDR_LEN],
) {
    match addr {
        SocketAddr::V4(v4) => {
            let mut buf = ArrayString::<LB_ADDR_LEN>::new();
            for (i, octet) in v4.ip().octets().iter().enumerate() {
                if i > 0 {
                    buf.push(b'.');
                }
                buf.push_u32(u32::from(*octet));
            }
            copy_to_buf(ip_out, buf.as_str());
            buf.push(b':');
            buf.push_u32(u32::from(v4.port()));
            copy_to_buf(addr_out, buf.as_str());
        }
        SocketAddr::V6(_) => {
            let mut buf = ArrayString::<LB_ADDR_LEN>::new();
            let _ = fmt::Write::write_fmt(&mut buf, format_args!("{}", addr.ip()));
            copy_to_buf(ip_out, buf.as_str());
            let mut buf = ArrayString::<LB_ADDR_LEN>::new();
            let _ = fmt::Write::write_fmt(&mut buf, format_args!("{addr}"));
            copy_to_buf(addr_out, buf.as_str());
        }
    }
}

/// A fixed-capacity string for formatting addresses without allocating on the pick path.
struct ArrayString<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> ArrayString<N> {
    fn new() -> Self {
        ArrayString {
            buf: [0; N],
            len: 0,
        }
    }

    /// Appends an ASCII byte (dropped when full; addresses always fit).
    fn push(&mut self, b: u8) {
        if self.len < N && b.is_ascii() {
            self.buf[self.len] = b;
            self.len += 1;
        }
    }

    fn push_u32(&mut self, mut v: u32) {
        let mut digits = [0u8; 10];
        let mut n = 0;
        loop {
            digits[n] = b'0' + (v % 10) as u8;
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for d in digits[..n].iter().rev() {
            self.push(*d);
        }
    }

    fn as_str(&self) -> &str {
        // Only whole `&str`s are appended, so the prefix is UTF-8; fall back to "" rather than trust it.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl<const N: usize> fmt::Write for ArrayString<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > N {
            return Err(fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(buf: &[c_char]) -> String {
        let end = buf.iter().position(|&c| c == 0).expect("NUL-terminated");
        buf[..end].iter().map(|&c| c as u8 as char).collect()
    }

    #[test]
    fn addresses_are_formatted_like_std() {
        for a in [
            "127.0.0.1:80",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.20.3.4:50051",
            "[::1]:8080",
            "[fe80::1%2]:9",
        ] {
            let addr: SocketAddr = a.parse().expect("valid");
            let (mut ip, mut full) = ([1 as c_char; LB_IP_LEN], [1 as c_char; LB_ADDR_LEN]);
            write_addr(addr, &mut ip, &mut full);
            assert_eq!(written(&full), addr.to_string());
            assert_eq!(written(&ip), addr.ip().to_string());
        }
    }
}
