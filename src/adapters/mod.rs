//! Adapters: the I/O edges. Databases (`db`), queues (`queue`) and evidence
//! sources (`logfile`). Adapters fetch and execute; they never decide.

pub mod db;
pub mod logfile;
pub mod queue;
