"""What a model costs on DSP/NPU-style targets, measured by real tools instead of guessed.

On CPU kernels per-tensor and per-channel int8 run at the same speed, so the value of
per-tensor, low-bit and non-uniform weights shows only on other targets. Three stand in:

* Arm Ethos-U NPUs through Vela (``ethos-u-vela``), Arm's offline compiler: estimated
  inference time, NPU vs CPU operator placement, SRAM and flash use, and weight bytes
  after its weight encoder (which rewards few distinct values).
* The TFLite Micro runtime (``tflite-micro``): the tensor arena a model needs and its
  outputs; what microcontrollers and DSPs with TFLM ports run.
* LiteRT's three CPU kernel paths, single-threaded latency medians.

One module per target (vela, tflm, litert); `estimate` dispatches a named target.
Vela and TFLM are optional (``pip install -e ".[targets]"`` in the clone); a missing tool or a
model it rejects raises TargetError.
"""
