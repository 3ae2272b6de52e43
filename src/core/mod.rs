//! The functional core: plain data in, decisions and text out.
//!
//! Owns: the model (`model`), evidence matching (`evidence`), the decision
//! function and planner (`decide`), report rendering (`report`), and the
//! sweeps `init` proposes from a schema (`propose`).
//! Does not own: any I/O. Nothing here reads a clock, a file, a socket or the
//! environment; `now` is always an argument, and nothing here can fail on
//! I/O (ARCHITECTURE.md, invariant 1).

pub mod decide;
pub mod evidence;
pub mod model;
pub mod propose;
pub mod report;
pub mod template;
