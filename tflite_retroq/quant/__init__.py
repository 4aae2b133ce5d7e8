"""The arithmetic of quantization grids, numpy only: uniform (as TFLite rounds) and non-uniform (IQR).

Imports only errors; the flatbuffer passes (tflite/) and the methods (methods/) build on it.
"""
