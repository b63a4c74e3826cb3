"""Runs Datadog's own OpenMetrics V2 check against a running ebg-notify and judges what Datadog would see.

Started by tests/api/datadog.rs with the venv of requirements.txt beside this file. Protocol on stdio: the
check runs once (the Agent's first run only primes monotonic counts), the script prints `primed` and waits for
a line on stdin while the Rust test drives the interval's traffic, then runs the check again and asserts:

- the shipped instance (deploy/datadog/openmetrics.yaml) follows Datadog's conventions;
- every family /metrics exposes is a row of README's metrics table, and every row arrives under its
  documented Datadog name (data-driven: a new row plus an allow-list line is all a new metric needs);
- no series carries two values, or an empty value, for one tag key;
- monitors.json and dashboard.json deserialise strictly into datadog-api-client's Monitor and Dashboard;
- every metric they query was submitted in the second run, and the formulas of the error-rate and
  click-through monitors and widgets, evaluated on the interval's deltas with the Agent's monotonic-count
  semantics, equal the known rates and the rollout report's for the same interval. A grouped formula
  (`by {channel}`) is evaluated per group: each group needs an expectation `FIELD@channel:NAME=VALUE`, and
  equals the report of that channel's gate too (`--report-url` for the default, `--group-report
  channel:NAME=URL` for the others).

Exit status 0 only if everything holds; every failure is printed.
"""

import argparse
import ast
import copy
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import requests
import yaml
from datadog_api_client import Configuration
from datadog_api_client.model_utils import ModelComposed, ModelNormal, OpenApiModel, validate_and_convert_types
from datadog_api_client.v1.model.dashboard import Dashboard
from datadog_api_client.v1.model.monitor import Monitor
from datadog_checks.base.checks.openmetrics.v2.base import OpenMetricsBaseCheckV2
from datadog_checks.base.stubs import aggregator
from prometheus_client.parser import text_string_to_metric_families

# Monitors and widgets whose name/title contains a key compute the report field it names (as a percentage).
REPORT_FORMULAS = {"error rate": "error_rate", "click-through": "click_through_rate"}

FAILURES = []


def fail(message):
    FAILURES.append(message)
    print(f"FAIL: {message}", flush=True)


def check_that(condition, message):
    if not condition:
        fail(message)
    return condition


# ---------------------------------------------------------------------------------------------- the check


def load_instance(deploy, endpoint):
    config = yaml.safe_load((deploy / "openmetrics.yaml").read_text())
    instances = config["instances"]
    check_that(len(instances) == 1, "openmetrics.yaml: exactly one instance")
    instance = instances[0]
    check_that(instance.get("service") == "ebg-notify", "openmetrics.yaml: `service: ebg-notify` instance option")
    check_that(
        not any(str(t).startswith("service:") for t in instance.get("tags", [])),
        "openmetrics.yaml: service belongs in the `service:` option, not in tags",
    )
    check_that("send_distribution_buckets" not in instance, "openmetrics.yaml: send_distribution_buckets is V1-only")
    check_that("openmetrics_endpoint" in instance, "openmetrics.yaml: V2 needs openmetrics_endpoint")
    run = copy.deepcopy(instance)
    run["openmetrics_endpoint"] = endpoint
    return config.get("init_config") or {}, instance, run


def run_check(check):
    """One Agent run; returns (metrics, distributions) as {name: {tags: stub}}."""
    aggregator.reset()
    error = check.run()
    check_that(error == "", f"check run failed: {error}")
    metrics, distributions = defaultdict(dict), defaultdict(list)
    for name in aggregator.metric_names:
        for stub in aggregator.metrics(name):
            key = tuple(sorted(stub.tags))
            check_that(key not in metrics[name], f"{name} submitted twice for {key}")
            metrics[name][key] = stub
    for name in list(aggregator._histogram_buckets):
        distributions[name].extend(aggregator.histogram_bucket(name))
    return metrics, distributions


def deltas(first, second):
    """Per counter context, what the Agent's monotonic_count flushes for the second run: the difference to the
    first run's value; for a context new in the second run, its whole value when flush_first_value is set
    (the check sets it once a scrape succeeded), else nothing (priming)."""
    out = defaultdict(dict)
    for name, contexts in second.items():
        for tags, stub in contexts.items():
            if stub.type != aggregator.MONOTONIC_COUNT:
                continue
            before = first.get(name, {}).get(tags)
            if before is None:
                value = stub.value if stub.flush_first_value else 0.0
            else:
                check_that(stub.value >= before.value, f"{name}{list(tags)} decreased: {before.value} -> {stub.value}")
                value = stub.value - before.value
            out[name][tags] = value
    return out


def check_tags(metrics, distributions):
    for name, contexts in metrics.items():
        for tags in contexts:
            check_tag_list(name, tags)
    for name, buckets in distributions.items():
        for bucket in buckets:
            check_tag_list(name, [t for t in bucket.tags if not t.startswith(("lower_bound:", "upper_bound:"))])


def check_tag_list(name, tags):
    seen = {}
    for tag in tags:
        key, _, value = tag.partition(":")
        check_that(value != "", f"{name}: empty tag value `{tag}`")
        if key in seen and seen[key] != value:
            fail(f"{name}: two values for tag `{key}`: {seen[key]!r} and {value!r} ({list(tags)})")
        seen[key] = value


# ------------------------------------------------------------------------------------ README and allow-list


def readme_table(readme):
    """Rows of the metrics table in README's "Metrics and Datadog" section: {prometheus name: datadog name}."""
    text = readme.read_text()
    section = text.split("## Metrics and Datadog", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"^\|\s*`(ebg_[a-z0-9_]+)`[^|]*\|\s*`([a-z0-9_.]+)`\s*\|", line)
        if m:
            rows[m.group(1)] = m.group(2)
    check_that(rows, "README: no metrics table rows found")
    return rows


def allow_list(instance):
    out = {}
    for entry in instance["metrics"]:
        if isinstance(entry, str):
            out[entry] = entry
        else:
            for raw, target in entry.items():
                out[raw] = target if isinstance(target, str) else target.get("name", raw)
    return out


def check_names(table, instance, exposition, metrics, distributions):
    """Every exposed family is documented; every documented metric arrives under its documented name."""
    families = {f.name: f for f in text_string_to_metric_families(exposition)}
    sample_to_family = {}
    for family in families.values():
        sample_to_family[family.name] = family
        for sample in family.samples:
            sample_to_family.setdefault(sample.name, family)
    documented = set()
    allowed = allow_list(instance)
    namespace = instance.get("namespace", "")
    for prom, datadog in table.items():
        family = sample_to_family.get(prom)
        if not check_that(family is not None, f"README lists {prom}, which /metrics does not expose"):
            continue
        documented.add(family.name)
        if not check_that(family.name in allowed, f"{prom}: allow-list has no key `{family.name}` (its family name)"):
            continue
        expected = f"{namespace}.{allowed[family.name]}" + (".count" if family.type == "counter" else "")
        check_that(expected == datadog, f"{prom}: README says {datadog}, the check names it {expected}")
        arrived = datadog in metrics or datadog in distributions
        check_that(arrived, f"{prom}: nothing submitted as {datadog} in the second run")
        if arrived:
            print(f"ok  {prom:45} -> {datadog}")
    for name in families:
        check_that(name in documented, f"/metrics exposes family {name}, which README's metrics table does not list")
    for raw in allowed:
        check_that(raw in documented, f"allow-list key {raw} is not a documented family")


# ---------------------------------------------------------------------------------- queries and formulas

QUERY = re.compile(
    r"(?P<agg>sum|avg|max|min|count|p\d+):(?P<metric>[A-Za-z0-9_.]+)\{(?P<filter>[^}]*)\}"
    r"(?P<by>\s+by\s+\{[^}]*\})?(?P<mods>(?:\.[a-z_]+\([^)]*\))*)"
)


def tag_filter(text):
    """A predicate on a tag list for a Datadog scope: `*`, `k:v`, `!k:v`, OR, AND and `,` (AND)."""
    text = text.strip()
    if text in ("", "*"):
        return lambda tags: True
    groups = []
    for conj in re.split(r"\s*,\s*|\s+AND\s+", text):
        options = [a.strip().strip("()") for a in re.split(r"\s+OR\s+", conj.strip().strip("()"))]
        for atom in options:
            if not re.fullmatch(r"!?[a-z0-9_.]+:[A-Za-z0-9_./*-]+", atom):
                raise ValueError(f"unsupported scope term {atom!r} in {{{text}}}")
        groups.append(options)

    def matches(atom, tags):
        negate = atom.startswith("!")
        atom = atom.lstrip("!")
        return (atom in tags) != negate

    return lambda tags: all(any(matches(a, tags) for a in options) for options in groups)


def group_key(match):
    """The tag key of a `by {key}` query, or None."""
    if not match["by"]:
        return None
    keys = [k.strip() for k in match["by"].split("{", 1)[1].rstrip("}").split(",")]
    if len(keys) != 1:
        raise ValueError(f"grouped query {match[0]!r}: one group key is supported")
    return keys[0]


def series_value(match, deltas_by_name, second, group=None):
    """The value one metric query takes over the interval: summed deltas of the matching counter contexts,
    or the space aggregation of the matching gauges' values. A grouped query takes the value of `group` (a
    tag such as `channel:sms`)."""
    metric, agg, mods = match["metric"], match["agg"], match["mods"] or ""
    scope = tag_filter(match["filter"])
    key = group_key(match)
    if key is not None:
        if group is None or not group.startswith(f"{key}:"):
            raise ValueError(f"grouped query {match[0]!r} has no single value")
        keep = lambda tags: scope(tags) and group in tags  # noqa: E731
    else:
        keep = scope
    if metric in deltas_by_name:
        if ".as_count()" not in mods:
            raise ValueError(f"{match[0]}: a count is compared as a count only with .as_count()")
        return sum(v for tags, v in deltas_by_name[metric].items() if keep(tags))
    values = [stub.value for tags, stub in second.get(metric, {}).items() if keep(tags)]
    if not values:
        raise ValueError(f"{match[0]}: no series")
    return {"sum": sum, "max": max, "min": min, "avg": lambda v: sum(v) / len(v)}[agg](values)


def evaluate(expression, names):
    """Arithmetic on query values, with Datadog's is_greater(a, n) (1 when a > n, else 0)."""

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.Name):
            return names[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if isinstance(node, ast.BinOp):
            a, b = walk(node.left), walk(node.right)
            ops = {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}
            if isinstance(node.op, ast.Div):
                return a / b if b else float("nan")
            return ops[type(node.op)]
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "is_greater" and len(node.args) == 2:
            return 1.0 if walk(node.args[0]) > walk(node.args[1]) else 0.0
        raise ValueError(f"unsupported formula element {ast.dump(node)}")

    return walk(ast.parse(expression, mode="eval"))


def inline_formula(query, deltas_by_name, second, group=None):
    """A query with metric queries inline (a monitor's): replace each by its value, then evaluate."""
    names = {}

    def substitute(match):
        name = f"q{len(names)}"
        names[name] = series_value(match, deltas_by_name, second, group)
        return name

    return evaluate(QUERY.sub(substitute, query), names)


def groups_of(text, deltas_by_name, second):
    """[None] for an ungrouped formula; else every `key:value` tag the grouped queries' series in scope carry
    (as in Datadog, a group exists where a series the query selects has it: a channel with no delivered
    messages and no click series is no group of the click-through formula)."""
    matches = list(QUERY.finditer(text))
    keys = {group_key(m) for m in matches}
    if keys == {None}:
        return [None]
    if len(keys) != 1 or None in keys:
        raise ValueError(f"{text!r}: every query of a grouped formula must group by the same key")
    (key,) = keys
    found = set()
    for m in matches:
        scope = tag_filter(m["filter"])
        contexts = deltas_by_name.get(m["metric"]) or second.get(m["metric"], {})
        for tags in filter(scope, contexts):
            found.update(t for t in tags if t.startswith(f"{key}:"))
    if not found:
        raise ValueError(f"{text!r}: no series carries the group key {key}")
    return sorted(found)


def expectation(field, group, expected, report, report_channel, path):
    """(expected value, report value or None) of `field` for `group`; None when the group has none.
    `report` is the default report's stage, with the other groups' stages under `report["groups"]`."""
    if group is None:
        return expected[field], report[field]
    on_report = group == f"channel:{report_channel}"
    value = expected.get(f"{field}@{group}", expected.get(field) if on_report else None)
    if value is None:
        fail(f"{path}: no expectation for group {group} (pass --expect {field}@{group}=VALUE)")
        return None
    stage = report if on_report else report.get("groups", {}).get(group)
    if stage is None:
        fail(f"{path}: no report for group {group} (pass --group-report {group}=URL)")
        return None
    return value, stage[field]


def metrics_in(text):
    return {m["metric"] for m in QUERY.finditer(text)}


def report_field(title):
    for key, field in REPORT_FORMULAS.items():
        if key in title.lower():
            return field
    return None


def close(a, b):
    return abs(a - b) <= 1e-9 * max(1.0, abs(b))


# ------------------------------------------------------------------------------------ datadog-api-client


def strict(value, path):
    """Fails on anything the models did not recognise: unknown keys, unparsed enums or oneOfs."""
    if isinstance(value, OpenApiModel):
        check_that(not getattr(value, "_unparsed", False), f"{path}: not a valid {type(value).__name__}")
        if isinstance(value, ModelComposed):
            for inner in value._composed_instances:
                strict(inner, path)
            return
        if isinstance(value, ModelNormal):
            unknown = set(value._data_store) - set(value.attribute_map)
            check_that(not unknown, f"{path}: {type(value).__name__} has no field(s) {sorted(unknown)}")
            for key, inner in value._data_store.items():
                strict(inner, f"{path}.{key}")
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            strict(inner, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, inner in value.items():
            strict(inner, f"{path}.{key}")


def model(data, cls, path):
    try:
        obj = validate_and_convert_types(data, (cls,), [path], True, True, configuration=Configuration())
    except Exception as e:  # the client's ApiTypeError / ApiValueError
        fail(f"{path}: not a valid {cls.__name__}: {e}")
        return None
    strict(obj, path)
    return obj


def check_monitors(deploy, deltas_by_name, second, submitted, report, expected, matched, report_channel):
    monitors = json.loads((deploy / "monitors.json").read_text())
    for i, data in enumerate(monitors):
        name = data.get("name", f"#{i}")
        model(data, Monitor, f"monitors.json[{i}]")
        query = data["query"]
        for metric in metrics_in(query):
            check_that(metric in submitted, f"monitor {name!r} queries {metric}, which the check did not submit")
        m = re.fullmatch(r"\s*(sum|avg|max|min)\(last_\w+\):(.*?)\s*(<=|>=|<|>)\s*(-?[\d.]+)\s*", query)
        if not check_that(m, f"monitor {name!r}: query not of the form agg(last_X):formula OP threshold"):
            continue
        critical = data.get("options", {}).get("thresholds", {}).get("critical")
        check_that(critical == float(m[4]), f"monitor {name!r}: options.thresholds.critical must equal the query's")
        field = report_field(name)
        if not field:
            continue
        for group in groups_of(m[2], deltas_by_name, second):
            label = name if group is None else f"{name} [{group}]"
            wanted = expectation(field, group, expected, report, report_channel, f"monitor {name!r}")
            if wanted is None:
                continue
            want, reported = wanted
            matched[field].append(f"monitor {label!r}")
            # The same interval a thousand times over (same ratios): past any minimum-volume guard, the
            # formula must be the rate itself.
            scaled = {n: {t: 1000 * v for t, v in c.items()} for n, c in deltas_by_name.items()}
            value = inline_formula(m[2], scaled, second, group)
            print(f"monitor {label!r} at volume: {value:.6g} (report {reported}, expected {want})")
            check_that(close(value, 100 * want), f"monitor {label!r} = {value}, expected {100 * want}")
            if reported is not None:
                check_that(close(value, 100 * reported), f"monitor {label!r} = {value}, report says {reported}")
            # On the interval as it was: the rate too, unless a volume guard (is_greater) holds it back, and
            # then it must not alert.
            actual = inline_formula(m[2], deltas_by_name, second, group)
            breach = {"<": actual < critical, "<=": actual <= critical, ">": actual > critical, ">=": actual >= critical}
            print(f"monitor {label!r} on the interval: {actual:.6g}")
            if not close(actual, 100 * want):
                check_that("is_greater(" in query and not breach[m[3]],
                           f"monitor {label!r} = {actual} on the interval: neither the rate nor a guarded non-alert")


def check_dashboard(deploy, deltas_by_name, second, submitted, report, expected, matched, report_channel):
    data = json.loads((deploy / "dashboard.json").read_text())
    model(data, Dashboard, "dashboard.json")
    for metric in metrics_in(json.dumps(data)):
        check_that(metric in submitted, f"dashboard queries {metric}, which the check did not submit")
    for widget in walk_widgets(data["widgets"]):
        definition = widget["definition"]
        field = report_field(definition.get("title", ""))
        if not field:
            continue
        for request in definition.get("requests", []):
            queries = {q["name"]: q for q in request.get("queries", []) if q.get("data_source") == "metrics"}
            for formula in request.get("formulas", []):
                if not {n for n in re.findall(r"[a-z_][a-z0-9_]*", formula["formula"])} & set(queries):
                    continue
                if any("toggle.percentage" in q["query"] for q in queries.values()):
                    continue
                found = {}
                for qname, q in queries.items():
                    matches = list(QUERY.finditer(q["query"]))
                    check_that(len(matches) == 1 and matches[0][0] == q["query"], f"widget query {q['query']!r}")
                    found[qname] = matches[0]
                title = definition["title"]
                text = " ".join(q["query"] for q in queries.values())
                for group in groups_of(text, deltas_by_name, second):
                    label = title if group is None else f"{title} [{group}]"
                    wanted = expectation(field, group, expected, report, report_channel, f"widget {title!r}")
                    if wanted is None:
                        continue
                    want, reported = wanted
                    names = {n: series_value(m, deltas_by_name, second, group) for n, m in found.items()}
                    value = evaluate(formula["formula"], names)
                    matched[field].append(f"widget {label!r}")
                    print(f"widget {label!r}: {value:.6g} (report {reported}, expected {want})")
                    check_that(close(value, 100 * want), f"widget {label!r} = {value}, expected {100 * want}")
                    if reported is not None:
                        check_that(close(value, 100 * reported), f"widget {label!r} = {value}, report says {reported}")


def walk_widgets(widgets):
    for widget in widgets:
        yield widget
        yield from walk_widgets(widget["definition"].get("widgets", []))


# ---------------------------------------------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True, help="the service's /metrics URL")
    parser.add_argument("--report-url", required=True, help="the rollout report for the interval (JSON)")
    parser.add_argument("--admin-token", required=True)
    parser.add_argument("--expect", action="append", default=[], help="FIELD=VALUE, e.g. error_rate=0.3")
    parser.add_argument("--root", required=True, help="the repository (deploy/datadog, README.md)")
    parser.add_argument("--group-report", action="append", default=[],
                        help="GROUP=URL: the report (JSON) of another channel's gate, e.g. channel:sms=...")
    args = parser.parse_args()
    root = Path(args.root)
    deploy = root / "deploy" / "datadog"
    expected = {k: float(v) for k, v in (e.split("=", 1) for e in args.expect)}

    init_config, shipped, instance = load_instance(deploy, args.endpoint)
    check = OpenMetricsBaseCheckV2("openmetrics", init_config, [instance])
    first, _ = run_check(check)
    print("primed", flush=True)
    if sys.stdin.readline().strip() != "go":
        fail("the test did not say go")
        return 1
    second, distributions = run_check(check)
    exposition = requests.get(args.endpoint, timeout=10).text
    def one_stage(url):
        response = requests.get(url, headers={"Authorization": f"Bearer {args.admin_token}"}, timeout=10)
        response.raise_for_status()
        body = response.json()
        check_that(len(body["stages"]) == 1, f"the interval is one rollout stage of {body['feature']}: {body['stages']}")
        return body, body["stages"][0]

    report_json, report = one_stage(args.report_url)
    report = dict(report, groups={})
    for entry in args.group_report:
        group, url = entry.split("=", 1)
        group_json, stage = one_stage(url)
        check_that(group == f"channel:{group_json['channel']}", f"--group-report {group} is {group_json['channel']}'s")
        report["groups"][group] = stage

    deltas_by_name = deltas(first, second)
    submitted = set(second) | set(distributions)
    print(f"submitted in the second run: {sorted(submitted)}")
    check_tags(second, distributions)
    check_names(readme_table(root / "README.md"), shipped, exposition, second, distributions)
    for field in (f for f in expected if "@" not in f):
        check_that(report.get(field) is not None and close(report[field], expected[field]),
                   f"report {field} = {report.get(field)}, expected {expected[field]}")
    matched = defaultdict(list)
    for judge in (check_monitors, check_dashboard):
        try:
            judge(deploy, deltas_by_name, second, submitted, report, expected, matched, report_json["channel"])
        except (ValueError, KeyError) as e:
            fail(f"{judge.__name__}: {e!r}")
    for field in REPORT_FORMULAS.values():
        check_that(matched[field], f"no monitor or widget computes {field}")
        check_that(field in expected, f"the test gave no expected {field}")
    for key in (k for k in expected if "@" in k):
        field, group = key.split("@", 1)
        check_that(any(f"[{group}]" in m for m in matched[field]), f"no grouped monitor or widget computes {key}")
    print(f"{len(FAILURES)} failure(s)")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
