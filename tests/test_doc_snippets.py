"""Every ```python block of README.md and docs/*.md runs.

Convention: the blocks of one page run in order in one shared namespace (a page reads like one
script, so a later block may use what an earlier one defined), in a fresh temporary working
directory, with Keras's global seed set to 0. One page is one test, and must stay under
PAGE_BUDGET_CPU_SECONDS of CPU time (small data, few epochs).

An HTML comment on the line(s) just before a fence changes how that block runs:

- `<!-- snippet: skip REASON -->`: not run; the reason is reported. Keep these rare: later blocks
  must not depend on a skipped one.
- `<!-- snippet: requires MODULE -->`: if MODULE cannot be imported, the rest of the page is
  skipped with that reason (for code being written elsewhere).
- `<!-- snippet: mock-tfds -->`: run inside `tensorflow_datasets.testing.mock_data` (random
  data of the right structure instead of a download).
- `<!-- snippet: replace OLD => NEW -->`: run with the text OLD replaced by NEW (e.g. fewer
  epochs than the page shows); OLD must occur in the block.

Unknown directives fail the test, so a typo cannot silently skip a block.
"""

from __future__ import annotations

import dataclasses
import importlib
import pathlib
import re
import time

import keras
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<language>[\w+-]*)\s*$")
DIRECTIVE = re.compile(r"^\s*<!--\s*snippet:\s*(?P<body>.*?)\s*-->\s*$")
DIRECTIVE_NAMES = ("skip", "requires", "mock-tfds", "replace")
# CPU seconds per page (CPU, not wall time, so a busy shared machine does not fail the test);
# the whole file takes about 40 s of CPU.
PAGE_BUDGET_CPU_SECONDS = 30.0


@dataclasses.dataclass
class Snippet:
    page: pathlib.Path
    line: int  # 1-based line of the first code line
    source: str
    directives: list[tuple[str, str]]

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def parse_directive(body: str, where: str) -> tuple[str, str]:
    name, _, argument = body.partition(" ")
    if name not in DIRECTIVE_NAMES:
        raise ValueError(f"{where}: unknown snippet directive {name!r}; known: {DIRECTIVE_NAMES}.")
    argument = argument.strip()
    if name in ("skip", "requires") and not argument:
        raise ValueError(f"{where}: `snippet: {name}` needs an argument (a reason / a module).")
    if name == "replace" and " => " not in argument:
        raise ValueError(f"{where}: `snippet: replace` is written `replace OLD => NEW`.")
    return name, argument


def python_snippets(page: pathlib.Path) -> list[Snippet]:
    lines = page.read_text(encoding="utf-8").splitlines()
    snippets: list[Snippet] = []
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match or not match["language"]:
            index += 1
            continue
        indent, language, start = match["indent"], match["language"], index
        end = start + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise ValueError(f"{page}:{start + 1}: unclosed code fence.")
        if language == "python":
            directives: list[tuple[str, str]] = []
            back = start - 1
            while back >= 0 and (DIRECTIVE.match(lines[back]) or not lines[back].strip()):
                directive = DIRECTIVE.match(lines[back])
                if directive:
                    directives.insert(0, parse_directive(directive["body"], f"{page}:{back + 1}"))
                back -= 1
            body = [line.removeprefix(indent) for line in lines[start + 1 : end]]
            snippets.append(Snippet(page, start + 2, "\n".join(body) + "\n", directives))
        index = end + 1
    return snippets


def run_snippet(snippet: Snippet, namespace: dict) -> None:
    source = snippet.source
    mock = False
    for name, argument in snippet.directives:
        if name == "replace":
            old, new = argument.split(" => ", 1)
            assert old in source, f"{snippet.where}: `replace {old} => {new}`: {old!r} is not in the block."
            source = source.replace(old, new)
        elif name == "mock-tfds":
            mock = True
    # Leading newlines keep tracebacks pointing at the page's own line numbers.
    code = compile("\n" * (snippet.line - 1) + source, str(snippet.page), "exec")
    if mock:
        import tensorflow_datasets as tfds

        with tfds.testing.mock_data(num_examples=64):
            exec(code, namespace)  # noqa: S102 - running documentation is the point
    else:
        exec(code, namespace)  # noqa: S102


PAGES_WITH_SNIPPETS = [page for page in PAGES if python_snippets(page)]


def test_the_readme_and_the_getting_started_page_have_snippets():
    names = {str(page.relative_to(ROOT)) for page in PAGES_WITH_SNIPPETS}
    assert {"README.md", "docs/index.md"} <= names


@pytest.mark.parametrize("page", PAGES_WITH_SNIPPETS, ids=lambda page: str(page.relative_to(ROOT)))
def test_page_snippets_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    keras.utils.set_random_seed(0)
    namespace: dict = {"__name__": "__doc_snippet__"}
    skipped: list[str] = []
    started = time.process_time()
    try:
        for snippet in python_snippets(page):
            directives = dict(snippet.directives)
            if "skip" in directives:
                skipped.append(f"{snippet.where}: {directives['skip']}")
                continue
            for module in (argument for name, argument in snippet.directives if name == "requires"):
                try:
                    importlib.import_module(module)
                except ImportError as error:
                    pytest.skip(
                        f"{snippet.where} and the rest of the page need {module}, not importable yet ({error})."
                    )
            run_snippet(snippet, namespace)
    finally:
        keras.backend.clear_session()
    elapsed = time.process_time() - started
    assert elapsed < PAGE_BUDGET_CPU_SECONDS, (
        f"{page.name}: snippets took {elapsed:.0f} CPU seconds; keep doc examples small."
    )
    if skipped:
        print("skipped blocks:", *skipped, sep="\n  ")


def test_directives_are_checked():
    with pytest.raises(ValueError, match="unknown snippet directive"):
        parse_directive("skp reason", "x.md:1")
    with pytest.raises(ValueError, match="replace OLD => NEW"):
        parse_directive("replace epochs=100", "x.md:1")
    assert parse_directive("replace epochs=100 => epochs=2", "x.md:1") == ("replace", "epochs=100 => epochs=2")


def test_replace_changes_the_code_and_tracebacks_point_at_the_page(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "Text.\n\n<!-- snippet: replace = 1 => = 2 -->\n```python\nvalue = 1\nraise RuntimeError(value)\n```\n"
    )
    (snippet,) = python_snippets(page)
    namespace: dict = {}
    with pytest.raises(RuntimeError) as raised:
        run_snippet(snippet, namespace)
    assert namespace["value"] == 2
    assert raised.traceback[-1].lineno + 1 == 6  # 0-based in pytest's traceback; line 6 of the page
