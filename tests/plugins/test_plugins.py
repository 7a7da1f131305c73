"""Plugin discovery through real entry points, broken plugins, EMBEDKIT_LOAD_PLUGINS."""

from __future__ import annotations

from importlib.metadata import entry_points

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import embedkit
import embedkit.cli
import embedkit.cli.app
from embedkit.plugins import plugin_names


def mean_color(image: Image.Image, size: int = 8) -> np.ndarray:
    """What ``ektest`` should return for one image, computed independently with numpy."""
    small = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return (np.asarray(small, dtype=np.float64) / 255).mean(axis=(0, 1))


def run_cli(*args: str):
    result = CliRunner().invoke(embedkit.cli.get_cli(), list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def backbone_lines(stdout: str) -> dict[str, list[str]]:
    """``embedkit backbones`` table rows keyed by backbone name: ``{name: [plugin, *desc]}``."""
    lines = stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["BACKBONE", "PLUGIN", "DESCRIPTION"]
    return {line.split()[0]: line.split()[1:] for line in lines[1:]}


RAISING_SOURCE = """
from embedkit import hookimpl

@hookimpl
def register_backbones(register):
    raise RuntimeError("boom from the hook")
"""

IMPORT_ERROR_SOURCE = """
import embedkit_no_such_module_xyz  # noqa

from embedkit import hookimpl

@hookimpl
def register_backbones(register):
    pass
"""


def test_entry_point_plugin_is_discovered_and_encodes(ektest_plugin, rng_images):
    assert ("ektest", "ek_testplugin") in [
        (ep.name, ep.value) for ep in entry_points(group="embedkit")
    ]
    assert "ektest" in plugin_names()
    assert "timm" in plugin_names()
    by_name = {e.name: e for e in embedkit.list_backbones()}
    assert by_name["ektest"].plugin == "ektest"
    assert not by_name["ektest"].is_prefix
    assert by_name["ekscale/"].is_prefix
    assert by_name["timm/"].plugin == "timm"
    assert embedkit.broken_plugins() == {}

    backbone = embedkit.load_backbone("ektest", device="cpu")
    assert type(backbone).__module__ == "ek_testplugin"
    assert (backbone.name, backbone.dim) == ("ektest", 3)
    latents = backbone.encode_images(rng_images)
    assert latents.shape == (4, 3)
    assert latents.dtype == torch.float32
    expected = np.stack([mean_color(im) for im in rng_images])
    np.testing.assert_allclose(latents.numpy(), expected, atol=1e-6)
    assert backbone.seen == [(True, "cpu", (4, 3, 8, 8))]

    # the prefix factory gets the rest of the name and the options
    scaled = embedkit.load_backbone("ekscale/2.5", size=4)
    assert scaled.name == "ekscale/2.5"
    np.testing.assert_allclose(
        scaled.encode_images(rng_images[:2]).numpy(),
        2.5 * np.stack([mean_color(im, 4) for im in rng_images[:2]]),
        atol=1e-5,
    )


def test_cli_backbones_lists_plugin_backbones(ektest_plugin):
    result = run_cli("backbones")
    assert result.exit_code == 0
    rows = backbone_lines(result.stdout)
    assert rows["ektest"][0] == "ektest"
    assert " ".join(rows["ektest"][1:]) == "mean colour (test plugin)"
    assert rows["ekscale/"][0] == "ektest"
    assert rows["timm/"][0] == "timm"
    assert list(rows) == sorted(rows)
    assert "warning" not in result.stderr

    result = run_cli("plugins")
    assert result.exit_code == 0
    assert {"ektest", "timm"} <= set(result.stdout.split())


def test_import_error_plugin_is_reported_and_others_work(
    install_plugin, ektest_plugin, fresh_plugins
):
    fresh_plugins.setenv("EMBEDKIT_LOAD_PLUGINS", "ektest,timm,ekimportbroken")
    install_plugin("ek_importbroken", IMPORT_ERROR_SOURCE, "ekimportbroken")
    broken = embedkit.broken_plugins()
    assert list(broken) == ["ekimportbroken"]
    assert broken["ekimportbroken"].startswith("failed to load (ek_importbroken): ")
    assert "ModuleNotFoundError" in broken["ekimportbroken"]
    assert "embedkit_no_such_module_xyz" in broken["ekimportbroken"]
    assert "ekimportbroken" not in plugin_names()

    # the other plugins still load and work
    assert embedkit.load_backbone("ektest").dim == 3
    assert embedkit.load_backbone("timm/resnet18", pretrained=False).dim == 512

    result = run_cli("backbones")
    assert result.exit_code == 0
    assert {"ektest", "ekscale/", "timm/"} <= set(backbone_lines(result.stdout))
    warning = result.stderr.strip()
    assert warning.startswith("warning: plugin 'ekimportbroken' is broken: failed to load")
    assert "ModuleNotFoundError" in warning
    assert len(warning.splitlines()) == 1


def test_raising_hook_is_reported_and_others_work(install_plugin, ektest_plugin, fresh_plugins):
    fresh_plugins.setenv("EMBEDKIT_LOAD_PLUGINS", "ektest,timm,ekraises")
    install_plugin("ek_raises", RAISING_SOURCE, "ekraises")
    # reported without listing backbones first: broken_plugins() runs the hook itself
    assert embedkit.broken_plugins() == {
        "ekraises": "hook register_backbones failed: RuntimeError: boom from the hook"
    }
    assert "ekraises" in plugin_names()  # it imported; only its hook failed
    names = {e.name for e in embedkit.list_backbones()}
    assert {"ektest", "ekscale/", "timm/"} <= names
    assert embedkit.load_backbone("timm/resnet18", pretrained=False).dim == 512

    result = run_cli("backbones")
    assert result.exit_code == 0
    assert result.stderr.strip() == (
        "warning: plugin 'ekraises' is broken: "
        "hook register_backbones failed: RuntimeError: boom from the hook"
    )
    result = run_cli("plugins")
    assert "warning: plugin 'ekraises' is broken" in result.stderr


def test_load_plugins_env_restricts_plugins(install_plugin, ektest_plugin, fresh_plugins):
    monkeypatch = fresh_plugins
    install_plugin("ek_importbroken", IMPORT_ERROR_SOURCE, "ekimportbroken")

    monkeypatch.setenv("EMBEDKIT_LOAD_PLUGINS", "ektest")
    embedkit.plugins.reset_plugins()
    assert plugin_names() == ["ektest"]
    assert [e.name for e in embedkit.list_backbones()] == ["ekscale/", "ektest"]
    assert embedkit.broken_plugins() == {}  # the broken one was never imported
    with pytest.raises(embedkit.BackboneNotFound):
        embedkit.load_backbone("timm/resnet18", pretrained=False)

    monkeypatch.setenv("EMBEDKIT_LOAD_PLUGINS", " timm , ekimportbroken,")
    embedkit.plugins.reset_plugins()
    assert plugin_names() == ["timm"]
    assert list(embedkit.broken_plugins()) == ["ekimportbroken"]
    with pytest.raises(embedkit.BackboneNotFound):
        embedkit.load_backbone("ektest")

    monkeypatch.setenv("EMBEDKIT_LOAD_PLUGINS", "")
    embedkit.plugins.reset_plugins()
    assert plugin_names() == []
    assert embedkit.list_backbones() == []
    result = run_cli("backbones")
    assert result.exit_code == 0
    assert result.stdout.strip().split() == ["BACKBONE", "PLUGIN", "DESCRIPTION"]

    monkeypatch.delenv("EMBEDKIT_LOAD_PLUGINS")
    embedkit.plugins.reset_plugins()
    assert {"ektest", "timm"} <= set(plugin_names())


def dup_source(tag: str) -> str:
    return f"""
from embedkit import hookimpl

@hookimpl
def register_backbones(register):
    register("ekdup", lambda **options: {tag!r}, description="from {tag}")
"""


def test_duplicate_name_is_reported_for_the_second_plugin(install_plugin, fresh_plugins):
    fresh_plugins.setenv("EMBEDKIT_LOAD_PLUGINS", "ekdupone,ekduptwo")
    install_plugin("ek_dup_one", dup_source("one"), "ekdupone")
    install_plugin("ek_dup_two", dup_source("two"), "ekduptwo")
    # plugins load (and register) in entry-point discovery order
    order = [ep.name for ep in entry_points(group="embedkit") if ep.name.startswith("ekdup")]
    first, second = order
    by_name = {e.name: e for e in embedkit.list_backbones()}
    assert by_name["ekdup"].plugin == first
    assert embedkit.broken_plugins() == {
        second: (
            "hook register_backbones failed: PluginError: "
            f"backbone 'ekdup' is already registered by plugin {first!r}"
        )
    }
    tag = {"ekdupone": "one", "ekduptwo": "two"}[first]
    assert embedkit.load_backbone("ekdup") == tag
    result = run_cli("backbones")
    assert f"warning: plugin {second!r} is broken" in result.stderr
    assert "already registered by plugin" in result.stderr


COMMAND_SOURCE = """
import click

from embedkit import hookimpl

@hookimpl
def register_commands(cli):
    @cli.command("ekhello")
    @click.argument("who")
    def ekhello(who):
        click.echo(f"hello {who} from a plugin")
"""


def test_register_commands_hook_adds_cli_command(install_plugin, fresh_plugins):
    monkeypatch = fresh_plugins
    monkeypatch.setenv("EMBEDKIT_LOAD_PLUGINS", "ekcommand")
    original = embedkit.cli.cli
    install_plugin("ek_command", COMMAND_SOURCE, "ekcommand")
    # a private copy of the CLI group, so the plugin command does not leak into other tests
    group = click.Group(
        "embedkit", commands=dict(embedkit.cli.cli.commands), params=embedkit.cli.cli.params
    )
    group.callback = embedkit.cli.cli.callback
    monkeypatch.setattr(embedkit.cli.app, "cli", group)
    result = CliRunner().invoke(embedkit.cli.get_cli(), ["ekhello", "world"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "hello world from a plugin\n"
    assert "ekhello" in group.commands
    assert "ekhello" not in original.commands
