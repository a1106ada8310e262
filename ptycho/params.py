"""Legacy global parameter dictionary ``cfg`` that remembers which keys were configured."""

from __future__ import annotations

import builtins
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

__all__ = [
    'DEFAULTS',
    'LegacyConfig',
    'Snapshot',
    'cfg',
    'get',
    'get_bigN',
    'get_padded_size',
    'get_padding_size',
    'is_configured',
    'is_sealed',
    'params',
    'reset',
    'restore',
    'seal',
    'set',
    'snapshot',
    'unseal',
    'validate',
]

logger = logging.getLogger(__name__)

DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        'N': 128,
        'offset': 4,
        'gridsize': 2,
        'outer_offset_train': None,
        'outer_offset_test': None,
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
)
"""PtychoPINN's legacy defaults; ``cfg`` starts as a copy of these."""

VALID_DATA_SOURCES = frozenset(
    {'lines', 'grf', 'experimental', 'points', 'testimg', 'diagonals', 'xpp', 'V', 'generic'}
)

_NO_DEFAULT = object()


class LegacyConfig(dict[str, Any]):
    """A ``dict`` that records every key written to it after construction.

    Reading a default that nobody configured (e.g. ``gridsize`` when a caller forgot
    ``update_legacy_dict``) is a silent bug; :meth:`is_configured` makes it detectable.
    """

    def __init__(self, initial: Mapping[str, Any] = MappingProxyType({})) -> None:
        super().__init__(initial)
        self._configured: builtins.set[str] = builtins.set()

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self._configured.add(key)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._configured.discard(key)

    def __ior__(self, other: Any) -> LegacyConfig:
        self.update(other)
        return self

    def update(self, *args: Any, **kwargs: Any) -> None:
        written = dict(*args, **kwargs)
        super().update(written)
        self._configured.update(written)

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return super().__getitem__(key)

    def pop(self, key: str, *default: Any) -> Any:
        self._configured.discard(key)
        return super().pop(key, *default)

    def popitem(self) -> tuple[str, Any]:
        key, value = super().popitem()
        self._configured.discard(key)
        return key, value

    def clear(self) -> None:
        super().clear()
        self._configured.clear()

    def is_configured(self, key: str) -> bool:
        """Return True if ``key`` was written after construction (not just a default)."""
        return key in self._configured

    def configured_keys(self) -> frozenset[str]:
        """Return the keys written after construction."""
        return frozenset(self._configured)

    def _replace_contents(self, values: Mapping[str, Any], configured: Iterable[str]) -> None:
        super().clear()
        super().update(values)
        self._configured = builtins.set(configured)

    def __reduce__(self) -> Any:
        return (_rebuild_legacy_config, (dict(self), frozenset(self._configured)))


def _rebuild_legacy_config(values: Mapping[str, Any], configured: Iterable[str]) -> LegacyConfig:
    config = LegacyConfig()
    config._replace_contents(values, configured)
    return config


cfg = LegacyConfig(DEFAULTS)

POST_SEAL_WRITABLE = frozenset({'intensity_scale'})
"""Keys PtychoPINN updates during training, which :func:`set` writes silently even when sealed."""

_sealed = False
"""PtychoPINN's seal: once configuration is complete, later :func:`set` calls of other keys warn."""


def seal() -> None:
    """Mark configuration complete: later :func:`set` of keys outside :data:`POST_SEAL_WRITABLE` log a WARNING."""
    global _sealed
    _sealed = True


def unseal() -> None:
    """Allow :func:`set` to write any key silently again (as before :func:`seal`)."""
    global _sealed
    _sealed = False


def is_sealed() -> bool:
    """Whether :func:`seal` was called more recently than :func:`unseal`."""
    return _sealed


@dataclass(frozen=True)
class Snapshot:
    """Saved contents of ``cfg``, its record of configured keys, and its seal."""

    values: Mapping[str, Any]
    configured: frozenset[str]
    sealed: bool = False


def snapshot() -> Snapshot:
    """Save the contents of ``cfg``, which keys were configured, and whether it is sealed."""
    return Snapshot(values=MappingProxyType(dict(cfg)), configured=cfg.configured_keys(), sealed=_sealed)


def restore(saved: Snapshot) -> None:
    """Restore ``cfg`` in place (contents, configured keys, seal) from :func:`snapshot`."""
    if not isinstance(saved, Snapshot):
        raise TypeError(f'restore() needs a Snapshot from params.snapshot(), got {type(saved)!r}')
    cfg._replace_contents(saved.values, saved.configured)
    seal() if saved.sealed else unseal()


def reset() -> None:
    """Reset ``cfg`` to :data:`DEFAULTS` with no key marked as configured, unsealed."""
    cfg._replace_contents(DEFAULTS, ())
    unseal()


def is_configured(key: str) -> bool:
    """Return True if ``key`` was explicitly set after import (not left at its default)."""
    return cfg.is_configured(key)


def get_bigN() -> int:
    """Return the solution-region size ``N + (gridsize - 1) * offset``."""
    return _require('N') + (_require('gridsize') - 1) * _require('offset')


def get_padding_size() -> int:
    """Return ``(gridsize - 1) * offset + max_position_jitter``."""
    return (_require('gridsize') - 1) * _require('offset') + _require('max_position_jitter')


def get_padded_size() -> int:
    """Return ``bigN + max_position_jitter``."""
    return get_bigN() + _require('max_position_jitter')


def params() -> dict[str, Any]:
    """Return a plain copy of ``cfg`` including the derived ``bigN``."""
    values = dict(cfg)
    values['bigN'] = get_bigN()
    return values


def get(key: str, default: Any = _NO_DEFAULT) -> Any:
    """Return ``cfg[key]`` (``bigN`` is derived); KeyError naming the key if absent, no default."""
    if key == 'bigN':
        return get_bigN()
    if key in cfg:
        return cfg[key]
    if default is _NO_DEFAULT:
        raise KeyError(
            f'ptycho.params has no key {key!r}; configure it with params.set({key!r}, value) '
            'or update_legacy_dict(params.cfg, config), or pass a default to params.get()'
        )
    return default


def set(key: str, value: Any) -> None:  # noqa: A001 - legacy public name
    """Set ``cfg[key] = value`` if the result is valid (``bigN`` is derived, not settable)."""
    if key == 'bigN':
        raise KeyError("'bigN' is derived from N, gridsize and offset; set those instead")
    candidate = dict(cfg)
    candidate[key] = value
    validate(candidate)
    if _sealed and key not in POST_SEAL_WRITABLE:
        logger.warning(
            'post-seal write of params.cfg[%r] = %r: the configuration was sealed; '
            'set it before params.seal() (or call params.unseal() first)',
            key,
            value,
        )
    cfg[key] = value


def validate(values: Mapping[str, Any] | None = None) -> None:
    """Raise ValueError if ``values`` (default: ``cfg``) breaks a legacy-parameter invariant."""
    values = cfg if values is None else values
    data_source = values.get('data_source')
    if data_source not in VALID_DATA_SOURCES:
        raise ValueError(
            f'data_source {data_source!r} is invalid; use one of {sorted(VALID_DATA_SOURCES)}'
        )
    realspace_mae_weight = values.get('realspace_mae_weight', 0.0)
    if realspace_mae_weight > 0.0 and not values.get('realspace_weight', 0.0) > 0.0:
        raise ValueError('realspace_mae_weight > 0 requires realspace_weight > 0')


def _require(key: str) -> Any:
    try:
        return cfg[key]
    except KeyError:
        raise KeyError(f'ptycho.params has no key {key!r}; it is needed to derive sizes') from None
