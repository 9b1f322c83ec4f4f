//! The configuration file (`faultd --config faultd.toml`).
