"""``-p NAME=@result:RUN/STEP``: the parsing of the form, and its resolution against a fake
control plane on real gRPC (stored results become markers; inline results, steps without a
result, unknown steps and runs are refused naming the parameter), also through `meridian run`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from meridian import models
from meridian.cli.common import UsageError
from meridian.cli.profiles import ENV_CONFIG_DIR
from meridian.cli.resultparams import (
    ResultParam,
    parse_result_param,
    resolve_result_params,
    wanted_results,
)
from meridian.client import ControlClient
from meridian.core.errors import ConflictError, NotFound, ValidationError
from meridian.core.resultref import ref_marker
from tests.meridian.cli.conftest import CliResult
from tests.meridian.result_server import ResultServer, StoredResult, serve_results
from tests.support.tls import make_tls


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ResultServer]:
    monkeypatch.setenv(ENV_CONFIG_DIR, str(tmp_path / "no-profiles"))
    with serve_results(make_tls(), tmp_path) as server:
        server.fake.stored["extract#1"] = StoredResult(b'"' + b"x" * 5000 + b'"')
        server.fake.stored["split/part#2"] = StoredResult(b"PAR1", "parquet")
        server.fake.inline["small#1"] = '{"n": 1}'
        yield server


@pytest.fixture
def client(served: ResultServer) -> Iterator[ControlClient]:
    with ControlClient(served.address, served.ca_file) as control:
        yield control


# -- the form ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "plain", "@results:a/b", "result:a/b", " @result:a/b"])
def test_ordinary_values_are_left_alone(text: str) -> None:
    assert parse_result_param("data", text) is None
    assert wanted_results({"data": text}) == {}


def test_the_step_key_is_everything_after_the_first_slash() -> None:
    assert parse_result_param("data", "@result:3f2a9c/extract#1") == ResultParam(
        "3f2a9c", "extract#1"
    )
    assert parse_result_param("d", "@result:3f2a/split/part#2") == ResultParam(
        "3f2a", "split/part#2"
    )
    assert wanted_results({"a": "1", "b": "@result:r/s#1"}) == {"b": ResultParam("r", "s#1")}


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("@result:", "RUN_ID/STEP_KEY"),
        ("@result:3f2a9c", "RUN_ID/STEP_KEY"),
        ("@result:/extract#1", "RUN_ID/STEP_KEY"),
        ("@result:3f2a9c/", "RUN_ID/STEP_KEY"),
        ("@result: /extract#1", "RUN_ID/STEP_KEY"),
        ("@result:" + "r" * 37 + "/extract#1", "at most 36"),
        ("@result:3f2a/" + "k" * 513, "at most 512"),
    ],
)
def test_a_malformed_reference_is_a_usage_error_naming_the_parameter(text: str, why: str) -> None:
    with pytest.raises(UsageError, match="parameter 'data'") as caught:
        wanted_results({"n": "1", "data": text})
    assert why in str(caught.value)


# -- resolution against the control plane ------------------------------------------------------


def test_a_stored_result_becomes_its_marker_and_other_values_stay_text(
    served: ResultServer, client: ControlClient
) -> None:
    params = {"data": "@result:run-12/extract#1", "part": "@result:run-1234/split/part#2", "n": "3"}
    resolved = resolve_result_params(client, params)
    assert resolved == {
        "data": ref_marker(served.fake.stored["extract#1"].ref()),
        "part": ref_marker(served.fake.stored["split/part#2"].ref()),
        "n": "3",
    }


def test_each_run_is_read_once(client: ControlClient) -> None:
    reads: list[str] = []

    class Counting:
        def get_run(self, run_id_or_prefix: str) -> models.RunDetail:
            reads.append(run_id_or_prefix)
            return client.get_run(run_id_or_prefix)

    params = {"a": "@result:run-12/extract#1", "b": "@result:run-12/split/part#2"}
    assert set(resolve_result_params(Counting(), params)) == {"a", "b"}
    assert reads == ["run-12"]


@pytest.mark.parametrize(
    ("text", "error", "says"),
    [
        ("@result:run-123456/small#1", ValidationError, "is inline"),
        ("@result:run-123456/failed#1", ConflictError, "has no result: it is FAILED"),
        ("@result:run-123456/nope#1", NotFound, "has no step 'nope#1'"),
        ("@result:other-run/extract#1", NotFound, "no run other-run"),
    ],
)
def test_what_is_not_a_stored_result_is_refused_naming_the_parameter(
    client: ControlClient, text: str, error: type[Exception], says: str
) -> None:
    with pytest.raises(error) as caught:
        resolve_result_params(client, {"data": text})
    message = str(caught.value)
    assert message.startswith("parameter 'data': ") and says in message


def test_an_inline_result_says_how_to_pass_its_value(client: ControlClient) -> None:
    with pytest.raises(ValidationError) as caught:
        resolve_result_params(client, {"data": "@result:run-12/small#1"})
    assert "meridian results get run-123456 'small#1'" in str(caught.value)


# -- through `meridian run` --------------------------------------------------------------------

FLOW = """\
from meridian import ResultRef, flow


@flow
def uses(data: ResultRef) -> int:
    return data.size
"""


def _run(cli: Callable[..., CliResult], served: ResultServer, flows: Path, *params: str) -> Any:
    flags = ("--control-plane", served.address, "--ca-file", str(served.ca_file))
    args = [arg for p in params for arg in ("-p", p)]
    return cli("run", f"{flows}:uses", *args, *flags)


def test_meridian_run_refuses_an_inline_result_before_creating_a_run(
    cli: Callable[..., CliResult], served: ResultServer, tmp_path: Path
) -> None:
    flows = tmp_path / "flows.py"
    flows.write_text(FLOW)
    result = _run(cli, served, flows, "data=@result:run-12/small#1")
    assert result.code == 1
    assert "parameter 'data'" in result.err and "is inline" in result.err
    # The fake has no CreateRun: reaching it would have said UNIMPLEMENTED instead.
    assert "nimplemented" not in result.err


def test_meridian_run_refuses_a_malformed_reference_without_connecting(
    cli: Callable[..., CliResult], tmp_path: Path, closed_port: int, ca_file: Path
) -> None:
    flows = tmp_path / "flows.py"
    flows.write_text(FLOW)
    flags = ("--control-plane", f"127.0.0.1:{closed_port}", "--ca-file", str(ca_file))
    result = cli("run", f"{flows}:uses", "-p", "data=@result:3f2a9c", *flags)
    assert result.code != 0
    assert "expected @result:RUN_ID/STEP_KEY" in result.err
    assert "connect" not in result.err.lower()
