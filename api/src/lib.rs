//! The vswitchd control protocol, shared by `vswitchd`, `vswitchctl` and the CNI plugin.
//!
//! One JSON request per line, one JSON reply per line, over the daemon's unix socket. A request
//! is an object tagged by `"op"`; a reply is `{"ok": <reply>}` or
//! `{"error": {"kind": "...", "message": "..."}}`.
//!
//! Every request is its own type and names its one reply type through [`Call`], so a client gets
//! a typed answer ([`Client::call`]) and the daemon's dispatch cannot answer a request with the
//! wrong shape ([`answer`]).
//!
//! This crate is deliberately small (serde only, no async, no gRPC): the CNI plugin links it and
//! nothing else of the daemon.
#![deny(unsafe_code)]

mod client;
pub mod pools;
pub mod stats;
pub mod trace;
mod types;

pub use client::{call, Client, ClientError};
pub use pools::*;
pub use stats::*;
pub use trace::{Inject, InjectReply, Trace, TraceStarted};
pub use types::*;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A request and the one reply type the daemon answers it with.
pub trait Call: Into<Request> {
    type Reply: Serialize + DeserializeOwned;
}

macro_rules! requests {
    ($($(#[$doc:meta])* $name:ident => $reply:ty;)*) => {
        /// Every request the daemon understands, as it travels on the wire.
        #[derive(Debug, Clone, Serialize, Deserialize)]
        #[serde(tag = "op", rename_all = "snake_case")]
        pub enum Request {
            $($(#[$doc])* $name($name),)*
        }
        $(
            impl Call for $name {
                type Reply = $reply;
            }
            impl From<$name> for Request {
                fn from(r: $name) -> Request {
                    Request::$name(r)
                }
            }
        )*
    };
}

requests! {
    /// Liveness check; replies with the daemon version.
    Ping => PingReply;
    NetworkList => Vec<NetworkInfo>;
    /// Adds a network at runtime (persisted in the state dir).
    NetworkAdd => NetworkInfo;
    /// Removes a network that has no ports.
    NetworkDel => Done;
    /// Attaches a pod interface to a network.
    PortAdd => PortInfo;
    /// Detaches a pod: removes its interface.
    PortDel => Done;
    PortList => Vec<PortInfo>;
    FdbShow => Vec<FdbEntryInfo>;
    Stats => StatsReply;
    /// CNI ADD: ensure the network, assign addresses, create the pod interface.
    CniAdd => CniAddReply;
    /// CNI DEL: remove the interface if present and release the addresses (idempotent).
    CniDel => Done;
    /// CNI CHECK: the attachment's record and what its interface looks like in the pod now.
    CniCheck => CniCheckReply;
    /// CNI GC: remove every attachment of the network not listed as valid.
    CniGc => CniGcReply;
    /// Peer nodes and where they came from.
    PeerList => Vec<PeerInfo>;
    /// Built-in IPAM allocations of a domain.
    IpamShow => Vec<IpamAllocation>;
    /// Starts a packet trace or capture session; its records then stream on the connection
    /// (see [`trace`]).
    Trace => TraceStarted;
    /// Runs packets through the live tables without sending them (synthetic trace).
    Inject => InjectReply;
    // IP pools (Calico-style IPAM; see `pools`).
    /// `apply -f`: IPPool / IPAMConfig objects.
    PoolApply => PoolApplyReply;
    PoolGet => PoolGetReply;
    PoolDelete => PoolDeleteReply;
    NodeLabel => NodeLabelsReply;
    NamespaceAnnotate => Done;
    PoolIpamShow => PoolIpamShowReply;
    PoolIpamCheck => PoolIpamCheckReply;
    PoolIpamRelease => PoolIpamReleaseReply;
}

/// What kind of failure a request met; stable strings for scripts and the CNI plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    BadRequest,
    InvalidConfig,
    UnknownNetwork,
    NetworkExists,
    NetworkInUse,
    UnknownPort,
    PortExists,
    AddressConflict,
    /// No free address left in the IPAM ranges.
    AddressExhausted,
    NetnsNotFound,
    /// An IP pool still has addresses in use.
    PoolInUse,
    /// The daemon is shutting down or too busy to take the request; retry.
    Unavailable,
    System,
}

/// A failed request: its kind and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
        }
    }
}

/// A reply as it travels on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Ok(serde_json::Value),
    Error(ApiError),
}

/// The daemon side of a request: runs `handle` on it and encodes its typed result. Because the
/// reply type comes from `C`, a handler cannot answer with the wrong shape.
pub fn answer<C: Call>(req: C, handle: impl FnOnce(C) -> Result<C::Reply, ApiError>) -> Reply {
    match handle(req) {
        Ok(v) => match serde_json::to_value(v) {
            Ok(v) => Reply::Ok(v),
            Err(e) => Reply::Error(ApiError::new(
                ErrorKind::System,
                format!("encode reply: {e}"),
            )),
        },
        Err(e) => Reply::Error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_tagged_by_op() {
        let r: Request = Ping {}.into();
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"op":"ping"}"#);
        let r: Request = PortDel { id: "p".into() }.into();
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"op":"port_del","id":"p"}"#
        );
        let back: Request = serde_json::from_str(r#"{"op":"ping"}"#).unwrap();
        // A reply from a daemon without a build id still decodes (old daemon, new client).
        let old: PingReply = serde_json::from_str(r#"{"version":"0.1.0"}"#).unwrap();
        assert_eq!(old.build, "");
        assert!(matches!(back, Request::Ping(_)));
        let back: Request = serde_json::from_str(r#"{"op":"ipam_show","domain":"d"}"#).unwrap();
        assert!(matches!(back, Request::IpamShow(IpamShow { domain }) if domain == "d"));
    }

    #[test]
    fn answer_encodes_the_typed_reply() {
        let r = answer(Ping {}, |_| {
            Ok(PingReply {
                version: "1".into(),
                build: "b".into(),
                workers: 1,
                io: "epoll".into(),
            })
        });
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"ok":{"build":"b","io":"epoll","version":"1","workers":1}}"#
        );
        let r = answer(PortDel { id: "x".into() }, |_| {
            Err(ApiError::new(ErrorKind::UnknownPort, "no"))
        });
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"error":{"kind":"unknown_port","message":"no"}}"#
        );
        let done = answer(NetworkDel { name: "n".into() }, |_| Ok(Done {}));
        assert_eq!(serde_json::to_string(&done).unwrap(), r#"{"ok":{}}"#);
    }
}
