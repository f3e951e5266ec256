"""The command-line extractor in artefacts.py finds what it must and skips what it must."""

from __future__ import annotations

from pathlib import Path

import pytest

from meridian.cli.common import UsageError
from tests.deploy.artefacts import shell_commands, systemd_commands


def argvs(text: str, **variables: str) -> list[tuple[str, ...]]:
    return [line.argv for line in shell_commands(text, "test", variables)]


def test_finds_commands_after_wrappers_and_inside_substitutions() -> None:
    text = """
    sudo -u meridian meridian agent enroll --token t
    kubectl -n meridian exec cp-0 -- meridian tokens create --environment e | tee out
    token=$(meridian tokens create --environment e2) && echo done
    docker run -v x:/y meridian:0.1.0 agent start --environment e
    /opt/meridian/bin/meridian --debug agents list
    """
    assert argvs(text) == [
        ("agent", "enroll", "--token", "t"),
        ("tokens", "create", "--environment", "e"),
        ("tokens", "create", "--environment", "e2"),
        ("agent", "start", "--environment", "e"),
        ("--debug", "agents", "list"),
    ]


def test_skips_words_that_only_look_like_the_program() -> None:
    text = """
    useradd --gid meridian --home-dir /var/lib/meridian meridian
    install -d -o meridian -g meridian /var/lib/meridian
    echo "run meridian agent start later"
    """
    assert argvs(text) == []


def test_variables_need_sample_values() -> None:
    assert argvs('meridian agent enroll --token "$TOKEN"', TOKEN="mjt_x") == [
        ("agent", "enroll", "--token", "mjt_x")
    ]
    with pytest.raises(KeyError, match=r"\$TOKEN"):
        argvs('meridian agent enroll --token "${TOKEN}"')


def test_systemd_splits_bare_variables_and_reads_comment_examples(tmp_path: Path) -> None:
    unit = tmp_path / "x.service"
    unit.write_text(
        "# Enroll:\n"
        "#   $ meridian agent enroll --token t \\\n"
        "#         --name n\n"
        "[Service]\n"
        "ExecStart=/usr/bin/meridian agent start --environment ${ENV} \\\n"
        "    $LABELS\n"
    )
    lines = systemd_commands(unit, {"ENV": "e", "LABELS": "--label a=b --label c=d"})
    assert [line.argv for line in lines] == [
        ("agent", "enroll", "--token", "t", "--name", "n"),
        ("agent", "start", "--environment", "e", "--label", "a=b", "--label", "c=d"),
    ]


def test_a_misspelt_option_fails_to_parse() -> None:
    (line,) = shell_commands("meridian agent start --environment e --capasity 4", "test", {})
    with pytest.raises(UsageError, match="unrecognized arguments: --capasity"):
        line.parse()
