"""Writes the seeds of the weights_prefix target from the golden cases: the parameters renamed
under `layers.0.attn.`, as in a larger model's state_dict. tiny keeps its case tensors (`input`,
`output`) unprefixed beside them, which the loader must ignore; prenorm keeps only the parameters.

Usage (from the repository root): python3 fuzz/seeds/make_prefixed.py
"""

import json
import struct

PREFIX = "layers.0.attn."
CASE = {"input", "mask", "output"}


def read(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    data = raw[8 + n :]
    return {name: (info, data[info["data_offsets"][0] : info["data_offsets"][1]]) for name, info in header.items()}


def write(path, tensors):
    header, data = {}, b""
    for name, (info, payload) in tensors:
        header[name] = {"dtype": info["dtype"], "shape": info["shape"], "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


for case, keep_case_tensors in [("tiny", True), ("prenorm", False)]:
    tensors = read(f"tests/golden/{case}.safetensors")
    out = []
    for name, value in tensors.items():
        if name in CASE:
            if keep_case_tensors:
                out.append((name, value))
        else:
            out.append((PREFIX + name, value))
    write(f"fuzz/seeds/weights_prefix/{case}_prefixed.safetensors", out)
