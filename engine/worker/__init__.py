"""What runs inside each Ray Train worker: megatron model, optimizer, data and the loop.

Everything here imports megatron-core and torch.distributed; the driver side
(``engine.run``) does not import this package until it hands the loop to Ray.
"""
