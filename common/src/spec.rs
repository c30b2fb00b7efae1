//! A model's description: the input's shape, a validated stack of layers and
//! the number of classes. The one place a model's architecture is written
//! down; the flags, the config files, the contract and the model file all
//! carry a [`ModelSpec`], and [`ModelSpec::build`] turns it into the
//! [`Network`] that trains, with its [`Layout`] of named tensors.
//!
//! # Adding a kind of layer
//! A kind is one variant of [`LayerSpec`] and one arm in each of its methods:
//! how it is written ([`LayerSpec::parse`], `Display`), the shape it gives
//! ([`LayerSpec::output_shape`], which refuses an input it cannot take), the
//! tensors it owns ([`LayerSpec::tensors`]), the units its weights make
//! ([`LayerSpec::units`]) and whether it carries its input's units through
//! unchanged, so that a permutation of them passes it
//! ([`LayerSpec::passes_units_through`]); then its forward and backward pass in
//! [`crate::model`]. Nothing outside `common` names a kind of layer.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use crate::layer_spec::{LAYER_KINDS, LayerSpec};
use crate::model::Network;
use crate::params::{Layout, MAX_PARAMETERS, TensorLayout};

/// The shape of one sample, channels × height × width (MNIST: 1 × 28 × 28).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl InputShape {
    /// A flat input of `len` values, 1 × 1 × `len` (a file that records only widths).
    pub fn flat(len: usize) -> Self {
        InputShape { channels: 1, height: 1, width: len }
    }

    /// Values per sample.
    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Whether a dimension is 0; never overflows, so it may be asked of a
    /// shape read from an untrusted header.
    pub fn is_empty(&self) -> bool {
        self.channels == 0 || self.height == 0 || self.width == 0
    }
}

impl fmt::Display for InputShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}x{}", self.channels, self.height, self.width)
    }
}

/// The shape of the values between two layers: the input image, the
/// feature maps a convolution or pooling makes of it (channels × height ×
/// width both), or, after a dense or flatten layer, a flat vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Image(InputShape),
    Maps(InputShape),
    Flat(usize),
}

impl Shape {
    /// Values per sample.
    pub fn len(&self) -> usize {
        match self {
            Shape::Image(image) | Shape::Maps(image) => image.len(),
            Shape::Flat(units) => *units,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A model: what it takes, its layers from input to output, how many classes
/// it tells apart. Built into a [`Network`] by [`ModelSpec::build`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub input: InputShape,
    pub layers: Vec<LayerSpec>,
    pub classes: usize,
}

impl ModelSpec {
    /// The multilayer perceptron: dense layers of `hidden` widths, each
    /// followed by a ReLU, then a dense layer of `classes` outputs.
    pub fn mlp(input: InputShape, hidden: &[usize], classes: usize) -> Self {
        let mut layers: Vec<LayerSpec> =
            hidden.iter().flat_map(|&units| [LayerSpec::Dense { units }, LayerSpec::Relu]).collect();
        layers.push(LayerSpec::Dense { units: classes });
        ModelSpec { input, layers, classes }
    }

    /// An MLP of `widths` from input to output on a flat input (`[784, 200, 10]`).
    pub fn from_widths(widths: &[usize]) -> Result<Self> {
        let (Some(&inputs), Some(&classes)) = (widths.first(), widths.last()) else {
            return Err(Error::model(0, "model", "has no layers; give at least an input and an output width"));
        };
        if widths.len() < 2 {
            return Err(Error::model(0, "model", format!("{inputs} has no layers; give an output width too")));
        }
        let spec = ModelSpec::mlp(InputShape::flat(inputs), &widths[1..widths.len() - 1], classes);
        spec.check()?;
        Ok(spec)
    }

    /// A stack whose classes are what its last layer gives (a `[model]`
    /// table's `dense 10`), checked as far as [`ModelSpec::check`] goes
    /// before the class count.
    pub fn from_layers(input: InputShape, layers: Vec<LayerSpec>) -> Result<Self> {
        let mut spec = ModelSpec { input, layers, classes: 0 };
        spec.classes = spec.shapes()?.last().map_or(0, Shape::len);
        Ok(spec)
    }

    /// Checks the stack and returns the shape after every layer: fails on no
    /// layers, a layer that cannot take its input, a zero width, an output
    /// that is not `classes` wide, or too many parameters. Errors name the
    /// layer (1-based, as written) and the numbers.
    pub fn check(&self) -> Result<Vec<Shape>> {
        let shapes = self.shapes()?;
        let (last, shape) = (self.layers.len(), shapes[shapes.len() - 1]);
        if shape.len() != self.classes {
            let layer = self.layers[last - 1].to_string();
            let problem = format!("gives {} outputs but the model has {} classes", shape.len(), self.classes);
            return Err(Error::model(last, &layer, problem));
        }
        self.check_size()?;
        Ok(shapes)
    }

    /// Whether the model can train on and be tested with images of `input`
    /// whose labels need `label_count` classes: the same shape (or, for a
    /// flat input recorded by a file of widths, as many values) and an
    /// output for every label. The errors name both shapes or counts.
    pub fn check_data(&self, input: InputShape, label_count: usize) -> Result<()> {
        let flat = self.input == InputShape::flat(self.input.len());
        if self.input != input && !(flat && self.input.len() == input.len()) {
            return Err(Error::InputMismatch { model: self.input, data: input });
        }
        if self.classes < label_count {
            return Err(Error::TooFewOutputs { outputs: self.classes, highest: label_count - 1 });
        }
        Ok(())
    }

    /// The shape after every layer, each checked against its input; the
    /// class count is not looked at.
    fn shapes(&self) -> Result<Vec<Shape>> {
        if self.layers.is_empty() {
            return Err(Error::model(0, "model", "has no layers; give at least one, like dense 10"));
        }
        if self.input.is_empty() {
            return Err(Error::model(0, "input", format!("shape {} holds no values", self.input)));
        }
        let mut shapes = Vec::with_capacity(self.layers.len());
        let mut shape = Shape::Image(self.input);
        for (i, layer) in self.layers.iter().enumerate() {
            shape = layer.output_shape(shape).map_err(|problem| Error::model(i + 1, &layer.to_string(), problem))?;
            shapes.push(shape);
        }
        Ok(shapes)
    }

    fn check_size(&self) -> Result<()> {
        let mut input = Shape::Image(self.input);
        let mut total = 0usize;
        for (i, layer) in self.layers.iter().enumerate() {
            for (_, shape) in layer.tensors(i, input) {
                let len = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
                total = match len.and_then(|len| total.checked_add(len)) {
                    Some(total) if total <= MAX_PARAMETERS => total,
                    _ => return Err(Error::model(i + 1, &layer.to_string(), too_many())),
                };
            }
            input = layer.output_shape(input).unwrap_or(input);
        }
        Ok(())
    }

    /// The tensors of every layer, in order, at their places in the flat buffer.
    pub fn layout(&self) -> Result<Layout> {
        let shapes = self.check()?;
        let mut tensors = Vec::new();
        let mut offset = 0;
        let mut input = Shape::Image(self.input);
        for (i, layer) in self.layers.iter().enumerate() {
            for (name, shape) in layer.tensors(i, input) {
                let len: usize = shape.iter().product();
                tensors.push(TensorLayout { name, shape, range: offset..offset + len, layer: i });
                offset += len;
            }
            input = shapes[i];
        }
        Ok(Layout::new(tensors, offset))
    }

    /// Checks the stack and builds the network that computes it.
    pub fn build(&self) -> Result<Network> {
        Network::new(self.clone())
    }

    /// The widths from input to output when this is a stack of dense layers
    /// with ReLUs between them (an MLP), else `None`.
    pub fn mlp_widths(&self) -> Option<Vec<usize>> {
        let mut widths = vec![self.input.len()];
        let mut expect_dense = true;
        for layer in &self.layers {
            match (layer, expect_dense) {
                (LayerSpec::Dense { units }, true) => widths.push(*units),
                (LayerSpec::Relu, false) => {}
                _ => return None,
            }
            expect_dense = !expect_dense;
        }
        (!expect_dense).then_some(widths)
    }

    /// Whether `other` describes the same network: the same layers and
    /// classes, and the same input, where a flat input (of a file that
    /// recorded only widths) stands for any input of as many values.
    pub fn same_network(&self, other: &ModelSpec) -> bool {
        let flat = |s: &ModelSpec| s.input == InputShape::flat(s.input.len());
        let inputs_agree =
            self.input == other.input || ((flat(self) || flat(other)) && self.input.len() == other.input.len());
        inputs_agree && self.layers == other.layers && self.classes == other.classes
    }

    /// The layers as written in flags and files: `dense 400, relu, dense 10`.
    pub fn layers_text(&self) -> String {
        self.layers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    }

    /// Parses a comma-separated stack (`dense 400, relu, dense 10`).
    pub fn parse_layers(text: &str) -> std::result::Result<Vec<LayerSpec>, String> {
        text.split(',').filter(|s| !s.trim().is_empty()).map(LayerSpec::parse).collect()
    }
}

fn too_many() -> String {
    format!("the model would have more than {MAX_PARAMETERS} parameters")
}

/// An MLP prints as its widths, `784-200-200-10` (logs, the model file's
/// `lazyavg.architecture`); any other stack as its input and its layers.
impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mlp_widths() {
            Some(widths) => {
                let parts: Vec<String> = widths.iter().map(|w| w.to_string()).collect();
                f.write_str(&parts.join("-"))
            }
            None => write!(f, "{} → {} → {} classes", self.input, self.layers_text(), self.classes),
        }
    }
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
