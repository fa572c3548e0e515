"""``--controllers``, as Karmada's: which controllers one control-plane process runs."""

from __future__ import annotations

import pytest

from archipel.core.errors import Invalid
from controlplane.context import Settings
from controlplane.server import CONTROLLER_NAMES, ControlPlane, parse_args, select_controllers

EVERY = set(CONTROLLER_NAMES)


@pytest.mark.parametrize(
    ("spec", "chosen"),
    [
        (["*"], EVERY),
        (["*", "-scheduler"], EVERY - {"scheduler"}),
        (["-scheduler", "*"], EVERY - {"scheduler"}),
        (["binding", "policy-controller"], {"binding-controller", "policy-controller"}),
        (
            ["*", "-binding-status", "-work-status"],
            EVERY
            - {
                "binding-status-controller",
                "work-status-controller",
            },
        ),
        ([], set()),
    ],
)
def test_selection(spec: list[str], chosen: set[str]) -> None:
    assert select_controllers(spec, CONTROLLER_NAMES) == chosen


def test_an_unknown_name_is_refused_naming_it() -> None:
    with pytest.raises(Invalid) as refused:
        select_controllers(["*", "-schedular"], CONTROLLER_NAMES)
    assert "schedular" in str(refused.value) and "scheduler" in str(refused.value)


def test_the_flag_reaches_the_process() -> None:
    settings = parse_args(["--etcd=http://127.0.0.1:1", "--controllers=*,-scheduler"])
    plane = ControlPlane(settings)
    assert {c.name for c in plane.controllers()} == EVERY - {"scheduler"}
    assert {c.name for c in ControlPlane(Settings(["http://x:1"])).controllers()} == EVERY


def test_a_bad_flag_exits_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--etcd=http://127.0.0.1:1", "--controllers=nope"])
    assert exited.value.code == 2
    assert "unknown controller 'nope'" in capsys.readouterr().err
