"""Export pruned models: ONNX (with a parity gate against PyTorch) and TensorRT engines."""
