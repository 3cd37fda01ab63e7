"""Measuring on a device: the timing harness and the profiler breakdown the benchmark scripts share.

timing     CUDA-event medians, the same-run matmul and copy ceilings, the environment record
steps      a tensor-parallel shard's layers and its prefill / decode / train steps
breakdown  a profiler trace summed by the model's named ranges
"""
