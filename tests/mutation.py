"""Mutation testing of the modules that hold spinepipe's promises (issue 30): ``make mutation``.

Not a test module (pytest collects ``test_*.py`` only). For each module of :data:`MODULES` it
runs mutmut (pinned in the test extras) with only that module's tests selected, so that each
run fits a small machine, then prints one score table:

    module  mutants  killed  survived  timeout  equiv  score  target  time

- A **mutant** is one small change of the module's code (a flipped comparison, a dropped
  call, another constant...). It is *killed* when a selected test fails (or hangs: *timeout*)
  with it in place; it *survives* when every test still passes: a regression the tests would
  not catch.
- **Equivalent** mutants (those that change no behaviour any caller can see, e.g. a message's
  wording, a default argument every caller passes) are listed with the reason in
  ``tests/mutation_equivalent.txt`` and left out of the denominator; the reason is printed.
  One class is excluded by rule rather than by entry (:func:`is_message_wording`): a line of
  a ``raise`` whose only change is one string literal wrapped in ``XX`` or re-cased. Every
  other survivor is printed with its diff, to be killed by a test that states a real
  guarantee.
- score = (killed + timeout) / (mutants - equivalent); *timeout* includes a run that crashed
  (mutmut's "segfault": the test process died); the target is 90 % per module; the
  exit status is 1 when any module is below it (or its run failed).

Each module runs in its own copy of the project, ``build/mutation/<module>/`` (git-ignored;
mutmut writes its mutated copy to ``mutants/`` in there), made afresh on every run from the
files git knows (tracked, and untracked but not ignored). mutmut's configuration is written
into that copy's ``pyproject.toml`` by this script; the project's own has none.

    python tests/mutation.py                       # every module, all cores
    python tests/mutation.py --modules io,paths    # some (make mutation MODULES=io,paths)
    python tests/mutation.py --jobs 1 --list       # the table of modules and their tests
    python tests/mutation.py --modules io --report # the last run again (after editing the
                                                   # equivalent list), without running
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "mutation"
EQUIVALENT = ROOT / "tests" / "mutation_equivalent.txt"
TARGET = 90.0
#: mutmut's statuses that count as detected: a test failed, hung, or the run crashed with it
DETECTED = ("killed", "timeout", "segfault", "caught by type check")
#: the packages copied into mutmut's ``mutants/`` (only the module under test is mutated)
SOURCES = ("converters", "train", "pipeline")


@dataclass(frozen=True)
class Module:
    file: str                      # the file mutated
    tests: tuple[str, ...]         # the test files selected for it
    functions: tuple[str, ...] = ()  # only these functions' mutants (a part of a big file)
    why: str = ""                  # the promise it holds


VIA_TESTS = ("tests/test_via_guarantees.py", "tests/test_via_real.py", "tests/test_via_roundtrip.py",
             "tests/test_bounds.py", "tests/test_measures.py")
DEID_TESTS = ("tests/test_deid_guarantees.py", "tests/test_anonymize.py",
              "tests/test_deid_leak.py", "tests/test_identity.py")

MODULES: dict[str, Module] = {
    "paths": Module(
        "converters/core/paths.py",
        ("tests/test_paths_guarantees.py", "tests/test_confinement.py", "tests/test_hostile.py"),
        why="UIDs and names from data never become a path outside the output folder"),
    "io": Module(
        "converters/core/files.py",
        ("tests/test_io_guarantees.py", "tests/test_confinement.py", "tests/test_hostile.py"),
        why="the one write/delete path: confined, atomic, never through a link, locked"),
    "incremental": Module(
        "converters/core/incremental.py",
        ("tests/test_incremental_guarantees.py",),
        why="an up-to-date item is not redone; a stale, failed or damaged one is"),
    "convert-incremental": Module(
        "converters/annotations/masks.py",
        ("tests/test_incremental_guarantees.py",),
        functions=("render_changed", "_render_code", "_write_temp"),
        why="convert re-renders exactly the changed images and removes what was dropped"),
    "ledger": Module(
        "converters/dicom/ledger.py",
        ("tests/test_ledger_guarantees.py", "tests/test_identity.py",
         "tests/test_deid_guarantees.py"),
        why="pseudonyms, remapped UIDs and date shifts: keyed, stable, private"),
    "metrics": Module(
        "train/evaluation/metrics.py",
        ("tests/test_metrics_guarantees.py", "tests/test_metrics.py"),
        why="the four pixel metrics, hand-computed"),
    "recognition": Module(
        "train/evaluation/recognition.py",
        ("tests/test_recognition_guarantees.py", "tests/test_recognition.py"),
        why="a vertebra is recognized only when the right level is found"),
    "measures": Module(
        "converters/spine/measures.py",
        ("tests/test_measures_guarantees.py", "tests/test_measures.py"),
        why="the clinical measures of a set of vertebra polygons"),
    "endplates": Module(
        "converters/spine/endplates.py",
        ("tests/test_measures_guarantees.py", "tests/test_measures.py"),
        why="the endplates, the anterior side and the levels found in vertebra polygons"),
    "agreement": Module(
        "train/evaluation/agreement.py",
        ("tests/test_agreement_guarantees.py",),
        why="MAE, bias, limits of agreement, measurable rate of predicted measures"),
    "deid-table": Module(
        "converters/dicom/deid_table.py", DEID_TESTS,
        why="de-identification: the PS3.15 action table, its options and value checks"),
    "deid-engine": Module(
        "converters/dicom/deid_engine.py", DEID_TESTS,
        why="de-identification: the engine that applies the table to every element"),
    "via": Module(
        "converters/annotations/via.py", VIA_TESTS,
        why="VIA projects and exports read as VIA wrote them"),
    "via-csv": Module(
        "converters/annotations/via_csv.py", VIA_TESTS,
        why="VIA's CSV export read as VIA wrote it"),
    "via-project": Module(
        "converters/annotations/via_project.py", VIA_TESTS,
        why="projects written as VIA saves them"),
}


# --------------------------------------------------------------------------------------------
# the equivalent mutants


@dataclass(frozen=True)
class Equivalent:
    module: str
    function: str
    removed: tuple[str, ...]
    added: tuple[str, ...]
    reason: str


def read_equivalents(path: Path = EQUIVALENT) -> list[Equivalent]:
    """Blocks separated by blank lines: ``module:``, ``function:``, ``- old line``,
    ``+ new line`` (each stripped, as ``mutmut show`` prints the diff) and ``reason:``; or,
    instead of the diff lines, ``scope: function`` for every mutant of a function that no
    test can run mutated (one called only while the module is imported)."""
    if not path.exists():
        return []
    out = []
    for n, block in enumerate(re.split(r"\n\s*\n", path.read_text(encoding="utf-8")), 1):
        lines = [ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]
        if not lines:
            continue
        fields: dict[str, str] = {}
        removed, added = [], []
        for ln in lines:
            if ln.startswith("- "):
                removed.append(ln[2:].strip())
            elif ln.startswith("+ "):
                added.append(ln[2:].strip())
            elif ":" in ln:
                key, value = ln.split(":", 1)
                fields[key.strip()] = value.strip()
        missing = {"module", "function", "reason"} - set(fields)
        if fields.get("scope") == "function" and not (removed or added):
            removed = added = ["*"]                 # every mutant of the function
        if missing or not (removed or added):
            raise SystemExit(f"{path}: entry {n} lacks {sorted(missing) or 'its diff lines'}")
        out.append(Equivalent(fields["module"], fields["function"], tuple(removed),
                              tuple(added), fields["reason"]))
    return out


_LITERAL = re.compile(r"""[rbfu]*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""", re.I)


def _message_lines(file: Path) -> set[str]:
    """The stripped source lines that are part of a ``raise`` statement."""
    source = file.read_text(encoding="utf-8")
    lines = source.splitlines()
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Raise):
            out.update(ln.strip() for ln in lines[node.lineno - 1:node.end_lineno])
    return out


def is_message_wording(diff: str, message_lines: set[str]) -> bool:
    """True for the one class of mutant excluded by rule, not by entry: a line of a ``raise``
    statement whose only change is one string literal wrapped in ``XX`` or put in another
    letter case (mutmut's string mutations): the wording of an error message, whose content
    the tests check where it is a promise (the value, the file named)."""
    removed = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("-")]
    added = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("+")]
    if len(removed) != 1 or len(added) != 1 or removed[0] not in message_lines:
        return False
    old, new = _LITERAL.findall(removed[0]), _LITERAL.findall(added[0])
    if len(old) != len(new) or _LITERAL.sub("S", removed[0]) != _LITERAL.sub("S", added[0]):
        return False
    changed = [(a, b) for a, b in zip(old, new) if a != b]
    if len(changed) != 1:
        return False
    a, b = changed[0]
    q = a[0]
    return b == f"{q}XX{a[1:-1]}XX{q}" or b in (a.upper(), a.lower())


# --------------------------------------------------------------------------------------------
# one module's run


def project_files() -> list[str]:
    """The files of the project as git sees them (tracked, and new but not ignored)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, check=True, capture_output=True).stdout.decode()
    return sorted({f for f in out.split("\0") if f and (ROOT / f).is_file()})


def _toml_list(items) -> str:
    return "[" + ", ".join(json.dumps(str(i)) for i in items) + "]"


def make_copy(name: str, module: Module, files: list[str]) -> Path:
    """A fresh copy of the project for one module, configured for mutmut."""
    work = WORK / name
    shutil.rmtree(work, ignore_errors=True)
    for f in files:
        (work / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, work / f)
    tops = sorted({f.split("/")[0] for f in files} - set(SOURCES) - {"pyproject.toml"})
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    pyproject = re.sub(r"(?ms)^\[tool\.mutmut\].*?(?=^\[|\Z)", "", pyproject)
    pyproject += f"""
[tool.mutmut]
source_paths = {_toml_list(SOURCES)}
only_mutate = {_toml_list([module.file])}
also_copy = {_toml_list(tops)}
pytest_add_cli_args = ["-p", "no:cacheprovider"]
pytest_add_cli_args_test_selection = {_toml_list(module.tests)}
use_git_change_detection = false
"""
    (work / "pyproject.toml").write_text(pyproject, encoding="utf-8")
    return work


def mutant_function(mutant: str) -> str:
    """``converters.core.files.x_atomic_path__mutmut_3`` -> ``atomic_path``;
    ``...xǁIncrementalStateǁprune__mutmut_1`` -> ``IncrementalState.prune``."""
    last = re.sub(r"__mutmut_\d+$", "", mutant.rsplit(".", 1)[-1])
    if last.startswith("xǁ"):
        return last[2:].replace("ǁ", ".")
    return last[2:] if last.startswith("x_") else last


def dotted(file: str) -> str:
    return file[:-3].replace("/", ".")


@dataclass
class Result:
    name: str
    status: dict[str, str]          # mutant -> mutmut's status
    seconds: float
    error: str = ""
    equivalent: dict[str, str] | None = None  # mutant -> reason
    survivors: dict[str, str] | None = None   # mutant -> diff

    def count(self, *statuses: str) -> int:
        return sum(1 for s in self.status.values() if s in statuses)

    @property
    def score(self) -> float:
        counted = len(self.status) - len(self.equivalent or {})
        detected = self.count(*DETECTED)
        return 100.0 * detected / counted if counted else 0.0


def _statuses(work: Path, module: Module) -> dict[str, str]:
    from mutmut.stats import status_by_exit_code
    meta = work / "mutants" / (module.file + ".meta")
    data = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
    wanted = set(module.functions)
    return {k: status_by_exit_code[v] for k, v in sorted(data.items())
            if not wanted or mutant_function(k) in wanted}


_DIFFS = """
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
path = sys.argv[1]
print(json.dumps({m: get_diff_for_mutant(m, path=path) for m in json.load(sys.stdin)}))
"""


def _diffs(work: Path, module: Module, mutants: list[str]) -> dict[str, str]:
    """The changed lines of each mutant (what ``mutmut show`` prints), in one process."""
    if not mutants:
        return {}
    done = subprocess.run([sys.executable, "-c", _DIFFS, module.file], cwd=work, text=True,
                          input=json.dumps(mutants), capture_output=True, check=True)
    return {m: "\n".join(ln for ln in diff.splitlines()
                         if ln[:1] in "+-" and not ln.startswith(("+++", "---")))
            for m, diff in json.loads(done.stdout).items()}


def _matches(eq: Equivalent, name: str, function: str, diff: str) -> bool:
    if eq.removed == eq.added == ("*",):
        return (eq.module, eq.function) == (name, function)
    removed = tuple(ln[1:].strip() for ln in diff.splitlines() if ln.startswith("-"))
    added = tuple(ln[1:].strip() for ln in diff.splitlines() if ln.startswith("+"))
    return (eq.module, eq.function, eq.removed, eq.added) == (name, function, removed, added)


def run_module(name: str, module: Module, files: list[str], jobs: int,
               equivalents: list[Equivalent], reuse: bool = False) -> Result:
    start = time.monotonic()
    mutmut = Path(sys.executable).parent / "mutmut"
    if reuse:
        return _collect(Result(name, {}, 0.0), WORK / name, module, equivalents, start)
    work = make_copy(name, module, files)
    args = [str(mutmut), "run", "--max-children", str(jobs)]
    args += [f"{dotted(module.file)}.x_{f}__mutmut_*" if "." not in f else
             f"{dotted(module.file)}.xǁ{f.replace('.', 'ǁ')}__mutmut_*" for f in module.functions]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    with open(work / "mutmut.log", "w") as log:
        proc = subprocess.run(args, cwd=work, stdout=log, stderr=subprocess.STDOUT, env=env)
    result = Result(name, {}, 0.0)
    if proc.returncode != 0:
        tail = (work / "mutmut.log").read_text(errors="replace").strip().splitlines()[-15:]
        result.error = f"mutmut exited {proc.returncode} (log: {work / 'mutmut.log'}):\n    " \
            + "\n    ".join(tail)
        result.seconds = time.monotonic() - start
        return result
    return _collect(result, work, module, equivalents, start)


def _collect(result: Result, work: Path, module: Module, equivalents: list[Equivalent],
             start: float) -> Result:
    """The statuses of a finished run, survivors matched against the equivalent list."""
    name = result.name
    messages = _message_lines(ROOT / module.file)
    try:
        result.status = _statuses(work, module)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        result.error = f"no results of a finished run in {work} ({type(exc).__name__})"
        result.seconds = time.monotonic() - start
        return result
    result.equivalent, result.survivors = {}, {}
    diffs = _diffs(work, module, [m for m, st in result.status.items() if st not in DETECTED])
    for mutant, status in result.status.items():
        if status in DETECTED:
            continue
        diff = diffs[mutant]
        function = mutant_function(mutant)
        reason = next((e.reason for e in equivalents if _matches(e, name, function, diff)),
                      None)
        if reason is None and is_message_wording(diff, messages):
            reason = "wording of an error message (rule: one literal XX-wrapped or re-cased)"
        if reason is not None and status == "survived":
            result.equivalent[mutant] = reason
        else:
            result.survivors[mutant] = f"[{status}] {function}\n{diff}"
    result.seconds = time.monotonic() - start
    return result


# --------------------------------------------------------------------------------------------
# the report


def print_table(results: list[Result]) -> None:
    head = f"{'module':<20} {'mutants':>7} {'killed':>6} {'survived':>8} {'timeout':>7} " \
           f"{'equiv':>5} {'score':>7} {'target':>6} {'time':>7}"
    print(head)
    print("-" * len(head))
    for r in results:
        if r.error:
            print(f"{r.name:<20} {'error':>7}{'':>49} {r.seconds:6.0f}s")
            continue
        survived = len(r.survivors or {})
        print(f"{r.name:<20} {len(r.status):>7} {r.count('killed'):>6} {survived:>8} "
              f"{r.count('timeout', 'segfault'):>7} {len(r.equivalent or {}):>5} {r.score:6.1f}% "
              f"{TARGET:5.0f}% {r.seconds:6.0f}s")
    print(f"total time {sum(r.seconds for r in results):.0f}s")


def print_details(results: list[Result]) -> None:
    for r in results:
        if r.error:
            print(f"\n{r.name}: {r.error}")
            continue
        for mutant, reason in (r.equivalent or {}).items():
            print(f"{r.name}: equivalent {mutant}: {reason}")
        for mutant, text in (r.survivors or {}).items():
            print(f"\n{r.name}: NOT KILLED {mutant} {text}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", default="", help="comma-separated names (default: all)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="mutmut worker processes (default: all cores)")
    parser.add_argument("--list", action="store_true", help="print the modules and stop")
    parser.add_argument("--exclude-tests", default="",
                        help="comma-separated test files to leave out of every selection "
                             "(e.g. one that another change leaves failing for now)")
    parser.add_argument("--report", action="store_true",
                        help="report the last run's results again (after editing the "
                             "equivalent list), without running")
    opts = parser.parse_args(argv)
    names = [n.strip() for n in opts.modules.split(",") if n.strip()] or list(MODULES)
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; known: {', '.join(MODULES)}")
    if opts.list:
        for n in names:
            m = MODULES[n]
            part = f" ({', '.join(m.functions)})" if m.functions else ""
            print(f"{n:<20} {m.file}{part}: {m.why}\n{'':<20} tests: {' '.join(m.tests)}")
        return 0
    equivalents = read_equivalents()
    files = project_files()
    results = []
    for n in names:
        module = MODULES[n]
        excluded = {t.strip() for t in opts.exclude_tests.split(",") if t.strip()}
        present = tuple(t for t in module.tests if t in files and t not in excluded)
        if len(present) < len(module.tests):
            print(f"{n}: WARNING: test files missing or excluded, left out: "
                  f"{sorted(set(module.tests) - set(present))}", flush=True)
        if not present:
            results.append(Result(n, {}, 0.0, error="none of its test files exists"))
            continue
        module = Module(module.file, present, module.functions, module.why)
        print(f"mutating {module.file} ({n}) ...", flush=True)
        results.append(run_module(n, module, files, max(1, opts.jobs), equivalents,
                                  reuse=opts.report))
    print_details(results)
    print()
    print_table(results)
    below = [r.name for r in results if r.error or r.score < TARGET]
    if below:
        print(f"below the {TARGET:.0f} % target: {', '.join(below)}")
    return 1 if below else 0


if __name__ == "__main__":
    sys.exit(main())
