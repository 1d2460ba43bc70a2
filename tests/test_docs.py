"""The docs stay true: docs/architecture.md names every module, and every config key the README names exists."""

import pathlib
import re

import pytest

from lmstruct.config import OPEN_SECTIONS, base_config
from lmstruct.models import resolve_model_config
from lmstruct.models.albef import resolve_albef_config

REPO = pathlib.Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
SECTIONS = tuple(base_config())
FILE_SUFFIXES = ("json", "jsonl", "md", "png", "py")


def package_map_modules(text: str) -> set[str]:
  """Module paths ('lmstruct/train/loop.py') named in the ``` block under '## Package map': a line's leading
  `name/` opens a directory at its indentation, its leading `name.py` tokens are modules in the open directory."""
  block = text.split("## Package map", 1)[1].split("```")[1]
  stack: list[tuple[int, str]] = []
  modules = set()
  for line in block.splitlines():
    tokens = line.split()
    if not tokens:
      continue
    indent = len(line) - len(line.lstrip())
    if tokens[0].endswith("/"):
      stack = [(i, d) for i, d in stack if i < indent] + [(indent, tokens[0])]
      continue
    names = [t for t in tokens[: next((k for k, t in enumerate(tokens) if not t.endswith(".py")), len(tokens))]]
    if names:
      directory = "".join(d for i, d in stack if i < indent)
      modules.update(directory + name for name in names)
  return modules


def test_the_package_map_names_every_module_and_no_other():
  modules = {p.relative_to(REPO).as_posix() for p in (REPO / "lmstruct").rglob("*.py") if p.name != "__init__.py"}
  named = {m for m in package_map_modules((REPO / "docs" / "architecture.md").read_text()) if m.startswith("lmstruct/")}
  assert sorted(modules - named) == [], "modules missing from docs/architecture.md's package map"
  assert sorted(named - modules) == [], "the package map names modules that do not exist"


def test_package_map_parser_on_a_hand_written_map():
  text = "## Package map\n\n```\nlmstruct/\n  a.py     one\n  sub/\n    b.py c.py   two\n  d.py\nother/ x.py\n```\n"
  assert package_map_modules(text) == {"lmstruct/a.py", "lmstruct/sub/b.py", "lmstruct/sub/c.py", "lmstruct/d.py"}


def model_key_accepted(resolve, preset: str, key: str, value: object) -> bool:
  """Whether a model-config resolver takes `key` (with `value`) over `preset`: no 'unknown key' error."""
  try:
    resolve({"preset": preset, key: value})
  except ValueError as error:
    return "unknown key" not in str(error)
  return True


def config_key_exists(path: str) -> bool:
  """Whether `path` ('train.steps', 'model.image.width') is a key of base_config(), or lies in an open section
  and is accepted by its owner (for `model`, the two-tower factory or the ALBEF resolver; every other open section
  takes any key)."""
  node, parts = base_config().to_dict(), path.split(".")
  for i, part in enumerate(parts):
    if isinstance(node, dict) and part in node:
      node = node[part]
      continue
    prefix = ".".join(parts[:i])
    if prefix == "model":
      value: object = 1
      for name in reversed(parts[i + 1 :]):
        value = {name: value}
      return any(
        model_key_accepted(resolve, preset, parts[i], value)
        for resolve, preset in ((resolve_model_config, "test"), (resolve_albef_config, "albef-test"))
      )
    return any(prefix == s or prefix.startswith(s + ".") for s in OPEN_SECTIONS)
  return True


def test_config_key_exists_knows_the_schema_and_the_open_sections():
  assert all(
    config_key_exists(k)
    for k in (
      "train.steps",
      "model.image.width",
      "model.dtype",
      "evals.mine.kind",
      "objective.weights.cyclip",
      "data.train.kind",
      "init.towers",
    )
  )
  assert not any(
    config_key_exists(k)
    for k in (
      "init.checkpoint",
      "train.stpes",
      "model.widht",
      "model.image.patches",
      "optimizer.lr",
      "model.fusion_layer",
    )
  )
  assert config_key_exists("model.fusion_layers")


def readme_dotted_keys(text: str) -> set[str]:
  """Every `section.key…` the text names, as `--config.x.y`, `config.x.y` or a bare dotted path starting with a
  section of base_config() (`train.nonfinite=skip`); file names such as `model.json` are not keys."""
  sections = "|".join(SECTIONS)
  pattern = re.compile(rf"(?<![\w./-])(?:--)?(?:config\.)?((?:{sections})(?:\.[A-Za-z_]\w*)+)")
  return {m for m in pattern.findall(text) if m.rsplit(".", 1)[1] not in FILE_SUFFIXES}


def readme_section_keys(text: str) -> dict[str, set[str]]:
  """{section: keys} from the '- `section`: `key`, `key.{a,b}`, …' bullets of the README's Configs section; text in
  parentheses (values, explanations) is left out."""
  configs = text.split("\n## Configs", 1)[1].split("\n## ", 1)[0]
  sections: dict[str, set[str]] = {}
  for bullet in re.findall(r"^- (`.*?)(?=^- |^\S|\Z)", configs, flags=re.M | re.S):
    while re.search(r"\([^()]*\)", bullet):
      bullet = re.sub(r"\([^()]*\)", "", bullet)
    section, *keys = re.findall(r"`([^`]+)`", bullet)
    expanded = set()
    for key in keys:
      stem, _, braces = key.partition(".{")
      expanded.update(f"{stem}.{k.strip()}" for k in braces.rstrip("}").split(",")) if braces else expanded.add(key)
    sections[section] = expanded
  return sections


def test_readme_parsers_on_hand_written_text():
  assert without_section("a\n## Errors\nx\n## B\nb\n", "Errors") == "a\n## B\nb\n"
  assert without_section("a\n## Errors\nx\n", "Errors") == "a"
  text = (
    "Use `--config.train.steps=3` or `train.log_every`, see `model.json` and config.init.towers.\n\n"
    "## Configs\n\n- `train`: `steps` (0 = `x`), `log_every`;\n- `model`: `image.{width, heads}`, `remat`.\n"
    "\n## Next\n- `no`: `more`\n"
  )
  assert readme_dotted_keys(text) == {"train.steps", "train.log_every", "init.towers"}
  assert readme_section_keys(text) == {
    "train": {"steps", "log_every"},
    "model": {"image.width", "image.heads", "remat"},
  }


def without_section(text: str, title: str) -> str:
  """`text` less its '## title' section."""
  head, _, rest = text.partition(f"\n## {title}\n")
  return head + ("\n## " + rest.split("\n## ", 1)[1] if "\n## " in rest else "")


def test_every_config_key_the_readme_names_exists():
  sections = readme_section_keys(README)
  # the Errors section shows misspelled keys on purpose
  named = readme_dotted_keys(without_section(README, "Errors")) | {
    f"{s}.{k}" for s, keys in sections.items() for k in keys
  }
  assert set(sections) == set(SECTIONS), "the README's Configs section documents every section of base_config()"
  assert sorted(k for k in named if not config_key_exists(k)) == []


SCHEMA = base_config().to_dict()


@pytest.mark.parametrize("section", [s for s, v in SCHEMA.items() if isinstance(v, dict) and s not in OPEN_SECTIONS])
def test_the_readme_documents_every_key_of_each_closed_section(section):
  documented = readme_section_keys(README)[section]
  assert sorted(set(SCHEMA[section]) - documented) == []
