//! One layer of a model's description: its kinds, how each is written
//! (`dense 400`, `relu`, `conv 32 5x5 pad 2`, `maxpool 2`, `flatten`), the
//! shape it gives, and the tensors it owns, named as in PyTorch's
//! `nn.Sequential`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::conv::Conv2dGeometry;
use crate::pool::MaxPoolGeometry;
use crate::spec::{InputShape, Shape};

/// One layer of a stack. Written in flags and files as `dense 400`, `relu`,
/// `conv 32 5x5 pad 2`, `maxpool 2` or `flatten`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum LayerSpec {
    /// A fully connected layer of `units` outputs: weight `[units, in]`
    /// (PyTorch's `nn.Linear`), bias `[units]`. Takes a flat input, or the
    /// model's input image flattened.
    Dense { units: usize },
    /// `max(0, x)` elementwise; no parameters.
    Relu,
    /// A 2-D convolution to `channels` maps with a square `kernel`:
    /// weight `[channels, in_channels, kernel, kernel]` (PyTorch's
    /// `nn.Conv2d`), bias `[channels]`.
    Conv2d { channels: usize, kernel: usize, stride: usize, padding: usize },
    /// The largest value of each square `kernel` window, windows `stride` apart
    /// (PyTorch's `nn.MaxPool2d`, no padding); no parameters.
    MaxPool { kernel: usize, stride: usize },
    /// Feature maps as one flat vector, channel by channel (`nn.Flatten`); no parameters.
    Flatten,
}

/// The kinds of layer, as [`LayerSpec::parse`] knows them.
pub const LAYER_KINDS: &str = "dense N, relu, conv C KxK [stride S] [pad P], maxpool K [stride S], flatten";

impl LayerSpec {
    /// Parses a layer as [`LayerSpec`]'s `Display` writes it; `dense(400)`,
    /// `dense:400` and `linear 400` are also taken.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (kind, args) = match text.find([' ', '(', ':']) {
            Some(at) => (&text[..at], text[at + 1..].trim().trim_end_matches(')').trim()),
            None => (text, ""),
        };
        let args: Vec<&str> = args.split_whitespace().collect();
        let layer = match (kind.to_ascii_lowercase().as_str(), args.as_slice()) {
            ("relu", []) => LayerSpec::Relu,
            ("flatten", []) => LayerSpec::Flatten,
            ("dense" | "linear", [units]) => LayerSpec::Dense { units: number(units, "width")? },
            ("dense" | "linear", []) => return Err(format!("{text:?}: a dense layer needs a width, like dense 400")),
            ("dense" | "linear", _) => {
                return Err(format!("{text:?}: a dense layer takes one width, like dense 400 (a missing comma?)"));
            }
            ("conv" | "conv2d", [channels, kernel, options @ ..]) => {
                let [stride, padding] = options_of(options, [("stride", 1), ("pad", 0)])?;
                LayerSpec::Conv2d {
                    channels: number(channels, "channel count")?,
                    kernel: square(kernel)?,
                    stride,
                    padding,
                }
            }
            ("conv" | "conv2d", _) => {
                return Err(format!("{text:?}: a convolution needs channels and a kernel, like conv 32 5x5 pad 2"));
            }
            ("maxpool", [kernel, options @ ..]) => {
                let kernel = square(kernel)?;
                let [stride] = options_of(options, [("stride", kernel)])?;
                LayerSpec::MaxPool { kernel, stride }
            }
            ("maxpool", _) => return Err(format!("{text:?}: a pooling needs a window, like maxpool 2")),
            ("relu" | "flatten", _) => return Err(format!("{text:?}: {kind} takes no arguments")),
            _ => return Err(format!("unknown layer kind {kind:?} in {text:?} (known: {LAYER_KINDS})")),
        };
        Ok(layer)
    }

    /// The shape this layer gives for `input`, or why it cannot take it.
    pub fn output_shape(&self, input: Shape) -> Result<Shape, String> {
        match (*self, input) {
            (LayerSpec::Dense { units: 0 }, _) => Err("has width 0; give a positive width".to_owned()),
            (LayerSpec::Dense { .. }, Shape::Maps(maps)) => {
                Err(format!("takes a flat input but gets {maps} feature maps; put a flatten before it"))
            }
            (LayerSpec::Dense { units }, _) => Ok(Shape::Flat(units)),
            (LayerSpec::Relu, _) => Ok(input),
            (LayerSpec::Flatten, _) => Ok(Shape::Flat(input.len())),
            (LayerSpec::Conv2d { .. } | LayerSpec::MaxPool { .. }, Shape::Flat(units)) => {
                Err(format!("takes images but gets a flat input of {units} values"))
            }
            (LayerSpec::Conv2d { .. }, Shape::Image(image) | Shape::Maps(image)) => {
                let geometry = self.conv_geometry(image).expect("a convolution");
                geometry.validate()?;
                let maps = InputShape {
                    channels: geometry.out_channels,
                    height: geometry.out_height(),
                    width: geometry.out_width(),
                };
                Ok(Shape::Maps(maps))
            }
            (LayerSpec::MaxPool { .. }, Shape::Image(image) | Shape::Maps(image)) => {
                let geometry = self.pool_geometry(image).expect("a pooling");
                geometry.validate()?;
                let maps =
                    InputShape { channels: image.channels, height: geometry.out_height(), width: geometry.out_width() };
                Ok(Shape::Maps(maps))
            }
        }
    }

    /// A convolution's shapes on `input`; `None` for other kinds.
    pub fn conv_geometry(&self, input: InputShape) -> Option<Conv2dGeometry> {
        let LayerSpec::Conv2d { channels, kernel, stride, padding } = *self else { return None };
        Some(Conv2dGeometry {
            in_channels: input.channels,
            in_height: input.height,
            in_width: input.width,
            out_channels: channels,
            kernel,
            stride,
            padding,
        })
    }

    /// A pooling's shapes on `input`; `None` for other kinds.
    pub fn pool_geometry(&self, input: InputShape) -> Option<MaxPoolGeometry> {
        let LayerSpec::MaxPool { kernel, stride } = *self else { return None };
        Some(MaxPoolGeometry {
            channels: input.channels,
            in_height: input.height,
            in_width: input.width,
            kernel,
            stride,
        })
    }

    /// The tensors this layer owns for `input` (shapes only), named as in
    /// `nn.Sequential`: layer `index`'s `weight` and `bias`.
    pub fn tensors(&self, index: usize, input: Shape) -> Vec<(String, Vec<usize>)> {
        let (weight, bias) = match (*self, input) {
            (LayerSpec::Dense { units }, _) => (vec![units, input.len()], units),
            (LayerSpec::Conv2d { channels, kernel, .. }, Shape::Image(image) | Shape::Maps(image)) => {
                (vec![channels, image.channels, kernel, kernel], channels)
            }
            _ => return Vec::new(),
        };
        vec![(format!("{index}.weight"), weight), (format!("{index}.bias"), vec![bias])]
    }

    /// The units (a dense layer) or channels (a convolution) this layer's
    /// weights make; `None` for layers without weights.
    pub fn units(&self) -> Option<usize> {
        match *self {
            LayerSpec::Dense { units } => Some(units),
            LayerSpec::Conv2d { channels, .. } => Some(channels),
            LayerSpec::Relu | LayerSpec::MaxPool { .. } | LayerSpec::Flatten => None,
        }
    }

    /// Whether unit (or channel) `c` of this layer's input is still unit (or
    /// the block of positions of channel) `c` of its output, so that a
    /// permutation of the units below passes it: ReLU acts on each value,
    /// pooling on each channel's map, and a flatten keeps channel order.
    pub fn passes_units_through(&self) -> bool {
        matches!(self, LayerSpec::Relu | LayerSpec::MaxPool { .. } | LayerSpec::Flatten)
    }
}

/// A whole number, or an error naming `what` (zero is refused by the layer's shape check).
fn number(text: &str, what: &str) -> Result<usize, String> {
    text.parse().map_err(|_| format!("{what} {text:?} is not a whole number"))
}

/// A square window's side, written `5` or `5x5`.
fn square(text: &str) -> Result<usize, String> {
    match text.split_once(['x', 'X', '×']) {
        Some((rows, cols)) if rows == cols => number(rows, "kernel size"),
        Some(_) => Err(format!("kernel {text:?} is not square; lazyavg's kernels are KxK")),
        None => number(text, "kernel size"),
    }
}

/// The values of named options (`stride 2 pad 1`), each `defaults` value
/// where not given, in `defaults`' order.
fn options_of<const N: usize>(args: &[&str], defaults: [(&str, usize); N]) -> Result<[usize; N], String> {
    let mut values = defaults.map(|(_, value)| value);
    for pair in args.chunks(2) {
        let [name, value] = pair else { return Err(format!("option {:?} has no value", pair[0])) };
        let name = if *name == "padding" { "pad" } else { name };
        let Some(at) = defaults.iter().position(|(known, _)| *known == name) else {
            let known: Vec<&str> = defaults.iter().map(|(known, _)| *known).collect();
            return Err(format!("unknown option {name:?} (known: {})", known.join(", ")));
        };
        values[at] = number(value, name)?;
    }
    Ok(values)
}

impl fmt::Display for LayerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LayerSpec::Dense { units } => write!(f, "dense {units}"),
            LayerSpec::Relu => f.write_str("relu"),
            LayerSpec::Flatten => f.write_str("flatten"),
            LayerSpec::Conv2d { channels, kernel, stride, padding } => {
                write!(f, "conv {channels} {kernel}x{kernel}")?;
                if stride != 1 {
                    write!(f, " stride {stride}")?;
                }
                if padding != 0 {
                    write!(f, " pad {padding}")?;
                }
                Ok(())
            }
            LayerSpec::MaxPool { kernel, stride } => {
                write!(f, "maxpool {kernel}")?;
                if stride != kernel {
                    write!(f, " stride {stride}")?;
                }
                Ok(())
            }
        }
    }
}

impl TryFrom<String> for LayerSpec {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        LayerSpec::parse(&text)
    }
}

impl From<LayerSpec> for String {
    fn from(layer: LayerSpec) -> String {
        layer.to_string()
    }
}
