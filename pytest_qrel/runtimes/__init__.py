"""The deployed side of the gate: runtimes as quantization methods, and a user's own artifact file.

The simulation (:mod:`pytest_qrel.quantize`) says what a recipe does in principle; a runtime unit
says what the artifact a team deploys does. Each runtime is a
:data:`~pytest_qrel.quantize.QUANTIZERS` entry (registered in :mod:`pytest_qrel.quantize.methods`)
that builds an int8 artifact from the suite's FP32 model (``onnxruntime``, ``openvino``,
``torchao``) or loads one the user hands over (``artifact``), and returns a module that carries
its identity (:mod:`.identity`) and census (:mod:`.census`). The engine audits such modules
(:mod:`.audit`): census against the declared bits, parity to the simulation of the same recipe
(:mod:`.parity`), latency / memory / size against FP32 (:mod:`.latency`). Checks on those numbers
are :mod:`.checks`; the report's section is :mod:`pytest_qrel.report.runtime_view`.

Importing this package imports no runtime and no torch: the options (:mod:`pytest_qrel.quantize.runtime_options`) are
validated at collection, where a runtime whose package is missing is one line naming the extra
to install.
"""
