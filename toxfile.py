"""tox plugin (tox loads it from the project root): find every Python that pyenv installed.

pyenv's shims answer only for the versions made active, so on a machine that installs Python
3.10 to 3.13 with pyenv and activates one of them, tox would not find the others. When
``PYENV_VERSION`` is not set, this makes every installed version active, the current one first
(so plain ``python3`` stays what it was); tox.ini passes ``PYENV_VERSION`` to the test and
packaging environments. Without pyenv it does nothing, and a missing interpreter fails the run
(``skip_missing_interpreters = false``).
"""

from __future__ import annotations

import os
import shutil
import subprocess


def _pyenv(*args: str) -> list[str]:
    """What ``pyenv ARGS`` prints, as words; nothing when pyenv fails or hangs (tox then looks
    for the interpreters as it would without this plugin)."""
    try:
        done = subprocess.run(["pyenv", *args], capture_output=True, text=True, check=False,
                              timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return done.stdout.split() if done.returncode == 0 else []


if shutil.which("pyenv") and not os.environ.get("PYENV_VERSION"):
    current = _pyenv("version-name")
    # "3.11.7/envs/name" entries are pyenv-virtualenv environments, not interpreters to test on
    installed = [v for v in _pyenv("versions", "--bare", "--skip-aliases")
                 if v not in current and "/" not in v]
    if current or installed:
        os.environ["PYENV_VERSION"] = ":".join(current + installed)
