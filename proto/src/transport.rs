//! HTTP/2 settings both ends of a session use, so that the coordinator and
//! its workers agree on them.

use std::time::Duration;

use crate::MAX_CHUNK_BYTES;

/// How often idle HTTP/2 connections are pinged, and how long a ping may go
/// unanswered before the connection (and the worker's session) is dropped.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/2 flow-control windows large enough that a whole default model
/// (800 KB) is in flight without waiting for window updates: h2's 64 KiB
/// default costs a round trip per 64 KiB of weights. Not larger: a stream
/// the coordinator paces (a worker far ahead of the others) holds up to a
/// window of weights it has not read yet; 2 MiB instead of 8 took 14–28 MB
/// off its peak with 2 workers of a 20M-parameter model and 56–82 MB with
/// 8, rounds within the noise (docs/performance.md).
pub const STREAM_WINDOW: u32 = 2 << 20;
pub const CONNECTION_WINDOW: u32 = 32 << 20;

/// Largest HTTP/2 frame accepted: a weights chunk travels in three frames
/// instead of 33 of h2's 16 KiB default. Not larger: each connection reads
/// whole frames into buffers of its own, which a stream the coordinator
/// paces keeps until it takes the chunk. With 8 workers of a 20M-parameter
/// model, 16 MiB frames cost the coordinator 35 MiB more at its peak, and a
/// frame per message (576 KiB) 17 MiB more; the default model's rounds as
/// fast within the noise (docs/performance.md, "Sixth cut").
pub const MAX_FRAME: u32 = 256 << 10;

/// Largest gRPC message either end sends or accepts: a full weights chunk
/// plus room for its other fields.
pub const MAX_MESSAGE_BYTES: usize = MAX_CHUNK_BYTES + 64 * 1024;
