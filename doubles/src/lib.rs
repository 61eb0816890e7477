//! Test doubles of the external services lb talks to, for tests and benchmarks on machines where
//! the real services cannot be installed.
//!
//! Each double serves the real wire protocol over real HTTP on 127.0.0.1, follows the documented
//! semantics that lb relies on, and says in its module docs where it deliberately differs. They are
//! doubles: never point production code at them.

#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms, unreachable_pub)]
#![forbid(unsafe_code)]

pub mod consul;
pub mod kube;
