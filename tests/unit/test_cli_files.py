"""What the fuzzing suite (test_cli_fuzz.py, test_api_fuzz.py) found in reading files
and naming fields, each as a test of its own: before, each of these ended in a
traceback (or, for the field paths, in a message that named no field).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from archipel.cli import main as cli
from archipel.core import validation
from archipel.core.errors import Invalid
from archipel.v1alpha1 import override_pb2
from tests.integration.fuzzing import field_path

TEMPLATE = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n"


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """``archipel ARGV``: it must fail with one line; that line."""
    assert cli.main(list(argv)) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize(
    ("clusters", "expected"),
    [
        # yaml.safe_load_all: RecursionError.
        ("[" * 5000 + "]" * 5000, "clusters.yaml (document 1): line 1: "),
        # Iterating True: TypeError.
        ("- {name: m1, taints: true}\n", "[0].taints: must be a list"),
        ("- {name: m1, taints: [7]}\n", "[0].taints[0]: must be a mapping"),
        ("- {name: m1, apiResources: [1]}\n", "[0].apiResources: must be a list of strings"),
        ("- {name: m1, available: [cpu]}\n", "[0].available: must map resources to quantities"),
        ("- {name: m1, availableReplicas: many}\n", "[0].availableReplicas: must be a whole"),
        ("- {name: m1, labels: [a]}\n", "[0].labels: must map strings to strings"),
        ("- {name: [m1]}\n", "[0].name: must be a string"),
        ("items: 7\n", "items: must be a list of clusters"),
        ("- a: !!python/name:os.system\n", "!!python/name:os.system values are not JSON"),
    ],
)
def test_a_bad_clusters_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], clusters: str, expected: str
) -> None:
    (tmp_path / "clusters.yaml").write_text(clusters)
    (tmp_path / "app.yaml").write_text(TEMPLATE)
    for argv in (
        ["schedule", "--simulate", "-f", str(tmp_path / "app.yaml")],
        ["render", "--cluster", "m1", "-f", str(tmp_path / "app.yaml")],
    ):
        err = _cli(capsys, *argv, "--clusters", str(tmp_path / "clusters.yaml"))
        assert expected in err, err


@pytest.mark.parametrize(
    ("previous", "expected"),
    [
        ("[1, 2]", "results[0].template: required"),  # list.get: AttributeError
        ('{"results": [{"template": "a"}]}', "results[0].clusters: must be a list"),
        ('{"results": 5}', "results: must be a list"),
        ("[" * 5000, "previous.json (document 1): line 1: "),  # json.loads: RecursionError
    ],
)
def test_a_bad_previous_result_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], previous: str, expected: str
) -> None:
    (tmp_path / "clusters.yaml").write_text("- name: m1\n")
    (tmp_path / "app.yaml").write_text(TEMPLATE)
    (tmp_path / "previous.json").write_text(previous)
    err = _cli(
        capsys,
        "schedule",
        "--simulate",
        "--clusters",
        str(tmp_path / "clusters.yaml"),
        "-f",
        str(tmp_path / "app.yaml"),
        "--previous",
        str(tmp_path / "previous.json"),
    )
    assert err.startswith("error: --previous: ") and expected in err, err


OVERRIDE = (
    "---\napiVersion: policy.karmada.io/v1alpha1\nkind: OverridePolicy\nmetadata:\n  name: o\n"
)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        # The core's Invalid escaped render.
        (
            "spec:\n  targetCluster:\n    labelSelector:\n      matchExpressions: [{}]\n",
            "(document 2): spec.targetCluster.labelSelector.matchExpressions[0].key: ",
        ),
        # Overriders no server would accept: AttributeError inside the overrides.
        (
            "spec:\n  overrideRules:\n  - overriders:\n      plaintext: [{}]\n"
            "  - overriders:\n      labelsOverrider: [{}]\n",
            "(document 2): spec.overrideRules[0].overriders.plaintext[0].operator: required",
        ),
    ],
)
def test_render_refuses_what_the_control_plane_would(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: str, expected: str
) -> None:
    (tmp_path / "clusters.yaml").write_text("- name: m1\n")
    (tmp_path / "app.yaml").write_text(TEMPLATE + OVERRIDE + spec)
    err = _cli(
        capsys,
        "render",
        "--cluster",
        "m1",
        "--clusters",
        str(tmp_path / "clusters.yaml"),
        "-f",
        str(tmp_path / "app.yaml"),
    )
    assert f"{tmp_path / 'app.yaml'} {expected}" in err, err


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            "server: 127.0.0.1:9\ntokenFile: /nonexistent/token\n",
            "tokenFile: /nonexistent/token: No such",
        ),
        ("server: 127.0.0.1:9\ntlsCaFile: [x]\n", "tlsCaFile: must be a string"),
        ("server: {a: 1}\n", "server: must be host:port, or a list of them"),
        ("[" * 5000, "config.yaml (document 1): line 1: "),
    ],
)
def test_a_bad_config_file_is_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    config: str,
    expected: str,
) -> None:
    for variable in ("ARCHIPEL_SERVER", "ARCHIPEL_TOKEN", "ARCHIPEL_CONFIG"):
        monkeypatch.delenv(variable, raising=False)
    (tmp_path / "config.yaml").write_text(config)
    err = _cli(capsys, "--config", str(tmp_path / "config.yaml"), "version")
    assert expected in err, err


# -- field paths -----------------------------------------------------------------------------


def _invalid(check: Any) -> str:
    with pytest.raises(Invalid) as raised:
        check()
    return str(raised.value)


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"": math.inf}, "data['']"),
        ({"a b": {"c": -math.inf}}, "data['a b'].c"),
        ({"x": [1, math.nan]}, "data.x[1]"),
    ],
)
def test_a_value_under_any_key_is_named_by_a_field_path(data: dict[str, Any], path: str) -> None:
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": data}
    message = _invalid(lambda: validation.check_template(manifest))
    # Before: "data.: inf is not a JSON number", "data.a b.c: ...": no path to read.
    assert message.startswith(f"{path}: "), message
    assert field_path(message) == path


def test_a_top_level_key_that_is_not_a_name_is_under_the_manifest() -> None:
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "": math.nan}
    assert _invalid(lambda: validation.check_template(manifest)).startswith("manifest['']: ")


def test_a_struct_key_in_a_policy_is_named_by_a_field_path() -> None:
    policy = json_format.ParseDict(
        {
            "metadata": {"name": "o", "namespace": "default"},
            "spec": {
                "overrideRules": [
                    {
                        "overriders": {
                            "plaintext": [
                                {"path": "/a", "operator": "add", "value": {"a: b": {"": 1}}}
                            ]
                        }
                    }
                ]
            },
        },
        override_pb2.OverridePolicy(),
    )
    value = policy.spec.override_rules[0].overriders.plaintext[0].value
    value.struct_value.fields["a: b"].struct_value.fields[""].number_value = math.inf
    message = _invalid(lambda: validation.check_message(policy, "OverridePolicy"))
    path = "spec.overrideRules[0].overriders.plaintext[0].value['a: b']['']"
    assert message.startswith(f"{path}: "), message
    assert field_path(message) == path


@pytest.mark.parametrize(
    ("message", "path"),
    [
        ("metadata.name: required", "metadata.name"),
        (
            "spec.placement.clusterAffinity.clusterNames[1]: must be",
            "spec.placement.clusterAffinity.clusterNames[1]",
        ),
        ("metadata.labels['a: b]']: label value", "metadata.labels['a: b]']"),
        ("#14: cannot decode", "#14"),
        ("batch.statuses.#3: cannot decode", "batch.statuses.#3"),
        ("hello: the agent must open with a hello message", "hello"),
        ("missing credentials: send a token", None),
        ("data.: inf is not a JSON number", None),
        ("cannot decode the request", None),
        ("rate limit: more than 5 calls", None),
    ],
)
def test_the_fuzzers_rule_for_naming_a_field(message: str, path: str | None) -> None:
    assert field_path(message) == path
