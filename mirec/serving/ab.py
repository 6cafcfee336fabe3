"""A/B assignment: per-user sticky arm = hash(experiment salt, user_id) against a configured split.

    arm = assign(user_id, experiment)   # same user + same salt -> same arm, always, on any machine

The hash is SHA-256 of "salt:user_id" read as a 64-bit unsigned integer and mapped to u in [0, 1);
arms own consecutive slices of [0, 1) proportional to their weights, in the configured order.
Python's built-in `hash()` is NOT used: it is salted per process (PYTHONHASHSEED) and so not sticky.
Users without an id get no sticky arm: they are served by the first arm and logged with arm=None
only if the caller asks (see `mirec.serving.api`).
"""

from __future__ import annotations

import hashlib
import struct

from pydantic import Field, model_validator

from mirec.config import StrictModel


class Arm(StrictModel):
    name: str = Field(min_length=1)
    model: str = Field(min_length=1)  # TorchServe model name serving this arm
    weight: float = Field(1.0, gt=0)


class Experiment(StrictModel):
    salt: str = "exp-1"
    arms: list[Arm] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self):
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique, got {names}")
        return self

    @property
    def shares(self) -> dict[str, float]:
        total = sum(a.weight for a in self.arms)
        return {a.name: a.weight / total for a in self.arms}


def unit_hash(salt: str, user_id: str) -> float:
    """Deterministic u in [0, 1) for (salt, user_id). "surrogatepass": a lone surrogate (valid in JSON, not in
    UTF-8) is hashed as its code point instead of failing; every other string hashes as its UTF-8 bytes."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode("utf-8", "surrogatepass")).digest()
    return struct.unpack(">Q", digest[:8])[0] / 2.0**64


def assign(user_id: str | int | None, experiment: Experiment) -> Arm:
    """The arm of `user_id` (sticky). A missing user id gets the first arm."""
    if user_id is None:
        return experiment.arms[0]
    u = unit_hash(experiment.salt, str(user_id))
    total = sum(a.weight for a in experiment.arms)
    acc = 0.0
    for arm in experiment.arms:
        acc += arm.weight / total
        if u < acc:
            return arm
    return experiment.arms[-1]  # u within float rounding of 1.0
