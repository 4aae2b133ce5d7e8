"""`retroq`, the command line: a module per verb; flags and their checks in `flags`, error mapping
and the entry point (`run`) in `main`. The top floor: it may import every stage, nothing imports it.
"""
