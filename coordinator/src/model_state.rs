//! The model a run trains, as its rounds move it: the weights and the outer
//! optimiser's velocity.

use std::sync::Arc;

use lazyavg_common::outer::OuterOptimizer;

/// The weights and the outer optimiser, which each round steps in place.
#[derive(Debug)]
pub struct ModelState {
    /// Shared with the pushes that send them (views, not copies): a step
    /// while a push still holds them copies them first.
    pub params: Arc<Vec<f32>>,
    pub outer: OuterOptimizer,
}

impl ModelState {
    pub fn new(params: Vec<f32>, outer: OuterOptimizer) -> Self {
        ModelState { params: Arc::new(params), outer }
    }

    /// Steps positions `at..at + combined.len()` given the round's
    /// combination of them, as soon as it is known.
    pub fn fold(&mut self, at: usize, combined: &[f32]) {
        self.outer.fold(Arc::make_mut(&mut self.params).as_mut_slice(), at, combined);
    }

    /// Steps the whole model given the round's `combined` weights (which
    /// the plain average takes, leaving the old weights there).
    pub fn step(&mut self, combined: &mut Vec<f32>) {
        self.outer.step(Arc::make_mut(&mut self.params), combined);
    }
}
