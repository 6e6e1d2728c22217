"""tinyq: registry-driven int8 quantisation of tiny ONNX models."""
