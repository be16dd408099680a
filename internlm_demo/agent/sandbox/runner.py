"""The code runner: the program the sandboxed interpreter executes around the model's code.

It is shipped as source to ``python -c`` and runs as the unprivileged user in a fresh interpreter,
so it must be self-contained: it cannot import this package.
"""

from __future__ import annotations

import inspect
import textwrap


def runner_source() -> str:
    """The runner as a ``python -c`` program; its arguments are the code's fd and 1 to block escapes."""
    return textwrap.dedent(inspect.getsource(_runner_main)) + "\n_runner_main()\n"


def _runner_main() -> None:
    import ast
    import builtins
    import linecache
    import sys
    import traceback
    import types

    code_fd, block_escape = int(sys.argv[1]), sys.argv[2] == "1"
    with open(code_fd, "rb") as code_file:
        source = code_file.read().decode("utf-8", "replace")

    if block_escape:
        # Fallback without a network namespace.  Audit hooks cannot be removed from
        # Python code; ctypes and raw fork_exec could bypass them, so they are blocked too.
        blocked_events = {
            "socket.__new__", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
            "subprocess.Popen", "ctypes.dlopen",
        }
        blocked_imports = {"ctypes", "_ctypes", "_posixsubprocess"}

        def audit(event, args):
            if event == "import" and args[0] in blocked_imports:
                raise PermissionError(f"importing {args[0]} is blocked in this sandbox")
            if event in blocked_events:
                raise PermissionError(f"{event} is blocked in this sandbox")

        sys.addaudithook(audit)

    filename = "<code>"
    sys.argv = [filename]
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    try:
        tree = ast.parse(source, filename)
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        top_level = [stmt for stmt in tree.body + [last] if stmt is not None
                     and not (isinstance(stmt, ast.FunctionDef) and stmt.name == "solution")]
        calls_solution = any(
            isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "solution"
            for stmt in top_level for node in ast.walk(stmt)
        )
        exec(compile(tree, filename, "exec"), main.__dict__)  # noqa: S102 - the purpose of the sandbox
        if last is not None:
            value = eval(compile(ast.Expression(last.value), filename, "eval"), main.__dict__)
            if value is not None:
                print(repr(value))
        solution = main.__dict__.get("solution")
        if callable(solution) and not calls_solution:
            answer = solution()
            if answer is not None:
                print(answer)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - reported like an uncaught exception
        frames = exc.__traceback__
        while frames is not None and frames.tb_frame.f_code.co_filename != filename:
            frames = frames.tb_next  # hide the runner's own frames
        traceback.print_exception(type(exc), exc, frames)
        sys.exit(1)
