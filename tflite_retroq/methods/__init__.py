"""Quantization methods that work on the float model: Algorithm 2 sensitivity and the hybrid plan,
learned rounding. They may import model/, dataset, quant/ and tflite/ passes; never converter or above.
"""
