"""Which files an ONNX model consists of: the ``.onnx`` and the external data files its tensors
name (``torch.onnx.export(dynamo=True)`` writes ``model.onnx.data`` beside ``model.onnx``; models
over 2 GB must keep their weights outside). A leaf: :mod:`.identity` hashes these files (the cache key),
:mod:`.artifact` hands them to :mod:`.onnx`, which imports :mod:`.identity`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def external_data_files(path: Path) -> list[Path]:
    """The external data files the tensors of the ONNX model at ``path`` name (``[]``: its weights
    are inside it, or it is not a model ONNX can parse: loading it says so)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - a truncated or foreign file: the session's load reports it, with the file
        return []
    locations: list[str] = []

    def visit(graph: Any) -> None:
        tensors = list(graph.initializer) + list(graph.sparse_initializer)
        for node in graph.node:
            for attr in node.attribute:
                tensors += ([attr.t] if attr.HasField("t") else []) + list(attr.tensors)
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    visit(sub)
        for tensor in tensors:
            if isinstance(tensor, onnx.TensorProto) and uses_external_data(tensor):
                location = next((e.value for e in tensor.external_data if e.key == "location"), None)
                if location and location not in locations:
                    locations.append(location)

    visit(model.graph)
    return [(path.parent / location).resolve() for location in locations]
