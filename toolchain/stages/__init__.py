"""The deploy pipeline, one stage per module, each callable from Python; data flows one way:

prepare -> prune -> export (ONNX, parity-gated) -> precision (INT8, gated per class) -> engines (TensorRT)
-> bundle (for the device) -> bench -> report; deploy.py runs them all, reusing stages whose inputs did
not change; remote.py benchmarks the bundle on a device over SSH.
"""
