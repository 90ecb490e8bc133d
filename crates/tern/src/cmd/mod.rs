//! The subcommands.

pub mod broker;
