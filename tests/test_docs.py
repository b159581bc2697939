"""The documentation points at things that exist.

README.md and docs/*.md (and bench/README.md) are checked for: relative links
that reach a file and, with `#anchor`, a heading of it; every docs page being
reachable from README; `dbmail.x.y` / `mailgate.x.y` names that import (a
module, or an attribute of one); repository file paths that exist; and
README's Layout naming every folder of the tree, once, and nothing else.
"""

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# A dotted name starts a word: "mailsite.tracking.dbmail" (an exchange name) is not one.
DOTTED = re.compile(r"(?<![\w.])((?:dbmail|mailgate)(?:\.[A-Za-z_]\w*)+)")
# A repository path starts a word too: /srv/mailsite/mailgate/pipe.py is a server path.
REPO_PATH = re.compile(r"(?<![\w/.~$-])((?:dbmail|mailgate|mailsite|templates|tests|bench|scripts|docs)/[\w./-]*)")


def page_id(path):
    return str(path.relative_to(ROOT))


def prose_lines(text):
    """The lines outside fenced code blocks (a `# main.cf` in a block is no heading, a [x](y) no link)."""
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def slug(heading):
    """GitHub's anchor for a heading: its text, lower-case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path):
    seen = {}
    result = set()
    for line in prose_lines(path.read_text()):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            result.add(base if n == 0 else f"{base}-{n}")
    return result


def links(path):
    """(target file, anchor or '') for every relative link on the page."""
    for line in prose_lines(path.read_text()):
        for target in LINK.findall(CODE_SPAN.sub("", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            yield (path if not file_part else (path.parent / file_part).resolve()), anchor, target


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_links_reach_a_file_and_a_heading(page):
    broken = []
    for target, anchor, written in links(page):
        if not target.exists():
            broken.append(f"{written}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{written}: no heading #{anchor} in {page_id(target)}")
    assert not broken, f"{page_id(page)}: " + "; ".join(broken)


def test_every_docs_page_is_reachable_from_readme():
    reached, todo = set(), [README.resolve()]
    while todo:
        page = todo.pop()
        if page in reached or page.suffix != ".md" or not page.exists():
            continue
        reached.add(page)
        todo.extend(target for target, _, _ in links(page))
    unreached = [page_id(p) for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in reached]
    assert not unreached, f"not reachable from README.md by links: {unreached}"


def resolve(dotted):
    """Import the longest module prefix of `dotted`, then look the rest up as attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):  # this prefix is not a module; try a shorter one
                continue
            raise  # the module exists but one of its own imports is missing: a real error
        for attr in parts[i:]:
            obj = getattr(obj, attr)  # AttributeError: the name is not there
        return obj
    raise ModuleNotFoundError(dotted)


def dotted_names(path):
    return sorted(set(DOTTED.findall(path.read_text())))


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_dotted_names_import(page):
    missing = []
    for name in dotted_names(page):
        try:
            resolve(name)
        except (ImportError, AttributeError) as exc:
            missing.append(f"{name} ({type(exc).__name__}: {exc})")
    assert not missing, f"{page_id(page)} names what does not import: " + "; ".join(missing)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_repository_paths_exist(page):
    paths = {m.rstrip(".,:;") for m in REPO_PATH.findall(page.read_text())}
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"{page_id(page)} names paths that do not exist: {missing}"


def layout_folders():
    """The first word of each line of the code block under README's `## Layout`."""
    text = README.read_text()
    section = text.split("\n## Layout\n", 1)[1]
    block = section.split("```", 2)[1]
    return [line.split()[0] for line in block.splitlines()[1:] if line.strip()]


def tree_folders():
    """The folders a newcomer must find: the top level (minus what git ignores), and every folder of
    dbmail/ and mailgate/ that holds code or sits directly in an app, without caches and migrations."""
    ignored = {line.strip().strip("/") for line in (ROOT / ".gitignore").read_text().splitlines() if line.strip()}
    top = {p for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in ignored}
    apps = [ROOT / "dbmail", ROOT / "mailgate"]
    inner = set()
    for app in apps:
        for p in app.rglob("*"):
            if not p.is_dir() or {"__pycache__", "migrations"} & set(p.relative_to(ROOT).parts):
                continue
            if p.parent == app or (p / "__init__.py").exists():
                inner.add(p)
    return {f"{p.relative_to(ROOT)}/" for p in top | inner}


def test_layout_is_the_tree_one_line_per_folder():
    listed = layout_folders()
    assert len(listed) == len(set(listed)), f"listed twice: {sorted({f for f in listed if listed.count(f) > 1})}"
    assert not [f for f in listed if not (ROOT / f).is_dir()], "Layout names folders that do not exist"
    # A folder whose only content is a listed folder (dbmail/management/ for its commands/) counts as listed.
    unlisted = sorted(f for f in tree_folders() if not any(name.startswith(f) for name in listed))
    assert not unlisted, f"README's Layout misses {unlisted}"


def test_the_checks_catch_what_they_are_for(tmp_path):
    """The helpers above fail on a broken link, a missing anchor and a dotted name that is not there."""
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## A section (`--sid`)\n\n```\n# not a heading\n```\n")
    page.write_text(
        "[ok](other.md#a-section---sid) [no file](gone.md) [no anchor](other.md#not-a-heading) "
        "`[in code](gone.md)` [web](https://example.org/x)\n"
    )
    found = {(t.name, a) for t, a, _ in links(page)}
    assert found == {("other.md", "a-section---sid"), ("gone.md", ""), ("other.md", "not-a-heading")}
    assert anchors(tmp_path / "other.md") == {"other", "a-section---sid"}
    assert resolve("dbmail.backends.SMTPBackend").__name__ == "SMTPBackend"
    assert resolve("dbmail.intake.outbox").__name__ == "dbmail.intake.outbox"
    with pytest.raises(AttributeError):
        resolve("dbmail.intake.outbox.no_such_function")
    with pytest.raises((ImportError, AttributeError)):
        resolve("dbmail.no_such_module.thing")
    assert DOTTED.findall("mailsite.tracking.dbmail and `from mailgate.gate.routing import x`.") == [
        "mailgate.gate.routing"
    ]
