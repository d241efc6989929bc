//! Socket addresses in a form both sides can reason about, and their conversion from
//! and to the kernel's `struct sockaddr_*` layouts (x86_64 Linux).

use serde::{Deserialize, Serialize};

/// Size of `struct sockaddr_storage`: no address we build is larger.
pub const SOCKADDR_MAX: usize = 128;

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SUN_PATH_MAX: usize = 108;

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SockAddr<'a> {
    Inet {
        ip: [u8; 4],
        port: u16,
    },
    Inet6 {
        ip: [u8; 16],
        port: u16,
        flowinfo: u32,
        scope_id: u32,
    },
    /// A Unix socket. An abstract name starts with a NUL byte; a pathname has no NUL.
    Unix {
        #[serde(with = "serde_bytes")]
        path: &'a [u8],
    },
    /// Any other family, kept by number only.
    Other {
        family: u16,
    },
}

impl<'a> SockAddr<'a> {
    /// Decode the first `raw.len()` bytes of a `struct sockaddr` as passed to
    /// connect/sendto (`raw.len()` is the caller's `addrlen`). `None` when the length
    /// is too short for the family.
    pub fn from_raw(raw: &'a [u8]) -> Option<Self> {
        let family = u16::from_ne_bytes([*raw.first()?, *raw.get(1)?]);
        let port = |raw: &[u8]| u16::from_be_bytes([raw[2], raw[3]]);
        match family {
            AF_INET if raw.len() >= 8 => Some(SockAddr::Inet { ip: raw[4..8].try_into().ok()?, port: port(raw) }),
            AF_INET6 if raw.len() >= 24 => Some(SockAddr::Inet6 {
                ip: raw[8..24].try_into().ok()?,
                port: port(raw),
                flowinfo: u32::from_be_bytes(raw[4..8].try_into().ok()?),
                scope_id: raw.get(24..28).map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
            }),
            AF_UNIX => {
                let path = &raw[2..raw.len().min(2 + SUN_PATH_MAX)];
                let path = match path.first() {
                    // Abstract: every byte up to addrlen counts.
                    Some(0) => path,
                    _ => &path[..path.iter().position(|&b| b == 0).unwrap_or(path.len())],
                };
                Some(SockAddr::Unix { path })
            }
            AF_INET | AF_INET6 => None,
            family => Some(SockAddr::Other { family }),
        }
    }

    /// Write the kernel layout into `out`; returns the `addrlen` to pass, or `None`
    /// for [`SockAddr::Other`] and over-long Unix paths.
    pub fn to_raw(&self, out: &mut [u8; SOCKADDR_MAX]) -> Option<usize> {
        out.fill(0);
        match *self {
            SockAddr::Inet { ip, port } => {
                out[..2].copy_from_slice(&AF_INET.to_ne_bytes());
                out[2..4].copy_from_slice(&port.to_be_bytes());
                out[4..8].copy_from_slice(&ip);
                Some(16)
            }
            SockAddr::Inet6 { ip, port, flowinfo, scope_id } => {
                out[..2].copy_from_slice(&AF_INET6.to_ne_bytes());
                out[2..4].copy_from_slice(&port.to_be_bytes());
                out[4..8].copy_from_slice(&flowinfo.to_be_bytes());
                out[8..24].copy_from_slice(&ip);
                out[24..28].copy_from_slice(&scope_id.to_ne_bytes());
                Some(28)
            }
            SockAddr::Unix { path } => {
                let abstract_name = path.first() == Some(&0);
                if path.len() > SUN_PATH_MAX - usize::from(!abstract_name) {
                    return None;
                }
                out[..2].copy_from_slice(&AF_UNIX.to_ne_bytes());
                out[2..2 + path.len()].copy_from_slice(path);
                Some(2 + path.len() + usize::from(!abstract_name))
            }
            SockAddr::Other { .. } => None,
        }
    }

    pub fn port(&self) -> Option<u16> {
        match *self {
            SockAddr::Inet { port, .. } | SockAddr::Inet6 { port, .. } => Some(port),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inet_round_trips_through_the_kernel_layout() {
        // struct sockaddr_in for 127.0.0.1:8080
        let raw = [2, 0, 0x1f, 0x90, 127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        let addr = SockAddr::from_raw(&raw).unwrap();
        assert_eq!(addr, SockAddr::Inet { ip: [127, 0, 0, 1], port: 8080 });
        let mut out = [0u8; SOCKADDR_MAX];
        assert_eq!(addr.to_raw(&mut out), Some(16));
        assert_eq!(out[..16], raw);
    }

    #[test]
    fn inet6_keeps_flowinfo_and_scope() {
        let addr = SockAddr::Inet6 { ip: [0xfe; 16], port: 443, flowinfo: 5, scope_id: 2 };
        let mut out = [0u8; SOCKADDR_MAX];
        let len = addr.to_raw(&mut out).unwrap();
        assert_eq!(SockAddr::from_raw(&out[..len]), Some(addr));
    }

    #[test]
    fn unix_paths_stop_at_nul_but_abstract_names_do_not() {
        let mut raw = [0u8; 20];
        raw[0] = 1;
        raw[2..7].copy_from_slice(b"/sock");
        assert_eq!(SockAddr::from_raw(&raw), Some(SockAddr::Unix { path: b"/sock" }));
        let abs = [1, 0, 0, b'a', 0, b'b'];
        assert_eq!(SockAddr::from_raw(&abs), Some(SockAddr::Unix { path: b"\0a\0b" }));
        let mut out = [0u8; SOCKADDR_MAX];
        assert_eq!(SockAddr::Unix { path: b"\0a\0b" }.to_raw(&mut out), Some(6));
        assert_eq!(SockAddr::Unix { path: b"/sock" }.to_raw(&mut out), Some(8));
    }

    #[test]
    fn short_inet_addresses_are_refused() {
        assert_eq!(SockAddr::from_raw(&[2, 0, 0, 80]), None);
        assert_eq!(SockAddr::from_raw(&[2]), None);
        assert_eq!(SockAddr::from_raw(&[16, 0, 1, 2]), Some(SockAddr::Other { family: 16 }));
    }
}
