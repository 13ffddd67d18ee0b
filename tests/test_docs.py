"""The docs are tested: every relative link of every Markdown file resolves (to a file, and to a
heading where it names one), and every `ltpipe ...` command line in their shell code blocks
parses: the command exists, its options exist and take the values given."""

import re
import shlex
from pathlib import Path

import click
import pytest

from ltpipe.train.cli import main

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".git", ".venv", "build", "dist", ".pytest_cache", "node_modules"}
DOCS = sorted(p for p in ROOT.rglob("*.md")
              if not SKIP_DIRS & set(p.relative_to(ROOT).parts)
              and not any(part.endswith(".egg-info") for part in p.parts))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file: lower case, punctuation dropped (but - and
    _), spaces to hyphens."""
    text = FENCE.sub("", path.read_text())
    heads = re.findall(r"^#{1,6} +(.+?) *#*$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


def relative_links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text())  # code blocks hold no links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def test_the_docs_are_found():
    names = {str(p.relative_to(ROOT)) for p in DOCS}
    assert {"README.md", "train/METHODS.md", "bench/README.md"} <= names


def broken_links(doc: Path) -> list[str]:
    broken = []
    for target in relative_links(doc):
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    assert not broken_links(doc)


def test_the_link_check_finds_missing_files_and_headings(tmp_path):
    (tmp_path / "a.md").write_text("# Top\n## The `ltpipe x` part\n")
    (tmp_path / "b.md").write_text(
        "[ok](a.md#the-ltpipe-x-part) [here](#local) [web](https://x.org/y)\n## Local\n"
        "[gone](c.md) [no heading](a.md#nope)\n```\n[in code](z.md)\n```\n")
    assert broken_links(tmp_path / "b.md") == ["c.md: no such file",
                                               "a.md#nope: no heading #nope in a.md"]


def test_ci_runs_the_readme_commands_word_for_word():
    """README's two fresh-machine commands (the main job, the tests) are what CI runs."""
    blocks = [body for lang, body in FENCE.findall((ROOT / "README.md").read_text())
              if lang == "bash" and body.lstrip().startswith("pip install")]
    assert len(blocks) == 2, blocks
    ci = (ROOT / ".ci" / "run").read_text()
    for body in blocks:
        assert body.strip() in ci, body


def command_lines(path: Path) -> list[list[str]]:
    """The argument lists of every ltpipe command in the file's shell code blocks
    (continuations joined, chains split; `torchrun ... -m ltpipe.train ARGS` is `train ARGS`)."""
    found = []
    for lang, body in FENCE.findall(path.read_text()):
        if lang not in ("bash", "sh", "shell", "console"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|\|\||;|\|", line):
                words = shlex.split(part, comments=True)
                if words[:1] == ["ltpipe"]:
                    found.append(words[1:])
                elif "ltpipe.train" in words and words[words.index("ltpipe.train") - 1] == "-m":
                    found.append(["train", *words[words.index("ltpipe.train") + 1:]])
    return found


def check_parses(words: list[str]) -> None:
    """Parse as click would, without running anything or touching the files named."""
    command, parent, name = main, None, "ltpipe"
    while True:
        ctx = click.Context(command, info_name=name, parent=parent)
        _, rest, _ = command.make_parser(ctx).parse_args(list(words))
        if not isinstance(command, click.Group):
            extra_ok = command.context_settings.get("ignore_unknown_options") or any(
                isinstance(p, click.Argument) and p.nargs == -1 for p in command.params)
            if rest and not extra_ok:
                raise click.UsageError(f"unexpected extra arguments {rest}")
            return
        if not rest:
            raise click.UsageError(f"{name}: no subcommand")
        sub = command.get_command(ctx, rest[0])
        if sub is None:
            raise click.UsageError(f"{name}: no command {rest[0]!r}")
        command, parent, name, words = sub, ctx, rest[0], rest[1:]


LINES = [(doc, words) for doc in DOCS for words in command_lines(doc)]


def test_the_readme_commands_are_checked():
    readme = [w for doc, w in LINES if doc.name == "README.md" and doc.parent == ROOT]
    assert {w[0] for w in readme} >= {"shard", "train"}


@pytest.mark.parametrize("doc,words", LINES,
                         ids=[f"{d.relative_to(ROOT)}: {' '.join(w)[:60]}" for d, w in LINES])
def test_every_documented_command_parses(doc, words):
    try:
        check_parses(words)
    except click.UsageError as exc:
        pytest.fail(f"{doc.relative_to(ROOT)}: ltpipe {' '.join(words)}: {exc.format_message()}")


@pytest.mark.parametrize("words,message", [
    (["train", "out/x", "--bogus"], "No such option"),
    (["train", "out/x", "--mixer"], "requires an argument"),
    (["nosuch"], "no command"),
    (["inspect", "a", "b"], "unexpected extra arguments"),
])
def test_the_check_refuses_what_would_not_run(words, message):
    with pytest.raises(click.UsageError, match=message):
        check_parses(words)
