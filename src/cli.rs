//! The command line: `stickyd [run] --config PATH`, `stickyd check --config PATH` (the
//! option before or after the command), `stickyd demo`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Where the daemon looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/stickyd/stickyd.toml";

/// stickyd: a reverse-proxy load balancer for sticky HTTP sessions: insert, prefix,
/// stick-table or hash affinity.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// Config file, for the daemon and for `check`. Before or after the command:
    /// `stickyd --config F check` and `stickyd check --config F` are the same.
    #[arg(long, short, global = true, default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// What to do; runs the daemon when absent.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon on the config file.
    Run,
    /// Validate the config file: one summary line per service, or every problem as
    /// PATH:LINE:COL: message and exit status 1. Warnings (PATH:LINE:COL: warning: ...) do not
    /// fail it.
    Check {
        /// Also bind each listen address and the admin address for a moment, and fail on any
        /// that cannot be bound (in use, not an address of this host, a port below 1024
        /// without the capability). For a first start: while the daemon runs, its own ports
        /// are in use, so `ExecReload` runs `check` without it.
        #[arg(long)]
        bind: bool,
    },
    /// Start three demo backends behind stickyd on 127.0.0.1:8080 (insert affinity) and print
    /// curl commands to try.
    Demo,
}
