"""The agent's Python interpreter: model-written code in a throw-away, isolated, resource-limited sandbox.

``interpreter`` is the app's side (``run_python``, the ``PythonInterpreter`` tool), ``bootstrap``
the sandbox's own processes, ``isolation`` the levels they reach, ``limits`` the rlimits and the
memory cgroup, ``seccomp`` the system-call filter. ``docs/agent-sandbox.md`` explains all of it.
"""

from .interpreter import (
    KILLED_CPU_LIMIT,
    KILLED_OUTPUT_LIMIT,
    KILLED_TIMEOUT,
    ExecutionResult,
    PythonInterpreter,
    probe_isolation,
    run_python,
)
from .isolation import LEVELS, MINIMUM_LEVEL, STRICT, USERNS, WEAK, Isolation
from .limits import SandboxLimits

__all__ = [
    "KILLED_CPU_LIMIT",
    "KILLED_OUTPUT_LIMIT",
    "KILLED_TIMEOUT",
    "LEVELS",
    "MINIMUM_LEVEL",
    "STRICT",
    "USERNS",
    "WEAK",
    "ExecutionResult",
    "Isolation",
    "PythonInterpreter",
    "SandboxLimits",
    "probe_isolation",
    "run_python",
]
