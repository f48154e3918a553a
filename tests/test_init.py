import importlib

import convlens


def test_every_public_name_resolves():
    for name in convlens.__all__:
        assert getattr(convlens, name) is not None, name


def test_unknown_name_is_an_attribute_error():
    try:
        convlens.not_a_thing  # noqa: B018
    except AttributeError as exc:
        assert "not_a_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
    assert importlib.import_module("convlens.deconv.project").project_max is convlens.project_max
