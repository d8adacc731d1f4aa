//! WattDB workload benchmarks: the plug-fleet simulator and the load generator behind
//! `wattdb loadgen`.
//!
//! This crate sits outside the server. It talks to a running WattDB over HTTP exactly
//! as a fleet of smart plugs (or their gateway) would, and it depends on no other
//! WattDB crate, so it measures what a user would meet: rows/s, ack latency, errors and
//! verified loss.
//!
//! - [`simulator`]: a deterministic, seeded fleet of plugs ([`Fleet`]) with appliance
//!   profiles, mains-voltage drift, real-plug reporting resolution, a cumulative energy
//!   counter with occasional resets, relay-off periods, and configurable shares of late,
//!   out-of-order and duplicated (resent) readings. One [`Reading`] per plug per
//!   simulated second, with no allocation per reading.
//! - [`encode`]: appends a reading to a reusable `Vec<u8>` as one InfluxDB
//!   line-protocol line ([`encode_lp`]) or one JSON object ([`encode_json`]).
//! - [`loadgen`]: [`run`] drives a fleet against a server's write routes from a pool of
//!   keep-alive connections (or publishes it to an MQTT broker the server reads), open loop at a scheduled rate (latency measured from the
//!   scheduled send time, so a slow server cannot hide its queueing) or flat out, then
//!   verifies with SQL that every acknowledged reading is stored exactly once, and
//!   returns a [`Report`].
//! - [`mqtt`]: `wattdb mqtt-bench`, the MQTT path through a real broker: the broker's
//!   own delivery ceiling to a subscriber that only counts, and WattDB's sustained rate.
//! - [`queries`]: `wattdb query-bench`, dashboard and analytics questions over HTTP.
//! - [`server_view`]: the server's side of a run (WAL fsync and write latency) from its
//!   `/metrics` before and after, so a high ack p99 can be told apart from a slow disk.
//! - [`disk`]: `wattdb disk-bench`, the disk's side alone: WAL-like commits (write and
//!   `fdatasync`) timed without a server, the floor under the ack tail.
//! - [`histogram`]: the log-bucket latency histogram the report's percentiles come from.
//! - [`http1`]: the load generator's write client (HTTP/1.1, head and body in two
//!   writes; `ureq` does the rest).
//!
//! It is not a client library: it knows only the write routes, the query route,
//! `/metrics` and MQTT publishing (and, for `disk-bench`, a file of its own).

pub mod disk;
pub mod encode;
pub mod histogram;
pub mod http1;
pub mod loadgen;
pub mod mqtt;
pub mod queries;
mod rng;
pub mod server_view;
pub mod simulator;

pub use encode::{encode_json, encode_lp};
pub use histogram::Histogram;
pub use loadgen::{LoadgenArgs, LoadgenError, Protocol, Report, run};
pub use simulator::{Delivery, DeviceType, Fleet, FleetConfig, Plug, Reading};

/// An HTTP agent that sends `Authorization: Bearer TOKEN` with every request, when
/// there is a token.
// The closure's error type is ureq's own.
#[allow(clippy::result_large_err)]
pub fn http_agent(token: Option<&str>, timeout: std::time::Duration) -> ureq::Agent {
    let builder = ureq::AgentBuilder::new().timeout(timeout);
    match token {
        None => builder.build(),
        Some(t) => {
            let value = format!("Bearer {t}");
            builder
                .middleware(move |req: ureq::Request, next: ureq::MiddlewareNext<'_>| {
                    next.handle(req.set("Authorization", &value))
                })
                .build()
        }
    }
}
