//! Flow control for a round's contributions: a session lets a worker's
//! weights through to the driver at most [`AHEAD`] values past the slowest
//! worker still in the round, and otherwise stops reading its stream, so
//! that HTTP/2 flow control makes the worker wait.
//!
//! The mean sums only the positions some but not all workers have sent
//! (`aggregate::mean`); without a bound, a worker that sent its whole model
//! before another began made that sum the whole model in f64, twice its
//! size (at 20M parameters, 160 MB more than the model; docs/performance.md).
//! A worker held here has nothing else to do: it waits for the average
//! anyway. A model of at most [`AHEAD`] values is never held.

use lazyavg_proto::chunks::{Chunk, VALUES_PER_CHUNK};
use tokio::sync::watch;

/// How far past the slowest worker a worker's weights are let through:
/// 4 wire chunks: 2 MiB of f32 per worker, 4 MiB of running sum.
pub const AHEAD: usize = 4 * VALUES_PER_CHUNK;

/// The open round, and the positions every worker still in it has sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frontier {
    pub epoch: u64,
    pub round: u64,
    pub upto: usize,
}

impl Frontier {
    /// Whether `chunk` may go to the driver now: a chunk of another round
    /// always may (the round refuses or holds it), one of this round if it
    /// starts less than [`AHEAD`] values past the frontier.
    pub fn admits(&self, chunk: &Chunk) -> bool {
        (chunk.epoch, chunk.round) != (self.epoch, self.round) || chunk.offset < (self.upto + AHEAD) as u64
    }
}

/// Where the driver publishes the open round's frontier: `None` between
/// rounds, when every chunk is let through.
pub type Publisher = watch::Sender<Option<Frontier>>;

/// A session's view of the frontier.
#[derive(Debug, Clone)]
pub struct Gate(watch::Receiver<Option<Frontier>>);

/// A publisher and the gate its frontiers open.
pub fn channel() -> (Publisher, Gate) {
    let (publisher, frontier) = watch::channel(None);
    (publisher, Gate(frontier))
}

impl Gate {
    /// Resolves once `chunk` may go to the driver (at once if the driver is gone).
    pub async fn admit(&mut self, chunk: &Chunk) {
        let _ = self.0.wait_for(|frontier| frontier.is_none_or(|f| f.admits(chunk))).await;
    }
}

/// Publishes `frontier` where it changed, waking the sessions it may admit.
pub fn publish(publisher: &Publisher, frontier: Option<Frontier>) {
    publisher.send_if_modified(|current| {
        let changed = *current != frontier;
        *current = frontier;
        changed
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn chunk(round: u64, offset: usize) -> Chunk {
        Chunk { epoch: 1, round, offset: offset as u64, total: 10 * AHEAD as u64, data: Bytes::from_static(&[0; 4]) }
    }

    #[test]
    fn a_round_s_chunks_pass_up_to_ahead_values_past_its_frontier() {
        let frontier = Frontier { epoch: 1, round: 3, upto: 100 };
        assert!(frontier.admits(&chunk(3, 0)));
        assert!(frontier.admits(&chunk(3, 100 + AHEAD - 1)));
        assert!(!frontier.admits(&chunk(3, 100 + AHEAD)));
        assert!(frontier.admits(&chunk(2, 100 + AHEAD)), "another round's are the round's business");
        assert!(frontier.admits(&chunk(4, 100 + AHEAD)));
    }

    #[tokio::test]
    async fn a_held_chunk_passes_when_the_frontier_moves_or_the_round_ends() {
        let (publisher, gate) = channel();
        publish(&publisher, Some(Frontier { epoch: 1, round: 3, upto: 0 }));
        let far = chunk(3, 2 * AHEAD);
        let mut held = gate.clone();
        let waiting = tokio::spawn(async move { held.admit(&far).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        publish(&publisher, Some(Frontier { epoch: 1, round: 3, upto: AHEAD }));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "still AHEAD past it");
        publish(&publisher, Some(Frontier { epoch: 1, round: 3, upto: AHEAD + 1 }));
        waiting.await.expect("admitted");

        let mut held = gate.clone();
        let waiting = tokio::spawn(async move { held.admit(&chunk(3, 9 * AHEAD)).await });
        publish(&publisher, None);
        waiting.await.expect("admitted between rounds");
        drop(publisher);
        gate.clone().admit(&chunk(3, 9 * AHEAD)).await;
    }
}
