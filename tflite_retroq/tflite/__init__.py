"""Flatbuffer I/O and passes. Every pass is a function bytes -> bytes over the ModelT object API."""
