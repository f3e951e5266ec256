"""Residency rules: who may read a result produced under an environment's label selector."""

from __future__ import annotations

import pytest

from meridian.core.errors import PermissionDenied, ValidationError
from meridian.core.residency import ResidencyRefused, may_read, parse_rule

EU = {"region": "eu-west-1", "cloud": "aws"}
US = {"region": "us-east-1", "cloud": "aws"}
GCP_EU = {"region": "europe-west1", "cloud": "gcp"}


def test_no_rule_allows_everyone() -> None:
    assert parse_rule("aws-eu", "") is None
    assert may_read(None, "aws-eu", "aws-us", US).allowed


def test_region_rule() -> None:
    rule = parse_rule("aws-eu", "region in (eu-west-1,europe-west1)")
    assert rule is not None
    assert may_read(rule, "aws-eu", "gcp-eu", GCP_EU).allowed
    decision = may_read(rule, "aws-eu", "aws-us", US)
    assert not decision.allowed
    assert "'region in (eu-west-1,europe-west1)'" in decision.message
    assert "'aws-eu'" in decision.message and "'aws-us'" in decision.message
    with pytest.raises(ResidencyRefused, match="data residency") as info:
        decision.raise_if_refused()
    assert isinstance(info.value, PermissionDenied)


def test_the_producing_environment_may_always_read() -> None:
    rule = parse_rule("onprem", "site=dc1")
    assert may_read(rule, "onprem", "onprem", {}).allowed


def test_rule_may_name_environments_and_names_only_failed_requirements() -> None:
    rule = parse_rule("onprem", "environment in (onprem,onprem-dr),site=dc1")
    assert may_read(rule, "onprem", "onprem-dr", {"site": "dc1"}).allowed
    refused = may_read(rule, "onprem", "onprem-dr", {"site": "dc2"})
    assert not refused.allowed
    assert "'site=dc1'" in refused.message.split("does not satisfy")[1]
    assert "environment in" not in refused.message.split("does not satisfy")[1]
    # A consumer cannot claim another environment's name through its labels.
    spoof = may_read(rule, "onprem", "aws-us", {"environment": "onprem", "site": "dc1"})
    assert not spoof.allowed


def test_absent_label_does_not_match_equality() -> None:
    rule = parse_rule("onprem", "site=dc1")
    assert not may_read(rule, "onprem", "aws-us", {}).allowed


def test_invalid_rules_and_names() -> None:
    with pytest.raises(ValidationError, match="residency rule of environment 'onprem'"):
        parse_rule("onprem", "region in (")
    with pytest.raises(ValidationError, match="environment name"):
        parse_rule("bad name", "site=dc1")
    rule = parse_rule("onprem", "site=dc1")
    with pytest.raises(ValidationError, match="environment name"):
        may_read(rule, "onprem", "", {})
    with pytest.raises(ValidationError, match="applied to a result of 'aws-eu'"):
        may_read(rule, "aws-eu", "aws-us", US)


def test_a_pinned_labels_only_rule_counts_only_what_join_tokens_fixed() -> None:
    rule = parse_rule("aws-eu", "region in (eu-west-1)", pinned_labels_only=True)
    assert rule is not None and rule.pinned_labels_only
    # A claimed label, however right, does not count; the same label pinned does.
    claimed = may_read(rule, "aws-eu", "gcp-x", {"region": "eu-west-1"})
    assert not claimed.allowed
    assert "(pinned labels only)" in claimed.message
    assert "with the labels its join tokens pinned" in claimed.message
    pinned = {"region": "eu-west-1"}
    assert may_read(rule, "aws-eu", "gcp-x", pinned, pinned).allowed
    # Pinned labels the agent also reports differently cannot happen (the control plane
    # refuses such a Hello); the judged set is the pinned one whatever the claimed one says.
    assert not may_read(rule, "aws-eu", "gcp-x", {"region": "eu-west-1"}, {"site": "x"}).allowed
    # The producing environment still reads without any label.
    assert may_read(rule, "aws-eu", "aws-eu", {}).allowed
    # The environment's own name always counts: the certificate fixes it.
    by_name = parse_rule("aws-eu", "environment=gcp-eu", pinned_labels_only=True)
    assert may_read(by_name, "aws-eu", "gcp-eu", {}, {}).allowed


def test_the_same_selector_with_and_without_pinned_labels_only_are_different_rules() -> None:
    loose = parse_rule("aws-eu", "region=eu-west-1")
    strict = parse_rule("aws-eu", "region=eu-west-1", pinned_labels_only=True)
    assert loose != strict and str(loose) == str(strict)
    assert strict is not None and strict.described == "region=eu-west-1 (pinned labels only)"
