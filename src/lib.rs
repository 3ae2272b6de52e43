//! sweeper: finds rows stuck in `pending`/`sending` in an app's own tables,
//! requeues lost jobs into the app's queue in that queue's wire format, and
//! settles ambiguous sends from mail-server evidence.
//!
//! Layout (see ARCHITECTURE.md): `core` is pure; `config` parses and
//! validates; `adapters` do I/O; `shell` wires them into passes, the CLI and
//! the daemon.

pub mod adapters;
pub mod config;
pub mod core;
pub mod shell;
