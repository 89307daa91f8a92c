//! Integration tests: each starts the real `rpyc-classic` binary and drives it over TCP.

mod blocking;
mod concurrency;
mod exceptions;
mod netrefs;
mod robustness;
mod security;
mod soak;
mod startup;
mod support;
mod timeouts;
mod values;
