"""The shipped Prometheus alert rules and Grafana dashboard (docker/monitoring/) against the service's real
/metrics: every expression parses as PromQL (promql-parser), names metrics the service exports, with labels they
carry and label values the service writes; the rules say how severe and what happened."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml
from test_app_helpers import (
    PORTRAITS,
    live_server,
    one_torch_thread,  # noqa: F401  (autouse)
    photo_jpeg,
)

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "docker" / "monitoring"
TARGET_LABELS = {"instance", "job"}  # added by Prometheus when it scrapes


def _promql():
    try:
        import promql_parser
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("promql-parser is not installed (pip install -e '.[dev]')")
        pytest.skip("promql-parser is not installed (pip install -e '.[dev]')")
    return promql_parser


def _rules() -> list[dict]:
    groups = yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _dashboard() -> dict:
    return json.loads((MONITORING / "grafana-dashboard.json").read_text())


def _expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every rule and panel query; Grafana's $__rate_interval as Prometheus would get it."""
    found = [(f"alert {r['alert']}", r["expr"]) for r in _rules()]
    for panel in _dashboard()["panels"]:
        found += [(f"panel {panel['title']!r}", t["expr"].replace("$__rate_interval", "5m")) for t in panel["targets"]]
    return found


@pytest.fixture(scope="module")
def exported() -> dict[str, dict[str, set[str]]]:
    """Sample name -> label name -> values seen, from a real server that answered a photo and refused one."""
    from prometheus_client.parser import text_string_to_metric_families

    srv = live_server(rate_limit_per_minute=1, rate_limit_burst=1)
    try:
        with srv.client() as c:
            for _ in range(2):  # the second is refused: fmpn_rejected_total{reason="rate_limited"}
                c.post("/v1/predictions", content=photo_jpeg(PORTRAITS[0], 320), headers={"Content-Type": "image/jpeg"})
            text = c.get("/metrics").text
    finally:
        srv.stop()
    samples: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        for suffix in suffixes:
            samples.setdefault(family.name + suffix, {})
        for sample in family.samples:
            for label, value in sample.labels.items():
                samples.setdefault(sample.name, {}).setdefault(label, set()).add(value)
    return samples


def _selectors(promql, tree) -> list:  # noqa: ANN001 - promql_parser's module and expression
    found: list = []
    promql.walk(tree, lambda node: found.append(node) if isinstance(node, promql.VectorSelector) else None)
    return found


def test_alert_rules_say_how_severe_and_what_happened() -> None:
    rules = _rules()
    assert len(rules) >= 5
    for rule in rules:
        assert re.fullmatch(r"Fmpn[A-Z]\w+", rule["alert"]), rule
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule
        assert rule["annotations"]["summary"].strip(), rule
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule
    assert {r["alert"] for r in rules} >= {"FmpnDown", "FmpnNotReady", "FmpnQueueFull", "FmpnSlowPredictions"}


def test_dashboard_queries_one_prometheus_chosen_by_the_user() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["panels"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "instance"} <= variables
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        assert all('instance=~"$instance"' in t["expr"] for t in panel["targets"]), panel["title"]


def test_every_expression_names_what_the_service_exports(exported) -> None:
    promql = _promql()
    source = "\n".join(p.read_text() for p in (ROOT / "app").rglob("*.py"))
    reasons = set(re.findall(r'rejected\.labels\("(\w+)"\)', source))
    checked = 0
    for where, expr in _expressions():
        try:
            tree = promql.parse(expr)
        except ValueError as exc:
            pytest.fail(f"{where}: not PromQL: {exc}\n{expr}")
        selectors = _selectors(promql, tree)
        assert selectors, where
        for selector in selectors:
            name = selector.name
            if name == "up":
                continue
            assert name in exported, f"{where}: {name} is not among the service's metrics"
            labels = exported[name]
            for matcher in selector.matchers.matchers:
                if matcher.name in TARGET_LABELS:
                    continue
                assert matcher.name in labels, f"{where}: {name} has no label {matcher.name}"
                if matcher.op == promql.MatchOp.Equal and matcher.name == "reason":
                    assert matcher.value in reasons, f"{where}: the service never counts reason={matcher.value}"
                    # increase() sees no first count of a series that starts at 1: exported at 0 from the start.
                    assert matcher.value in labels["reason"], f"{where}: reason={matcher.value} not exported at 0"
                elif matcher.op == promql.MatchOp.Equal:
                    assert matcher.value in labels[matcher.name], f"{where}: {name}{{{matcher.name}={matcher.value!r}}}"
            checked += 1
    assert checked >= 25
