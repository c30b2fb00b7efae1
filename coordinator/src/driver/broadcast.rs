//! Weights going out: each round's average to the workers that answer,
//! the current model to newcomers and to workers behind, and the
//! `--align` reference. One encoding per version, shared by every send: the
//! parameters' own memory (`shared_values`), not a copy, or, while workers
//! with a lane read it, one copy on the lanes' board, which they take in
//! place instead of a copy into each lane.

use std::sync::Arc;

use lazyavg_proto::chunks::{Chunk, encoded_chunks, shared_values};

use super::Driver;
use crate::command::Cmd;
use crate::observe::RunEvent;
use crate::push;
use crate::round::WorkerId;

impl Driver {
    /// Sends the current parameters to every live worker that has answered
    /// a pull or joined during the round; the others get them with their
    /// next pull.
    pub(super) fn push_average(&mut self) {
        let mut ids = Vec::with_capacity(self.workers.len());
        for (&id, worker) in &mut self.workers {
            if worker.answered || std::mem::take(&mut worker.joined_mid_round) {
                ids.push(id);
            } else {
                worker.behind = true;
            }
        }
        self.send_params(&ids);
    }

    pub(super) fn send_params(&mut self, to: &[WorkerId]) {
        let chunks = self.current_chunks().clone();
        self.send_weights(to, &chunks);
    }

    /// `--align` with `--init independent`: the current parameters, which
    /// worker `id`'s first contribution is matched to while it starts from
    /// weights of its own (in small messages: it has not answered a pull).
    pub(super) fn send_reference(&mut self, id: WorkerId) {
        for chunk in push::small(self.current_chunks()) {
            self.send(id, Cmd::Reference(chunk));
        }
    }

    /// The current parameters as the wire carries them, made once per
    /// version: on the board if they fit there.
    fn current_chunks(&mut self) -> &Vec<Chunk> {
        let (epoch, round) = self.version;
        let (params, board) = (&self.model.params, &self.lane_board);
        self.params_chunks.get_or_insert_with(|| {
            let chunks: Vec<Chunk> = encoded_chunks(epoch, round, shared_values(Arc::clone(params))).collect();
            let posted = board.as_ref().and_then(|board| {
                let data: Vec<&[u8]> = chunks.iter().map(|chunk| &chunk.data[..]).collect();
                board.post(&data)
            });
            match posted {
                Some(posted) => chunks.into_iter().zip(posted).map(|(chunk, data)| Chunk { data, ..chunk }).collect(),
                None => chunks,
            }
        })
    }

    /// Sends `chunks` (weights tagged with the current version) to `to`: to
    /// a worker that has not answered a pull yet in small messages (see
    /// [`crate::push`]), slices of the same buffers.
    pub(super) fn send_weights(&mut self, to: &[WorkerId], chunks: &[Chunk]) {
        let bytes: usize = chunks.iter().map(|c| c.data.len()).sum();
        self.observers.notify(&RunEvent::WeightsSent { bytes: (bytes * to.len()) as u64 });
        let mut sliced = None;
        for &id in to {
            let answered = self.workers.get(&id).is_some_and(|w| w.answered);
            let messages = if answered { chunks } else { sliced.get_or_insert_with(|| push::small(chunks)) };
            for chunk in messages.iter() {
                self.send(id, Cmd::Weights(chunk.clone()));
            }
            // It continues from these weights: whatever it trained since is
            // gone, but for a pull sent ahead (--overlap).
            self.epoch.weights_sent(id, self.version);
        }
    }
}
