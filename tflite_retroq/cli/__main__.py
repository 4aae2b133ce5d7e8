"""`python -m tflite_retroq.cli`."""
from tflite_retroq.cli.main import run

run()
