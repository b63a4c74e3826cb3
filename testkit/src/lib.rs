//! Local fakes of ebg-notify's upstreams, each an HTTP server on a random loopback port that speaks
//! the real wire contract (SPEC.md §6 for VA Notify, BGS.md for BGS, CHANNELS.md §2 for MPI FHIR over mutual TLS),
//! and a TCP proxy that can cut a link (the database, in outage tests).

pub mod bgs;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod tcp_proxy;
pub mod va_notify;

pub use bgs::FakeBgs;
#[cfg(feature = "mpi")]
pub use mpi::{FakeMpi, TestPki};
pub use tcp_proxy::TcpProxy;
pub use va_notify::FakeVaNotify;
