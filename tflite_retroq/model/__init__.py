"""The Keras side: loading, validation, input space, BatchNorm (taps and folding).

Imports only config, errors and io_utils; nothing here imports a later pipeline stage.
"""
