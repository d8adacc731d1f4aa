//! End-to-end tests: the real `wattdb` binary, real HTTP.

#[path = "integration/support.rs"]
mod support;

#[path = "integration/crash.rs"]
mod crash;
#[path = "integration/http.rs"]
mod http;
