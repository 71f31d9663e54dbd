"""Catalog loading: the example is valid, and every kind of bad file names file, key and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from router_common.catalog import CatalogError, load_catalog, parse_catalog

GOOD = """
providers:
  groq:
    base_url: "https://api.groq.com/openai/v1/"
    api_key_env: GROQ_API_KEY
    zero_data_retention: true
  together: {base_url: "https://api.together.xyz/v1", api_key_env: TOGETHER_API_KEY}
models:
  zai/glm-4.7:
    endpoints:
      - provider: groq
        upstream_model: glm-4.7
        input_price_per_million: 0.6
        output_price_per_million: 2.2
      - {provider: together, input_price_per_million: 0.5, output_price_per_million: 2}
"""


def test_example_catalog_loads(example_catalog: Path) -> None:
    catalog = load_catalog(example_catalog)
    assert "zai/glm-4.7" in catalog.models
    assert len(catalog.models["openai/gpt-oss-120b"].endpoints) == 6
    assert any(p.zero_data_retention for p in catalog.providers.values())
    assert any(not p.zero_data_retention for p in catalog.providers.values())


def test_parses_fields_and_defaults() -> None:
    catalog = parse_catalog(GOOD)
    groq, together = catalog.models["zai/glm-4.7"].endpoints
    assert groq.provider.base_url == "https://api.groq.com/openai/v1"  # trailing slash trimmed
    assert groq.provider.zero_data_retention is True
    assert together.provider.zero_data_retention is False
    assert together.upstream_model == "zai/glm-4.7"  # defaults to the model id
    assert (groq.input_price_per_mtok, groq.output_price_per_mtok) == (0.6, 2.2)


@pytest.mark.parametrize(
    ("text", "key_path", "problem"),
    [
        ("", "(root)", "expected a mapping"),
        ("[1, 2]", "(root)", "expected a mapping"),
        ("providers: {}\nmodels: {}", "providers", "at least one provider"),
        (GOOD.replace("models:", "extra: 1\nmodels:"), "(root).extra", "unknown key"),
        (
            GOOD.replace("https://api.groq.com/openai/v1/", "ftp://x"),
            "providers.groq.base_url",
            "http(s) URL",
        ),
        (
            GOOD.replace("GROQ_API_KEY", "'not a var'"),
            "providers.groq.api_key_env",
            "does not match",
        ),
        (
            GOOD.replace("zero_data_retention: true", "zero_data_retention: yes-please"),
            "providers.groq.zero_data_retention",
            "true or false",
        ),
        (
            GOOD.replace("provider: together", "provider: nobody"),
            "models.zai/glm-4.7.endpoints[1].provider",
            "unknown provider 'nobody'",
        ),
        (
            GOOD.replace("input_price_per_million: 0.6\n", "input_price_per_million: -1\n"),
            "models.zai/glm-4.7.endpoints[0].input_price_per_million",
            "price in [0",
        ),
        (
            GOOD.replace("input_price_per_million: 0.6\n", "input_price_per_million: .nan\n"),
            "models.zai/glm-4.7.endpoints[0].input_price_per_million",
            "price in [0",
        ),
        (
            GOOD.replace("output_price_per_million: 2}", "output_price_per_million: cheap}"),
            "models.zai/glm-4.7.endpoints[1].output_price_per_million",
            "expected a number",
        ),
        (
            GOOD.replace("provider: together", "provider: groq"),
            "models.zai/glm-4.7.endpoints[1].provider",
            "listed twice",
        ),
        (GOOD.replace("zai/glm-4.7:", "no-slash:"), "models.no-slash", "does not match"),
        (
            GOOD.replace("      - provider: groq", "      - provder: groq"),
            "models.zai/glm-4.7.endpoints[0]",
            "missing required key 'provider'",
        ),
        ("providers: [\n", "line", "not valid YAML"),
    ],
)
def test_bad_catalog_names_file_key_and_problem(text: str, key_path: str, problem: str) -> None:
    with pytest.raises(CatalogError) as info:
        parse_catalog(text, "bad.yaml")
    message = str(info.value)
    assert message.startswith("bad.yaml: ")
    assert key_path in message
    assert problem in message


@pytest.mark.parametrize(
    "url",
    [
        "https://user:hunter2-catalog-secret@api.groq.com/openai/v1",
        "https://:hunter2-catalog-secret@api.groq.com/openai/v1",
        "https://us/er:hunter2-catalog-secret@api.groq.com/openai/v1",  # "/" unencoded
        "https://generativelanguage.googleapis.com/v1beta/openai?key=hunter2-catalog-secret",
        "https://api.groq.com/openai/v1#hunter2-catalog-secret",
        "user:hunter2-catalog-secret@api.groq.com/openai/v1",  # no scheme either
    ],
)
def test_a_base_url_holding_credentials_is_refused_without_repeating_them(url: str) -> None:
    # Found by a secrets audit: a catalog could carry a provider password or key in
    # base_url, which the router held and sent to every sidecar; with the aiohttp
    # upstream client it also made every request to any provider a 500.
    with pytest.raises(CatalogError) as info:
        parse_catalog(GOOD.replace("https://api.groq.com/openai/v1/", url), "bad.yaml")
    message = str(info.value)
    assert message.startswith("bad.yaml: providers.groq.base_url: ")
    assert "api_key_env" in message
    assert "hunter2" not in message


def test_missing_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(CatalogError, match=r"nope\.yaml: \(file\): cannot read"):
        load_catalog(missing)


def test_api_key_env_is_optional_and_still_checked_when_given() -> None:
    text = (
        "providers:\n  local: {base_url: 'http://127.0.0.1:9101/v1'}\n"
        "models:\n  a/b:\n    endpoints:\n"
        "      - {provider: local, input_price_per_million: 1, output_price_per_million: 1}\n"
    )
    assert parse_catalog(text).providers["local"].api_key_env == ""
    bad = text.replace("{base_url:", "{api_key_env: '', base_url:")
    with pytest.raises(CatalogError, match=r"providers\.local\.api_key_env"):
        parse_catalog(bad)
