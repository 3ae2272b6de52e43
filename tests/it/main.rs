//! The one integration-test binary. Tests talk to real services (Postgres,
//! Redis, …) and real queue consumers; a missing service fails the test
//! with instructions, it is never skipped.

mod activejob;
mod bad_input;
mod browser;
mod config_errors;
mod daemon;
mod evidence_fixtures;
mod failover;
mod guards;
mod history;
mod init;
mod job_systems;
mod journal;
mod log_stores;
mod mariadb;
mod ops;
mod outages;
mod providers;
mod queues;
mod races;
mod secrets;
mod sql_sweeps;
mod status_page;
mod streaming;
mod support;
