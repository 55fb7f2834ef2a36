"""The lab's building blocks: its model, run files, processes and a harness for tests.

`drill.lab.model` is what a flag flip needs (where the lab lives, its services and ports) and
imports nothing heavy; `drill.native` starts, stops and probes the native lab on top of these.
"""
