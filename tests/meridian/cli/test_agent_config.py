from __future__ import annotations

from pathlib import Path

import pytest

from meridian.cli.agent_config import load_agent_config_file
from meridian.core.errors import ValidationError


def test_toml_sections_become_provider_configs(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[providers.aws-ecs]\ncluster = "c1"\n[providers.slurm]\npartition = "p"\n')
    assert load_agent_config_file(path).providers == {
        "aws-ecs": {"cluster": "c1"},
        "slurm": {"partition": "p"},
    }


def test_json_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "agent.json"
    path.write_text('{"providers": {"ray": {"address": "http://127.0.0.1:8265"}}}')
    assert load_agent_config_file(path).providers == {"ray": {"address": "http://127.0.0.1:8265"}}


def test_secret_resolver_sections(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[secrets.aws-sm]\nregion = "eu-west-1"\n')
    config = load_agent_config_file(path)
    assert config.secrets == {"aws-sm": {"region": "eu-west-1"}} and config.providers == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[labels]\ncloud = 'aws'\n", "unknown section"),
        ("[secrets]\nx = 1\n", "one table per secret scheme"),
        ("providers = 3\n", "one table per provider"),
        ("[providers\n", "not valid"),
    ],
)
def test_bad_files_are_refused_with_the_reason(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(ValidationError, match=message):
        load_agent_config_file(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="cannot read"):
        load_agent_config_file(tmp_path / "nope.toml")


def test_sealing_keys_section(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[sealing.keys]\neu-sites = "file:/etc/meridian/eu.key"\n')
    config = load_agent_config_file(path)
    assert config.seal_keys == {"eu-sites": "file:/etc/meridian/eu.key"}
    assert load_agent_config_file(tmp_path / "agent.toml").providers == {}


@pytest.mark.parametrize(
    "text", ["[sealing]\neu = 'file:/k'\n", "[sealing.keys]\neu = 3\n", "sealing = 1\n"]
)
def test_bad_sealing_sections_say_what_is_expected(tmp_path: Path, text: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(ValidationError, match=r"\[sealing.keys\], of GROUP"):
        load_agent_config_file(path)


def test_result_stores_section_is_validated_and_picks_the_default(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        '[result_stores.scratch]\ntype = "filesystem"\nroot = "/scratch/results"\n'
        "retention_days = 14\n"
        '[result_stores.s3-main]\ntype = "s3"\nbucket = "b"\ndefault = true\n'
    )
    stores = load_agent_config_file(path).result_stores
    assert stores is not None
    assert sorted(stores.stores) == ["s3-main", "scratch"] and stores.default == "s3-main"
    assert stores.stores["scratch"].retention_days == 14
    path.write_text('[providers.slurm]\npartition = "p"\n')
    assert load_agent_config_file(path).result_stores is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[result_stores.s3-main]\ntype = "s3"\nbucket_name = "b"\n', r"\[result_stores.s3-main\]"),
        ('[result_stores.x]\ntype = "filesystem"\nroot = "relative"\n', r"\[result_stores.x\]"),
        ("result_stores = 3\n", r"\[result_stores\] must be a table"),
    ],
)
def test_a_bad_result_store_table_is_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(ValidationError, match=f"agent config {path}: {message}"):
        load_agent_config_file(path)
