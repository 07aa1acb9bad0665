//! The packet path, top to bottom: [`pool`] (buffers) → [`pipeline`] (parse, ingress checks,
//! ARP/ICMP answers, FDB forwarding, all pure and testable without root; [`ipv6`] holds IPv6
//! first-hop security, ND answers and MLD snooping) → [`worker`] (rx/tx
//! batches over taps and AF_PACKET rings, one thread each). [`counters`] names every drop.

pub mod counters;
pub mod engine;
pub mod fdb;
pub mod ipv6;
pub mod overlay;
pub mod pipeline;
pub mod pool;
pub mod port;
pub mod trace;
pub mod underlay;
pub mod worker;

pub use counters::{Absorbed, DropCounters, DropReason, PortCounters};
