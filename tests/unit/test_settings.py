"""Settings in sections: nested and flat environment names, lists as JSON or commas, options of an
engine that is not chosen refused, unknown names refused naming the nearest, and the generated
configuration reference kept in step."""

from __future__ import annotations

import pydantic
import pytest

from llm_twin import config_reference
from llm_twin.config import FLAT, Settings, env_names, leaves
from llm_twin.engines import ENGINES
from llm_twin.twinmodel import Serving


def test_every_setting_answers_to_its_nested_and_its_flat_environment_name(monkeypatch):
    monkeypatch.setenv("TWIN_MAX_BATCH_SIZE", "3")  # flat, as before sections
    monkeypatch.setenv("TWIN_GENERATION__TRANSFORMERS__PREFILL_CHUNK", "32")  # nested
    monkeypatch.setenv("TWIN_GATEWAY", '{"http_port": 8123}')  # a whole section as JSON
    s = Settings()
    assert (s.generation.transformers.max_batch_size, s.generation.transformers.prefill_chunk) == (3, 32)
    assert s.gateway.http_port == 8123
    monkeypatch.setenv("TWIN_GENERATION__TRANSFORMERS__MAX_BATCH_SIZE", "5")
    assert Settings().generation.transformers.max_batch_size == 5, "the nested name wins"


def test_a_list_setting_takes_the_comma_form_its_messages_suggest(monkeypatch):
    """The crawl guard's hint says `set TWIN_CRAWL_ALLOWED_NETWORKS (CIDRs, e.g. 10.1.0.0/16)`."""
    monkeypatch.setenv("TWIN_CRAWL_ALLOWED_NETWORKS", "10.1.0.0/16")
    assert Settings().crawler.allowed_networks == ["10.1.0.0/16"]
    monkeypatch.setenv("TWIN_CRAWL_ALLOWED_NETWORKS", "10.1.0.0/16, 192.168.7.0/24")
    assert Settings().crawler.allowed_networks == ["10.1.0.0/16", "192.168.7.0/24"]
    monkeypatch.setenv("TWIN_CRAWLER__ALLOWED_NETWORKS", '["10.9.0.0/16"]')
    assert Settings().crawler.allowed_networks == ["10.9.0.0/16"]
    monkeypatch.setenv("TWIN_PINNED_MODELS", "mara-quill=3,paul=7")
    assert Settings().generation.pinned_models == {"mara-quill": "3", "paul": "7"}


@pytest.mark.parametrize(("field", "default", "value", "bad"), [
    ("max_other_twin_lead", 0.12, 0.2, ("a lot", "-0.1")),
    ("min_asking_lead", -0.15, -0.3, ("a lot", "-3")),
])
def test_a_rule_described_as_switchable_off_can_be_switched_off_from_the_environment(monkeypatch, field, default,
                                                                                    value, bad):
    """Each rule whose description says `off` turns it off: an environment variable cannot be null."""
    env = f"TWIN_RETRIEVAL__{field.upper()}"
    assert getattr(Settings().retrieval, field) == default
    for off in ("off", "", "None"):
        monkeypatch.setenv(env, off)
        assert getattr(Settings().retrieval, field) is None
    monkeypatch.setenv(env, str(value))
    assert getattr(Settings().retrieval, field) == value
    for wrong in bad:
        monkeypatch.setenv(env, wrong)
        with pytest.raises(pydantic.ValidationError, match=field):
            Settings()


def test_flat_and_nested_arguments_and_overrides():
    s = Settings(max_batch_size=4, gateway={"http_port": 8100})
    assert (s.generation.transformers.max_batch_size, s.gateway.http_port) == (4, 8100)
    t = s.with_overrides(http_port=8200, generation_quantization="none")
    assert (t.gateway.http_port, t.generation.transformers.quantization, t.generation.transformers.max_batch_size) \
        == (8200, "none", 4)
    assert Settings(**t.model_dump(mode="json")) == t, "a settings dump (serve args) round-trips"
    with pytest.raises(pydantic.ValidationError, match="prefill_chunk"):
        s.with_overrides(prefill_chunk=-1)


def test_a_name_that_is_not_a_setting_is_refused_naming_the_nearest():
    with pytest.raises(pydantic.ValidationError, match="did you mean max_batch_size"):
        Settings(max_bach_size=3)
    with pytest.raises(ValueError, match="not a setting"):
        Settings().with_overrides(nonsense=1)


def test_options_of_an_engine_that_is_not_chosen_are_refused(monkeypatch):
    monkeypatch.setenv("TWIN_GENERATION_ENGINE", "tensorrt-llm")
    assert Settings().engine_options == ENGINES["tensorrt-llm"].options()
    monkeypatch.setenv("TWIN_GENERATION_QUANTIZATION", "int8")
    with pytest.raises(pydantic.ValidationError, match="apply to the transformers engine"):
        Settings()


def test_engine_names_come_from_the_engine_table():
    assert set(Serving.model_fields["engine"].annotation.__args__) == set(ENGINES)
    generation = Settings.model_fields["generation"].annotation
    assert set(generation.model_fields["engine"].annotation.__args__) == set(ENGINES)
    assert {name.replace("-", "_") for name in ENGINES} <= set(generation.model_fields)


def test_flat_names_are_unique_and_cover_every_sectioned_setting():
    sectioned = [p for p, _ in leaves() if len(p) > 1]
    assert len(FLAT) == len(sectioned) and set(FLAT.values()) == set(sectioned)
    assert env_names(("crawler", "allowed_networks")) == ("TWIN_CRAWLER__ALLOWED_NETWORKS",
                                                          "TWIN_CRAWL_ALLOWED_NETWORKS")


def test_the_configuration_reference_is_generated_from_the_settings():
    assert config_reference.DOC_PATH.read_text() == config_reference.render(), "run `make crd`"
    text = config_reference.render()
    for path, _ in leaves():
        assert f"`{'.'.join(path)}`" in text
