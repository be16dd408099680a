"""A mutation check to run by hand: does the fast suite notice small changes to the rules that matter most?

Each mutant changes one thing in one target (a comparison flipped, ``+``/``-`` or ``*``/``/`` swapped,
``and``/``or`` swapped, ``not`` dropped, a number off by one, a string fragment dropped, a statement
replaced by ``pass``), is written into a temporary copy of the repository (the working tree is never
touched) and the target's test files run against it with ``-x`` under a time limit. A mutant is
*killed* when a test fails or the run times out, *survived* when every test passes.

    .venv/bin/python scripts/mutation_check.py                 # every target
    .venv/bin/python scripts/mutation_check.py sampling --list  # the mutants only, nothing runs

docs/testing.md says how to read the report.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Target:
    """One module: the definitions to mutate (qualified names) and the tests that should notice."""

    name: str
    path: str
    definitions: tuple[str, ...]
    tests: tuple[str, ...]  # pytest arguments: files, node ids, ``-k`` expressions
    cap: int  # at most this many mutants, picked evenly at random (seeded) when there are more
    untouched: tuple[str, ...] = ()  # keyword arguments inside the definitions that are left as they are


TARGETS = (
    Target(
        "sampling", "internlm_demo/generation/sampling.py",
        ("MIN_TEMPERATURE", "samples", "warp_scores", "next_token", "penalize_repeats", "filtered_probs",
         "sample_filtered"),
        ("tests/test_sampling_rules.py", "tests/test_chat_core.py", "tests/test_engine.py",
         "-k", "sampling or top_k or repetition"),
        cap=20,
    ),
    Target(
        "chat_prompt", "internlm_demo/serving/chat_model.py",
        ("ChatModel.build_prompt", "ChatModel._cut_at_stop_word"),
        ("tests/test_prompt_format.py", "tests/test_reference_fixtures.py", "tests/test_chat_core.py",
         "-k", "format or prompt_and_input_ids or greedy_chat or system"),
        cap=10,
    ),
    Target(
        "families", "internlm_demo/models/families.py",
        ("INTERNLM2_META_INSTRUCTION", "Family.has_system_prompt", "INTERNLM", "INTERNLM2", "INTERNLM3",
         "family_for"),
        ("tests/test_prompt_format.py", "tests/test_reference_fixtures.py", "tests/test_internlm3.py",
         "-k", "format or prompt_and_input_ids or greedy_chat or internlm3"),
        cap=10, untouched=("name", "tensor_renames", "fused_qkv"),
    ),
    Target(
        "agent_protocol", "internlm_demo/agent/protocol.py",
        ("Prompt.join", "Markers.wrap", "V1_SYSTEM", "V1_USER", "V1_ASSISTANT", "ReActProtocol.stop_words",
         "ReActProtocol.system_prompt", "ReActProtocol.build_prompt", "InterpreterCallProtocol.build_prompt",
         "InterpreterCallProtocol._exchange", "InterpreterCallProtocol._assistant_content"),
        ("tests/test_prompt_format.py", "tests/test_agent_lagent.py", "tests/test_agent_loop.py"),
        cap=12,
    ),
    Target(
        "tokenizer_decode", "internlm_demo/models/tokenizer.py",
        ("InternLMTokenizer.decode", "StreamingDetokenizer.push"),
        ("tests/test_prompt_format.py", "tests/test_reference_fixtures.py", "tests/test_chat_core.py",
         "tests/test_tokenizer_fidelity.py", "-k", "decode or tokenizer or stream_chat or streaming"),
        cap=10,
    ),
)

SWAPS = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
    ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.And: ast.Or, ast.Or: ast.And,
}
SYMBOLS = {
    ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=", ast.In: "in",
    ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not", ast.Add: "+", ast.Sub: "-", ast.Mult: "*",
    ast.Div: "/", ast.And: "and", ast.Or: "or",
}


@dataclass(frozen=True)
class Mutant:
    """One change: which node (its index in ``ast.walk`` order), what to do, and how to say it."""

    target: str
    node: int
    kind: str  # "op", "int+1", "int-1", "float", "bool", "not", "str-tail", "str-newline", "str-fill", "drop"
    line: int
    description: str
    index: int = 0  # the operator's position in a comparison chain, or the statement's index in a body


def _definition_nodes(tree: ast.Module, definitions: tuple[str, ...]) -> list[ast.AST]:
    found = {}

    def visit(body, prefix):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                name = prefix + node.name
                found[name] = node
                visit(node.body, name + ".")
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        found[prefix + target.id] = node

    visit(tree.body, "")
    missing = [name for name in definitions if name not in found]
    if missing:
        raise SystemExit(f"mutation_check: {', '.join(missing)} not found; update TARGETS in {Path(__file__).name}")
    return [found[name] for name in definitions]


def _skipped_constants(tree: ast.Module) -> set[int]:
    """Docstrings and f-string parts: changing them says nothing about the behaviour."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Module)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                skipped.add(id(first.value))
        if isinstance(node, ast.JoinedStr):
            skipped.update(id(part) for part in ast.walk(node))
    return skipped


def enumerate_mutants(target: Target, root: Path = REPO) -> list[Mutant]:
    """Every mutant of the target's definitions in the copy of the repository at ``root``, in source order."""
    source = (root / target.path).read_text(encoding="utf-8")
    tree = ast.parse(source)
    inside = {id(node) for definition in _definition_nodes(tree, target.definitions) for node in ast.walk(definition)}
    skipped = _skipped_constants(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg in target.untouched:
            inside -= {id(part) for part in ast.walk(node)}
    lines = source.splitlines()
    mutants = []
    for index, node in enumerate(ast.walk(tree)):
        if id(node) not in inside:
            continue
        line = getattr(node, "lineno", 0)

        def add(kind, description, position=0, index=index, line=line):
            mutants.append(Mutant(target.name, index, kind, line, description, position))

        if isinstance(node, ast.Compare):
            for position, op in enumerate(node.ops):
                add("op", f"{SYMBOLS[type(op)]} → {SYMBOLS[SWAPS[type(op)]]}", position)
        elif isinstance(node, (ast.BinOp, ast.BoolOp)) and type(node.op) in SWAPS:
            add("op", f"{SYMBOLS[type(node.op)]} → {SYMBOLS[SWAPS[type(node.op)]]}")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub)):
            add("not", f"{'not' if isinstance(node.op, ast.Not) else 'unary -'} dropped")
        elif isinstance(node, ast.Constant) and id(node) not in skipped:
            value = node.value
            if isinstance(value, bool):
                add("bool", f"{value} → {not value}")
            elif isinstance(value, int):
                add("int+1", f"{value} → {value + 1}")
                add("int-1", f"{value} → {value - 1}")
            elif isinstance(value, float):
                add("float", f"{value!r} → {value + 1!r}")
            elif isinstance(value, str) and value:
                add("str-tail", f"{value!r} loses its last character")
                if "\n" in value[:-1]:
                    add("str-newline", f"{value!r} loses its first newline")
            elif isinstance(value, str):
                add("str-fill", "'' → 'X'")
        for name in ("body", "orelse"):
            body = getattr(node, name, None)
            if not isinstance(body, list) or len(body) < 2 or not isinstance(node, (ast.FunctionDef, ast.For, ast.If)):
                continue
            for position, statement in enumerate(body):
                if isinstance(statement, (ast.Return, ast.Pass)) or statement is body[0] and \
                        isinstance(statement, ast.Expr) and id(statement.value) in skipped:
                    continue
                text = lines[statement.lineno - 1].strip()
                mutants.append(Mutant(target.name, index, f"drop-{name}", statement.lineno,
                                      f"statement dropped: {text[:70]}", position))
    return mutants


def select(mutants: list[Mutant], cap: int) -> list[Mutant]:
    if len(mutants) <= cap:
        return mutants
    chosen = set(random.Random(20).sample(range(len(mutants)), cap))
    return [mutant for i, mutant in enumerate(mutants) if i in chosen]


def mutated_source(source: str, mutant: Mutant | None) -> str:
    """``source`` with the one change made (``None``: unchanged, written the same way)."""
    tree = ast.parse(source)
    if mutant is not None:
        node = list(ast.walk(tree))[mutant.node]
        kind = mutant.kind
        if kind == "op" and isinstance(node, ast.Compare):
            node.ops[mutant.index] = SWAPS[type(node.ops[mutant.index])]()
        elif kind == "op":
            node.op = SWAPS[type(node.op)]()
        elif kind == "not":
            _replace(tree, node, node.operand)
        elif kind in ("int+1", "float"):
            node.value += 1
        elif kind == "int-1":
            node.value -= 1
        elif kind == "bool":
            node.value = not node.value
        elif kind == "str-tail":
            node.value = node.value[:-1]
        elif kind == "str-newline":
            node.value = node.value.replace("\n", "", 1)
        elif kind == "str-fill":
            node.value = "X"
        elif kind.startswith("drop-"):
            getattr(node, kind.removeprefix("drop-"))[mutant.index] = ast.Pass()
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


def _replace(tree: ast.AST, old: ast.AST, new: ast.AST) -> None:
    for parent in ast.walk(tree):
        for name, value in ast.iter_fields(parent):
            if value is old:
                setattr(parent, name, new)
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    if item is old:
                        value[i] = new


@dataclass
class Outcome:
    mutant: Mutant | None
    killed: bool
    seconds: float
    detail: str = ""


@dataclass
class Sandbox:
    """A temporary copy of the repository (tracked and untracked files, no caches) beside ``shared/``."""

    excluded: tuple[str, ...] = ()
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mutation-")))

    def __post_init__(self):
        self.repo = self.root / "repo"
        files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                               check=True, capture_output=True).stdout.decode().split("\0")
        for name in filter(None, files):
            if name in self.excluded:
                continue
            source = REPO / name
            if source.is_file():
                (self.repo / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, self.repo / name)
        shared = (REPO.parent / "shared").resolve()
        if shared.exists():
            (self.root / "shared").symlink_to(shared)

    def run(self, target: Target, mutant: Mutant | None, timeout: float) -> Outcome:
        """Write the mutant, run the target's tests in a forked child under ``timeout``, put the module back.

        The parent has imported the heavy libraries once; the child imports this copy's package afresh.
        """
        path = self.repo / target.path
        original = path.read_text(encoding="utf-8")
        path.write_text(mutated_source(original, mutant), encoding="utf-8")
        tests = [test for test in target.tests if not test.startswith("tests/") or (self.repo / test).exists()]
        log = self.root / "pytest.log"
        start = time.monotonic()
        child = os.fork()
        if child == 0:
            _run_pytest(self.repo, tests, log)
        try:
            code = _wait(child, timeout)
        finally:
            path.write_text(original, encoding="utf-8")
        if code is None:
            return Outcome(mutant, True, time.monotonic() - start, f"timed out after {timeout:.0f} s")
        detail = _first_failure(log.read_text(encoding="utf-8", errors="replace"))
        if code not in (0, 1, 2):  # 1: a test failed, 2: collection failed (the mutant does not import)
            raise SystemExit(f"mutation_check: pytest could not run ({code}): {detail}; see {log}")
        return Outcome(mutant, code != 0, time.monotonic() - start, detail)

    def remove(self):
        shutil.rmtree(self.root, ignore_errors=True)


def _run_pytest(repo: Path, tests: list[str], log: Path) -> None:
    """In the forked child: pytest on ``tests`` with ``repo`` first on the path; never returns."""
    code = 99
    try:
        os.nice(10)
        sys.dont_write_bytecode = True  # a cached mutant of the same size and second would be read back
        output = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.chdir(repo)
        os.environ["PYTHONPATH"] = str(repo)
        sys.path.insert(0, str(repo))
        import pytest

        code = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", "-m", "not browser", "-o", "addopts=", *tests]))
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait(child: int, timeout: float) -> int | None:
    """The child's exit code, or None when it ran past ``timeout`` (then it is killed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(child, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.2)
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    return None


def _preload() -> None:
    """Import the libraries every test run needs once, before forking (no torch work: threads start later)."""
    import lagent.actions  # noqa: F401
    import pytest  # noqa: F401
    import sentencepiece  # noqa: F401
    import tokenizers  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import LlamaForCausalLM  # noqa: F401


def _first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED", "ERROR")):
            return line[:160]
    return output.strip().splitlines()[-1][:160] if output.strip() else ""


def _write_json(path: Path, results: dict[str, list[Outcome]]) -> None:
    path.write_text(json.dumps(
        {name: [{"line": o.mutant.line, "mutation": o.mutant.description, "node": o.mutant.node,
                 "kind": o.mutant.kind, "index": o.mutant.index, "killed": o.killed,
                 "seconds": round(o.seconds, 1), "detail": o.detail} for o in outcomes]
         for name, outcomes in results.items()}, indent=1, ensure_ascii=False), encoding="utf-8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help=f"any of {', '.join(t.name for t in TARGETS)} (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--cap", type=int, help="at most this many mutants per target (default: each target's own cap)")
    parser.add_argument("--timeout", type=float, default=240, help="seconds per mutant (default 240)")
    parser.add_argument("--json", type=Path, help="also write the outcomes to this file")
    parser.add_argument("--exclude", action="append", default=[], metavar="PATH",
                        help="leave this file out of the copy (e.g. a new test file, to score the suite without it)")
    parser.add_argument("--rerun", type=Path, help="a --json file of an earlier run: run only its survivors again "
                        "(its killed mutants stay killed: added tests cannot revive them)")
    args = parser.parse_args(argv)
    unknown = set(args.targets) - {t.name for t in TARGETS}
    if unknown:
        parser.error(f"unknown target(s) {', '.join(sorted(unknown))}")
    targets = [t for t in TARGETS if not args.targets or t.name in args.targets]
    if args.list:
        chosen = {t.name: select(enumerate_mutants(t), args.cap or t.cap) for t in targets}
        for t in targets:
            for m in chosen[t.name]:
                print(f"{t.name}  {t.path}:{m.line}  {m.description}")
        return 0

    earlier = json.loads(args.rerun.read_text(encoding="utf-8")) if args.rerun else {}
    if str(REPO) in sys.path:
        sys.path.remove(str(REPO))  # the children import the copy's package, never this one
    _preload()
    sandbox = Sandbox(tuple(args.exclude))
    chosen = {t.name: select(enumerate_mutants(t, sandbox.repo), args.cap or t.cap) for t in targets}
    results: dict[str, list[Outcome]] = {}
    try:
        for t in targets:
            baseline = sandbox.run(t, None, args.timeout)
            if baseline.killed:
                print(f"{t.name}: the tests fail on the unchanged module, skipped ({baseline.detail})", flush=True)
                continue
            print(f"{t.name}: {len(chosen[t.name])} mutants, tests pass unchanged in {baseline.seconds:.0f} s",
                  flush=True)
            results[t.name] = []
            before = {(r["node"], r["kind"], r["index"]): r for r in earlier.get(t.name, [])}
            for m in chosen[t.name]:
                known = before.get((m.node, m.kind, m.index))
                if known and known["killed"]:
                    results[t.name].append(Outcome(m, True, 0.0, "killed in " + args.rerun.name))
                    continue
                outcome = sandbox.run(t, m, args.timeout)
                results[t.name].append(outcome)
                if args.json:
                    _write_json(args.json, results)
                verdict = "killed  " if outcome.killed else "SURVIVED"
                print(f"  {verdict} {t.path}:{m.line}  {m.description}  ({outcome.seconds:.0f} s)", flush=True)
    finally:
        sandbox.remove()

    print("\n| module | mutants | killed | survived | score |\n|---|---|---|---|---|")
    for name, outcomes in results.items():
        killed = sum(o.killed for o in outcomes)
        print(f"| {name} | {len(outcomes)} | {killed} | {len(outcomes) - killed} | "
              f"{killed / max(len(outcomes), 1):.0%} |")
    total = [o for outcomes in results.values() for o in outcomes]
    if total:
        killed = sum(o.killed for o in total)
        print(f"| all | {len(total)} | {killed} | {len(total) - killed} | {killed / len(total):.0%} |")
    survivors = [o.mutant for o in total if not o.killed]
    if survivors:
        print("\nSurvivors:")
        for m in survivors:
            print(f"  {m.target}  {next(t.path for t in TARGETS if t.name == m.target)}:{m.line}  {m.description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
