"""The config.toml texts of the digits cascade's models and its catalog, filled in by :mod:`fogline.local.digits`."""

SMALL_CONFIG = """\
# digits-small: the device half of the digits cascade. A tiny MLP (64 -> {hidden} ReLU -> 10, {weights}
# parameters) trained on scikit-learn's bundled 8x8 digits; {accuracy:.1f}% accurate on the test split.
# input: the 64 pixels of an 8x8 image, row by row, scaled to [0, 1] (the data set's 0..16 divided by 16).
# probs: softmax probabilities of the digits 0-9; each row sums to 1. The logits are divided by a
# temperature fitted on the validation split (T = {temperature:.2f}), so that the max probability is
# a calibrated confidence: it tracks how often the answer is right.
# Cascade: on the validation split, escalating when the max probability is below {threshold:.3f}
# sends {share:.0f}% of requests to digits-large.
# A run costs microseconds, so one thread per run and no queue delay.
platform = "onnxruntime"
max_batch_size = 64
intra_op_threads = 1

[batching]
max_queue_delay_us = 0
max_queue_size = 512

[[inputs]]
name = "input"
datatype = "FP32"
shape = [-1, 64]

[[outputs]]
name = "probs"
datatype = "FP32"
shape = [-1, 10]
"""

LARGE_CONFIG = """\
# digits-large: the cloud half of the digits cascade, for the inputs digits-small is unsure of.
# An MLP (64 -> {hidden} -> {hidden} -> 10, ReLU, dropout in training only) trained on the same
# digits plus copies shifted by one pixel; {accuracy:.1f}% accurate on the test split.
# TorchScript (torch.jit.load); the softmax is inside the model, so it returns probabilities.
# input and probs: as digits-small (pixels scaled to [0, 1]; probabilities of the digits 0-9).
# Batches form while the previous one runs, so no queue delay: a lone request runs at once.
# One thread: a run takes tens of microseconds, less than waking a second thread costs, and idle
# intra-op threads spinning after each run would take CPU from everything else on the host.
platform = "pytorch"
max_batch_size = 256
intra_op_threads = 1

[batching]
max_queue_delay_us = 0
max_queue_size = 1024

[[inputs]]
name = "input"
datatype = "FP32"
shape = [-1, 64]

[[outputs]]
name = "probs"
datatype = "FP32"
shape = [-1, 10]
"""


CATALOG = """\
# The model catalog (fogline cloud --catalog): where each model runs. Models not listed here run
# where they are held: on devices (and in the cloud for overflow/failover if a worker holds them too),
# else on GPU workers.
#
# "{name}": the digits cascade. {small} answers on a device; inputs it is unsure of (max probability
# below the threshold) go to {large} on a GPU worker. The threshold escalates {share:.0f}% of the
# validation split (fogline calibrate picks one for a target rate or accuracy on your own data).
[models.{name}]
placement = "cascade"
device_model = "{small}"
cloud_model = "{large}"
output = "probs"
max_prob_below = {threshold!r}
"""
