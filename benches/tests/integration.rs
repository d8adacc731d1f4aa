//! Integration tests of the simulator, the encoders and the load generator (against a
//! small in-test HTTP server that decodes with `wattdb-ingest`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "integration/encode.rs"]
mod encode;
#[path = "integration/loadgen.rs"]
mod loadgen;
#[path = "integration/server.rs"]
mod server;
#[path = "integration/simulator.rs"]
mod simulator;
