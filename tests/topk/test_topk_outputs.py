"""topk.outputs: a mined run's settings."""
from __future__ import annotations

import pytest

from convlens.topk.outputs import MINE_SETTINGS, write_mine_outputs


def test_settings_need_the_dataset(tmp_path):
    assert MINE_SETTINGS["k"] == 9 and MINE_SETTINGS["maps"] == 16 and MINE_SETTINGS["project"] == "all"
    with pytest.raises(ValueError, match="settings need dataset"):
        write_mine_outputs(tmp_path, None, None, {}, {"k": 9})
