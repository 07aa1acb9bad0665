//! vswitch: a userspace virtual switch for Kubernetes.
//!
//! Layout, top to bottom along the packet path:
//! - [`sys`]: the only `unsafe` code: tap, AF_PACKET rings, epoll (syscall wrappers).
//! - [`packet`]: typed, bounds-checked views over frame bytes (Ethernet, ARP, IPv4, ICMP, IPv6).
//! - [`dataplane`]: buffer pool, FDB, the switching pipeline and the worker threads.
//! - [`control`]: the control socket API, netns/interface plumbing and the daemon state.
//! - [`observe`]: packet trace and capture sessions, match expressions, pcapng, metrics.
#![deny(unsafe_code)]

pub mod control;
pub mod dataplane;
pub mod observe;
pub mod packet;
pub mod sys;
