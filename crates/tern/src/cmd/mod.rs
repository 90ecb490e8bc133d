//! The subcommands.

pub mod bench;
pub mod broker;
pub mod cluster;
pub mod connect;
pub mod passwd;
pub mod publish;
pub mod subscribe;
pub mod trace;
