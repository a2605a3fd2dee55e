"""Stands in for AMD's `amdsmi` package where ROCm's libamd_smi.so is missing.

That package then fails with KeyError, which Ray does not survive; this ImportError it does.
Put on the PYTHONPATH of Ray's processes only by `backends.cluster.guard_ray_from_amdsmi`.
"""

raise ImportError("amdsmi cannot be used here: ROCm's libamd_smi.so is not installed")
