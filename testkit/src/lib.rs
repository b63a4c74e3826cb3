//! Local fakes of ebg-notify's upstreams, each an HTTP server on a random loopback port that speaks
//! the real wire contract (SPEC.md §6 for VA Notify, BGS.md for BGS, CHANNELS.md §2 for MPI FHIR over mutual TLS).

pub mod bgs;
pub mod mpi;
pub mod va_notify;

pub use bgs::FakeBgs;
pub use mpi::{FakeMpi, TestPki};
pub use va_notify::FakeVaNotify;
