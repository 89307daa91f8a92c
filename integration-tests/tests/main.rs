//! Integration tests: each starts the real `rpyc-classic` binary and drives it over TCP.

mod blocking;
mod compat_rpyc;
mod concurrency;
mod examples;
mod exceptions;
mod netrefs;
mod robustness;
mod security;
mod soak;
mod startup;
mod support;
mod timeouts;
mod tls;
mod values;
