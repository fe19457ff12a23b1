"""Read ncnn models (`.param` text + `.bin` weights) and convert Real-ESRGAN's RRDBNet to a PyTorch state dict.

ncnn's formats (Tencent/ncnn: src/net.cpp, src/paramdict.cpp, src/modelbin.cpp, docs "param and model file
structure"):

`.param`: the magic line `7767517`, then `layer_count blob_count`, then one line per layer,
    type name bottom_count top_count bottom_blobs... top_blobs... key=value...
  keys are small ints; a value with '.' or 'e' is a float, else an int; a key <= -23300 is the array
  -(key) - 23300 written `count,v1,v2,...`.
`.bin`: the weights of the layers that have any, concatenated in layer order, no header. A Convolution
  (0=num_output 1=kernel_w 11=kernel_h 2=dilation 3=stride 4=pad 5=bias_term 6=weight_data_size
  9=activation_type 10=activation_params) stores
    weight_data_size values, "auto" storage: a 4-byte little-endian tag, then
        0x01306B47  fp16 values, their byte size padded to a multiple of 4
        0x000D4B38  int8 values (quantized models; not supported here)
        0x0002C056  fp32 values
        0          fp32 values
        other      a 256-entry fp32 table, then one uint8 index per value, padded to 4 bytes
    then, if bias_term, num_output raw fp32 values (no tag).
  Weights are [out, in, kh, kw] row-major, PyTorch's own layout.

`rrdbnet_from_ncnn(param, bin)` checks the graph against RRDBNet's dataflow layer by layer (every
convolution's input, each Concat's inputs, the 0.2-scaled residual Eltwise sums, the nearest x2 Interps,
LeakyReLU 0.2 fused into the convolutions) before it maps the convolutions in order onto the
`sr.realesrgan.RRDBNet` keys; a graph it does not recognise raises NcnnFormatError naming the layer.
"""
import dataclasses
import os
import struct
from typing import Dict, List, Tuple, Union

import numpy as np

from sr.realesrgan import LEAKY_SLOPE, RESIDUAL_SCALE, RRDBConfig, conv_names
from utils.errors import ThreeDSRError

PARAM_MAGIC = 7767517
TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38
TAG_FP32_SCALED = 0x0002C056
ACTIVATION_LEAKY_RELU = 2
INTERP_NEAREST = 1
ELTWISE_SUM = 1
BINARYOP_ADD = 0
Value = Union[int, float, List[Union[int, float]]]
# Values ncnn assumes for params a .param line leaves out (the layers' load_param defaults).
PARAM_DEFAULTS = {"Convolution": {4: 0, 5: 0}, "Eltwise": {0: 0}, "BinaryOp": {0: 0},
                  "Interp": {0: 0, 1: 1.0, 2: 1.0}}


class NcnnFormatError(ThreeDSRError):
    """An ncnn .param/.bin pair is malformed, or is not the network we convert."""


@dataclasses.dataclass
class NcnnLayer:
    """One `.param` line: layer type and name, bottom (input) and top (output) blob names, params by key."""
    type: str
    name: str
    inputs: List[str]
    outputs: List[str]
    params: Dict[int, Value] = dataclasses.field(default_factory=dict)

    def get(self, key: int, default=None):
        return self.params.get(key, default)


def _number(text: str, where: str):
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise NcnnFormatError(f"{where}: bad number '{text}'") from None


def parse_param(text: str, source: str = ".param") -> List[NcnnLayer]:
    """Parse an ncnn `.param` text into its layers, in file order."""
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0] != [str(PARAM_MAGIC)]:
        raise NcnnFormatError(f"{source}: not an ncnn text param file (first line is not {PARAM_MAGIC})")
    try:
        layer_count, _blob_count = (int(v) for v in lines[1])
    except (IndexError, ValueError):
        raise NcnnFormatError(f"{source}: second line must be `layer_count blob_count`") from None
    layers = []
    for lineno, parts in enumerate(lines[2:], start=3):
        where = f"{source} line {lineno}"
        try:
            ltype, name, n_in, n_out = parts[0], parts[1], int(parts[2]), int(parts[3])
        except (IndexError, ValueError):
            raise NcnnFormatError(f"{where}: expected `type name bottom_count top_count ...`") from None
        blobs = parts[4:4 + n_in + n_out]
        if len(blobs) != n_in + n_out:
            raise NcnnFormatError(f"{where}: layer {name} lists fewer than {n_in + n_out} blobs")
        params = {}
        for item in parts[4 + n_in + n_out:]:
            key, sep, value = item.partition("=")
            if not sep:
                raise NcnnFormatError(f"{where}: bad param '{item}' (expected key=value)")
            key = int(_number(key, where))
            if key <= -23300:
                values = value.split(",")
                count = _number(values[0], where)
                if not isinstance(count, int) or count != len(values) - 1:
                    raise NcnnFormatError(f"{where}: array param {key} announces {values[0]} values, has "
                                          f"{len(values) - 1}")
                params[-key - 23300] = [_number(v, where) for v in values[1:]]
            else:
                params[key] = _number(value, where)
        layers.append(NcnnLayer(ltype, name, blobs[:n_in], blobs[n_in:], params))
    if len(layers) != layer_count:
        raise NcnnFormatError(f"{source}: header announces {layer_count} layers, file has {len(layers)}")
    return layers


class _BinReader:
    def __init__(self, data: bytes, source: str):
        self.data, self.pos, self.source = data, 0, source

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise NcnnFormatError(f"{self.source} is truncated: {what} needs {n} bytes at offset {self.pos}, "
                                  f"{len(self.data) - self.pos} left")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def raw_fp32(self, count: int, what: str) -> np.ndarray:
        return np.frombuffer(self.take(4 * count, what), dtype="<f4").copy()

    def auto(self, count: int, what: str) -> np.ndarray:
        """ncnn's type-0 storage: a tag, then fp16 / fp32 / quantized values (int8 is refused)."""
        head = self.take(4, what + " storage tag")
        (tag,) = struct.unpack("<I", head)
        if tag == TAG_FP16:
            values = np.frombuffer(self.take(_align4(2 * count), what), dtype="<f2")[:count]
            return values.astype(np.float16)
        if tag == TAG_INT8:
            raise NcnnFormatError(f"{self.source}: {what} is int8-quantized; only fp16/fp32 models are supported")
        if tag == TAG_FP32_SCALED or sum(head) == 0:
            return self.raw_fp32(count, what)
        table = np.frombuffer(self.take(256 * 4, what + " table"), dtype="<f4")
        index = np.frombuffer(self.take(_align4(count), what), dtype=np.uint8)[:count]
        return table[index].astype(np.float32)


def _align4(n: int) -> int:
    return (n + 3) // 4 * 4


def read_conv_weights(layers: List[NcnnLayer], data: bytes, source: str = ".bin") -> Dict[str, Dict[str, np.ndarray]]:
    """{layer name: {"weight": [out, in, kh, kw], "bias": [out]}} for every Convolution, read from `data` in
    layer order. Weights keep their storage precision (fp16 stays float16), biases are float32. Layers with
    weights other than Convolution raise NcnnFormatError, as do leftover bytes."""
    weightless = {"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "ReLU", "Sigmoid", "Crop",
                  "Permute", "Reshape", "Flatten", "Pooling", "PixelShuffle", "Noop"}
    reader = _BinReader(data, source)
    out = {}
    for layer in layers:
        if layer.type == "Convolution":
            n_out, size = int(layer.get(0, 0)), int(layer.get(6, 0))
            kw = int(layer.get(1, 0))
            kh = int(layer.get(11, kw))
            if n_out <= 0 or kw <= 0 or size % (n_out * kw * kh):
                raise NcnnFormatError(f"{source}: Convolution {layer.name} has weight_data_size {size}, not a "
                                      f"multiple of num_output x kernel ({n_out} x {kh} x {kw})")
            if int(layer.get(8, 0)):
                raise NcnnFormatError(f"{source}: Convolution {layer.name} is int8-quantized; not supported")
            weight = reader.auto(size, f"{layer.name} weights").reshape(n_out, size // (n_out * kw * kh), kh, kw)
            bias = reader.raw_fp32(n_out, f"{layer.name} bias") if int(layer.get(5, 0)) else None
            out[layer.name] = {"weight": weight, "bias": bias}
        elif layer.type not in weightless:
            raise NcnnFormatError(f"{source}: layer {layer.name} of type {layer.type} is not supported by this reader")
    if reader.pos != len(data):
        raise NcnnFormatError(f"{source}: {len(data) - reader.pos} bytes left after the last layer's weights "
                              "(the .bin does not belong to this .param)")
    return out


# ---- RRDBNet graph ------------------------------------------------------------------------------------
@dataclasses.dataclass
class GraphOp:
    """One expected ncnn layer of RRDBNet (Split layers aside): its type, the blobs it reads and writes, the
    params that must match and, for convolutions, the RRDBNet module it is."""
    type: str
    inputs: List[str]
    output: str
    params: Dict[int, Value]
    conv: str = ""


def rrdbnet_graph(config: RRDBConfig) -> List[GraphOp]:
    """RRDBNet's layers as ncnn lays out an ONNX export of it (onnx2ncnn order; Split layers left out).

    Blob names are symbolic ("x", "conv_first", "body.0.rdb1.cat2", ...). Only scale 4 (no pixel-unshuffle)
    has a plain ncnn graph."""
    if config.scale != 4:
        raise NcnnFormatError(f"only x4 RRDBNet models are converted from ncnn (got scale {config.scale})")
    channels = {name: (out_ch, in_ch) for name, out_ch, in_ch in conv_names(config)}
    ops = [GraphOp("Input", [], "x", {})]

    def conv(name, src, leaky):
        out_ch, in_ch = channels[name]
        params = {0: out_ch, 1: 3, 4: 1, 5: 1, 6: out_ch * in_ch * 9}
        if leaky:
            params.update({9: ACTIVATION_LEAKY_RELU, 10: [LEAKY_SLOPE]})
        ops.append(GraphOp("Convolution", [src], name, params, conv=name))
        return name

    def residual(branch, skip, out):  # skip + 0.2 * branch
        ops.append(GraphOp("Eltwise", [branch, skip], out, {0: ELTWISE_SUM, 1: [RESIDUAL_SCALE, 1.0]}))
        return out

    first = conv("conv_first", "x", False)
    feat = first
    for b in range(config.num_block):
        block_in = feat
        for r in (1, 2, 3):
            prefix = f"body.{b}.rdb{r}"
            dense = [feat]
            for k in range(1, 6):
                src = dense[0] if k == 1 else f"{prefix}.cat{k}"
                if k > 1:
                    ops.append(GraphOp("Concat", list(dense), src, {}))
                dense.append(conv(f"{prefix}.conv{k}", src, k < 5))
            feat = residual(dense[-1], dense[0], f"{prefix}.out")
        feat = residual(feat, block_in, f"body.{b}.out")
    body = conv("conv_body", feat, False)
    ops.append(GraphOp("BinaryOp", [first, body], "trunk", {0: BINARYOP_ADD}))
    feat = "trunk"
    for name in ("conv_up1", "conv_up2"):
        ops.append(GraphOp("Interp", [feat], f"{name}.up", {0: INTERP_NEAREST, 1: 2.0, 2: 2.0}))
        feat = conv(name, f"{name}.up", True)
    feat = conv("conv_hr", feat, True)
    conv("conv_last", feat, False)
    return ops


def rrdbnet_config_from_layers(layers: List[NcnnLayer], source: str = ".param") -> RRDBConfig:
    """RRDBNet hyper-parameters read off the convolutions (num_feat, num_grow_ch, num_block, channels)."""
    convs = [ly for ly in layers if ly.type == "Convolution"]
    if len(convs) < 21 or (len(convs) - 6) % 15:
        raise NcnnFormatError(f"{source}: {len(convs)} convolutions is not 6 + 15 x num_block (RRDBNet)")
    first, last = convs[0], convs[-1]
    nf, gc = int(first.get(0, 0)), int(convs[1].get(0, 0))
    if nf <= 0 or gc <= 0 or int(first.get(6, 0)) % (nf * 9):
        raise NcnnFormatError(f"{source}: first convolutions ({first.name}, {convs[1].name}) are not RRDBNet's")
    in_ch = int(first.get(6, 0)) // (nf * 9)
    if in_ch != 3:
        raise NcnnFormatError(f"{source}: {first.name} takes {in_ch} channels; only RGB x4 models (3) are converted")
    return RRDBConfig(num_in_ch=3, num_out_ch=int(last.get(0, 0)), scale=4, num_feat=nf,
                      num_block=(len(convs) - 6) // 15, num_grow_ch=gc)


def _same(a, b) -> bool:
    if isinstance(a, list) or isinstance(b, list):
        return isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b)))


def match_rrdbnet_graph(layers: List[NcnnLayer], config: RRDBConfig, source: str = ".param") -> Dict[str, str]:
    """Check `layers` are RRDBNet(config)'s dataflow; returns {RRDBNet conv name: ncnn layer name}.

    Split layers are followed (each output is its input); every other layer must be the next op of
    `rrdbnet_graph(config)` with the same inputs (after Splits; the two operands of a sum may come in either
    order when the coefficients follow them) and the same params. Defaults: stride 1, dilation 1."""
    expected = rrdbnet_graph(config)
    alias: Dict[str, str] = {}  # ncnn blob -> symbolic blob
    conv_layer: Dict[str, str] = {}
    i = 0
    for layer in layers:
        where = f"{source}: layer {layer.name} ({layer.type})"
        if layer.type == "Split":
            if len(layer.inputs) != 1 or layer.inputs[0] not in alias:
                raise NcnnFormatError(f"{where} splits an unknown blob")
            for out in layer.outputs:
                alias[out] = alias[layer.inputs[0]]
            continue
        if i >= len(expected):
            raise NcnnFormatError(f"{where} comes after RRDBNet's last layer")
        op = expected[i]
        i += 1
        if layer.type != op.type or len(layer.outputs) != 1:
            raise NcnnFormatError(f"{where}: expected {op.type} for {op.output} (is this RRDBNet x4?)")
        got = []
        for blob in layer.inputs:
            if blob not in alias:
                raise NcnnFormatError(f"{where} reads blob {blob}, which no earlier layer writes")
            got.append(alias[blob])
        params = dict(layer.params)
        if op.type == "Eltwise" and got == op.inputs[::-1] and isinstance(params.get(1), list):
            got, params[1] = got[::-1], params[1][::-1]  # same sum, operands listed the other way round
        if op.type == "BinaryOp" and got == op.inputs[::-1]:
            got = got[::-1]
        if got != op.inputs:
            raise NcnnFormatError(f"{where} reads {got}, expected {op.inputs} for {op.output}")
        defaults = PARAM_DEFAULTS.get(op.type, {})
        for key, want in op.params.items():
            value = params.get(key, defaults.get(key))
            if value is None or not _same(value, want):
                raise NcnnFormatError(f"{where}: param {key} is {'absent' if value is None else value}, expected "
                                      f"{want} for {op.output}")
        if op.type == "Convolution":
            pad_w, pad_h = params.get(4), params.get(14, params.get(4))
            geometry = {"kernel_h": params.get(11, params.get(1)), "dilation": params.get(2, 1),
                        "dilation_h": params.get(12, params.get(2, 1)), "stride": params.get(3, 1),
                        "stride_h": params.get(13, params.get(3, 1)), "pad_h": pad_h,
                        "pad_right": params.get(15, pad_w), "pad_bottom": params.get(16, pad_h),
                        "int8_scale_term": params.get(8, 0)}
            want_geometry = {"kernel_h": 3, "dilation": 1, "dilation_h": 1, "stride": 1, "stride_h": 1, "pad_h": 1,
                             "pad_right": 1, "pad_bottom": 1, "int8_scale_term": 0}
            if geometry != want_geometry:
                bad = {k: v for k, v in geometry.items() if v != want_geometry[k]}
                raise NcnnFormatError(f"{where}: {bad} (RRDBNet's convolutions are float 3x3, stride 1, dilation 1, "
                                      "pad 1)")
            if int(params.get(9, 0)) not in (0, ACTIVATION_LEAKY_RELU) or (9 in params) != (9 in op.params):
                raise NcnnFormatError(f"{where}: activation {params.get(9, 0)} where RRDBNet has "
                                      f"{'LeakyReLU' if 9 in op.params else 'none'}")
            conv_layer[op.conv] = layer.name
        if op.type == "Interp" and (params.get(3, 0) or params.get(4, 0)):
            raise NcnnFormatError(f"{where}: fixed output size; RRDBNet upsamples by 2")
        if op.type == "BinaryOp" and params.get(1, 0):
            raise NcnnFormatError(f"{where}: a scalar operation; RRDBNet adds two blobs")
        alias[layer.outputs[0]] = op.output
    if i != len(expected):
        raise NcnnFormatError(f"{source}: ends at layer {i} of RRDBNet's {len(expected)} (truncated?)")
    return conv_layer


def rrdbnet_from_ncnn(param_path: str, bin_path: str) -> Tuple[Dict[str, np.ndarray], RRDBConfig]:
    """(state_dict as numpy arrays with sr.realesrgan.RRDBNet's keys, config) from an ncnn RRDBNet x4 model.

    Weights keep the .bin's precision (float16 for fp16 models), biases float32. Every shape is checked
    against RRDBNet(config)."""
    from sr.realesrgan import expected_shapes

    with open(param_path, encoding="utf-8") as f:
        layers = parse_param(f.read(), os.path.basename(param_path))
    config = rrdbnet_config_from_layers(layers, os.path.basename(param_path))
    conv_layer = match_rrdbnet_graph(layers, config, os.path.basename(param_path))
    with open(bin_path, "rb") as f:
        blobs = read_conv_weights(layers, f.read(), os.path.basename(bin_path))
    state = {}
    for name, layer_name in conv_layer.items():
        w, b = blobs[layer_name]["weight"], blobs[layer_name]["bias"]
        if b is None:
            raise NcnnFormatError(f"{os.path.basename(param_path)}: {layer_name} has no bias; RRDBNet's do")
        state[f"{name}.weight"], state[f"{name}.bias"] = w, b
    want = expected_shapes(config)
    bad = [k for k in want if tuple(state[k].shape) != want[k]]
    if bad or set(state) != set(want):
        raise NcnnFormatError(f"{os.path.basename(bin_path)}: converted shapes do not match RRDBNet ({bad[:2]})")
    return state, config
