"""docs/deployment.md and deploy/README.md point at files that exist and state the real ports.

Their command lines are checked with the others in test_commands.py.
"""

from __future__ import annotations

import re

from tests.deploy.artefacts import DEPLOY, DEPLOYMENT_DOC, REPO, dockerfile_exec_form, parse_cli

README = DEPLOY / "README.md"


def test_relative_links_resolve() -> None:
    for document in (DEPLOYMENT_DOC, README):
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", document.read_text()):
            assert (document.parent / target).exists(), f"{document.name}: broken link {target}"


def test_the_port_table_matches_the_image_defaults() -> None:
    command = parse_cli(dockerfile_exec_form("CMD"))
    rows = dict(re.findall(r"^\| (\d+) \| `(--[\w-]+)` \|", DEPLOYMENT_DOC.read_text(), re.M))
    assert rows == {
        command.listen.rpartition(":")[2]: "--listen",
        command.agent_listen.rpartition(":")[2]: "--agent-listen",
    }


def test_every_artefact_directory_is_described() -> None:
    readme = README.read_text()
    for directory in sorted(p for p in DEPLOY.iterdir() if p.is_dir()):
        assert f"{directory.name}/" in readme, (
            f"deploy/README.md does not mention {directory.name}/"
        )
    assert "docs/deployment.md" in readme
    assert (REPO / "docs" / "deployment.md").is_file()
