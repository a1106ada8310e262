"""The code in README.md and docs/*.md runs as written, so a renamed argument or option fails here.

How a page's fenced blocks are treated (the convention for whoever writes the docs):

- A block tagged ``python``, ``sh`` or ``bash`` is run. Blocks of other languages (``json``, ``text``,
  ...) never are. Every block must name its language, so nothing meant to run is skipped unnoticed
  (``test_every_block_names_its_language``).
- ``<!-- not run: REASON -->`` as the last non-blank line before a block keeps it from running; the
  reason is required. It is for what cannot run here: installs, a GPU, ``torchrun``, benchmarks.
- ``<!-- file: NAME -->`` before a block (any language) writes the block's text to NAME; the snippets
  below it on that page find the file, e.g. the ``train.json`` a command reads.
- Every snippet runs on its own, in a fresh temporary directory that holds a copy of the repository's
  ``datasets/`` (so ``datasets/sim_small.npz`` is the embedded scan, as from the repository root) and
  the page's files declared above it. A snippet therefore never relies on another snippet's output,
  and keeps its settings small in the snippet itself (what the reader sees is what runs).
- Python runs in this process (``exec``; a traceback names the page and its line). Shell runs in
  ``bash -eu -o pipefail`` with this interpreter's bin directory first on PATH, so ``python`` and the
  console scripts are this environment's.
- A snippet that needs torch, tensordict, lightning or matplotlib (recognised by the names in
  ``NEEDS``) is skipped where they are not installed, as in the torch-free pass of ``.ci/run``; the
  others run there too.
- The environment: one torch thread, ``MPLBACKEND=Agg``, and ``PTYCHOPINN_CACHE_DIR`` inside the
  temporary directory, so nothing is written outside it.

Also checked: every option of the command-line parsers is in docs/cli.md's tables and every option
those tables name exists; every docs page is linked from the README; links to pages resolve.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_LANGUAGES = {"python", "sh", "bash"}
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[^`\s]*)\s*$")
NOT_RUN = re.compile(r"^\s*<!--\s*not run:\s*(?P<reason>.*?)\s*-->\s*$")
FILE = re.compile(r"^\s*<!--\s*file:\s*(?P<name>\S+)\s*-->\s*$")
# What a snippet needs, recognised by the names it uses.
TRAINING = r"ptycho-train|ptycho-reconstruct|ptycho_torch\.model|ptycho_torch\.api|\blightning\b"
NEEDS = [
    (re.compile(TRAINING), ("torch", "tensordict", "lightning")),
    (re.compile(r"PtychoDataset\b|TensorDictDataLoader|\bimport torch\b|ptycho_torch\.dataloader"), ("torch", "tensordict")),
    (re.compile(r"ptycho-reconstruct|ptycho-memmap plot|matplotlib|write_groups_plot"), ("matplotlib",)),
]
TIMEOUT_S = 600


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    not_run: str | None  # the reason, when marked
    file: str | None  # the file name, when the block declares a file

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page, with the marker comment right before each."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"{page}:{i + 1}: unclosed code block"
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        not_run, file = NOT_RUN.match(before), FILE.match(before)
        found.append(Block(page, i + 1, opening["lang"], textwrap.dedent("\n".join(lines[i + 1 : end])) + "\n",
                           not_run["reason"] if not_run else None, file["name"] if file else None))
        i = end + 1
    return found


ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]
SNIPPETS = [block for block in ALL_BLOCKS if block.lang in RUN_LANGUAGES and block.not_run is None and block.file is None]


def missing_modules(text: str) -> list[str]:
    wanted = {module for pattern, modules in NEEDS if pattern.search(text) for module in modules}
    return sorted(module for module in wanted if importlib.util.find_spec(module) is None)


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A fresh directory with ``datasets/`` and the environment every snippet runs in."""
    shutil.copytree(ROOT / "datasets", tmp_path / "datasets")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PTYCHOPINN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[block.id for block in SNIPPETS])
def test_snippet_runs(snippet: Block, workspace):
    missing = missing_modules(snippet.text)
    if missing:
        pytest.skip(f"needs {', '.join(missing)}, not installed here")
    for block in ALL_BLOCKS:
        if block.page == snippet.page and block.file and block.line < snippet.line:
            (workspace / block.file).write_text(block.text, encoding="utf-8")
    if snippet.lang == "python":
        run_python(snippet)
    else:
        result = subprocess.run(["bash", "-eu", "-o", "pipefail", "-c", snippet.text], cwd=workspace,
                                capture_output=True, text=True, timeout=TIMEOUT_S)
        assert result.returncode == 0, f"{snippet.id} exited with {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"


def run_python(snippet: Block) -> None:
    """``exec`` in this process, one torch thread; line numbers in a traceback are the page's."""
    code = compile("\n" * snippet.line + snippet.text, str(snippet.page), "exec")
    torch = __import__("torch") if importlib.util.find_spec("torch") else None
    threads = torch.get_num_threads() if torch else None
    if torch:
        torch.set_num_threads(1)
    try:
        exec(code, {"__name__": "__snippet__"})
    finally:
        if torch:
            torch.set_num_threads(threads)


def test_there_are_snippets_on_the_pages_a_newcomer_reads():
    run = {block.page.name for block in SNIPPETS}
    assert {"README.md", "cli.md", "dataset.md"} <= run, run


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[block.id for block in ALL_BLOCKS])
def test_every_block_names_its_language(block: Block):
    assert block.lang, f"{block.id}: name the block's language (```python, ```sh, ```json, ```text, ...)"
    if block.not_run is not None:
        assert block.not_run, f"{block.id}: say why the block is not run: <!-- not run: REASON -->"


def test_every_docs_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    unlinked = [page.name for page in PAGES[1:] if f"](docs/{page.name})" not in readme]
    assert not unlinked, f"README.md does not link {unlinked}"


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_links_to_pages_resolve(page: Path):
    """Relative links to pages and directories exist (figures are the lead's to produce; not checked)."""
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8"))
    broken = [t for t in targets if "://" not in t and (t.endswith((".md", "/")) or "." not in Path(t).name)
              and not (page.parent / t).exists()]
    assert not broken, f"{page.name}: broken links {broken}"


# docs/cli.md against the parsers ---------------------------------------------------------------

def parsers() -> dict[str, list[argparse.ArgumentParser]]:
    """docs/cli.md section heading -> the parsers it documents."""
    from ptycho import corpus, simulate
    from ptycho_torch import cli, cli_reconstruct, cli_train

    memmap = cli.build_parser()
    (subcommands,) = [action for action in memmap._actions if isinstance(action, argparse._SubParsersAction)]
    return {
        "ptycho-memmap": list(subcommands.choices.values()),
        "ptycho-train": [cli_train.build_parser()],
        "ptycho-reconstruct": [cli_reconstruct.build_parser()],
        "python -m ptycho.simulate": [simulate._build_parser()],
        "python -m ptycho.corpus": _subparsers(corpus._build_parser()),
    }


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    (subcommands,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return list(subcommands.choices.values())


def cli_sections() -> dict[str, str]:
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    parts = re.split(r"^## `([^`]+)`.*$", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def table_options(section: str) -> set[str]:
    """Options named in the first cell of the section's table rows: | `--opt VALUE`, `-o` | ... |."""
    names = set()
    for row in re.findall(r"^\|([^|\n]*)\|", section, flags=re.M):
        names.update(re.findall(r"`(--?[A-Za-z][\w-]*)", row))
    return names


def test_cli_page_documents_every_option_and_only_real_ones():
    sections = cli_sections()
    problems = []
    for heading, command_parsers in parsers().items():
        section = sections.get(heading)
        if section is None:
            problems.append(f"docs/cli.md has no section '## `{heading}`'")
            continue
        documented = table_options(section)
        real = set()
        for parser in command_parsers:
            for action in parser._actions:
                if isinstance(action, argparse._HelpAction):
                    continue
                if not action.option_strings:
                    name = action.metavar or action.dest
                    if f"`{name}`" not in section:
                        problems.append(f"{heading} {parser.prog}: positional {name} is not documented")
                    continue
                real.update(action.option_strings)
                if not documented & set(action.option_strings):
                    problems.append(f"{parser.prog}: {'/'.join(action.option_strings)} is not in the table")
        problems += [f"{heading}: the table names {name}, which is no option" for name in sorted(documented - real)]
    assert not problems, "\n".join(problems)
