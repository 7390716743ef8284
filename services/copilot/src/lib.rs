//! The `copilot` binary as a library: the command line, `copilot up` (every service in one
//! process, with local NATS and Postgres started when none are reachable), the admin commands
//! and the benchmarks. Tests start the same `App` the binary runs.

pub mod admin;
pub mod app;
pub mod bench;
pub mod bench_incidents;
pub mod bench_slack;
pub mod bench_tasks;
pub mod cli;
pub mod eval;
pub mod local;
pub mod schemas;
pub mod secrets;
pub mod tasks;
pub mod worker;

pub use app::App;
