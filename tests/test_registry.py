"""Registry: spec parsing, discovery through entry points, broken and duplicate plugins."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from stainadapt import registry
from stainadapt.errors import PluginError


@pytest.mark.parametrize(
    ("spec", "name", "options"),
    [
        ("single", "single", {}),
        ("single:", "single", {}),
        ("single:layer=f9", "single", {"layer": "f9"}),
        (
            "single:layer=f9,weight=0.05",
            "single",
            {"layer": "f9", "weight": 0.05},
        ),
        ("x:a=1,b=true,c=off,d=none,e=1e-3", "x", {"a": 1, "b": True, "c": False, "d": None,
                                                   "e": 1e-3}),
        (" mirrored : side = encoder ", "mirrored", {"side": "encoder"}),
    ],
)
def test_parse_spec_good(spec, name, options):
    assert registry.parse_spec(spec) == (name, options)


@pytest.mark.parametrize("spec", ["", "   ", ":a=1", "x:a", "x:=1", "x:a=1,a=2"])
def test_parse_spec_bad(spec):
    with pytest.raises(PluginError):
        registry.parse_spec(spec)


@pytest.fixture
def fake_plugins(tmp_path, monkeypatch):
    """Install throw-away distributions (dist-info + module) visible to importlib.metadata."""

    def install(dist: str, entry_points: dict[str, dict[str, str]], module: str = "") -> None:
        # the folder name carries the normalised name (dashes would split it)
        info = tmp_path / f"{dist.replace('-', '_')}-1.2.3.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
        lines = []
        for group, eps in entry_points.items():
            lines.append(f"[{group}]")
            lines += [f"{k} = {v}" for k, v in eps.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        if module:
            name, code = module.split("\n", 1)
            (tmp_path / f"{name}.py").write_text(textwrap.dedent(code))
        registry.clear_cache()

    monkeypatch.syspath_prepend(str(tmp_path))
    registry.clear_cache()
    yield install
    registry.clear_cache()
    for mod in [m for m in sys.modules if m.startswith("fakeplug")]:
        del sys.modules[mod]


GOOD = """fakeplug_good
def make(alpha: float = 1.0, label: str = "x"):
    return ("made", alpha, label)

def with_context(features, depth: int = 2):
    return (features, depth)
"""


def test_create_parses_and_validates_options(fake_plugins):
    fake_plugins(
        "fake-good",
        {"stainadapt.normalizers": {"fakegood": "fakeplug_good:make"},
         "stainadapt.discriminators": {"fakectx": "fakeplug_good:with_context"}},
        GOOD,
    )
    assert registry.create("normalizers", "fakegood:alpha=0.5") == ("made", 0.5, "x")
    assert registry.create("normalizers", "fakegood", label="y") == ("made", 1.0, "y")
    # context is positional and not an option
    assert registry.create("discriminators", "fakectx:depth=3", {"f0": 1}) == ({"f0": 1}, 3)
    with pytest.raises(PluginError, match=r"no option 'beta'.*accepted options: alpha=1.0"):
        registry.create("normalizers", "fakegood:beta=2")
    with pytest.raises(PluginError, match="no option 'features'"):
        registry.create("discriminators", "fakectx:features=1", {})


def test_unknown_plugin_lists_known(fake_plugins):
    fake_plugins("fake-good", {"stainadapt.normalizers": {"fakegood": "fakeplug_good:make"}},
                 GOOD)
    with pytest.raises(PluginError, match=r"unknown normalizers plugin 'nope'; known: .*fakegood"):
        registry.create("normalizers", "nope")


def test_broken_plugin_is_reported_and_others_work(fake_plugins):
    fake_plugins("fake-good", {"stainadapt.normalizers": {"fakegood": "fakeplug_good:make"}},
                 GOOD)
    fake_plugins(
        "fake-broken",
        {"stainadapt.normalizers": {"fakebroken": "fakeplug_broken:make"}},
        "fakeplug_broken\nimport does_not_exist_anywhere\n",
    )
    infos = {i.name: i for i in registry.list_plugins("normalizers")}
    assert infos["fakebroken"].status == "error"
    assert "does_not_exist_anywhere" in infos["fakebroken"].error
    assert infos["fakebroken"].package == "fake-broken"
    assert infos["fakegood"].status == "ok"
    assert registry.create("normalizers", "fakegood")[0] == "made"
    with pytest.raises(PluginError, match="fake-broken.*failed to load"):
        registry.create("normalizers", "fakebroken")


def test_duplicate_names_name_both_packages(fake_plugins):
    fake_plugins("fake-good", {"stainadapt.normalizers": {"twin": "fakeplug_good:make"}}, GOOD)
    fake_plugins("fake-other", {"stainadapt.normalizers": {"twin": "fakeplug_good:with_context"}})
    with pytest.raises(PluginError, match=r"'twin' is registered by two packages.*fake-"):
        registry.create("normalizers", "twin")
    statuses = [i.status for i in registry.list_plugins("normalizers") if i.name == "twin"]
    assert statuses == ["duplicate", "duplicate"]


def test_disable_by_env(fake_plugins, monkeypatch):
    monkeypatch.setenv("STAINADAPT_DISABLE_PLUGINS", "fakegood")
    fake_plugins("fake-good", {"stainadapt.normalizers": {"fakegood": "fakeplug_good:make"}},
                 GOOD)
    assert "fakegood" not in registry.plugin_names("normalizers")
    with pytest.raises(PluginError, match="disabled"):
        registry.create("normalizers", "fakegood")


def test_listing_is_lazy(fake_plugins):
    fake_plugins("fake-good", {"stainadapt.normalizers": {"fakegood": "fakeplug_good:make"}},
                 GOOD)
    registry.list_plugins("normalizers", load=False)
    assert "fakeplug_good" not in sys.modules
    registry.create("normalizers", "fakegood")
    assert "fakeplug_good" in sys.modules


def test_builtins_are_declared_as_entry_points():
    registry.clear_cache()
    names = {(i.group, i.name): i for i in registry.list_plugins(load=False)}
    for key in [("backbones", "resnet34"), ("discriminators", "mirrored"),
                ("discriminators", "shape"), ("normalizers", "macenko")]:
        assert key in names
        assert names[key].package == "stainadapt"


def test_unknown_group():
    with pytest.raises(PluginError, match="unknown plugin group"):
        registry.plugin_names("losses")


def test_root_finds_tmp_path_isolation(tmp_path: Path):
    # Sanity: the fixture's distributions do not leak into other tests.
    registry.clear_cache()
    assert "fakegood" not in registry.plugin_names("normalizers")


def test_cli_lists_broken_plugin_with_exit_0(fake_plugins):
    import json

    from typer.testing import CliRunner

    from stainadapt.cli.app import app

    fake_plugins(
        "fake-broken",
        {"stainadapt.normalizers": {"fakebroken": "fakeplug_broken:make"}},
        "fakeplug_broken\nraise RuntimeError('plugin exploded at import')\n",
    )
    result = CliRunner().invoke(app, ["plugins", "--json", "--group", "normalizers"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert rows["fakebroken"]["status"] == "error"
    assert "plugin exploded at import" in rows["fakebroken"]["error"]
    assert rows["macenko"]["status"] == "ok"
