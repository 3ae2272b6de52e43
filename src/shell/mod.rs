//! The imperative shell: the pass (`pass`), the CLI (`cli`), `check` and
//! `demo`. It wires config, adapters and the pure core together; it
//! decides nothing itself.

pub mod check;
pub mod cli;
pub mod demo;
pub mod explain;
pub mod pass;
