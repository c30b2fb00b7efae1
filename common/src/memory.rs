//! Where a model's weights live: a trainer's own vectors, or memory lent to
//! it. A worker on its coordinator's machine keeps its weights in its
//! shared-memory lane, where the coordinator reads them in place: sending
//! them then copies nothing (`lazyavg_proto::lane`).

use std::fmt;
use std::sync::Arc;

/// Memory holding one model's weights, of a fixed length.
pub trait WeightsMemory: fmt::Debug + Send + Sync {
    fn values(&self) -> &[f32];
    fn values_mut(&mut self) -> &mut [f32];
}

impl WeightsMemory for Vec<f32> {
    fn values(&self) -> &[f32] {
        self
    }

    fn values_mut(&mut self) -> &mut [f32] {
        self
    }
}

/// Weights shared, not copied, with whoever sends them.
pub type SharedWeights = Arc<dyn WeightsMemory>;

/// A replica's weights: shared, not copied, with whoever sends them
/// ([`Weights::shared`]), and copied on the next change while anyone still
/// holds them, into a buffer of its own that nothing holds any more, or a
/// new one. Without `--overlap` nothing changes the weights before the
/// sends are long done, and sending costs no copy; with it, two buffers
/// take turns (at 20M parameters a fresh 80 MB buffer a round was 20,000
/// page faults).
#[derive(Debug, Clone)]
pub struct Weights {
    /// Every buffer it may write again once nothing else holds it: the
    /// lent ones first, kept for good (a lane has only those two), then
    /// its own.
    buffers: Vec<SharedWeights>,
    /// The buffer holding the weights.
    current: usize,
    /// How many of `buffers`, from the first, are lent.
    lent: usize,
}

impl Weights {
    pub fn new(values: Vec<f32>) -> Self {
        Weights { buffers: vec![Arc::new(values)], current: 0, lent: 0 }
    }

    pub fn values(&self) -> &[f32] {
        self.buffers[self.current].values()
    }

    /// The weights as they are, for as long as the caller holds them.
    pub fn shared(&self) -> SharedWeights {
        Arc::clone(&self.buffers[self.current])
    }

    /// The weights to change in place: copied first if they are held.
    pub fn values_mut(&mut self) -> &mut [f32] {
        if Arc::get_mut(&mut self.buffers[self.current]).is_none() {
            let held = Arc::clone(&self.buffers[self.current]);
            let free = self.buffers.iter_mut().position(|buffer| Arc::get_mut(buffer).is_some());
            self.current = match free {
                Some(free) => {
                    let buffer = Arc::get_mut(&mut self.buffers[free]).expect("found free");
                    buffer.values_mut().copy_from_slice(held.values());
                    free
                }
                None => {
                    self.buffers.push(Arc::new(held.values().to_vec()));
                    self.buffers.len() - 1
                }
            };
            self.let_go_of_spares();
        }
        Arc::get_mut(&mut self.buffers[self.current]).expect("made unique above").values_mut()
    }

    /// Moves the weights into `memory` and keeps `spare` for the copy a
    /// change makes while they are held: both lent, each exactly as long
    /// as the weights (else nothing changes and false).
    pub fn keep_in(&mut self, mut memory: Box<dyn WeightsMemory>, spare: Box<dyn WeightsMemory>) -> bool {
        let len = self.values().len();
        if memory.values().len() != len || spare.values().len() != len {
            return false;
        }
        memory.values_mut().copy_from_slice(self.values());
        *self = Weights { buffers: vec![Arc::from(memory), Arc::from(spare)], current: 0, lent: 2 };
        true
    }

    /// Drops own buffers nothing holds beyond the two the weights need
    /// (their own and one for a copy), lent ones counted first.
    fn let_go_of_spares(&mut self) {
        let mut at = self.lent;
        while self.buffers.len() > 2 && at < self.buffers.len() {
            if at != self.current && Arc::get_mut(&mut self.buffers[at]).is_some() {
                self.buffers.remove(at);
                if self.current > at {
                    self.current -= 1;
                }
            } else {
                at += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_handed_out_are_copied_on_change_into_a_buffer_let_go_of() {
        let mut weights = Weights::new(vec![1.0, 2.0]);
        let shared = weights.shared();
        assert_eq!(shared.values().as_ptr(), weights.values().as_ptr(), "no copy to hand out");
        weights.values_mut()[0] += 1.0;
        assert_eq!((shared.values(), weights.values()), (&[1.0, 2.0][..], &[2.0, 2.0][..]));
        let first = shared.values().as_ptr();
        drop(shared);
        let _again = weights.shared();
        weights.values_mut()[1] += 1.0;
        assert_eq!(weights.values().as_ptr(), first, "copied into the buffer let go of");
        assert_eq!(weights.values(), &[2.0, 3.0]);
    }

    #[test]
    fn lent_buffers_are_never_let_go_of_and_taken_back_once_free() {
        let mut weights = Weights::new(vec![0.0; 4]);
        assert!(!weights.keep_in(Box::new(vec![0.0; 5]), Box::new(vec![0.0; 4])), "a wrong length");
        let (memory, spare) = (vec![0.0f32; 4], vec![0.0f32; 4]);
        let (memory_at, spare_at) = (memory.as_ptr(), spare.as_ptr());
        assert!(weights.keep_in(Box::new(memory), Box::new(spare)));
        weights.values_mut()[0] = 1.0;
        assert_eq!(weights.values().as_ptr(), memory_at, "changed in place");
        // Both lent buffers held: a buffer of its own, then another.
        let first = weights.shared();
        weights.values_mut()[0] = 2.0;
        assert_eq!(weights.values().as_ptr(), spare_at);
        let second = weights.shared();
        weights.values_mut()[0] = 3.0;
        let third = weights.shared();
        weights.values_mut()[0] = 4.0;
        assert!(![memory_at, spare_at].contains(&weights.values().as_ptr()));
        assert_eq!(weights.buffers.len(), 4);
        // Once let go of, the lent ones come back and the own ones go.
        drop((first, second, third));
        let _held = weights.shared();
        weights.values_mut()[0] = 5.0;
        assert_eq!((weights.values().as_ptr(), weights.values()), (memory_at, &[5.0, 0.0, 0.0, 0.0][..]));
        assert_eq!(weights.buffers.len(), 3, "the two lent, and the one held");
    }
}
