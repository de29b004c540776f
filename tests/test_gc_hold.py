"""GcHold (pytest_qrel.plugin.gc_hold): collection off while the first check imports, then one
collection, a freeze and collection back on; left alone when switched off or already off."""

from __future__ import annotations

import gc

import pytest

from pytest_qrel.plugin.gc_hold import ENV_SWITCH, GcHold


@pytest.fixture
def restore_gc():
    was = gc.isenabled()
    yield
    gc.unfreeze()  # this test process goes on: hand the frozen objects back to the collector
    (gc.enable if was else gc.disable)()


def test_hold_then_release_collects_freezes_and_reenables(restore_gc, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_SWITCH, raising=False)
    gc.enable()
    gc.unfreeze()
    hold = GcHold()
    assert hold.hold() and not gc.isenabled()

    class Cycle:
        pass

    freed = []
    a = Cycle()
    a.self = a
    import weakref

    weakref.finalize(a, freed.append, "cycle")
    del a  # cyclic garbage made while the collector is held: freed by the release's collection
    hold.release()
    assert freed == ["cycle"] and gc.isenabled() and gc.get_freeze_count() > 0
    frozen = gc.get_freeze_count()
    hold.release()  # once only
    assert gc.get_freeze_count() == frozen


@pytest.mark.parametrize("how", ["switched off", "already off"])
def test_left_alone(restore_gc, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    gc.unfreeze()
    if how == "switched off":
        monkeypatch.setenv(ENV_SWITCH, "0")
        gc.enable()
    else:
        monkeypatch.delenv(ENV_SWITCH, raising=False)
        gc.disable()
    hold = GcHold()
    assert not hold.hold()
    hold.release()
    assert gc.isenabled() == (how == "switched off") and gc.get_freeze_count() == 0
