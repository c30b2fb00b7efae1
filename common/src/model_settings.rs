//! `--model`, `--hidden` and `--classes`, the same on `lazyavg train` and
//! `lazyavg coordinator`: which model to train, turned into a [`ModelSpec`]
//! once the data's shape and labels are known.
//!
//! The data decides the input's shape; the class count is `--classes`, else
//! the highest label + 1. A named model (`mlp`, `lenet5`, `cnn`) gets that
//! many outputs; a stack of layers gives its own, which must cover the labels.
//!
//! In a config file, `model = "mlp"` (with `hidden = [200, 200]`) or a table
//! of layers:
//!
//! ```toml
//! [model]
//! layers = ["dense 400", "relu", "dense 200", "relu", "dense 100", "relu", "dense 10"]
//! ```
//!
//! A run's `config.toml` records the table in full, with the input's shape
//! and the class count, which are then checked against the data.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::config::{LrSchedule, TrainConfig};
use crate::error::{Error, Result};
use crate::spec::{InputShape, LAYER_KINDS, LayerSpec, ModelSpec};

/// The default MLP's hidden widths.
pub const DEFAULT_HIDDEN: [usize; 2] = [200, 200];

/// A named convolutional network and what it trains with by default.
struct Preset {
    name: &'static str,
    /// Its layers, written for 10 classes (the last layer takes the data's
    /// class count).
    layers: &'static str,
    /// Its defaults where no flag or config key says otherwise: the MLP's
    /// ([`TrainConfig::default`]) but for these three, which differ between
    /// networks most (docs/tuning.md has the sweeps they were chosen by).
    batch_size: usize,
    lr: f32,
    schedule: LrSchedule,
}

/// LeNet-5, and the CNN of the FedAvg paper (McMahan et al., 2017), 1,663,370
/// parameters on MNIST.
const PRESETS: [Preset; 2] = [
    Preset {
        name: "lenet5",
        layers: "conv 6 5x5 pad 2, relu, maxpool 2, conv 16 5x5, relu, maxpool 2, flatten, dense 120, relu, dense 84, relu, dense 10",
        batch_size: 32,
        lr: 0.025,
        schedule: LrSchedule::Cosine,
    },
    Preset {
        name: "cnn",
        layers: "conv 32 5x5 pad 2, relu, maxpool 2, conv 64 5x5 pad 2, relu, maxpool 2, flatten, dense 512, relu, dense 10",
        batch_size: 32,
        lr: 0.05,
        schedule: LrSchedule::Cosine,
    },
];

/// The names `--model` knows.
const NAMES: &str = "mlp, lenet5, cnn";

/// Which model to train: one by name, or a stack of layers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ModelChoice {
    /// `mlp` (dense layers of `--hidden` widths, each followed by a ReLU,
    /// then a dense layer per class), `lenet5` or `cnn`.
    Named(String),
    /// A custom stack.
    Stack(StackTable),
}

/// The `[model]` table: layers as written (`"dense 400"`, `"relu"`), and
/// optionally the input's shape and the class count (checked against the data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackTable {
    pub layers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<InputShape>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<usize>,
}

impl FromStr for ModelChoice {
    type Err = String;

    /// A name (a word without spaces), or a comma-separated stack:
    /// `dense 400, relu, dense 10`.
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let name = text.trim();
        if !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !is_layer_kind(name)
        {
            return Ok(ModelChoice::Named(name.to_owned()));
        }
        let layers: Vec<String> = text.split(',').map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect();
        Ok(ModelChoice::Stack(StackTable { layers, input: None, classes: None }))
    }
}

/// The model flags and config-file keys.
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
pub struct ModelSettings {
    /// The model: `mlp`, `lenet5`, `cnn` (the FedAvg paper's), or a stack of layers from input to output, like 'conv 8 3x3 pad 1, relu, maxpool 2, flatten, dense 10' (kinds: dense N, relu, conv C KxK [stride S] [pad P], maxpool K [stride S], flatten; in a config file also a [model] table) [default: mlp].
    #[arg(long, value_name = "NAME|LAYERS", value_parser = clap::value_parser!(ModelChoice))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelChoice>,

    /// Hidden layer widths of the MLP, comma-separated: its shorthand [default: 200,200].
    #[arg(long, value_delimiter = ',', num_args = 1.., value_name = "W,W,..")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<Vec<usize>>,

    /// How many classes the model tells apart: the output count of mlp, lenet5 and cnn, which a stack of layers must give; for data whose labels do not show every class [default: the highest label + 1].
    #[arg(long, value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<usize>,
}

impl ModelSettings {
    /// The checks that need no data: `--hidden`'s widths, `--classes` above
    /// 0, a known name, and no `--hidden` beside a stack that gives its
    /// widths itself.
    pub fn check(&self) -> Result<()> {
        if self.classes == Some(0) {
            return Err(Error::config("--classes", "must be at least 1"));
        }
        if let Some(hidden) = &self.hidden {
            if hidden.is_empty() {
                return Err(Error::config("--hidden", "needs at least one layer width, e.g. 200,200"));
            }
            if let Some(at) = hidden.iter().position(|&w| w == 0) {
                return Err(Error::config(
                    "--hidden",
                    format!("layer widths must be positive, got {hidden:?} (hidden layer {} has width 0)", at + 1),
                ));
            }
        }
        match &self.model {
            None => Ok(()),
            Some(ModelChoice::Named(name)) if name == "mlp" => Ok(()),
            Some(ModelChoice::Named(name)) if find_preset(name).is_none() => Err(Error::config(
                "--model",
                format!("unknown model {name:?}: give one of {NAMES}, or a stack of layers ({LAYER_KINDS})"),
            )),
            Some(_) if self.hidden.is_some() => Err(Error::config(
                "--hidden",
                "is the MLP's shorthand; another --model gives its layers' widths itself",
            )),
            Some(ModelChoice::Named(_)) => Ok(()),
            Some(ModelChoice::Stack(table)) => parse_layers(&table.layers).map(drop),
        }
    }

    /// The model for samples of `input` whose labels need `label_count`
    /// classes (the highest label + 1), validated.
    pub fn resolve(&self, input: InputShape, label_count: usize) -> Result<ModelSpec> {
        self.check()?;
        if let Some(given) = self.classes.filter(|&given| given < label_count) {
            return Err(Error::config(
                "--classes",
                format!("is {given}, but the data's labels go up to {}", label_count - 1),
            ));
        }
        let classes = self.classes.unwrap_or(label_count);
        let spec = match &self.model {
            Some(ModelChoice::Stack(table)) => {
                let spec = ModelSpec::from_layers(input, parse_layers(&table.layers)?)?;
                check_recorded(table, &spec)?;
                spec.check_data(input, label_count)?;
                if let Some(given) = self.classes.filter(|&given| given != spec.classes) {
                    return Err(Error::config(
                        "--classes",
                        format!("is {given}, but the model's last layer gives {} outputs", spec.classes),
                    ));
                }
                spec
            }
            Some(ModelChoice::Named(name)) if name != "mlp" => {
                let mut layers = preset(name).expect("check() knows the name");
                if let Some(LayerSpec::Dense { units }) = layers.last_mut() {
                    *units = classes;
                }
                ModelSpec { input, layers, classes }
            }
            _ => ModelSpec::mlp(input, self.hidden.as_deref().unwrap_or(&DEFAULT_HIDDEN), classes),
        };
        // Building checks what only the network knows (where a ReLU may go).
        spec.build()?;
        Ok(spec)
    }

    /// What the chosen model trains with where no flag or config key says
    /// otherwise: a named network's own defaults, else (the MLP, a stack of
    /// layers) [`TrainConfig::default`].
    pub fn train_defaults(&self) -> TrainConfig {
        let preset = match &self.model {
            Some(ModelChoice::Named(name)) => find_preset(name),
            _ => None,
        };
        match preset {
            Some(p) => {
                TrainConfig { batch_size: p.batch_size, lr: p.lr, schedule: p.schedule, ..TrainConfig::default() }
            }
            None => TrainConfig::default(),
        }
    }

    /// The settings that describe `spec` in full, for a run's `config.toml`.
    pub fn recorded(spec: &ModelSpec) -> Self {
        let layers = spec.layers.iter().map(ToString::to_string).collect();
        let table = StackTable { layers, input: Some(spec.input), classes: Some(spec.classes) };
        ModelSettings { model: Some(ModelChoice::Stack(table)), hidden: None, classes: None }
    }
}

/// The named network `name`, if there is one.
fn find_preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|preset| preset.name == name)
}

/// The layers of the named network `name`, if there is one.
fn preset(name: &str) -> Option<Vec<LayerSpec>> {
    Some(ModelSpec::parse_layers(find_preset(name)?.layers).expect("the presets parse"))
}

/// Whether `word` alone is a layer (`relu`, `flatten`): a one-layer stack, not a name.
fn is_layer_kind(word: &str) -> bool {
    LayerSpec::parse(word).is_ok()
}

/// Parses every layer; an error names the layer by its place (1-based).
fn parse_layers(layers: &[String]) -> Result<Vec<LayerSpec>> {
    if layers.is_empty() {
        return Err(Error::model(0, "model", "has no layers; give at least one, like dense 10"));
    }
    layers
        .iter()
        .enumerate()
        .map(|(i, text)| LayerSpec::parse(text).map_err(|problem| Error::model(i + 1, text.trim(), problem)))
        .collect()
}

/// A recorded input shape must be the data's (a stack takes the data's
/// shape where none is recorded), and a recorded class count the stack's.
fn check_recorded(table: &StackTable, spec: &ModelSpec) -> Result<()> {
    if let Some(recorded) = table.input.filter(|&r| r != spec.input) {
        return Err(Error::InputMismatch { model: recorded, data: spec.input });
    }
    if let Some(recorded) = table.classes.filter(|&r| r != spec.classes) {
        let problem = format!("records {recorded} classes but its last layer gives {} outputs", spec.classes);
        return Err(Error::model(0, "classes", problem));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MNIST: InputShape = InputShape { channels: 1, height: 28, width: 28 };

    fn stack(text: &str) -> ModelSettings {
        ModelSettings { model: Some(text.parse().unwrap()), hidden: None, classes: None }
    }

    #[test]
    fn the_default_is_the_mlp_and_hidden_is_its_shorthand() {
        let spec = ModelSettings::default().resolve(MNIST, 10).unwrap();
        assert_eq!(spec.to_string(), "784-200-200-10");
        let small = ModelSettings { model: Some("mlp".parse().unwrap()), hidden: Some(vec![64]), classes: None };
        assert_eq!(small.resolve(MNIST, 10).unwrap().to_string(), "784-64-10");
        let custom = stack("dense 400, relu, dense 200, relu, dense 100, relu, dense 10");
        assert_eq!(custom.resolve(MNIST, 10).unwrap().to_string(), "784-400-200-100-10");
    }

    #[test]
    fn bad_stacks_are_one_line_errors_naming_the_layer_and_the_numbers() {
        let err = |s: ModelSettings| s.resolve(MNIST, 10).unwrap_err().to_string();
        assert_eq!(
            err(stack("dense 400, relu, dense 0, relu, dense 10")),
            "invalid model, layer 3 (dense 0): has width 0; give a positive width"
        );
        assert_eq!(
            err(stack("dense 400, gelu, dense 10")),
            format!("invalid model, layer 2 (gelu): unknown layer kind \"gelu\" in \"gelu\" (known: {LAYER_KINDS})")
        );
        assert_eq!(err(stack("dense 400, relu, dense 7")), "model has 7 outputs, the data's labels go up to 9");
        assert!(
            err(stack("relu, dense 10"))
                .starts_with("invalid model, layer 1 (relu): must follow a dense, conv or maxpool layer")
        );
        let both = ModelSettings { hidden: Some(vec![5]), ..stack("dense 10") };
        assert!(err(both).starts_with("invalid --hidden: is the MLP's shorthand"));
        assert!(
            err(ModelSettings { model: Some(ModelChoice::Named("resnet".into())), hidden: None, classes: None })
                .starts_with("invalid --model: unknown model \"resnet\"")
        );
    }

    #[test]
    fn a_recorded_description_round_trips_through_toml_and_is_checked_against_the_data() {
        let spec = stack("dense 30, relu, dense 10").resolve(MNIST, 10).unwrap();
        let recorded = ModelSettings::recorded(&spec);
        let text = toml::to_string(&recorded).unwrap();
        assert!(text.contains("[model]"), "{text}");
        let back: ModelSettings = toml::from_str(&text).unwrap();
        assert_eq!(back.resolve(MNIST, 10).unwrap(), spec);
        let other = InputShape { channels: 3, height: 32, width: 32 };
        assert_eq!(
            back.resolve(other, 10).unwrap_err().to_string(),
            "model expects 1x28x28 inputs, the data has 3x32x32 images"
        );
        assert_eq!(
            back.resolve(MNIST, 47).unwrap_err().to_string(),
            "model has 10 outputs, the data's labels go up to 46"
        );
        let named: ModelSettings = toml::from_str("model = \"mlp\"\nhidden = [64]\n").unwrap();
        assert_eq!(named.resolve(MNIST, 10).unwrap().to_string(), "784-64-10");
    }

    #[test]
    fn named_models_take_the_class_count_from_the_labels_or_classes() {
        let colour = InputShape { channels: 3, height: 32, width: 32 };
        let cnn = stack("cnn").resolve(colour, 47).unwrap();
        assert_eq!((cnn.input, cnn.classes, cnn.layers.last()), (colour, 47, Some(&LayerSpec::Dense { units: 47 })));
        let wider = ModelSettings { classes: Some(12), ..stack("lenet5") };
        assert_eq!(wider.resolve(MNIST, 10).unwrap().classes, 12);
        assert_eq!(
            ModelSettings { classes: Some(12), ..ModelSettings::default() }.resolve(MNIST, 5).unwrap().to_string(),
            "784-200-200-12"
        );
    }

    #[test]
    fn a_stack_may_have_more_outputs_than_the_labels_show_and_classes_must_agree() {
        let spec = stack("dense 10").resolve(MNIST, 5).unwrap();
        assert_eq!(spec.classes, 10, "a subset without the higher labels still trains a 10-class model");
        let err = |s: ModelSettings, labels| s.resolve(MNIST, labels).unwrap_err().to_string();
        assert_eq!(
            err(ModelSettings { classes: Some(12), ..stack("dense 10") }, 10),
            "invalid --classes: is 12, but the model's last layer gives 10 outputs"
        );
        assert_eq!(
            err(ModelSettings { classes: Some(10), ..stack("cnn") }, 47),
            "invalid --classes: is 10, but the data's labels go up to 46"
        );
        assert_eq!(
            err(ModelSettings { classes: Some(0), ..stack("cnn") }, 47),
            "invalid --classes: must be at least 1"
        );
    }
}
