//! Saving and loading models as safetensors that PyTorch loads directly.
//!
//! Tensor names and shapes follow `nn.Sequential(Linear, ReLU, Linear, …)`:
//! layer `l` is module `2l`, so the default MLP has `0.weight` `[200, 784]`,
//! `0.bias` `[200]`, `2.weight` `[200, 200]`, …, `4.bias` `[10]`. The metadata
//! records the architecture so a file can be loaded without being told it.
//!
//! A file may also carry 1-D tensors named `lazyavg.*` (a checkpoint's
//! optimiser state); [`Extras`] holds them. Plain model files have none, so
//! PyTorch's strict `load_state_dict` takes them as they are.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};

use crate::error::{Error, Result};
use crate::fsutil::write_bytes_atomic;
use crate::params::{Architecture, first_non_finite};

const ARCHITECTURE_KEY: &str = "lazyavg.architecture";

/// Prefix of tensor names that are not the model's own.
const EXTRA_PREFIX: &str = "lazyavg.";

/// What a file holds besides the model: metadata entries (keys should start
/// with `lazyavg.`) and extra f32 vectors, named with the `lazyavg.` prefix.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extras {
    pub metadata: HashMap<String, String>,
    pub tensors: BTreeMap<String, Vec<f32>>,
}

fn weight_name(layer: usize) -> String {
    format!("{}.weight", 2 * layer)
}

fn bias_name(layer: usize) -> String {
    format!("{}.bias", 2 * layer)
}

/// Serialises `params` of `arch` to safetensors bytes.
pub fn to_bytes(arch: &Architecture, params: &[f32]) -> Result<Vec<u8>> {
    to_bytes_with(arch, params, &Extras::default())
}

/// [`to_bytes`] with `extras` beside the model.
pub fn to_bytes_with(arch: &Architecture, params: &[f32], extras: &Extras) -> Result<Vec<u8>> {
    let layout = arch.layout();
    layout.check_len(arch, params)?;
    if let Some(name) = extras.tensors.keys().find(|n| !n.starts_with(EXTRA_PREFIX)) {
        return Err(Error::ModelFile {
            path: "<memory>".into(),
            problem: format!("extra tensor {name} lacks the prefix {EXTRA_PREFIX}"),
        });
    }
    let bytes: Vec<u8> = params.iter().flat_map(|v| v.to_le_bytes()).collect();
    let extra_bytes: Vec<(&String, Vec<u8>)> = extras
        .tensors
        .iter()
        .map(|(name, values)| (name, values.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let mut tensors = Vec::with_capacity(2 * layout.layers.len() + extra_bytes.len());
    for (l, layer) in layout.layers.iter().enumerate() {
        let w = &bytes[4 * layer.weight.start..4 * layer.weight.end];
        let b = &bytes[4 * layer.bias.start..4 * layer.bias.end];
        tensors.push((weight_name(l), tensor(vec![layer.outputs, layer.inputs], w)?));
        tensors.push((bias_name(l), tensor(vec![layer.outputs], b)?));
    }
    for (name, data) in &extra_bytes {
        tensors.push(((*name).clone(), tensor(vec![data.len() / 4], data)?));
    }
    let mut metadata = extras.metadata.clone();
    metadata.extend([
        ("format".to_owned(), "pt".to_owned()),
        (ARCHITECTURE_KEY.to_owned(), arch.to_string()),
        ("lazyavg.activation".to_owned(), "relu".to_owned()),
    ]);
    safetensors::serialize(tensors, Some(metadata))
        .map_err(|e| Error::ModelFile { path: "<memory>".into(), problem: e.to_string() })
}

fn tensor(shape: Vec<usize>, data: &[u8]) -> Result<TensorView<'_>> {
    TensorView::new(Dtype::F32, shape, data)
        .map_err(|e| Error::ModelFile { path: "<memory>".into(), problem: e.to_string() })
}

/// Writes the model to `path` atomically.
pub fn save(path: &Path, arch: &Architecture, params: &[f32]) -> Result<()> {
    write_bytes_atomic(path, &to_bytes(arch, params)?)
}

/// Reads a model written by [`save`] (or by PyTorch with the same names):
/// checks the architecture metadata, every tensor's name, dtype and shape, and
/// that every value is finite.
pub fn load(path: &Path) -> Result<(Architecture, Vec<f32>)> {
    load_with_extras(path).map(|(arch, params, _)| (arch, params))
}

/// [`load`], also returning the file's metadata and extra tensors.
pub fn load_with_extras(path: &Path) -> Result<(Architecture, Vec<f32>, Extras)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (arch, params, tensors) =
        from_bytes(&bytes).map_err(|problem| Error::ModelFile { path: path.to_owned(), problem })?;
    let metadata = SafeTensors::read_metadata(&bytes).ok().and_then(|(_, m)| m.metadata().clone()).unwrap_or_default();
    Ok((arch, params, Extras { metadata, tensors }))
}

/// A parsed file: the architecture, its parameters and the extra tensors.
type Parsed = (Architecture, Vec<f32>, BTreeMap<String, Vec<f32>>);

/// Parses a model file.
fn from_bytes(bytes: &[u8]) -> std::result::Result<Parsed, String> {
    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| format!("not a safetensors file: {e}"))?;
    let arch_text = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(ARCHITECTURE_KEY))
        .ok_or_else(|| format!("metadata has no {ARCHITECTURE_KEY}"))?;
    let widths = arch_text
        .split('-')
        .map(|w| w.parse::<usize>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| format!("metadata {ARCHITECTURE_KEY} = {arch_text:?} is not like 784-200-10"))?;
    let arch = Architecture { widths };
    arch.check().map_err(|e| e.to_string())?;
    // Untrusted widths must neither overflow the layout nor claim more values
    // (4 bytes each) than the file holds, or the buffer below would not fit in memory.
    if arch.checked_len().is_none_or(|v| v > bytes.len() / 4) {
        return Err(format!("architecture {arch} needs more values than the file's {} bytes hold", bytes.len()));
    }
    let tensors = SafeTensors::deserialize(bytes).map_err(|e| format!("not a safetensors file: {e}"))?;
    let layout = arch.layout();
    let expected_names = 2 * layout.layers.len();
    let model_tensors = tensors.names().iter().filter(|n| !n.starts_with(EXTRA_PREFIX)).count();
    if model_tensors != expected_names {
        let mut names = tensors.names();
        names.sort();
        return Err(format!("holds {} tensors {names:?}, but {arch} needs {expected_names}", tensors.len()));
    }
    let mut params = vec![0.0f32; layout.len];
    for (l, layer) in layout.layers.iter().enumerate() {
        for (name, shape, range) in [
            (weight_name(l), vec![layer.outputs, layer.inputs], layer.weight.clone()),
            (bias_name(l), vec![layer.outputs], layer.bias.clone()),
        ] {
            let view = tensors.tensor(&name).map_err(|_| format!("tensor {name} is missing"))?;
            if view.dtype() != Dtype::F32 {
                return Err(format!("tensor {name} has dtype {:?}, expected F32", view.dtype()));
            }
            if view.shape() != shape.as_slice() {
                return Err(format!("tensor {name} has shape {:?}, expected {shape:?} for {arch}", view.shape()));
            }
            for (dst, src) in params[range].iter_mut().zip(view.data().chunks_exact(4)) {
                *dst = f32::from_le_bytes([src[0], src[1], src[2], src[3]]);
            }
        }
    }
    if let Some(i) = first_non_finite(&params) {
        return Err(format!("parameter {i} is {}, not finite", params[i]));
    }
    let mut extras = BTreeMap::new();
    for (name, view) in tensors.tensors().into_iter().filter(|(n, _)| n.starts_with(EXTRA_PREFIX)) {
        if view.dtype() != Dtype::F32 || view.shape().len() != 1 {
            return Err(format!(
                "extra tensor {name} is {:?} {:?}, expected a vector of F32",
                view.dtype(),
                view.shape()
            ));
        }
        let values: Vec<f32> =
            view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        if let Some(i) = first_non_finite(&values) {
            return Err(format!("extra tensor {name} value {i} is {}, not finite", values[i]));
        }
        extras.insert(name, values);
    }
    Ok((arch, params, extras))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Mlp;

    #[test]
    fn round_trip_is_exact_with_pytorch_names() {
        let arch = Architecture::mlp(784, &[200, 200], 10).unwrap();
        let params = Mlp::new(arch.clone()).init(4);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        save(&path, &arch, &params).unwrap();
        let (arch2, params2) = load(&path).unwrap();
        assert_eq!((arch2, params2), (arch, params.clone()));
        let bytes = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("0.weight").unwrap().shape(), &[200, 784]);
        assert_eq!(st.tensor("4.bias").unwrap().shape(), &[10]);
        assert_eq!(st.len(), 6, "a plain model file holds only the model's tensors");
    }

    #[test]
    fn extras_round_trip_beside_the_model() {
        let arch = Architecture::mlp(4, &[3], 2).unwrap();
        let params: Vec<f32> = (0..arch.layout().len).map(|i| i as f32).collect();
        let extras = Extras {
            metadata: HashMap::from([("lazyavg.epoch".to_owned(), "3".to_owned())]),
            tensors: BTreeMap::from([("lazyavg.velocity".to_owned(), vec![0.5; params.len()])]),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.safetensors");
        write_bytes_atomic(&path, &to_bytes_with(&arch, &params, &extras).unwrap()).unwrap();
        let (arch2, params2, extras2) = load_with_extras(&path).unwrap();
        assert_eq!((arch2, params2, &extras2.tensors), (arch.clone(), params.clone(), &extras.tensors));
        assert_eq!(extras2.metadata.get("lazyavg.epoch").map(String::as_str), Some("3"));
        let unprefixed = Extras { tensors: BTreeMap::from([("velocity".to_owned(), vec![1.0])]), ..Extras::default() };
        assert!(to_bytes_with(&arch, &params, &unprefixed).unwrap_err().to_string().contains("lacks the prefix"));
    }

    #[test]
    fn wrong_shape_is_refused() {
        let arch = Architecture::mlp(4, &[3], 2).unwrap();
        let data = vec![0u8; 4 * 12];
        let small = vec![0u8; 4 * 3];
        let out = vec![0u8; 4 * 6];
        let out_b = vec![0u8; 4 * 2];
        let tensors = vec![
            ("0.weight".to_owned(), tensor(vec![3, 4], &data).unwrap()),
            ("0.bias".to_owned(), tensor(vec![3], &small).unwrap()),
            ("2.weight".to_owned(), tensor(vec![3, 2], &out).unwrap()), // transposed
            ("2.bias".to_owned(), tensor(vec![2], &out_b).unwrap()),
        ];
        let meta = HashMap::from([(ARCHITECTURE_KEY.to_owned(), arch.to_string())]);
        let bytes = safetensors::serialize(tensors, Some(meta)).unwrap();
        let err = from_bytes(&bytes).unwrap_err();
        assert_eq!(err, "tensor 2.weight has shape [3, 2], expected [2, 3] for 4-3-2");
    }

    #[test]
    fn non_finite_and_garbage_are_refused() {
        let arch = Architecture::mlp(2, &[], 2).unwrap();
        let bytes = to_bytes(&arch, &[0.0, f32::NAN, 0.0, 0.0, 0.0, 0.0]).unwrap();
        assert_eq!(from_bytes(&bytes).unwrap_err(), "parameter 1 is NaN, not finite");
        assert!(from_bytes(b"not a model").unwrap_err().starts_with("not a safetensors file"));
        let dir = tempfile::tempdir().unwrap();
        let err = load(&dir.path().join("missing.safetensors")).unwrap_err().to_string();
        assert!(err.contains("missing.safetensors"), "{err}");
    }
}
