"""Every `curate ...` command that Curate shows a user (UI hints, CLI help and messages, README.md and docs/*.md)
parses with the real CLI: Click's parser walks the command groups and binds every option and argument, nothing is
executed."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _cli():
    import typer.main

    from curate.engine.cli import app

    return typer.main.get_command(app)


def parse(line: str):
    """Parse ``curate ...`` as the CLI would (groups resolved, options bound); returns the leaf command's context."""
    args = shlex.split(line, comments=True)
    assert args and args[0] == "curate", line
    cmd, name, args, parent = _cli(), "curate", args[1:], None
    while True:
        ctx = cmd.make_context(name, list(args), parent=parent, resilient_parsing=False)
        if not hasattr(cmd, "commands"):
            return ctx
        rest = [*ctx._protected_args, *ctx.args]
        assert rest, f"{line!r}: `{ctx.command_path}` needs a command"
        name, sub, args = cmd.resolve_command(ctx, rest)
        cmd, parent = sub, ctx


def check_synopsis(text: str, allow_group: bool = False) -> None:
    """A usage synopsis (``curate decide SAMPLE_ID keep|relabel [--label L]``): each command path resolves and each
    option it names belongs to that command."""
    cli = _cli()
    words = text.replace("\\|", "|").split()
    assert words[0] == "curate", text
    leaves, used = [cli], 1
    for w in words[1:]:
        if w.startswith(("-", "[")) or not all(hasattr(c, "commands") for c in leaves):
            break
        alts = w.split("|")
        if not all(a in leaves[0].commands for a in alts):
            break
        leaves, used = [c.commands[a] for c in leaves for a in alts], used + 1
    assert not allow_group or used == len(words), f"{text!r}: no such command {words[used]!r}"
    for opt in re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text.replace("\\|", "|")):
        for leaf in leaves:
            names = {n for p in leaf.params for n in [*p.opts, *p.secondary_opts]}
            assert opt in names, f"{text!r}: `{leaf.name}` has no option {opt}"
    assert allow_group or all(not hasattr(c, "commands") for c in leaves), f"{text!r} names a group, not a command"


def check(text: str) -> None:
    """A runnable command must parse; a synopsis (brackets, alternatives) or a bare command name
    (\`curate ingest\` in prose) must name real commands and options."""
    if re.fullmatch(r"curate( [a-z][\w-]*)+", text):  # a command named in prose, e.g. `curate audit`
        check_synopsis(text, allow_group=True)
    elif re.search(r"[\[|]|\.\.\.", text):
        check_synopsis(text)
    else:
        parse(re.sub(r"\b[A-Z_]*ID\b", "1", text))  # `curate undo DECISION_ID`: an id placeholder is a number


# ------------------------------------------------------------------------------------------- the strings
DOCS = ["README.md", *sorted(f"docs/{f.name}" for f in (ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = ("", "bash", "sh", "shell", "console")  # fenced blocks whose `curate ...` lines are commands


def doc_commands(text: str) -> list[str]:
    """`curate ...` lines of the shell code blocks and inline `curate ...` code spans of a Markdown text.

    Fences are paired in order and the opening fence's language decides: the lines of a shell block (no language,
    bash, sh, console) are commands; a ```text block holds neither commands nor code spans (commands of a CLI that
    is not there yet are written in one)."""
    found, spans = [], []
    pos = 0
    for m in re.finditer(r"^```([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", text, re.S | re.M):
        spans.append(text[pos:m.start()])
        pos = m.end()
        if m.group(1) in SHELL_BLOCKS:
            found += [ln.strip() for ln in m.group(2).splitlines() if ln.strip().startswith("curate ")]
        if m.group(1) != "text":
            spans.append(m.group(2))
    spans.append(text[pos:])
    for part in spans:  # inline code (a \` is a literal backtick, not code)
        found += re.findall(r"(?<!\\)`(curate [^`]+)`", part)
    return [c for c in dict.fromkeys(found) if "COMMAND" not in c]


def readme_commands() -> list[tuple[str, str]]:
    """``(file, command)`` for every command in README.md and docs/*.md."""
    return [(name, c) for name in DOCS for c in doc_commands((ROOT / name).read_text())]


def source_commands() -> list[tuple[str, str]]:
    """Backquoted `curate ...` in the Python sources (messages, docstrings), f-string fields read as a value."""
    out = []
    for folder in ("engine", "indexes", "app"):
        for f in sorted((ROOT / folder).rglob("*.py")):
            for c in re.findall(r"`(curate [^`\n]+)`", f.read_text()):
                if "COMMAND" not in c:
                    out.append((f"{f.relative_to(ROOT)}", re.sub(r"\{[^}]*\}", "X", c)))
    return list(dict.fromkeys(out))


def test_the_parser_rejects_what_the_cli_rejects():
    """The check can fail: the guesses of issue 15 do not parse (except `curate audit label-issues`, which now runs
    the registered label_issues analysis)."""
    parse("curate audit label-issues -p myproj")
    for bad in ("curate audit -p myproj", "curate audit label-errors", "curate embed --encodr x", "curate audit"):
        with pytest.raises(Exception):
            parse(bad)
    for bad in ("curate audit labels [--topp N]", "curate audit label-errors", "curate audit|cluster [--k K]"):
        with pytest.raises(AssertionError):
            check(bad)
    ctx = parse("curate audit all -p 'my proj' --cluster-k 3")
    assert ctx.params["project"] == Path("my proj") and ctx.params["cluster_k"] == 3


def test_every_ui_hint_parses_and_names_the_project(tmp_path):
    from curate.app import hints

    root = str(tmp_path / "my project")
    all_hints = hints.all_hints(root)
    cmds = [c for h in all_hints for c in re.findall(r"`(curate [^`]+)`", h)]
    assert len(cmds) >= len(all_hints)
    for c in cmds:
        if c != "curate demo":
            assert parse(c).params["project"] == Path(root), c
        else:
            parse(c)


def test_views_show_no_hand_written_commands():
    """Pages build their hints with app.hints (covered above), never a literal `curate ...` string."""
    for f in sorted((ROOT / "app" / "views").glob("*.py")):
        assert not re.search(r"curate \w", f.read_text()), f


def test_getting_started_and_help_examples_parse():
    from curate.engine.cli import GETTING_STARTED

    assert [c.split()[1] for c, _ in GETTING_STARTED] == ["demo", "ingest", "audit", "ui", "export"]
    for c, _ in GETTING_STARTED:
        parse(c)
    cli = _cli()
    commands = [(n, c) for n, c in cli.commands.items() if not hasattr(c, "commands")]
    commands += [(f"audit {n}", c) for n, c in cli.commands["audit"].commands.items()]
    assert len(commands) >= 20
    for name, c in commands:
        examples = re.findall(r"Example: (curate .+)", c.help or "")
        assert len(examples) == 1, name
        assert parse(examples[0]).command_path == f"curate {name}", name


@pytest.mark.parametrize("where,line", readme_commands())
def test_readme_command_parses(where, line):
    check(line)


def test_readme_has_commands():
    found = readme_commands()
    assert len(found) > 60
    assert sum(w == "README.md" for w, _ in found) >= 5  # the CLI tour
    assert {"docs/cli.md", "docs/analyses.md", "docs/formats.md", "docs/scaling.md"} <= {w for w, _ in found}


def test_doc_commands_reads_shell_blocks_and_inline_code_but_not_text_blocks():
    """The extraction the docs test relies on: fences pair in order, a ```text block is skipped whole."""
    text = ("Run `curate status` first.\n```text\ncurate audit nosuch\n`curate audit nosuch2`\n```\n"
            "then\n```bash\ncurate ui -p x   # serve\n```\n```python\nx = 1  # see `curate index`\n"
            "curate = 2\n```\nand `curate demo`.\n")
    assert sorted(doc_commands(text)) == ["curate demo", "curate index", "curate status", "curate ui -p x   # serve"]
    with pytest.raises(Exception):
        for c in doc_commands("```bash\ncurate audit nosuch -p x\n```\n"):
            check(c)


@pytest.mark.parametrize("where,line", source_commands())
def test_source_message_command_parses(where, line):
    check(line)
