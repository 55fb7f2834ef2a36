"""The workshop runner's pure core: the program clock, the wanted state, rotation, the journal.

Import the modules themselves (`drill.program.plan`, ...): drill/scenarios.py validates a file
with `drill.program.rotation`, so this package must not import drill.scenarios back.
"""
