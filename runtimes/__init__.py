"""Runtimes: one Session API over torch, onnxruntime, executorch, coreml and tensorrt."""
