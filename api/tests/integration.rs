//! End-to-end tests: the real `wattdb` binary, real HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "integration/support.rs"]
mod support;

#[path = "integration/auth.rs"]
mod auth;
#[path = "integration/crash.rs"]
mod crash;
#[path = "integration/dashboard.rs"]
mod dashboard;
#[path = "integration/http.rs"]
mod http;
#[path = "integration/loadgen.rs"]
mod loadgen;
#[path = "integration/mqtt.rs"]
mod mqtt;
#[path = "integration/persist.rs"]
mod persist;
