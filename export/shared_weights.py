"""One copy of the weights for the ``step`` and ``chunk`` graphs of a variant: ONNX external data both point to.

The two graphs are traced separately, so the same weight may carry a different name in each and some constants
exist in one graph only. :func:`share_weights` writes every initializer of at least :data:`MIN_BYTES` into one
file, once per distinct content (dtype, shape and bytes), and points each graph's initializers at their offset:
the weights are stored once however many graphs read them. ONNX Runtime and TensorRT's ONNX parser read external
data relative to the graph's own directory, so the graphs and the data file stay side by side.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

MIN_BYTES = 1024        # smaller tensors (shapes, scalars, biases) stay inside the graph
ALIGN = 64              # offsets aligned for memory mapping and vector loads


def share_weights(paths: Sequence[Path], data_name: str) -> Path:
    """Move the large initializers of the ONNX graphs at ``paths`` (one directory) into ``<dir>/<data_name>``,
    each distinct tensor once, and rewrite the graphs to read them from there. Returns the data file's path."""
    from .onnx_library import require_onnx_library

    onnx = require_onnx_library("onnx")
    paths = [Path(p) for p in paths]
    folder = paths[0].parent
    if any(p.parent != folder for p in paths):
        raise ValueError(f"graphs that share weights must sit in one directory, got {[str(p) for p in paths]}")
    data_path = folder / data_name
    offsets: dict[str, tuple[int, int]] = {}
    with open(data_path, "wb") as data:
        for path in paths:                 # one graph in memory at a time
            model = onnx.load(str(path))
            for tensor in model.graph.initializer:
                if not tensor.HasField("raw_data"):
                    tensor.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor), tensor.name))
                raw = tensor.raw_data
                if len(raw) < MIN_BYTES:
                    continue
                key = hashlib.sha256(f"{tensor.data_type}:{list(tensor.dims)}:".encode() + raw).hexdigest()
                if key not in offsets:
                    data.write(b"\0" * (-data.tell() % ALIGN))
                    offsets[key] = (data.tell(), len(raw))
                    data.write(raw)
                offset, length = offsets[key]
                tensor.ClearField("raw_data")
                tensor.data_location = onnx.TensorProto.EXTERNAL
                del tensor.external_data[:]
                for k, v in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = k, v
            onnx.save(model, str(path))
    return data_path
