from setuptools import find_packages, setup

setup(
    name="tflite_retroq",
    version="0.1.0",
    description="Data-free int8 TensorFlow Lite quantization with retro-synthesis data",
    packages=find_packages(include=["tflite_retroq", "tflite_retroq.*"]),
    python_requires=">=3.11",
    install_requires=[
        "tensorflow==2.21.*",
        "ai-edge-litert==2.3.0",
        "numpy",
        "absl-py",
        "matplotlib",
    ],
    extras_require={
        # The digits demo and the README's Python example train on scikit-learn's 8x8 digits.
        "demo": ["scikit-learn"],
        # DSP/NPU targets: Arm's Ethos-U compiler and the TFLite Micro runtime + LUT compression.
        "targets": ["ethos-u-vela", "tflite-micro"],
        # Qualcomm Hexagon (HTP) placement: the QNN host libraries LiteRT's Qualcomm compiler plugin links.
        "qualcomm": ["onnxruntime-qnn"],
        # The peer benchmarks/low_bit.py compares against (installs beside TF 2.21 without changing it).
        "peer": ["ai-edge-quantizer==0.10.0"],
        "dev": ["pytest", "scikit-learn", "nbclient", "nbformat", "ipykernel", "ethos-u-vela", "tflite-micro",
                "onnxruntime-qnn"],
    },
    entry_points={"console_scripts": ["retroq=tflite_retroq.cli.main:run"]},
)
