"""Tests of the legacy global parameter dictionary ``ptycho.params``."""

from __future__ import annotations

from pathlib import Path
import pickle
import subprocess
import sys

import pytest

from ptycho import params
from ptycho.config import ModelConfig, TrainingConfig, update_legacy_dict

PTYCHOPINN_DEFAULTS = {
    'N': 128,
    'offset': 4,
    'gridsize': 2,
    'batch_size': 16,
    'nepochs': 60,
    'n_filters_scale': 2,
    'output_prefix': 'outputs',
    'big_gridsize': 10,
    'max_position_jitter': 10,
    'sim_jitter_scale': 0.0,
    'default_probe_scale': 0.7,
    'mae_weight': 0.0,
    'nll_weight': 1.0,
    'tv_weight': 0.0,
    'realspace_mae_weight': 0.0,
    'realspace_weight': 0.0,
    'nphotons': 1e9,
    'nimgs_train': 9,
    'nimgs_test': 3,
    'data_source': 'generic',
    'probe.trainable': False,
    'intensity_scale.trainable': False,
    'positions.provided': False,
    'object.big': True,
    'probe.big': False,
    'probe_scale': 10.0,
    'set_phi': False,
    'probe.mask': True,
    'pad_object': True,
    'model_type': 'pinn',
    'label': '',
    'size': 392,
    'amp_activation': 'sigmoid',
    'h5_path': 'wts.h5',
    'npseed': 42,
    'debug': True,
    'gaussian_smoothing_sigma': 0.0,
    'use_xla_translate': True,
}


@pytest.fixture
def fresh() -> None:
    """Start from PtychoPINN's defaults with nothing configured (conftest restores afterwards)."""
    params.reset()


@pytest.mark.parametrize('key', sorted(PTYCHOPINN_DEFAULTS))
def test_defaults_match_ptychopinn(fresh: None, key: str) -> None:
    value = params.get(key)
    assert value == PTYCHOPINN_DEFAULTS[key]
    assert type(value) is type(PTYCHOPINN_DEFAULTS[key])


def test_fresh_cfg_has_no_configured_keys(fresh: None) -> None:
    assert not any(params.is_configured(key) for key in PTYCHOPINN_DEFAULTS)
    assert params.cfg.configured_keys() == frozenset()


def test_defaults_mapping_is_read_only() -> None:
    with pytest.raises(TypeError):
        params.DEFAULTS['N'] = 1  # type: ignore[index]


def test_get_missing_key_raises_keyerror_naming_the_key(fresh: None) -> None:
    with pytest.raises(KeyError, match='intensity_scale'):
        params.get('intensity_scale')


def test_get_missing_key_returns_default(fresh: None) -> None:
    assert params.get('intensity_scale', 3.5) == 3.5
    assert params.get('intensity_scale', None) is None
    assert 'intensity_scale' not in params.cfg


def test_get_prefers_stored_value_over_default(fresh: None) -> None:
    assert params.get('gridsize', 7) == 2


@pytest.mark.parametrize(
    ('N', 'gridsize', 'offset', 'bigN'), [(64, 1, 4, 64), (64, 2, 4, 68), (128, 3, 6, 140)]
)
def test_bigN_is_derived_from_N_gridsize_offset(
    fresh: None, N: int, gridsize: int, offset: int, bigN: int
) -> None:
    params.set('N', N)
    params.set('gridsize', gridsize)
    params.set('offset', offset)
    assert params.get('bigN') == bigN
    assert params.get_bigN() == bigN
    assert params.params()['bigN'] == bigN


def test_bigN_follows_later_changes(fresh: None) -> None:
    params.set('gridsize', 2)
    first = params.get('bigN')
    params.set('gridsize', 1)
    assert params.get('bigN') == params.get('N')
    assert first == params.get('N') + params.get('offset')
    assert 'bigN' not in params.cfg


def test_bigN_is_not_settable() -> None:
    with pytest.raises(KeyError, match='bigN'):
        params.set('bigN', 10)


def test_padding_sizes(fresh: None) -> None:
    params.set('N', 64)
    params.set('gridsize', 2)
    params.set('offset', 4)
    params.set('max_position_jitter', 10)
    assert params.get_padding_size() == 4 + 10
    assert params.get_padded_size() == 68 + 10


def test_params_returns_an_independent_copy(fresh: None) -> None:
    snapshot = params.params()
    assert type(snapshot) is dict
    snapshot['gridsize'] = 99
    assert params.get('gridsize') == 2
    assert {key: snapshot[key] for key in PTYCHOPINN_DEFAULTS if key != 'gridsize'} == {
        key: value for key, value in PTYCHOPINN_DEFAULTS.items() if key != 'gridsize'
    }


def test_set_writes_and_marks_configured(fresh: None) -> None:
    params.set('gridsize', 1)
    assert params.cfg['gridsize'] == 1
    assert params.is_configured('gridsize')
    assert not params.is_configured('N')


def test_set_rejects_invalid_data_source_and_keeps_old_value(fresh: None) -> None:
    with pytest.raises(ValueError, match='data_source'):
        params.set('data_source', 'not-a-source')
    assert params.get('data_source') == 'generic'
    assert not params.is_configured('data_source')


def test_set_rejects_realspace_mae_without_realspace_weight(fresh: None) -> None:
    with pytest.raises(ValueError, match='realspace_weight'):
        params.set('realspace_mae_weight', 0.5)
    params.set('realspace_weight', 1.0)
    params.set('realspace_mae_weight', 0.5)
    assert params.get('realspace_mae_weight') == 0.5


def test_setitem_marks_configured(fresh: None) -> None:
    params.cfg['gridsize'] = 1
    assert params.is_configured('gridsize')


def test_update_marks_configured_for_mapping_and_keywords(fresh: None) -> None:
    params.cfg.update({'gridsize': 1}, offset=6)
    assert params.cfg['gridsize'] == 1 and params.cfg['offset'] == 6
    assert params.is_configured('gridsize') and params.is_configured('offset')
    assert not params.is_configured('N')


def test_in_place_or_marks_configured(fresh: None) -> None:
    params.cfg |= {'N': 64}
    assert params.cfg['N'] == 64
    assert params.is_configured('N')


def test_setdefault_marks_only_keys_it_writes(fresh: None) -> None:
    assert params.cfg.setdefault('gridsize', 5) == 2
    assert not params.is_configured('gridsize')
    assert params.cfg.setdefault('intensity_scale', 2.0) == 2.0
    assert params.is_configured('intensity_scale')


def test_update_legacy_dict_marks_configured(fresh: None) -> None:
    update_legacy_dict(params.cfg, TrainingConfig(model=ModelConfig(N=64, gridsize=1)))
    assert params.is_configured('gridsize') and params.get('gridsize') == 1
    assert params.is_configured('N') and params.is_configured('nphotons')
    assert not params.is_configured('offset')


def test_removing_a_key_forgets_it_was_configured(fresh: None) -> None:
    params.cfg['a'] = 1
    params.cfg['b'] = 2
    del params.cfg['a']
    params.cfg.pop('b')
    assert not params.is_configured('a') and not params.is_configured('b')
    params.cfg['a'] = 1
    assert params.is_configured('a')


def test_snapshot_restore_round_trips_values_and_configured_keys(fresh: None) -> None:
    params.set('N', 64)
    cfg_object = params.cfg
    saved = params.snapshot()
    expected_values = dict(params.cfg)

    params.set('gridsize', 1)
    params.cfg['extra'] = 'x'
    del params.cfg['label']
    params.restore(saved)

    assert params.cfg is cfg_object
    assert dict(params.cfg) == expected_values
    assert params.cfg.configured_keys() == frozenset({'N'})
    assert not params.is_configured('gridsize')


def test_snapshot_is_not_affected_by_later_changes(fresh: None) -> None:
    saved = params.snapshot()
    params.cfg['gridsize'] = 3
    assert saved.values['gridsize'] == 2
    assert 'gridsize' not in saved.configured


def test_restore_rejects_anything_but_a_snapshot() -> None:
    with pytest.raises(TypeError, match='snapshot'):
        params.restore(dict(params.cfg))  # type: ignore[arg-type]


def test_reset_restores_defaults(fresh: None) -> None:
    params.set('N', 64)
    params.cfg['extra'] = 1
    params.reset()
    unlisted = {'outer_offset_train': None, 'outer_offset_test': None}
    assert dict(params.cfg) == PTYCHOPINN_DEFAULTS | unlisted
    assert params.cfg.configured_keys() == frozenset()


def test_pickling_cfg_keeps_configured_keys(fresh: None) -> None:
    params.set('gridsize', 1)
    clone = pickle.loads(pickle.dumps(params.cfg))
    assert dict(clone) == dict(params.cfg)
    assert clone.is_configured('gridsize') and not clone.is_configured('N')


def test_params_api_prints_nothing(fresh: None, capsys: pytest.CaptureFixture[str]) -> None:
    params.set('gridsize', 1)
    params.get('bigN')
    params.params()
    assert capsys.readouterr() == ('', '')


def test_importing_config_layer_needs_neither_tensorflow_nor_torch() -> None:
    code = (
        'import sys\n'
        "sys.modules['tensorflow'] = None\n"
        "sys.modules['torch'] = None\n"
        'import ptycho.params, ptycho.config\n'
        "heavy = ('tensorflow', 'torch')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy and sys.modules[m]))\n"
    )
    project_root = Path(params.__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, check=True, cwd=project_root
    )
    assert result.stdout.strip() == '[]'
