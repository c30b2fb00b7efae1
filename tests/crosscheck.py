#!/usr/bin/env python3
"""Independent check of a lazyavg model: test-set accuracy computed with NumPy.

Usage: python3 tests/crosscheck.py MODEL.safetensors MNIST_DIR

Prints one JSON line, e.g. {"accuracy": 0.9692, "samples": 10000, "architecture": "784-200-200-10"}.

A file whose metadata describes its layers (`lazyavg.model`: convolutions,
pooling, flatten, dense, ReLU) is run layer by layer as PyTorch defines
them (Conv2d, MaxPool2d with floor rounding, Flatten); a file without it as
nn.Sequential of Linear and ReLU.

Nothing here shares code with lazyavg: the safetensors and IDX formats are
parsed from their specifications (and the file is read a second time with the
`safetensors` package, the parser PyTorch uses), and the forward pass is
written out in float64. If lazyavg's accuracy agrees with this one, the saved file means what
PyTorch would take it to mean (nn.Sequential of Linear and ReLU, weight
[out, in]) and lazyavg's evaluation is right.
"""

import gzip
import json
import os
import re
import struct
import sys

import numpy as np

DTYPES = {"F32": "<f4", "F64": "<f8", "F16": "<f2"}


def fail(message):
    print(f"crosscheck.py: {message}", file=sys.stderr)
    sys.exit(1)


def read_safetensors(path):
    """Returns ({name: float64 array}, metadata) from a safetensors file.

    Layout: u64 little-endian header length N, N bytes of JSON mapping each
    tensor name to dtype, shape and [begin, end) byte offsets into the data
    that follows (plus an optional "__metadata__" of strings), then the data.
    """
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        fail(f"{path}: {len(blob)} bytes is too short for a safetensors file")
    (header_len,) = struct.unpack("<Q", blob[:8])
    if 8 + header_len > len(blob):
        fail(f"{path}: header of {header_len} bytes runs past the end of the file")
    header = json.loads(blob[8 : 8 + header_len].decode("utf-8"))
    data = blob[8 + header_len :]
    metadata = header.pop("__metadata__", {}) or {}
    tensors = {}
    for name, info in header.items():
        dtype = DTYPES.get(info["dtype"])
        if dtype is None:
            fail(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        if end - begin != count * np.dtype(dtype).itemsize or end > len(data):
            fail(f"{path}: tensor {name} of shape {list(shape)} does not fit bytes {begin}..{end}")
        array = np.frombuffer(data, dtype=dtype, count=count, offset=begin)
        tensors[name] = array.reshape(shape).astype(np.float64)
    return tensors, metadata


def layers(tensors):
    """The (weight, bias) pairs of nn.Sequential(Linear, ReLU, ..., Linear), in module order."""
    indices = sorted(int(m.group(1)) for m in (re.fullmatch(r"(\d+)\.weight", n) for n in tensors) if m)
    if not indices:
        fail("the model holds no N.weight tensors")
    pairs = []
    for i in indices:
        weight, bias = tensors[f"{i}.weight"], tensors.get(f"{i}.bias")
        if bias is None or weight.ndim != 2 or bias.shape != (weight.shape[0],):
            fail(f"layer {i}: weight {weight.shape} and bias {None if bias is None else bias.shape} do not match")
        if pairs and pairs[-1][0].shape[0] != weight.shape[1]:
            fail(f"layer {i}: takes {weight.shape[1]} inputs but the layer before gives {pairs[-1][0].shape[0]}")
        pairs.append((weight, bias))
    return pairs


def read_idx(directory, name):
    """The u8 array of an IDX file (raw or gzip, told apart by content)."""
    for candidate in (name, name + ".gz"):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            break
    else:
        fail(f"{os.path.join(directory, name)}: not found (nor .gz)")
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    zero, type_code, rank = struct.unpack(">HBB", raw[:4])
    if zero != 0 or type_code != 0x08:
        fail(f"{path}: not an IDX file of u8")
    dims = struct.unpack(f">{rank}I", raw[4 : 4 + 4 * rank])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank)
    if body.size != int(np.prod(dims)):
        fail(f"{path}: {body.size} data bytes, header declares {dims}")
    return body.reshape(dims)


def accuracy(pairs, images, labels):
    """Share of images whose largest logit is the label (first on ties, like argmax)."""
    a = images.reshape(len(images), -1).astype(np.float64) / 255.0
    for i, (weight, bias) in enumerate(pairs):
        a = a @ weight.T + bias
        if i + 1 < len(pairs):
            a = np.maximum(a, 0.0)
    return float(np.mean(np.argmax(a, axis=1) == labels))


BATCH = 200


def conv2d(x, weight, bias, stride, padding):
    """PyTorch's Conv2d on NCHW images: cross-correlation, zero padding."""
    k = weight.shape[2]
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    return np.einsum("nchwij,ocij->nohw", windows, weight, optimize=True) + bias[None, :, None, None]


def max_pool(x, k, stride):
    """PyTorch's MaxPool2d without padding, floor rounding."""
    windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    return windows.max(axis=(4, 5))


def options(words, defaults):
    """`stride 2 pad 1` as a dict over `defaults`."""
    values = dict(defaults)
    for name, value in zip(words[::2], words[1::2]):
        values["pad" if name == "padding" else name] = int(value)
    return values


def forward_described(model, tensors, images):
    """The logits of `images` through the layers `model` describes, layer i
    owning tensors `i.weight` and `i.bias` as in nn.Sequential."""
    shape = model["input"]
    a = images.reshape(len(images), shape["channels"], shape["height"], shape["width"]) / 255.0
    for i, text in enumerate(model["layers"]):
        kind, *words = text.split()
        if kind == "conv":
            stride, pad = (options(words[2:], {"stride": 1, "pad": 0})[key] for key in ("stride", "pad"))
            a = conv2d(a, tensors[f"{i}.weight"], tensors[f"{i}.bias"], stride, pad)
        elif kind == "maxpool":
            k = int(words[0])
            a = max_pool(a, k, options(words[1:], {"stride": k})["stride"])
        elif kind == "relu":
            a = np.maximum(a, 0.0)
        elif kind == "flatten":
            a = a.reshape(len(a), -1)
        elif kind == "dense":
            a = a.reshape(len(a), -1) @ tensors[f"{i}.weight"].T + tensors[f"{i}.bias"]
        else:
            fail(f"layer {i}: unknown kind {text!r}")
    return a


def described_accuracy(model, tensors, images, labels):
    correct = 0
    for start in range(0, len(images), BATCH):
        logits = forward_described(model, tensors, images[start : start + BATCH])
        correct += int(np.sum(np.argmax(logits, axis=1) == labels[start : start + BATCH]))
    return correct / len(labels)


def check_with_reference_parser(path, tensors):
    """Loads the file again with the `safetensors` package, the parser behind
    PyTorch's `safetensors.torch.load_file`, and checks it sees the same
    tensors: then `nn.Sequential(...).load_state_dict(...)` gets exactly these."""
    from safetensors.numpy import load_file

    reference = load_file(path)
    if sorted(reference) != sorted(tensors):
        fail(f"the safetensors package reads tensors {sorted(reference)}, not {sorted(tensors)}")
    for name, array in reference.items():
        if array.dtype != np.float32 or not np.array_equal(array.astype(np.float64), tensors[name]):
            fail(f"the safetensors package reads tensor {name} differently")


def main(argv):
    if len(argv) != 3:
        fail("usage: python3 tests/crosscheck.py MODEL.safetensors MNIST_DIR")
    tensors, metadata = read_safetensors(argv[1])
    check_with_reference_parser(argv[1], tensors)
    images = read_idx(argv[2], "t10k-images-idx3-ubyte")
    labels = read_idx(argv[2], "t10k-labels-idx1-ubyte")
    if len(images) != len(labels):
        fail(f"{len(images)} test images but {len(labels)} labels")
    if "lazyavg.model" in metadata:
        model = json.loads(metadata["lazyavg.model"])
        accuracy_ = described_accuracy(model, tensors, images, labels)
        result = {"accuracy": accuracy_, "samples": len(labels), "architecture": ", ".join(model["layers"])}
        print(json.dumps(result))
        return
    pairs = layers(tensors)
    architecture = "-".join(map(str, [pairs[0][0].shape[1]] + [w.shape[0] for w, _ in pairs]))
    declared = metadata.get("lazyavg.architecture", architecture)
    if declared != architecture:
        fail(f"metadata declares architecture {declared} but the tensors make {architecture}")
    if images[0].size != pairs[0][0].shape[1]:
        fail(f"images have {images[0].size} pixels but the model takes {pairs[0][0].shape[1]} inputs")
    result = {"accuracy": accuracy(pairs, images, labels), "samples": len(labels), "architecture": architecture}
    print(json.dumps(result))


if __name__ == "__main__":
    try:
        main(sys.argv)
    except (OSError, ValueError) as e:
        fail(str(e))
