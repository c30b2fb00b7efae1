//! Property-based fuzzing of the parsers that read untrusted bytes: IDX files
//! (raw and gzipped), dataset blobs and safetensors model files. Every input
//! must give `Ok` or `Err`, never a panic; valid inputs must round-trip.

use std::collections::HashMap;
use std::io::Write;

use lazyavg_common::dataset::Dataset;
use lazyavg_common::idx::{self, CHANNEL_IMAGES_MAGIC, IMAGES_MAGIC, Images, LABELS_MAGIC};
use lazyavg_common::model_file;
use lazyavg_common::spec::{InputShape, ModelSpec};
use proptest::prelude::*;
use safetensors::tensor::{Dtype, TensorView};

fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    idx::encode_into(&mut out, magic, dims, data);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// A dimension: mostly small, often huge (to provoke `count * rows * cols` overflow).
fn dim() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => 0u32..8,
        2 => any::<u32>(),
        1 => Just(u32::MAX),
        1 => Just(1 << 16),
        1 => (1u32 << 20)..(1 << 24),
    ]
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// Parses as images and as labels, gzipped or not, and as a dataset blob.
fn parse_all(bytes: Vec<u8>) {
    if let Ok(raw) = idx::decompress("f", bytes.clone()) {
        if let Ok(images) = idx::parse_images("f", raw.clone()) {
            assert_eq!(images.pixels.len(), images.count * images.shape.len());
            assert!(!images.shape.is_empty());
        }
        if let Ok(labels) = idx::parse_labels("f", raw.clone()) {
            assert_eq!(labels.len() + 8, raw.len());
        }
    }
    if let Ok(ds) = Dataset::from_blob("blob", bytes) {
        assert_eq!(ds.labels().len(), ds.len());
        assert_eq!(Dataset::from_blob("blob", ds.to_blob()).unwrap(), ds);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn idx_arbitrary_bytes_never_panic(data in bytes(256)) {
        parse_all(data);
    }

    #[test]
    fn idx_arbitrary_gzip_stream_never_panics(data in bytes(256)) {
        // Random bytes behind the gzip magic: a corrupt stream, not a panic.
        let mut gz = vec![0x1f, 0x8b];
        gz.extend_from_slice(&data);
        parse_all(gz);
    }

    #[test]
    fn idx_gzip_wrapped_bytes_round_trip(data in bytes(512)) {
        prop_assert_eq!(idx::decompress("f", gzip(&data)).unwrap(), data.clone());
        parse_all(gzip(&data));
    }

    #[test]
    fn idx_header_with_any_dims_never_panics(
        dims in prop::collection::vec(dim(), 0..4),
        magic in prop_oneof![Just(IMAGES_MAGIC), Just(LABELS_MAGIC), any::<u32>()],
        tail in bytes(128),
        gzipped in any::<bool>(),
    ) {
        let raw = idx_bytes(magic, &dims, &tail);
        parse_all(if gzipped { gzip(&raw) } else { raw });
    }

    #[test]
    fn idx_images_header_with_huge_dims_is_an_error(count in dim(), rows in dim(), cols in dim(), tail in bytes(64)) {
        let raw = idx_bytes(IMAGES_MAGIC, &[count, rows, cols], &tail);
        let declared = u128::from(count) * u128::from(rows) * u128::from(cols);
        match idx::parse_images("img", raw) {
            Ok(images) => prop_assert_eq!(images.pixels.len() as u128, declared),
            Err(e) => prop_assert!(e.to_string().starts_with("img: "), "{}", e),
        }
    }

    #[test]
    fn idx_labels_header_with_any_count_never_panics(count in dim(), tail in bytes(64)) {
        let result = idx::parse_labels("lbl", idx_bytes(LABELS_MAGIC, &[count], &tail));
        if let Ok(labels) = result {
            prop_assert_eq!(labels.len(), count as usize);
        }
    }

    #[test]
    fn idx_valid_files_round_trip(
        (count, rows, cols, pixels) in (0usize..6, 1usize..6, 1usize..6)
            .prop_flat_map(|(n, r, c)| (Just(n), Just(r), Just(c), prop::collection::vec(any::<u8>(), n * r * c))),
        labels in prop::collection::vec(any::<u8>(), 0..16),
        gzipped in any::<bool>(),
    ) {
        let wrap = |b: Vec<u8>| if gzipped { gzip(&b) } else { b };
        let raw = wrap(idx_bytes(IMAGES_MAGIC, &[count as u32, rows as u32, cols as u32], &pixels));
        let images = idx::parse_images("img", idx::decompress("img", raw).unwrap()).unwrap();
        let shape = InputShape { channels: 1, height: rows, width: cols };
        prop_assert_eq!(&images, &Images { count, shape, pixels: pixels.clone() });
        let raw = wrap(idx_bytes(LABELS_MAGIC, &[labels.len() as u32], &labels));
        prop_assert_eq!(&idx::parse_labels("lbl", idx::decompress("lbl", raw).unwrap()).unwrap(), &labels);
    }

    #[test]
    fn dataset_blob_with_valid_header_and_random_rest_never_panics(
        dims in prop::collection::vec(dim(), 3..=4),
        label_header in prop_oneof![Just(LABELS_MAGIC), any::<u32>()],
        label_count in dim(),
        middle in bytes(96),
        tail in bytes(32),
    ) {
        let magic = if dims.len() == 4 { CHANNEL_IMAGES_MAGIC } else { IMAGES_MAGIC };
        let mut blob = idx_bytes(magic, &dims, &middle);
        blob.extend_from_slice(&idx_bytes(label_header, &[label_count], &tail));
        parse_all(blob);
    }

    #[test]
    fn dataset_blob_round_trips(
        (shape, labels, pixels) in (1usize..4, 1usize..5, 1usize..5, prop::collection::vec(any::<u8>(), 0..8))
            .prop_flat_map(|(channels, height, width, l)| {
                let shape = InputShape { channels, height, width };
                let n = l.len() * shape.len();
                (Just(shape), Just(l), prop::collection::vec(any::<u8>(), n))
            }),
        cut in any::<prop::sample::Index>(),
    ) {
        let images = Images { count: labels.len(), shape, pixels };
        let ds = Dataset::new(images, labels, "l").unwrap();
        let blob = ds.to_blob();
        prop_assert_eq!(&Dataset::from_blob("blob", blob.clone()).unwrap(), &ds);
        // Any proper prefix is refused.
        let cut = cut.index(blob.len());
        prop_assert!(Dataset::from_blob("blob", blob[..cut].to_vec()).is_err());
    }
}

// ---- safetensors model files ------------------------------------------------

fn small_arch() -> impl Strategy<Value = ModelSpec> {
    prop::collection::vec(1usize..6, 2..5).prop_map(|widths| ModelSpec::from_widths(&widths).unwrap())
}

fn arch_and_params() -> impl Strategy<Value = (ModelSpec, Vec<f32>)> {
    small_arch().prop_flat_map(|arch| {
        let len = arch.layout().unwrap().len;
        (Just(arch), prop::collection::vec(-1e6f32..1e6, len))
    })
}

/// How a valid file is damaged.
#[derive(Debug, Clone)]
enum Mutation {
    Truncate(prop::sample::Index),
    Flip(prop::sample::Index, u8),
    Set(prop::sample::Index, u8),
    Insert(prop::sample::Index, Vec<u8>),
    Remove(prop::sample::Index, prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, x)| Mutation::Set(i, x)),
        (any::<prop::sample::Index>(), bytes(16)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<prop::sample::Index>(), any::<prop::sample::Index>()).prop_map(|(a, b)| Mutation::Remove(a, b)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match m {
        Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        Mutation::Flip(i, x) => {
            let i = i.index(bytes.len());
            bytes[i] ^= x;
        }
        Mutation::Set(i, x) => {
            let i = i.index(bytes.len());
            bytes[i] = *x;
        }
        Mutation::Insert(i, b) => {
            let i = i.index(bytes.len() + 1);
            bytes.splice(i..i, b.iter().copied());
        }
        Mutation::Remove(a, b) => {
            let (a, b) = (a.index(bytes.len()), b.index(bytes.len()));
            bytes.drain(a.min(b)..a.max(b));
        }
    }
}

/// Loads `bytes` through both loaders; a loaded model is consistent.
fn load_bytes(dir: &std::path::Path, bytes: &[u8]) -> Option<(ModelSpec, Vec<f32>)> {
    let path = dir.join("model.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let loaded = model_file::load(&path);
    let with_meta = model_file::load_with_extras(&path);
    assert_eq!(loaded.is_ok(), with_meta.is_ok());
    let (arch, params) = loaded.ok()?;
    assert_eq!(params.len(), arch.layout().unwrap().len);
    assert!(params.iter().all(|v| v.is_finite()));
    Some((arch, params))
}

/// Width lists as text, including huge ones whose layout overflows `usize`
/// or would need terabytes.
fn arch_text() -> impl Strategy<Value = String> {
    let width = prop_oneof![
        4 => (1usize..8).prop_map(|w| w.to_string()),
        1 => any::<usize>().prop_map(|w| w.to_string()),
        1 => Just(usize::MAX.to_string()),
        1 => Just((1usize << 32).to_string()),
        1 => (100_000usize..10_000_000).prop_map(|w| w.to_string()),
        1 => "[0-9]{0,3}",
    ];
    prop_oneof![
        5 => prop::collection::vec(width, 0..5).prop_map(|w| w.join("-")),
        1 => "[0-9a-z, -]{0,24}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn model_file_arbitrary_bytes_never_panic(data in bytes(512), prefix_len in any::<u64>(), with_prefix in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let mut file = Vec::new();
        if with_prefix {
            // A plausible header length, so the parser goes past the first check.
            file.extend_from_slice(&(prefix_len % 600).to_le_bytes());
        }
        file.extend_from_slice(&data);
        prop_assert!(load_bytes(dir.path(), &file).is_none());
    }

    #[test]
    fn model_file_round_trips_and_survives_mutation(
        (arch, params) in arch_and_params(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        model_file::save(&path, &arch, &params).unwrap();
        let (arch2, params2, extras) = model_file::load_with_extras(&path).unwrap();
        prop_assert_eq!(&arch2, &arch);
        prop_assert_eq!(&params2, &params);
        prop_assert_eq!(extras.metadata.get("lazyavg.architecture"), Some(&arch.to_string()));
        let mut bytes = std::fs::read(&path).unwrap();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        load_bytes(dir.path(), &bytes);
    }

    #[test]
    fn model_file_with_any_architecture_metadata_never_panics(
        text in arch_text(),
        shapes in prop::collection::vec(prop::collection::vec(1usize..4, 1..3), 0..6),
        dtype in prop_oneof![Just(Dtype::F32), Just(Dtype::F16), Just(Dtype::U8)],
    ) {
        // Tensors named as the claimed architecture would need (same count),
        // but of small arbitrary shapes: the loader must not trust the metadata.
        let names: Vec<String> = (0..shapes.len()).map(|i| format!("{}.{}", i / 2 * 2, ["weight", "bias"][i % 2])).collect();
        let datas: Vec<Vec<u8>> =
            shapes.iter().map(|s| vec![0u8; s.iter().product::<usize>() * dtype.bitsize() / 8]).collect();
        let tensors: Vec<(String, TensorView<'_>)> = names
            .iter()
            .zip(&shapes)
            .zip(&datas)
            .map(|((n, s), d)| (n.clone(), TensorView::new(dtype, s.clone(), d).unwrap()))
            .collect();
        let meta = HashMap::from([("lazyavg.architecture".to_owned(), text)]);
        let bytes = safetensors::serialize(tensors, Some(meta)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        load_bytes(dir.path(), &bytes);
    }
}

// ---- regressions found by the properties above ------------------------------

#[test]
fn idx_dims_whose_product_overflows_are_a_clear_error() {
    let raw = idx_bytes(IMAGES_MAGIC, &[3, u32::MAX, 1_431_655_766], &[]);
    let err = idx::parse_images("img", raw).unwrap_err().to_string();
    assert!(err.contains("more bytes than can be addressed"), "{err}");
    let raw = idx_bytes(IMAGES_MAGIC, &[u32::MAX; 3], &[0; 8]);
    assert!(idx::parse_images("img", raw).is_err());
}

#[test]
fn model_file_with_an_overflowing_or_oversized_architecture_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for text in ["1-18446744073709551615", "100000-100000", "4294967296-4294967296-2"] {
        let data = [0u8; 8];
        let tensors = vec![
            ("0.weight".to_owned(), TensorView::new(Dtype::F32, vec![1, 1], &data[..4]).unwrap()),
            ("0.bias".to_owned(), TensorView::new(Dtype::F32, vec![1], &data[4..]).unwrap()),
        ];
        let meta = HashMap::from([("lazyavg.architecture".to_owned(), text.to_owned())]);
        let bytes = safetensors::serialize(tensors, Some(meta)).unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, bytes).unwrap();
        let err = model_file::load(&path).unwrap_err().to_string();
        // Too many parameters for any buffer, or tensors that do not match
        // the description (checked before anything is allocated for it).
        let refused = err.contains("parameters") || err.contains("tensor");
        assert!(refused, "{text}: {err}");
    }
}
