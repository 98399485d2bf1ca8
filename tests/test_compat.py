"""The compatibility helper reads a cache under either name and passes it under the installed release's name."""

import warnings

import transformers
from packaging.version import Version
from transformers.modeling_outputs import BaseModelOutputWithPast

from vcontrast import _compat


def test_cache_argument_name_follows_the_installed_release():
    renamed = Version(transformers.__version__) >= Version("5.24.0.dev0")
    assert _compat.CACHE_ARG == ("cache" if renamed else "past_key_values")
    assert _compat.cache_kwargs("c") == {_compat.CACHE_ARG: "c"}
    assert set(_compat.CACHE_NAMES) == {"cache", "past_key_values"}


def test_cache_is_read_and_stripped_under_either_name():
    for name in ("cache", "past_key_values"):
        kwargs = {"input_ids": 1, name: "c"}
        assert _compat.cache_from_kwargs(kwargs) == "c"
        assert _compat.without_cache(kwargs) == {"input_ids": 1}
    assert _compat.cache_from_kwargs({"input_ids": 1, "cache": None}) is None


def test_cache_is_read_from_an_output_without_a_deprecation_warning(caplog):
    out = BaseModelOutputWithPast(last_hidden_state=None, **{_compat.CACHE_ARG: "c"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _compat.cache_from_output(out) == "c"
    assert "deprecated" not in caplog.text
    assert _compat.cache_from_output(BaseModelOutputWithPast(last_hidden_state=None)) is None


def test_processor_image_token_ids():
    from types import SimpleNamespace

    from vcontrast._compat import processor_image_token_ids

    assert processor_image_token_ids(SimpleNamespace(image_token_ids=[7, None, 9], image_token_id=3)) == [7, 9]
    assert processor_image_token_ids(SimpleNamespace(image_token_id=3)) == [3]
    assert processor_image_token_ids(SimpleNamespace()) == []
