//! The imperative shell: the pass (`pass`), the CLI (`cli`), the daemon
//! (`daemon`, `schedule`, `metrics`, and its status pages: `status`,
//! `web`), `check`, `explain`, `history`, `demo` and `init`. It wires config, adapters and the pure core together; it
//! decides nothing itself.

pub mod check;
pub mod cli;
pub mod daemon;
pub mod demo;
pub mod explain;
pub mod history;
pub mod init;
pub mod metrics;
pub mod pass;
pub mod schedule;
pub mod status;
pub mod web;
