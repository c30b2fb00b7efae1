//! Integration tests: the real `lazyavg` binary, started as separate
//! processes on 127.0.0.1 with ports chosen by the OS, readiness polled with a
//! deadline, children killed by pid when a test ends.
//!
//! - `support`: starting and stopping processes, waiting, parsing JSON logs.
//! - `harness`: clusters of those processes: coordinator, workers, run outputs.
//! - `training`: one-process training on real MNIST, and the cross-check of a
//!   saved model with an independent NumPy implementation.
//! - `cluster`: a coordinator and worker processes: accuracy, the dataset
//!   cache, the average recomputed bit for bit, shards, seeded runs, refusals.
//! - `faults`: workers killed, stopped and restarted; the coordinator killed
//!   or interrupted and resumed; too few workers; hostile gRPC messages;
//!   strangers without the token or the right TLS certificate.
//! - `ending`: workers that missed the end of their run, started after it,
//!   or pointed at a server that is not a coordinator exit by themselves.
//! - `deploy`: the commands of deploy/'s Kubernetes, compose and systemd
//!   files, run as written (ports, paths and secret made local), and restarted.
//! - `containers`: deploy/'s image built and its compose file brought up in
//!   podman; the coordinator's container restarted mid-run.
//! - `netns`: separate hosts in network namespaces; a worker's link cut and restored.
//! - `merge`: `lazyavg train --part` on halves of MNIST and `lazyavg merge`
//!   of their files, of a PyTorch-style file, and the refusal of mismatched ones.
//! - `model`: a custom stack of layers (`--model`) trained in a cluster, two
//!   trained on halves and merged; bad stacks and mismatched files refused.
//! - `shapes`: a generated set of 3×8×8 images in 5 classes (rank-4 IDX)
//!   trained in one process and by two workers; models that do not fit it refused.
//! - `overlap`: `--overlap`, training that goes on while a round is averaged.
//! - `flags`: docs/flags.md against the binaries' `--help`; the hidden debugging knobs.
//! - `scaling`: `lazyavg-bench scaling` (the bench crate) driving this `lazyavg`, end to end.
//! - `align`: `--align` with `--init independent --sync-every epoch` (units
//!   matched, momentum reordered, the model file the last average), and
//!   `--align none` bit for bit the run without the flag.
//! - `metrics`: `/metrics` scraped during a run and checked with promtool, a
//!   real Prometheus with deploy/monitoring's config and rules, gRPC health.
//! - `status`: `lazyavg status` on a 3-worker run; a stopped worker shown late.
//! - `abuse`: clients that try to exhaust the coordinator (floods of Joins,
//!   sessions that never attach, sessions that never read): refused or
//!   forgotten, its memory bounded, the run unharmed.
//! - `robust`: a hostile client that scales its weights: centered clipping
//!   and `--drop-outliers` hold and name it; the plain mean diverges and
//!   names it.

mod abuse;
mod align;
mod cluster;
mod cnn;
mod containers;
mod deploy;
mod ending;
mod faults;
mod flags;
mod harness;
mod merge;
mod metrics;
mod model;
mod netns;
mod overlap;
mod robust;
mod scaling;
mod shapes;
mod status;
mod support;
mod training;
