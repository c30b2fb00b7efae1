//! The lazyavg coordinator: it owns the run. Workers dial in; every epoch it
//! deals out a fresh split of the training set, every K minibatches it pulls
//! the workers' weights, averages them and pushes the average back, and after
//! every epoch it evaluates the average on the test set.
//!
//! # Layout
//! - `phases`: a run, phase by phase: [`prepare`] (before anything listens), then [`run`]: serve, drive, finish.
//! - [`config`]: flags and config file, merged and validated, then the secrets they name.
//! - [`schedule`]: the epoch's permutation and shards (pure).
//! - [`round`]: one averaging round as a state machine (pure).
//! - [`aggregate`]: the rules that combine a round's contributions, one unit each.
//! - [`screen`]: each contribution's update norm against the median: who is far from the others.
//! - [`sync_every`]: the sync interval, K minibatches or an epoch.
//! - [`init`]: shared or independent starting weights (`--init`).
//! - [`registry`]: joined workers and their sessions (pure).
//! - [`service`]: the gRPC handlers, turning sessions into events.
//! - [`driver`]: the training loop that consumes those events.
//! - [`push`]: weights for a session that has not answered yet, in slices
//!   small enough that a stalled one holds little of its own.
//! - [`data`]: loading (or fetching) the data, packing the training set.
//! - [`checkpoint`]: where a run stands, for `--resume`.
//! - [`run_dir`]: the run's files, and never writing over an earlier run's.
//! - [`observe`]: the run's events, and the observer seam every output hangs on.
//! - [`metrics`], [`dump`], [`progress`], [`observe::log`], [`observe::exporter`],
//!   [`observe::health`]: the outputs — what the run writes, shows and serves.
//! - [`spawn`]: local workers for one-machine runs.
//! - [`ending`]: the run's end told to the workers that missed its Stop (`--end-grace`).
//! - `server`: the gRPC server from start to close, and `/metrics`.
//! - [`signal`]: SIGINT and SIGTERM, listened for in one place.

pub mod aggregate;
pub mod checkpoint;
pub mod command;
pub mod config;
pub mod data;
pub mod driver;
pub mod dump;
pub mod edge;
pub mod ending;
pub mod epoch;
pub mod error;
pub mod gate;
pub mod init;
pub mod metrics;
pub mod model_state;
pub mod observe;
mod phases;
pub mod progress;
pub mod push;
pub mod registry;
pub mod round;
pub mod run_dir;
pub mod schedule;
pub mod screen;
mod server;
pub mod service;
pub mod signal;
pub mod spawn;
pub mod sync_every;

pub use crate::config::{CoordinatorConfig, Launch, Secrets, Settings};
pub use crate::driver::{RunSummary, Shutdown};
pub use crate::error::{Error, Result};
pub use crate::phases::{Prepared, prepare, run};
