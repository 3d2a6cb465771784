//! The integration tests: one crate, one module per subject, helpers in `support`.

mod support;

mod access_log;
mod admin;
mod auth_config;
mod auth_forward;
mod auth_jwt;
mod auth_origin;
mod autobahn;
mod backend_failures;
mod backend_pools;
mod backpressure;
mod browser;
mod browser_auth;
mod cli_config;
mod close_semantics;
mod control_under_load;
mod deflate;
mod drain;
mod framing_modes;
mod handshake;
mod hostile_clients;
mod integrity;
mod limits_admission;
mod protocol_violations;
mod proxy_protocol;
mod reload;
mod static_files;
mod targets;
mod tls;
mod wsload_smoke;
