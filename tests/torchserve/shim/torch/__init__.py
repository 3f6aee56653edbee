"""Stand-in for ``torch`` on the TorchServe worker's PYTHONPATH in Switchyard's tests.

TorchServe 0.12's worker protocol module (ts/protocol/otf_message_handler.py)
imports torch at the top only to check ``isinstance(value, torch.Tensor)`` (and
``torch.save`` such a value) when encoding a handler's answer. The test handler
(tests/torchserve/handler.py) never returns tensors, and the real PyPI wheel
for Linux pulls gigabytes of CUDA libraries, so the test fixture puts this
directory on the worker's PYTHONPATH instead: ``Tensor`` is a class no value
is an instance of, and ``save`` is never reached. Nothing else imports it.
"""


class Tensor:  # noqa: D101 - see the module docstring
    pass


def save(*_args, **_kwargs):
    raise RuntimeError("the torch stand-in cannot serialize tensors")
