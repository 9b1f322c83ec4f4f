#![no_std]
// The programs live in main.rs; this library target lets `cargo check` see the crate.
