"""Reading a policy named on the command line (learn's output aside, every policy command takes one)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..policy.model import Policy


def load_policy_file(path: str) -> Policy:
    """The policy at ``path``; a broken one is an InputError (file:line: reason)."""
    from ..errors import InputError
    from ..policy.loader import PolicyError, load_policy

    try:
        return load_policy(path)
    except PolicyError as exc:
        raise InputError(f"policy {exc}") from None
