"""Credentials never reach a file, a log line or MLflow: one place that recognises and cuts them out.

A value is a secret when its key's last part is a secret name (`token`, `*_token`, `*_secret`,
`*_password`, `*_api_key`, `*.credentials`, ...; not `tokenizer` or `mask_tokens`), when it contains the
value of an environment variable whose name looks like a secret (`HF_TOKEN`, `AWS_SECRET_ACCESS_KEY`,
`MLFLOW_TRACKING_PASSWORD`, ...), or when it looks like a known token format (`ghp_...`, `hf_...`,
`sk-...`); passwords inside URLs are cut out. Used for the config the run folder carries
(config.yaml, checkpoints, model.pth), the command line, train.log / stdout, MLflow params and tags.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Mapping

REDACTED = "<redacted>"
_SECRET_KEY = re.compile(
    r"(^|[._-])(token|secret|password|passwd|api_key|apikey|access_key|private_key|credentials?)$", re.I)
_SECRET_ENV = re.compile(r"(token|secret|password|passwd|api_?key|access_?key|private_?key|credential)", re.I)
_SECRET_VALUE = re.compile(r"^(ghp_|gho_|ghs_|github_pat_|hf_|sk-|xox[abprs]-|AKIA)[A-Za-z0-9_\-]{12,}$")
_URL_PASSWORD = re.compile(r"(://[^/:@\s]+):[^/@\s]+@")
_TOKEN_WORD = re.compile(r"(?<![A-Za-z0-9_\-])(ghp_|gho_|ghs_|github_pat_|hf_|sk-|xox[abprs]-|AKIA)[A-Za-z0-9_\-]{12,}")


def redact(params: Mapping[str, Any]) -> dict[str, Any]:
    """`params` with every value that may be a secret replaced by `REDACTED` (see the module docstring)."""
    env_secrets = _env_secrets()
    out = {}
    for key, value in params.items():
        s = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        if (_SECRET_KEY.search(str(key)) or _SECRET_VALUE.match(s.strip())
                or any(secret in s for secret in env_secrets)):
            out[key] = REDACTED
        elif isinstance(value, str) and _URL_PASSWORD.search(value):
            out[key] = _URL_PASSWORD.sub(r"\1:" + REDACTED + "@", value)
        else:
            out[key] = value
    return out


def _env_secrets() -> list[str]:
    # Names first, then each value with get(): another thread may remove a variable meanwhile (mae.tracking
    # takes its MLflow client settings out when a failed server closes the session), and
    # os.environ.items() then raised KeyError in the middle of a checkpoint save.
    values = (os.environ.get(k) for k in list(os.environ) if _SECRET_ENV.search(k))
    return sorted((v for v in values if v is not None and len(v) >= 6), key=len, reverse=True)


def redact_text(text: str) -> str:
    """`text` with every credential cut out: URL passwords, `secret_key=value` words, values of
    secret-looking environment variables and known token formats (for command lines and log lines)."""
    text = _URL_PASSWORD.sub(r"\1:" + REDACTED + "@", _redact_assignments(text))
    for secret in _env_secrets():
        text = text.replace(secret, REDACTED)
    return _TOKEN_WORD.sub(REDACTED, text)


def redact_tree(value: Any, key: str = "") -> Any:
    """A copy of a config-like tree (dicts, lists, scalars) with `redact` applied to every leaf under its
    dotted key and `redact_text` to every string: what the run writes into config.yaml, checkpoints and
    model.pth (the live config keeps the real values)."""
    if isinstance(value, dict):
        return {k: redact_tree(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_tree(v, key) for v in value)
    if isinstance(value, str):
        value = redact_text(value)
        return redact({key: value})[key] if key else value
    return REDACTED if key and _SECRET_KEY.search(key) and value is not None else value


class RedactingFilter(logging.Filter):
    """A handler filter that passes every record through `redact_text` (train.log, stdout)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact_text(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


LOG_FORMAT, LOG_DATE_FORMAT = "%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"


def log_handler(target: Any) -> logging.Handler:
    """A handler of `mae`'s log lines to a stream (stdout, stderr) or a file path (train.log): the run's line
    format, and no credential in any line (`RedactingFilter`)."""
    handler = logging.StreamHandler(target) if hasattr(target, "write") else logging.FileHandler(target)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATE_FORMAT))
    handler.addFilter(RedactingFilter())
    return handler


def _redact_assignments(text: str) -> str:
    """`... tracking.tags.api_token=abc ...` -> `... tracking.tags.api_token=<redacted> ...` (command lines)."""
    words = []
    for word in text.split(" "):
        key, eq, _ = word.partition("=")
        words.append(f"{key}={REDACTED}" if eq and _SECRET_KEY.search(key) else word)
    return " ".join(words)


def redacted_yaml(text: str) -> str:
    """A YAML document with every leaf passed through `redact_tree`."""
    import yaml
    return yaml.safe_dump(redact_tree(yaml.safe_load(text)), sort_keys=False, default_flow_style=None)
