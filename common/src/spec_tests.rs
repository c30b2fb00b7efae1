//! Tests of model descriptions: parsing, shapes, validation, layout.

use super::*;

const MNIST: InputShape = InputShape { channels: 1, height: 28, width: 28 };

#[test]
fn layers_parse_in_every_spelling_and_print_back() {
    for text in ["dense 400", "dense(400)", "dense:400", " Dense 400 ", "linear 400"] {
        assert_eq!(LayerSpec::parse(text), Ok(LayerSpec::Dense { units: 400 }), "{text}");
    }
    assert_eq!(LayerSpec::parse("relu"), Ok(LayerSpec::Relu));
    assert_eq!(LayerSpec::Dense { units: 7 }.to_string(), "dense 7");
    assert!(LayerSpec::parse("dense").unwrap_err().contains("needs a width"));
    assert!(LayerSpec::parse("softmax").unwrap_err().starts_with("unknown layer kind \"softmax\""));
    for (text, layer) in [
        ("conv 32 5x5 pad 2", LayerSpec::Conv2d { channels: 32, kernel: 5, stride: 1, padding: 2 }),
        ("conv 8 3x3 stride 2", LayerSpec::Conv2d { channels: 8, kernel: 3, stride: 2, padding: 0 }),
        ("maxpool 2", LayerSpec::MaxPool { kernel: 2, stride: 2 }),
        ("maxpool 3 stride 2", LayerSpec::MaxPool { kernel: 3, stride: 2 }),
        ("flatten", LayerSpec::Flatten),
    ] {
        assert_eq!(LayerSpec::parse(text), Ok(layer), "{text}");
        assert_eq!(layer.to_string(), text);
    }
    assert_eq!(LayerSpec::parse("conv2d 4 3 padding 1 stride 1").unwrap().to_string(), "conv 4 3x3 pad 1");
    assert!(LayerSpec::parse("conv 4 3x5").unwrap_err().contains("not square"));
    assert!(LayerSpec::parse("conv 4 3 dilation 2").unwrap_err().contains("unknown option \"dilation\""));
}

#[test]
fn a_custom_stack_has_a_layout_of_named_tensors_in_sequential_order() {
    let layers = ModelSpec::parse_layers("dense 400, relu, dense 200, relu, dense 100, relu, dense 10").unwrap();
    let spec = ModelSpec { input: MNIST, layers, classes: 10 };
    assert_eq!(spec.to_string(), "784-400-200-100-10");
    let layout = spec.layout().unwrap();
    let names: Vec<&str> = layout.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias", "6.weight", "6.bias"]);
    assert_eq!(layout.tensor("4.weight").unwrap().shape, [100, 200]);
    assert_eq!(layout.len, 784 * 400 + 400 + 400 * 200 + 200 + 200 * 100 + 100 + 100 * 10 + 10);
    assert_eq!(layout.layers.len(), 4);
    let net = spec.build().unwrap();
    assert_eq!(net.permutation_spec().sizes(), [400, 200, 100]);
    // Derived from the layers, it is the MLP's spec derived from the dense layers.
    assert_eq!(net.permutation_spec(), crate::matching::PermutationSpec::mlp(net.layout()));
}

#[test]
fn invalid_stacks_name_the_layer_and_the_numbers() {
    let err =
        |layers: Vec<LayerSpec>, classes| ModelSpec { input: MNIST, layers, classes }.check().unwrap_err().to_string();
    assert_eq!(err(vec![], 10), "invalid model, model: has no layers; give at least one, like dense 10");
    assert_eq!(
        err(vec![LayerSpec::Dense { units: 0 }, LayerSpec::Dense { units: 10 }], 10),
        "invalid model, layer 1 (dense 0): has width 0; give a positive width"
    );
    assert_eq!(
        err(vec![LayerSpec::Dense { units: 5 }], 10),
        "invalid model, layer 1 (dense 5): gives 5 outputs but the model has 10 classes"
    );
    let huge =
        vec![LayerSpec::Dense { units: 1 << 31 }, LayerSpec::Dense { units: 1 << 31 }, LayerSpec::Dense { units: 2 }];
    assert!(err(huge, 2).contains("more than"));
    assert!(ModelSpec::from_widths(&[784]).is_err());
}

#[test]
fn invalid_convolutional_stacks_name_the_layer_and_the_numbers() {
    let err = |layers: &str| {
        let layers = ModelSpec::parse_layers(layers).unwrap();
        ModelSpec { input: MNIST, layers, classes: 10 }.build().unwrap_err().to_string()
    };
    assert_eq!(
        err("conv 4 31x31 pad 1, flatten, dense 10"),
        "invalid model, layer 1 (conv 4 31x31 pad 1): a 31×31 kernel does not fit a 28×28 input padded by 1 (30×30)"
    );
    assert_eq!(
        err("conv 4 5x5, relu, dense 10"),
        "invalid model, layer 3 (dense 10): takes a flat input but gets 4x24x24 feature maps; put a flatten before it"
    );
    assert_eq!(
        err("conv 4 5x5 stride 5, maxpool 2, maxpool 3, flatten, dense 10"),
        "invalid model, layer 3 (maxpool 3): a 3×3 window does not fit a 2×2 input"
    );
    assert_eq!(
        err("flatten, conv 2 3x3, dense 10"),
        "invalid model, layer 2 (conv 2 3x3): takes images but gets a flat input of 784 values"
    );
    assert!(
        err("flatten, relu, dense 10")
            .starts_with("invalid model, layer 2 (relu): must follow a dense, conv or maxpool layer")
    );
}

#[test]
fn a_flat_input_of_as_many_values_is_the_same_network() {
    let image = ModelSpec::mlp(MNIST, &[20], 10);
    let flat = ModelSpec::from_widths(&[784, 20, 10]).unwrap();
    assert!(image.same_network(&flat) && flat.same_network(&image));
    assert!(!image.same_network(&ModelSpec::from_widths(&[784, 21, 10]).unwrap()));
    let other = InputShape { channels: 4, height: 14, width: 14 };
    assert!(!image.same_network(&ModelSpec::mlp(other, &[20], 10)), "two image shapes differ");
}

#[test]
fn only_dense_relu_stacks_print_as_widths() {
    let spec = ModelSpec { input: MNIST, layers: vec![LayerSpec::Dense { units: 10 }, LayerSpec::Relu], classes: 10 };
    assert_eq!(spec.mlp_widths(), None);
    assert_eq!(spec.to_string(), "1x28x28 → dense 10, relu → 10 classes");
}

#[test]
fn a_stack_takes_its_class_count_from_its_last_layer() {
    let colour = InputShape { channels: 3, height: 8, width: 8 };
    let spec = ModelSpec::from_layers(colour, ModelSpec::parse_layers("conv 4 3x3, relu, flatten, dense 5").unwrap());
    assert_eq!(spec.unwrap().classes, 5);
    let err = ModelSpec::from_layers(colour, vec![]).unwrap_err().to_string();
    assert!(err.contains("has no layers"), "{err}");
}

#[test]
fn data_of_another_shape_or_with_more_classes_is_refused_naming_both() {
    let spec = ModelSpec::mlp(MNIST, &[20], 10);
    spec.check_data(MNIST, 10).unwrap();
    spec.check_data(MNIST, 7).unwrap();
    let colour = InputShape { channels: 3, height: 32, width: 32 };
    assert_eq!(
        spec.check_data(colour, 10).unwrap_err().to_string(),
        "model expects 1x28x28 inputs, the data has 3x32x32 images"
    );
    assert_eq!(
        spec.check_data(MNIST, 47).unwrap_err().to_string(),
        "model has 10 outputs, the data's labels go up to 46"
    );
    let flat = ModelSpec::from_widths(&[784, 20, 10]).unwrap();
    flat.check_data(MNIST, 10).expect("a file of widths takes any image of as many values");
    let err = flat.check_data(InputShape::flat(783), 10).unwrap_err().to_string();
    assert_eq!(err, "model expects 1x1x784 inputs, the data has 1x1x783 images");
}
