//! The control plane: the API (crate `vswitch_api`) served on the control socket, the daemon state behind it, and the
//! interface plumbing it drives.

pub mod cluster;
pub mod daemon;
pub mod device;
pub mod ipam;
pub mod netconf;
pub mod netlink;
pub mod pools;
pub mod server;
pub mod store;
