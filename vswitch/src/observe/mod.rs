//! Observability: what an operator uses to see why a packet went where it went.
//!
//! - [`filter`]: the match-expression language (`vswitchctl trace --match`), parsed with
//!   positioned errors; [`matcher`]: the same compiled against dataplane indices and evaluated per
//!   packet without allocating, before and after the pipeline runs.
//! - [`hub`]: trace and capture sessions shared by the control plane and the workers; bounded
//!   queues, never blocking a worker.

pub mod filter;
pub mod hub;
pub mod matcher;
