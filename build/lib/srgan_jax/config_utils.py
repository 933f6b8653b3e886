"""Config plumbing: dotted field access, JSON round trips and diffs of ConfigDicts.

A config is an ml_collections ConfigDict; a saved one (in a checkpoint) is its JSON dict. The
dotted names ('loss.vgg.weights') are the ones the command line uses (--config.loss.vgg.weights),
so errors, diffs and overrides all speak the same language.
"""

import json

import ml_collections

MISSING = object()


def get_field(config, dotted: str, default=MISSING):
  """The value at `dotted` in a ConfigDict or a nested dict; `default` when a key is absent
  (without a default, a KeyError names the field)."""
  node = config
  for key in dotted.split('.'):
    try:
      node = node[key]
    except (KeyError, TypeError, AttributeError):
      if default is MISSING:
        raise KeyError(f'config has no field {dotted!r}') from None
      return default
  return node


def set_field(config, dotted: str, value) -> None:
  """Sets the field at `dotted` (its parents must exist)."""
  *path, last = dotted.split('.')
  node = config
  for key in path:
    node = node[key]
  node[last] = value


def config_to_dict(config) -> dict:
  """A JSON-safe dict of a ConfigDict (tuples become lists)."""
  return json.loads(config.to_json())


def dict_to_config(d: dict) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(d)


def diff(base: dict, other: dict, prefix: str = '') -> dict:
  """dotted name -> value in `other` where it differs from `base` (nested dicts of other keys
  are reported whole)."""
  out = {}
  for key in other:
    a, b = base.get(key), other[key]
    if isinstance(a, dict) and isinstance(b, dict) and set(a) == set(b):
      out.update(diff(a, b, f'{prefix}{key}.'))
    elif a != b:
      out[f'{prefix}{key}'] = b
  return out

