//! The integration tests, one module per area, in one binary so `support` is compiled once
//! and the tests link once. `shutdown` and `netns` stay separate binaries (tests/*.rs): each
//! needs a process of its own.

mod support;

mod auth;
mod bounded;
mod cli;
mod delayed;
mod descriptors;
mod email;
mod errors;
mod exec;
mod give_back;
mod hostile;
mod idle_memory;
mod journal;
mod lease_load;
mod leases;
mod lockout;
mod master_journal;
mod memory;
mod memory_balance;
mod python;
mod queue;
mod reconnect;
mod redis;
mod restart;
mod semantics;
mod shell;
mod submit;
mod temporary;
mod timeout;
mod worker_failures;
mod write_deadline;
