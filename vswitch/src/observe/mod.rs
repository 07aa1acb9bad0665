//! Observability: what an operator uses to see why a packet went where it went.
//!
//! - [`filter`]: the match-expression language (`vswitchctl trace --match`), parsed with
//!   positioned errors; [`matcher`]: the same compiled against dataplane indices and evaluated per
//!   packet without allocating, before and after the pipeline runs.
//! - [`hub`]: trace and capture sessions shared by the control plane and the workers; bounded
//!   queues, never blocking a worker.
//! - [`render`]: records turned into `vswitch_api::trace::TraceEvent`s with names (what the
//!   control socket carries and `vswitchctl trace` prints); [`pcapng`]: capture files.
//! - [`session`]: one session served on a control connection (start, stream, end).
//! - [`metrics`]: the Prometheus rendering of the stats snapshot (`vswitch_api::StatsReply`, the
//!   numbers `vswitchctl stats` prints); [`http`]: the `metrics_listen` endpoint serving it.
//! - [`inject`]: packets described in words, built into frames for a synthetic trace.
//! - [`cli`]: `vswitchctl trace` and `capture` (arguments, streaming, output).
//! - [`logging`]: the daemon's log filter (`RUST_LOG`, `log_level`).

pub mod cli;
pub mod filter;
pub mod http;
pub mod hub;
pub mod inject;
pub mod logging;
pub mod matcher;
pub mod metrics;
pub mod pcapng;
pub mod render;
pub mod session;
