"""Serve stage: inference engines (PyTorch from safetensors, ONNX Runtime), export with a parity check, and
streaming batch prediction."""
