"""Bounded, strict YAML loading for every file a user hands the harness (configs, presets, ablation
files, a run's config.yaml) and for override values.

`yaml.safe_load` builds whatever a document describes: 585 bytes of nested aliases stand for half a
million values (gigabytes once the config is copied or printed), a key given twice silently replaces
the first, and bad bytes raise from deep in the reader. Here every such input is one `UserError` line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mae.errors import UserError

# Bounds on what a YAML file (config, preset, ablation) or an override value may make the loader build.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_NODES = 100_000


def load_yaml_file(path: str | Path, field: str = "--config", name: str | None = None) -> Any:
    """The document of a YAML file, bounded and strict (see `load_yaml_text`); a UserError names the file.

    Args:
        path: the file.
        field: what the file is to the user (`--config`, `ablations/x.yaml`), the error's field.
        name: how messages name the file (default: the path).
    """
    path = Path(path)
    shown = name or str(path)
    try:
        if not path.is_file():
            raise UserError(field, str(path), "an existing YAML file")
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise UserError.message(field, f"{shown} is {size} bytes: allowed a YAML file of at most "
                                    f"{MAX_YAML_BYTES} bytes")
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError.message(field, f"{shown} cannot be read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError.message(field, f"{shown} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                                f"{exc.start}): allowed a YAML text file") from None
    return load_yaml_text(text, shown, field)


def load_yaml_text(text: str, name: str, field: str = "--config") -> Any:
    """yaml.safe_load with bounds: at most `MAX_YAML_NODES` values once aliases are expanded (a few
    hundred bytes of nested aliases would otherwise grow to gigabytes when the config is copied or
    printed) and no key given twice in one mapping (YAML keeps the last one silently).

    Raises:
        UserError: `{name} is not valid YAML: ...`, naming the duplicate key or the size bound.
    """
    if len(text) > MAX_YAML_BYTES:
        raise UserError.message(field, f"{name} is {len(text)} characters: allowed at most {MAX_YAML_BYTES}")
    loader = None
    try:
        loader = _BoundedLoader(text)  # the reader already refuses control characters (NUL, ...)
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {}, set(), name, field)
        return loader.construct_document(node)
    except _DuplicateKey as exc:
        raise UserError.message(field, f"{name}: key {exc.key!r} appears twice in one mapping (line {exc.line}): "
                                "allowed each key once (a later one would silently replace the first)") from None
    except yaml.YAMLError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError.message(field, f"{name} is not valid YAML: {first_line}") from None
    except RecursionError:
        raise UserError.message(field, f"{name} is not valid YAML: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int):
        super().__init__(key)
        self.key, self.line = key, line


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (merge keys `<<` may be overridden)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # unhashable: SafeLoader reports it
                    continue
                if duplicate:
                    raise _DuplicateKey(key, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node, sizes: dict[int, int], active: set[int], name: str, field: str) -> int:
    """Number of values `node` stands for once every alias is expanded; a UserError past `MAX_YAML_NODES`."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in active:
        raise UserError.message(field, f"{name}: a YAML alias refers to itself: allowed aliases of finished values")
    active.add(key)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = []
    for child in children:
        size += _expanded_size(child, sizes, active, name, field)
        if size > MAX_YAML_NODES:
            raise UserError.message(field, f"{name}: YAML aliases expand to more than {MAX_YAML_NODES} values: "
                                    f"allowed at most {MAX_YAML_NODES} (a config is a few hundred)")
    active.discard(key)
    sizes[key] = size
    return size
