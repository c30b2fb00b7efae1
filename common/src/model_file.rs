//! Saving and loading models as safetensors that PyTorch loads directly.
//!
//! Tensor names and shapes follow `nn.Sequential(Linear, ReLU, Linear, …)`:
//! layer `l` is module `2l`, so the default MLP has `0.weight` `[200, 784]`,
//! `0.bias` `[200]`, `2.weight` `[200, 200]`, …, `4.bias` `[10]`: the names
//! and shapes of the model's [`Layout`]. The metadata records the model's
//! whole description (`lazyavg.model`, the [`ModelSpec`] as JSON) so a file
//! can be loaded without being told it, and its widths
//! (`lazyavg.architecture`, `784-200-10`) as files of earlier versions did.
//! A file with only widths is read as an MLP on a flat input; a file without
//! either (PyTorch's `safetensors.torch.save_file` of the `state_dict`) has
//! its MLP inferred from its tensors' names and shapes.
//!
//! A file may also carry 1-D tensors named `lazyavg.*` (a checkpoint's
//! optimiser state); [`Extras`] holds them. Plain model files have none, so
//! PyTorch's strict `load_state_dict` takes them as they are.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::path::Path;

use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorInfo, TensorView};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use crate::params::{Layout, TensorLayout, first_non_finite};
use crate::spec::ModelSpec;

/// The widths of an MLP, `784-200-10` (every version writes it).
const ARCHITECTURE_KEY: &str = "lazyavg.architecture";
/// The whole [`ModelSpec`], as JSON.
const MODEL_KEY: &str = "lazyavg.model";

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

/// A model file ready to write: the safetensors header serialised, each
/// tensor's values borrowed. Written a tensor at a time, a file costs no copy
/// of the model in memory (serialised whole first, a checkpoint of a
/// 20M-parameter model with its optimiser state took 400 MB more).
#[derive(Debug)]
pub struct Encoded<'a> {
    header: Vec<u8>,
    /// The values of each tensor, in the header's order.
    tensors: Vec<&'a [f32]>,
}

/// Values converted to little-endian bytes at a time while writing.
const WRITE_BLOCK: usize = 64 * 1024;

impl Encoded<'_> {
    /// Writes the whole file to `out`.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        out.write_all(&(self.header.len() as u64).to_le_bytes())?;
        out.write_all(&self.header)?;
        let mut bytes = Vec::with_capacity(4 * WRITE_BLOCK);
        for block in self.tensors.iter().flat_map(|values| values.chunks(WRITE_BLOCK)) {
            bytes.clear();
            bytes.extend(block.iter().flat_map(|v| v.to_le_bytes()));
            out.write_all(&bytes)?;
        }
        Ok(())
    }

    /// The whole file in memory.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        self.write_to(&mut bytes).expect("writing to memory does not fail");
        bytes
    }
}

/// A safetensors header: the metadata, then each tensor's dtype, shape and
/// byte range. Both maps are sorted, so that the same model always makes
/// the same file (safetensors' own `Metadata` keeps the metadata in a
/// `HashMap`, whose order changes from one process to the next).
#[derive(Serialize)]
struct Header<'a> {
    #[serde(rename = "__metadata__")]
    metadata: BTreeMap<String, String>,
    #[serde(flatten)]
    tensors: BTreeMap<&'a str, TensorInfo>,
}

/// Lays out `params` of the model `spec` as a safetensors file, with
/// `metadata` and the 1-D `extra` tensors (named with the `lazyavg.` prefix)
/// beside them. Tensors are ordered by name, as `safetensors::serialize`
/// orders them.
pub fn encode<'a>(
    spec: &ModelSpec,
    params: &'a [f32],
    metadata: HashMap<String, String>,
    extra: impl IntoIterator<Item = (&'a str, &'a [f32])>,
) -> Result<Encoded<'a>> {
    let invalid = |problem: String| Error::ModelFile { path: "<memory>".into(), problem };
    let layout = spec.layout()?;
    layout.check_len(spec, params)?;
    let mut tensors: BTreeMap<String, (Vec<usize>, &[f32])> =
        layout.tensors.iter().map(|t| (t.name.clone(), (t.shape.clone(), &params[t.range.clone()]))).collect();
    for (name, values) in extra {
        if !name.starts_with(EXTRA_PREFIX) {
            return Err(invalid(format!("extra tensor {name} lacks the prefix {EXTRA_PREFIX}")));
        }
        tensors.insert(name.to_owned(), (vec![values.len()], values));
    }
    let mut metadata: BTreeMap<String, String> = metadata.into_iter().collect();
    let description = serde_json::to_string(spec).expect("a model description serialises");
    metadata.extend([("format".to_owned(), "pt".to_owned()), (MODEL_KEY.to_owned(), description)]);
    if spec.mlp_widths().is_some() {
        metadata.extend([
            (ARCHITECTURE_KEY.to_owned(), spec.to_string()),
            (ACTIVATION_KEY.to_owned(), ACTIVATION.to_owned()),
        ]);
    }
    let mut offset = 0;
    let infos = tensors
        .iter()
        .map(|(name, (shape, values))| {
            let data_offsets = (offset, offset + 4 * values.len());
            offset = data_offsets.1;
            (name.as_str(), TensorInfo { dtype: Dtype::F32, shape: shape.clone(), data_offsets })
        })
        .collect();
    let mut header = serde_json::to_vec(&Header { metadata, tensors: infos }).map_err(|e| invalid(e.to_string()))?;
    // The format aligns the tensors' data to 8 bytes with spaces.
    header.resize(header.len().next_multiple_of(8), b' ');
    Ok(Encoded { header, tensors: tensors.into_values().map(|(_, values)| values).collect() })
}

/// `params` of the model `spec` as safetensors bytes, with `extras` beside them.
pub fn to_bytes_with(spec: &ModelSpec, params: &[f32], extras: &Extras) -> Result<Vec<u8>> {
    let extra = extras.tensors.iter().map(|(name, values)| (name.as_str(), values.as_slice()));
    Ok(encode(spec, params, extras.metadata.clone(), extra)?.to_vec())
}

/// Writes the model to `path` atomically, a tensor at a time.
pub fn save(path: &Path, spec: &ModelSpec, params: &[f32]) -> Result<()> {
    let encoded = encode(spec, params, HashMap::new(), [])?;
    write_atomic(path, |file| encoded.write_to(file))
}

/// Reads a model written by [`save`] (or by PyTorch with the same names):
/// checks the description in the metadata, every tensor's name, dtype and
/// shape against it, and that every value is finite.
pub fn load(path: &Path) -> Result<(ModelSpec, Vec<f32>)> {
    load_with_extras(path).map(|(arch, params, _)| (arch, params))
}

/// [`load`], also returning the file's metadata and extra tensors.
pub fn load_with_extras(path: &Path) -> Result<(ModelSpec, Vec<f32>, Extras)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (arch, params, tensors) =
        from_bytes(&bytes).map_err(|problem| Error::ModelFile { path: path.to_owned(), problem })?;
    let metadata = SafeTensors::read_metadata(&bytes).ok().and_then(|(_, m)| m.metadata().clone()).unwrap_or_default();
    Ok((arch, params, Extras { metadata, tensors }))
}

/// The MLP whose widths are recorded in the metadata, `784-200-10`.
fn parse_architecture(text: &str) -> std::result::Result<ModelSpec, String> {
    let widths = text
        .split('-')
        .map(|w| w.parse::<usize>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| format!("metadata {ARCHITECTURE_KEY} = {text:?} is not like 784-200-10"))?;
    ModelSpec::from_widths(&widths).map_err(|e| format!("metadata {ARCHITECTURE_KEY} = {text:?}: {e}"))
}

/// The model the file describes: its `lazyavg.model`, else its
/// `lazyavg.architecture`, else inferred from its tensors.
fn described_model(
    metadata: Option<&HashMap<String, String>>,
    tensors: &SafeTensors<'_>,
) -> std::result::Result<ModelSpec, String> {
    if let Some(text) = metadata.and_then(|m| m.get(MODEL_KEY)) {
        let spec: ModelSpec =
            serde_json::from_str(text).map_err(|e| format!("metadata {MODEL_KEY} is not a model description: {e}"))?;
        spec.check().map_err(|e| format!("metadata {MODEL_KEY}: {e}"))?;
        return Ok(spec);
    }
    match metadata.and_then(|m| m.get(ARCHITECTURE_KEY)) {
        Some(text) => parse_architecture(text),
        None => infer_architecture(tensors),
    }
}

/// The architecture of a file without lazyavg's metadata, such as PyTorch's
/// `save_file(nn.Sequential(Linear, ReLU, Linear, …).state_dict())`: its
/// tensors must be `0.weight`, `0.bias`, `2.weight`, … with each weight's
/// input width the previous one's output width.
fn infer_architecture(tensors: &SafeTensors<'_>) -> std::result::Result<ModelSpec, String> {
    let mut names: Vec<String> =
        tensors.names().into_iter().filter(|n| !n.starts_with(EXTRA_PREFIX)).map(str::to_owned).collect();
    names.sort();
    let not_a_chain = |why: String| {
        format!(
            "has no {ARCHITECTURE_KEY} metadata, and its tensors {names:?} are not an nn.Sequential(Linear, ReLU, \
             Linear, …) (0.weight, 0.bias, 2.weight, …): {why}"
        )
    };
    let layers = names.len() / 2;
    if layers == 0 || !names.len().is_multiple_of(2) {
        return Err(not_a_chain(format!("{} tensors, expected a weight and a bias per layer", names.len())));
    }
    let mut widths = Vec::with_capacity(layers + 1);
    for l in 0..layers {
        let (w, b) = (weight_name(l), bias_name(l));
        let (Ok(weight), Ok(bias)) = (tensors.tensor(&w), tensors.tensor(&b)) else {
            return Err(not_a_chain(format!("{w} or {b} is missing")));
        };
        let &[outputs, inputs] = weight.shape() else {
            return Err(not_a_chain(format!("{w} has shape {:?}, expected [out, in]", weight.shape())));
        };
        if bias.shape() != [outputs] {
            return Err(not_a_chain(format!("{b} has shape {:?} but {w} has {outputs} outputs", bias.shape())));
        }
        match widths.last() {
            None => widths.push(inputs),
            Some(&previous) if previous != inputs => {
                return Err(not_a_chain(format!(
                    "{w} takes {inputs} inputs but the layer before gives {previous} outputs"
                )));
            }
            Some(_) => {}
        }
        widths.push(outputs);
    }
    ModelSpec::from_widths(&widths).map_err(|e| not_a_chain(e.to_string()))
}

/// The metadata key naming the hidden layers' activation, and the only one
/// lazyavg computes: a file that says another is refused, not misread.
const ACTIVATION_KEY: &str = "lazyavg.activation";
const ACTIVATION: &str = "relu";

/// A parsed file: the architecture, its parameters and the extra tensors.
type Parsed = (ModelSpec, Vec<f32>, BTreeMap<String, Vec<f32>>);

/// Checks that a file is as long as its header says, which safetensors'
/// own error leaves unsaid ("incomplete metadata, file not fully covered"):
/// a truncated or padded file is named with both sizes. A header that does
/// not parse is left to safetensors to describe.
fn check_length(bytes: &[u8]) -> std::result::Result<(), String> {
    let Some(header_len) = bytes.first_chunk::<8>().map(|b| u64::from_le_bytes(*b)) else {
        return Err(format!("not a safetensors file: {} bytes, fewer than the 8 of its header's length", bytes.len()));
    };
    let len = bytes.len() as u64;
    let header_end = header_len.saturating_add(8);
    if header_end > len {
        return Err(format!(
            "not a safetensors file, or truncated: it announces a {header_len}-byte header but the file has {len} bytes"
        ));
    }
    let Ok(header) =
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes[8..header_end as usize])
    else {
        return Ok(());
    };
    let data_len = header.values().filter_map(|t| t.get("data_offsets")?.get(1)?.as_u64()).max().unwrap_or(0);
    let expected = header_end.saturating_add(data_len);
    if expected != len {
        let what = if len < expected { "truncated" } else { "damaged" };
        return Err(format!(
            "{what}: its header describes {expected} bytes ({header_end} of header, {data_len} of tensors) but the file has {len}"
        ));
    }
    Ok(())
}

/// Parses a model file.
fn from_bytes(bytes: &[u8]) -> std::result::Result<Parsed, String> {
    check_length(bytes)?;
    let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| format!("not a safetensors file: {e}"))?;
    let tensors = SafeTensors::deserialize(bytes).map_err(|e| format!("not a safetensors file: {e}"))?;
    if let Some(activation) = metadata.metadata().as_ref().and_then(|m| m.get(ACTIVATION_KEY))
        && activation != ACTIVATION
    {
        return Err(format!("metadata {ACTIVATION_KEY} = {activation:?}, but lazyavg computes only {ACTIVATION:?}"));
    }
    let spec = described_model(metadata.metadata().as_ref(), &tensors)?;
    let layout = spec.layout().map_err(|e| e.to_string())?;
    let params = read_model_tensors(&tensors, &spec, &layout)?;
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
    Ok((spec, params, extras))
}

/// The model's tensors, each checked against its entry of `layout`: a
/// mismatch names the tensor, its layer and both shapes. Every tensor is
/// checked before the buffer is allocated, so an untrusted description
/// cannot claim more values than the file holds.
fn read_model_tensors(
    tensors: &SafeTensors<'_>,
    spec: &ModelSpec,
    layout: &Layout,
) -> std::result::Result<Vec<f32>, String> {
    let model_tensors = tensors.names().iter().filter(|n| !n.starts_with(EXTRA_PREFIX)).count();
    if model_tensors != layout.tensors.len() {
        let mut names = tensors.names();
        names.sort();
        return Err(format!("holds {} tensors {names:?}, but {spec} needs {}", tensors.len(), layout.tensors.len()));
    }
    let views =
        layout.tensors.iter().map(|t| Ok((t, checked_view(tensors, spec, t)?))).collect::<Result<Vec<_>, String>>()?;
    let mut params = vec![0.0f32; layout.len];
    for (t, view) in views {
        for (dst, src) in params[t.range.clone()].iter_mut().zip(view.data().chunks_exact(4)) {
            *dst = f32::from_le_bytes([src[0], src[1], src[2], src[3]]);
        }
    }
    Ok(params)
}

/// The file's tensor for `t`, if it has `t`'s name, dtype F32 and shape.
fn checked_view<'a>(
    tensors: &SafeTensors<'a>,
    spec: &ModelSpec,
    t: &TensorLayout,
) -> std::result::Result<TensorView<'a>, String> {
    let name = &t.name;
    let view = tensors.tensor(name).map_err(|_| format!("tensor {name} is missing"))?;
    if view.dtype() != Dtype::F32 {
        return Err(format!("tensor {name} has dtype {:?}, expected F32", view.dtype()));
    }
    if view.shape() != t.shape.as_slice() {
        let layer = format!("layer {} ({})", t.layer + 1, spec.layers[t.layer]);
        return Err(format!("tensor {name} has shape {:?}, but {layer} of {spec} needs {:?}", view.shape(), t.shape));
    }
    Ok(view)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::write_bytes_atomic;

    fn tensor(shape: Vec<usize>, data: &[u8]) -> std::result::Result<TensorView<'_>, safetensors::SafeTensorError> {
        TensorView::new(Dtype::F32, shape, data)
    }

    /// Metadata maps built apart iterate in different orders; the files do not differ.
    #[test]
    fn the_same_model_and_metadata_make_the_same_bytes() {
        let arch = ModelSpec::from_widths(&[4, 3, 2]).unwrap();
        let params: Vec<f32> = (0..arch.layout().unwrap().len).map(|i| i as f32).collect();
        let metadata = || (0..16).map(|i| (format!("lazyavg.key{i}"), i.to_string())).collect::<HashMap<_, _>>();
        let first = encode(&arch, &params, metadata(), []).unwrap().to_vec();
        assert_eq!(encode(&arch, &params, metadata(), []).unwrap().to_vec(), first);
    }

    /// The file written a tensor at a time is the one `safetensors::serialize`
    /// makes of the same tensors and metadata: the same header (parsed: the
    /// crate's metadata order is a hash map's) and the same data bytes.
    #[test]
    fn a_file_written_a_tensor_at_a_time_is_the_one_safetensors_serialises() {
        let arch = ModelSpec::from_widths(&[4, 3, 3, 3, 3, 3, 3, 2]).unwrap();
        let params: Vec<f32> = (0..arch.layout().unwrap().len).map(|i| i as f32 * 0.25 - 3.0).collect();
        let velocity: Vec<f32> = params.iter().map(|v| -v).collect();
        let metadata = HashMap::from([("lazyavg.epoch".to_owned(), "3".to_owned())]);
        let written = encode(&arch, &params, metadata.clone(), [("lazyavg.velocity", velocity.as_slice())]).unwrap();

        let le = |values: &[f32]| -> Vec<u8> { values.iter().flat_map(|v| v.to_le_bytes()).collect() };
        let (param_bytes, velocity_bytes) = (le(&params), le(&velocity));
        let layout = arch.layout().unwrap();
        let mut tensors: Vec<(String, TensorView<'_>)> = layout
            .tensors
            .iter()
            .map(|t| {
                (t.name.clone(), tensor(t.shape.clone(), &param_bytes[4 * t.range.start..4 * t.range.end]).unwrap())
            })
            .collect();
        tensors.push(("lazyavg.velocity".to_owned(), tensor(vec![velocity.len()], &velocity_bytes).unwrap()));
        let mut expected_metadata = metadata;
        expected_metadata.extend([
            ("format".to_owned(), "pt".to_owned()),
            (MODEL_KEY.to_owned(), serde_json::to_string(&arch).unwrap()),
            (ARCHITECTURE_KEY.to_owned(), arch.to_string()),
            (ACTIVATION_KEY.to_owned(), ACTIVATION.to_owned()),
        ]);
        let serialised = safetensors::serialize(tensors, Some(expected_metadata)).unwrap();
        // The metadata is a hash map: compare the header parsed, the data as bytes.
        let header = |bytes: &[u8]| SafeTensors::read_metadata(bytes).unwrap();
        let (written, serialised) = (written.to_vec(), serialised);
        let ((n, ours), (m, theirs)) = (header(&written), header(&serialised));
        assert_eq!((n, written.len()), (m, serialised.len()));
        assert_eq!(ours.metadata(), theirs.metadata());
        assert_eq!(ours.offset_keys(), theirs.offset_keys());
        for name in ours.offset_keys() {
            assert_eq!(format!("{:?}", ours.info(&name)), format!("{:?}", theirs.info(&name)), "{name}");
        }
        assert_eq!(written[n..], serialised[m..]);
    }

    /// A description wider than the file's tensors names the tensor and
    /// both shapes, as a narrower one does, and allocates nothing for it.
    #[test]
    fn a_description_wider_than_the_tensors_names_the_tensor() {
        let file = ModelSpec::from_widths(&[784, 64, 10]).unwrap();
        let params = file.build().unwrap().init(1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        save(&path, &file, &params).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let at = bytes.windows(8).position(|w| w == b"dense 64").expect("the description in the header");
        let mut wider = bytes.clone();
        wider[at..at + 8].copy_from_slice(b"dense 65");
        let err = from_bytes(&wider).unwrap_err();
        assert_eq!(err, "tensor 0.weight has shape [64, 784], but layer 1 (dense 65) of 784-65-10 needs [65, 784]");
    }

    #[test]
    fn round_trip_is_exact_with_pytorch_names() {
        let arch = ModelSpec::from_widths(&[784, 200, 200, 10]).unwrap();
        let params = arch.build().unwrap().init(4);
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
    fn a_truncated_or_padded_file_is_named_with_both_sizes() {
        let arch = ModelSpec::from_widths(&[4, 3, 2]).unwrap();
        let params: Vec<f32> = (0..arch.layout().unwrap().len).map(|i| i as f32).collect();
        let bytes = to_bytes_with(&arch, &params, &Extras::default()).unwrap();
        let len = bytes.len();
        let cut = from_bytes(&bytes[..len - 10]).unwrap_err();
        assert!(cut.starts_with(&format!("truncated: its header describes {len} bytes")), "{cut}");
        assert!(cut.ends_with(&format!("but the file has {}", len - 10)), "{cut}");
        let padded = [&bytes[..], &[0; 3]].concat();
        assert!(from_bytes(&padded).unwrap_err().starts_with("damaged"), "padded");
        let header_cut = from_bytes(&bytes[..20]).unwrap_err();
        assert!(header_cut.starts_with("not a safetensors file, or truncated") && header_cut.ends_with("has 20 bytes"));
        assert!(from_bytes(&bytes[..5]).unwrap_err().starts_with("not a safetensors file: 5 bytes"));
    }

    #[test]
    fn extras_round_trip_beside_the_model() {
        let arch = ModelSpec::from_widths(&[4, 3, 2]).unwrap();
        let params: Vec<f32> = (0..arch.layout().unwrap().len).map(|i| i as f32).collect();
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
        let arch = ModelSpec::from_widths(&[4, 3, 2]).unwrap();
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
        assert_eq!(err, "tensor 2.weight has shape [3, 2], but layer 3 (dense 2) of 4-3-2 needs [2, 3]");
    }

    #[test]
    fn another_activation_is_refused_not_misread() {
        let arch = ModelSpec::from_widths(&[4, 3, 2]).unwrap();
        let params = vec![0.5; arch.layout().unwrap().len];
        let mut bytes = to_bytes_with(&arch, &params, &Extras::default()).unwrap();
        assert!(from_bytes(&bytes).is_ok());
        let tensors = SafeTensors::deserialize(&bytes).unwrap();
        let named: Vec<(String, TensorView<'_>)> =
            tensors.tensors().into_iter().map(|(name, view)| (name.to_string(), view)).collect();
        let meta = HashMap::from([
            (ARCHITECTURE_KEY.to_owned(), arch.to_string()),
            (ACTIVATION_KEY.to_owned(), "tanh".to_owned()),
        ]);
        bytes = safetensors::serialize(named, Some(meta)).unwrap();
        let err = from_bytes(&bytes).unwrap_err();
        assert_eq!(err, "metadata lazyavg.activation = \"tanh\", but lazyavg computes only \"relu\"");
    }

    #[test]
    fn non_finite_and_garbage_are_refused() {
        let arch = ModelSpec::from_widths(&[2, 2]).unwrap();
        let bytes = to_bytes_with(&arch, &[0.0, f32::NAN, 0.0, 0.0, 0.0, 0.0], &Extras::default()).unwrap();
        assert_eq!(from_bytes(&bytes).unwrap_err(), "parameter 1 is NaN, not finite");
        assert!(from_bytes(b"not a model").unwrap_err().starts_with("not a safetensors file"));
        let dir = tempfile::tempdir().unwrap();
        let err = load(&dir.path().join("missing.safetensors")).unwrap_err().to_string();
        assert!(err.contains("missing.safetensors"), "{err}");
    }

    /// A file as `safetensors.torch.save_file(model.state_dict())` writes it:
    /// the model's tensors under PyTorch's names, no metadata.
    fn without_metadata(shapes: &[(&str, Vec<usize>)]) -> Vec<u8> {
        let data: Vec<Vec<u8>> = shapes.iter().map(|(_, s)| vec![0u8; 4 * s.iter().product::<usize>()]).collect();
        let tensors: Vec<(String, TensorView<'_>)> =
            shapes.iter().zip(&data).map(|((n, s), d)| ((*n).to_owned(), tensor(s.clone(), d).unwrap())).collect();
        safetensors::serialize(tensors, None).unwrap()
    }

    /// The tensors of `bytes` with `metadata` in place of theirs.
    fn with_metadata(bytes: &[u8], metadata: HashMap<String, String>) -> Vec<u8> {
        let tensors = SafeTensors::deserialize(bytes).unwrap();
        let named: Vec<(String, TensorView<'_>)> =
            tensors.tensors().into_iter().map(|(name, view)| (name.to_string(), view)).collect();
        safetensors::serialize(named, Some(metadata)).unwrap()
    }

    #[test]
    fn a_file_of_an_earlier_version_loads_as_the_same_network() {
        // Written as lazyavg wrote files before the model description: widths only.
        let spec = ModelSpec::from_widths(&[4, 3, 2]).unwrap();
        let params: Vec<f32> = (0..spec.layout().unwrap().len).map(|i| i as f32).collect();
        let meta = HashMap::from([(ARCHITECTURE_KEY.to_owned(), "4-3-2".to_owned())]);
        let (loaded, loaded_params, _) =
            from_bytes(&with_metadata(&to_bytes_with(&spec, &params, &Extras::default()).unwrap(), meta)).unwrap();
        assert_eq!((&loaded, &loaded_params), (&spec, &params));
        let image = crate::spec::InputShape { channels: 1, height: 2, width: 2 };
        assert!(loaded.same_network(&ModelSpec { input: image, ..spec.clone() }));
    }

    #[test]
    fn a_description_that_contradicts_the_tensors_names_tensor_layer_and_shapes() {
        let spec = ModelSpec::from_widths(&[4, 3, 2]).unwrap();
        let other = ModelSpec::from_widths(&[4, 5, 2]).unwrap();
        let params = vec![0.5; other.layout().unwrap().len];
        let meta = HashMap::from([(MODEL_KEY.to_owned(), serde_json::to_string(&spec).unwrap())]);
        let err =
            from_bytes(&with_metadata(&to_bytes_with(&other, &params, &Extras::default()).unwrap(), meta)).unwrap_err();
        assert_eq!(err, "tensor 0.weight has shape [5, 4], but layer 1 (dense 3) of 4-3-2 needs [3, 4]");
    }

    #[test]
    fn a_file_without_metadata_has_its_architecture_inferred() {
        let bytes = without_metadata(&[
            ("0.weight", vec![5, 4]),
            ("0.bias", vec![5]),
            ("2.weight", vec![3, 5]),
            ("2.bias", vec![3]),
            ("4.weight", vec![2, 3]),
            ("4.bias", vec![2]),
        ]);
        let (arch, params, _) = from_bytes(&bytes).unwrap();
        assert_eq!(arch.to_string(), "4-5-3-2");
        assert_eq!(params.len(), arch.layout().unwrap().len);
    }

    #[test]
    fn tensors_that_are_not_an_mlp_chain_are_refused() {
        let broken = without_metadata(&[
            ("0.weight", vec![5, 4]),
            ("0.bias", vec![5]),
            ("2.weight", vec![3, 6]),
            ("2.bias", vec![3]),
        ]);
        let err = from_bytes(&broken).unwrap_err();
        assert!(err.ends_with("2.weight takes 6 inputs but the layer before gives 5 outputs"), "{err}");
        assert!(err.contains(r#"["0.bias", "0.weight", "2.bias", "2.weight"]"#), "{err}");
        let renamed = without_metadata(&[("fc1.weight", vec![5, 4]), ("fc1.bias", vec![5])]);
        assert!(from_bytes(&renamed).unwrap_err().ends_with("0.weight or 0.bias is missing"));
        let conv = without_metadata(&[("0.weight", vec![8, 1, 3, 3]), ("0.bias", vec![8])]);
        assert!(from_bytes(&conv).unwrap_err().ends_with("0.weight has shape [8, 1, 3, 3], expected [out, in]"));
    }
}
