//! Where a model's weights live: a trainer's own vector, or memory lent to
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
