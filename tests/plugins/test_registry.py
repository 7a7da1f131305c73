"""The backbone registry: exact names, prefixes, errors with close matches, BackboneInfo."""

from __future__ import annotations

import pytest

import embedkit
from embedkit import BackboneInfo, BackboneNotFound
from embedkit.plugins.registry import BackboneEntry

REGISTRY_SOURCE = '''
"""Factories that just report how they were called."""

from embedkit import hookimpl


def exact(name):
    def factory(**options):
        return ("exact", name, options)
    return factory


def prefix(name):
    def factory(rest, **options):
        return ("prefix", name, rest, options)
    return factory


@hookimpl
def register_backbones(register):
    register("ekx", exact("ekx"), description="an exact name")
    register("ekp/fixed", exact("ekp/fixed"), description="an exact name inside a prefix")
    register("ekp/", prefix("ekp/"), description="a prefix", options=["size", "layers"])
    register("ekp/deep/", prefix("ekp/deep/"), description="a longer prefix")
    register("ekc:", prefix("ekc:"), description="a colon prefix")
'''


@pytest.fixture
def reg_plugin(install_plugin, fresh_plugins):
    """The registry test plugin and timm, and no other plugin."""
    fresh_plugins.setenv("EMBEDKIT_LOAD_PLUGINS", "ekreg,timm")
    return install_plugin("ek_registry", REGISTRY_SOURCE, "ekreg")


def test_entries_and_prefix_flags(reg_plugin):
    entries = {e.name: e for e in embedkit.list_backbones()}
    assert [e.name for e in embedkit.list_backbones()] == sorted(entries)
    expected = {"ekx": False, "ekp/fixed": False, "ekp/": True, "ekp/deep/": True, "ekc:": True}
    for name, is_prefix in expected.items():
        assert isinstance(entries[name], BackboneEntry)
        assert entries[name].is_prefix is is_prefix
        assert entries[name].plugin == "ekreg"
    assert entries["ekx"].description == "an exact name"
    assert entries["timm/"].is_prefix
    assert entries["timm/"].plugin == "timm"


def test_exact_names_get_options_only(reg_plugin):
    assert embedkit.load_backbone("ekx", a=1, device="cpu") == (
        "exact",
        "ekx",
        {"a": 1, "device": "cpu"},
    )
    # an exact name wins over a prefix that also matches it
    assert embedkit.load_backbone("ekp/fixed") == ("exact", "ekp/fixed", {})
    # an exact name is not a prefix
    with pytest.raises(BackboneNotFound, match="unknown backbone 'ekx/more'"):
        embedkit.load_backbone("ekx/more")


def test_prefixes_get_the_rest_of_the_name(reg_plugin):
    assert embedkit.load_backbone("ekp/fixedX") == ("prefix", "ekp/", "fixedX", {})
    assert embedkit.load_backbone("ekp/a/b", k="v") == ("prefix", "ekp/", "a/b", {"k": "v"})
    # the longest matching prefix wins
    assert embedkit.load_backbone("ekp/deep/x") == ("prefix", "ekp/deep/", "x", {})
    assert embedkit.load_backbone("ekc:runs/shapes") == ("prefix", "ekc:", "runs/shapes", {})


@pytest.mark.parametrize("name", ["ekp/", "ekp/deep/", "ekc:", "timm/"])
def test_prefix_with_nothing_after_it_errors(reg_plugin, name):
    with pytest.raises(BackboneNotFound) as err:
        embedkit.load_backbone(name)
    message = str(err.value)
    assert message == f"backbone {name!r} needs a name after the prefix, e.g. {name}<name>"


def test_unknown_name_without_prefix_suggests_timm(fresh_plugins):
    with pytest.raises(BackboneNotFound) as err:
        embedkit.load_backbone("resnet18")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("unknown backbone 'resnet18'; did you mean: ")
    suggestions = message.split("did you mean: ")[1].split("?")[0].split(", ")
    assert suggestions[0] == "timm/resnet18"
    assert "registered: " in message and "timm/" in message
    assert message.endswith("(see `embedkit backbones`)")


def test_misspelt_timm_model_suggests_close_matches(fresh_plugins):
    with pytest.raises(BackboneNotFound) as err:
        embedkit.load_backbone("timm/resnt18")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("unknown timm model 'resnt18'; did you mean: ")
    assert "timm/resnet18" in message.split("did you mean: ")[1].split("?")[0].split(", ")


def test_unknown_name_suggests_registered_names(reg_plugin):
    with pytest.raises(BackboneNotFound) as err:
        embedkit.load_backbone("ekxx")
    message = str(err.value)
    assert "\n" not in message
    assert "did you mean: ekx" in message

    with pytest.raises(BackboneNotFound) as err:
        embedkit.load_backbone("qqq_nothing_like_it")
    message = str(err.value)
    assert "did you mean" not in message
    assert "registered: ekc:, ekp/, ekp/deep/, ekp/fixed, ekx, timm/" in message


def test_not_found_is_an_embedkit_error():
    assert issubclass(BackboneNotFound, embedkit.EmbedkitError)


def test_load_backbone_from_info_uses_its_config(reg_plugin):
    info = BackboneInfo(name="ekp/thing", dim=7, config={"size": 4, "layers": [1]})
    assert embedkit.load_backbone(info) == (
        "prefix",
        "ekp/",
        "thing",
        {"size": 4, "layers": [1]},
    )
    # explicit options override the stored config
    assert embedkit.load_backbone(info, size=8)[3] == {"size": 8, "layers": [1]}
    assert embedkit.load_backbone(BackboneInfo("ekx", 3)) == ("exact", "ekx", {})


def test_metadata_options_must_be_declared(reg_plugin):
    # a latent folder can come from anyone: its metadata may only pass declared options
    sneaky = BackboneInfo(name="ekp/thing", dim=7, config={"size": 4, "weights": "/etc/x"})
    with pytest.raises(embedkit.BackboneError, match=r"option 'weights'.*does not declare"):
        embedkit.load_backbone(sneaky)
    undeclared = BackboneInfo(name="ekc:thing", dim=7, config={"size": 4})  # **options only
    with pytest.raises(embedkit.BackboneError, match="declared: none"):
        embedkit.load_backbone(undeclared)
    assert embedkit.load_backbone("ekc:thing", size=4)[3] == {"size": 4}  # typed by a user: ok
    timm_info = BackboneInfo("timm/resnet18", 512, config={"pretrained": False, "evil": 1})
    with pytest.raises(embedkit.BackboneError, match="option 'evil'"):
        embedkit.load_backbone(timm_info)


def test_load_backbone_from_info_rebuilds_timm_backbone(fresh_plugins, rng_images):
    original = embedkit.load_backbone("timm/resnet18", pretrained=False, layers=[2, 3])
    assert original.info.config == {"pretrained": False, "weights": None, "layers": [2, 3]}
    info = BackboneInfo.from_json(original.info.to_json())
    assert info == original.info
    rebuilt = embedkit.load_backbone(info)
    assert rebuilt.info == original.info
    assert rebuilt.dim == 128 + 256
    assert rebuilt.encode_images(rng_images[:1]).shape == (1, 384)
    # an option given explicitly wins over the info's config
    assert embedkit.load_backbone(info, layers=[4]).dim == 512
