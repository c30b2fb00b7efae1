//! Which parts of the flat buffer each permutable group of units moves.
//!
//! Permuting a hidden layer's units changes nothing a network computes if
//! every tensor that indexes those units is permuted the same way along that
//! axis: for an MLP, the rows of `W_l` and the entries of `b_l`, and the columns
//! of `W_{l+1}`. A [`PermutationSpec`] lists those (tensor, axis) pairs once per
//! group, so applying a permutation, permuting optimiser state and weight
//! matching are written once against the spec; a new kind of model only
//! declares its own (as `mlp_permutation_spec` does in git-re-basin).

use std::ops::Range;

use crate::params::Layout;

/// One tensor of the flat buffer, seen along one of its axes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorAxis {
    /// Where the tensor lives in the buffer (row-major, C order).
    pub range: Range<usize>,
    /// The tensor's shape; the product of its entries is `range.len()`.
    pub shape: Vec<usize>,
    /// The axis of `shape` that indexes the group's units.
    pub axis: usize,
}

impl TensorAxis {
    /// `(outer, units, inner)`: the tensor read as `[outer, units, inner]`, with
    /// the group's units on the middle axis.
    pub fn split(&self) -> (usize, usize, usize) {
        let outer = self.shape[..self.axis].iter().product();
        let inner = self.shape[self.axis + 1..].iter().product();
        (outer, self.shape[self.axis], inner)
    }
}

/// A set of units that may be reordered together (one hidden layer of an MLP),
/// and every tensor axis that indexes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// How many units the group has.
    pub size: usize,
    /// Every tensor axis of length `size` that the group's permutation moves.
    pub axes: Vec<TensorAxis>,
}

/// Every permutable group of a model, in order from the input upwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermutationSpec {
    pub groups: Vec<Group>,
    /// Length of the parameter buffer the spec describes.
    pub len: usize,
}

impl PermutationSpec {
    /// The spec of an MLP of `layout`: one group per hidden layer `l`, acting
    /// on the rows of `W_l` (`[out, in]`), the entries of `b_l`, and the
    /// columns of `W_{l+1}`. The input and output units are not permutable:
    /// they mean pixels and classes.
    pub fn mlp(layout: &Layout) -> Self {
        let groups = layout
            .layers
            .windows(2)
            .map(|pair| {
                let (this, next) = (&pair[0], &pair[1]);
                Group {
                    size: this.outputs,
                    axes: vec![
                        TensorAxis { range: this.weight.clone(), shape: vec![this.outputs, this.inputs], axis: 0 },
                        TensorAxis { range: this.bias.clone(), shape: vec![this.outputs], axis: 0 },
                        TensorAxis { range: next.weight.clone(), shape: vec![next.outputs, next.inputs], axis: 1 },
                    ],
                }
            })
            .collect();
        PermutationSpec { groups, len: layout.len }
    }

    /// How many units each group has.
    pub fn sizes(&self) -> Vec<usize> {
        self.groups.iter().map(|g| g.size).collect()
    }
}
