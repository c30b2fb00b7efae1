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
//! - `deploy`: the commands of deploy/'s Kubernetes, compose and systemd
//!   files, run as written (ports, paths and secret made local), and restarted.
//! - `netns`: separate hosts in network namespaces; a worker's link cut and restored.
//! - `overlap`: `--overlap`, training that goes on while a round is averaged.
//! - `scaling`: `lazyavg bench scaling` end to end.
//! - `metrics`: `/metrics` scraped during a run and checked with promtool, a
//!   real Prometheus with deploy/monitoring's config and rules, gRPC health.
//! - `status`: `lazyavg status` on a 3-worker run; a stopped worker shown late.

mod cluster;
mod deploy;
mod faults;
mod harness;
mod metrics;
mod netns;
mod overlap;
mod scaling;
mod status;
mod support;
mod training;
