"""The control plane's edge validation accepts sealed inputs as they are and refuses
malformed envelopes; it never needs (or gets) a key."""

from __future__ import annotations

import json
import os

import pytest

from control_plane.api.validation import validate_submissions
from meridian.core import sealing
from meridian.core.errors import ValidationError
from meridian.core.sealing import KeyRing
from protos.meridian.v1 import common_pb2, control_pb2


def request(inputs_json: str) -> control_pb2.SubmitStepsRequest:
    spec = common_pb2.StepSpec(name="pay", module="m", function="f", provider="process")
    step = control_pb2.StepSubmission(key="pay#1", spec=spec, inputs_json=inputs_json)
    return control_pb2.SubmitStepsRequest(flow_run_id="run-1", steps=[step])


def test_sealed_inputs_are_stored_exactly_as_sent() -> None:
    keys = KeyRing({"eu-sites": os.urandom(64)})
    sealed = sealing.seal_inputs(keys, "eu-sites", '{"args":[1],"kwargs":{}}', "run-1", "pay#1")
    (submission,) = validate_submissions(request(sealed)).calls
    assert submission.inputs_json == sealed


def test_sealed_inputs_cannot_carry_a_cache_key() -> None:
    # A sealed result opens only in the run that sealed it: no later run could reuse it.
    keys = KeyRing({"eu-sites": os.urandom(64)})
    sealed = sealing.seal_inputs(keys, "eu-sites", '{"args":[1],"kwargs":{}}', "run-1", "pay#1")
    req = request(sealed)
    req.steps[0].cache_key = "ck1-" + "0" * 64
    with pytest.raises(ValidationError, match="step 'pay#1': a step with sealed inputs cannot"):
        validate_submissions(req)


@pytest.mark.parametrize(
    ("inputs", "needle"),
    [
        ({"args": [1], "kwargs": {}, "sealed": None}, "empty args and kwargs"),
        ({"args": [], "kwargs": {}, "sealed": {"v": 1}}, "must be"),
        (
            {"args": [], "kwargs": {}, "sealed": {"v": 1, "key": "k", "ct": "%%%"}},
            "not valid base64",
        ),
        ({"args": [], "kwargs": {}, "other": 1}, '"args": [...]'),
    ],
)
def test_malformed_sealed_inputs_are_refused(inputs: dict, needle: str) -> None:
    with pytest.raises(ValidationError, match="step 'pay#1'") as info:
        validate_submissions(request(json.dumps(inputs)))
    assert needle in str(info.value)
