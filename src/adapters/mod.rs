//! Adapters: the I/O edges. Databases (`db`), queues (`queue`) and evidence
//! sources (`logfile`, and `tail` for the daemon's incremental reads). Adapters fetch and execute; they never decide.

pub mod db;
pub mod journal;
pub mod logfile;
pub mod logstore;
pub mod provider;
pub mod queue;
pub mod tail;
